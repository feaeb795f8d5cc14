"""Sweep-sized queues: what each command costs on 1k, 10k and 100k jobs (issue 16).

    .venv/bin/python bench/scale.py [--quick] [--sizes 1000,10000,100000]
                                    [--drain 2000,20000] [--gflow DIR] [--reps 5]

For gpudispatch, on a queue of N queued jobs (made with one ``submit --each-line``):
the bulk submission itself; one more ``submit -- true`` (median of --reps); ``status``
(time and peak memory); ``run``: the time from its start to the first job's end, and the
dispatcher's peak memory. On N finished jobs (records written with the store's own
functions): ``status --json``, the first listing and the next (its cache). Then the
drain cost per job, dispatcher running, of files moved into ``queue/`` at once, for each
--drain size. For task-spooler (one slot held by a long job, so the rest stay queued; a
client stays connected per queued job and its server takes 1,000 connections, so the
995th call or so waits): up to 950 ``tsp`` calls (their time scaled to N), one more, and
``tsp -l``. For
gflow (PyPI ``runqd``; --gflow names the folder of its ``gflowd``/``gbatch``/``gqueue``,
else they are looked up on PATH; each job held with ``--begin now+1d``): N ``gbatch``
calls up to 1,000 (beyond, their time scaled to N), ``gbatch --array`` (1,000 a call:
a larger array's request fails), ``gqueue`` with those N queued, the daemon's peak
memory, and one more ``gbatch``. Peak memory is the process's ``ru_maxrss`` (commands)
or ``VmHWM`` (daemons). All in one run, so ratios share the
machine's noise; the table ends with the ratios issue 16 asks for.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from notify import Inotify
from peers import GpuDispatch, RunDirs, TaskSpooler, gpudispatch_command
from run_all import fill_finished, wait_count

NS = 1e9
# task-spooler keeps a client process connected per queued job, and its server takes
# at most 1,000 connections: the 995th or so `tsp` call waits for a free one.
TSP_MAX_QUEUED = 1000
GFLOW_ARRAY_MAX = 1000  # gflow 0.4.18's daemon drops a larger array's request
_QUIET = [
    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
    (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
]


def spawn(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one command, started as a shell starts it."""
    exe = shutil.which(argv[0]) or argv[0]
    envb = {k.encode(): v.encode() for k, v in (env or os.environ).items()}
    t0 = time.perf_counter_ns()
    pid = os.posix_spawn(exe, argv, envb, file_actions=_QUIET)
    _, status, usage = os.wait4(pid, 0)
    elapsed = (time.perf_counter_ns() - t0) / NS
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {os.waitstatus_to_exitcode(status)}")
    return elapsed, usage.ru_maxrss / 1024


def median_spawn(argv: list[str], reps: int, env: dict[str, str] | None = None) -> float:
    return statistics.median(spawn(argv, env)[0] for _ in range(reps))


def peak_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, dict[int, str]]] = []

    def add(self, peer: str, what: str, n: int, value: str) -> None:
        for p, w, cells in self.rows:
            if (p, w) == (peer, what):
                cells[n] = value
                return
        self.rows.append((peer, what, {n: value}))

    def print(self, sizes: list[int]) -> None:
        head = ["peer", "measure", *(f"{n:,}" for n in sizes)]
        print("\n| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for peer, what, cells in self.rows:
            print(f"| {peer} | {what} | " + " | ".join(cells.get(n, "") for n in sizes) + " |")


# ---------------------------------------------------------------------- gpudispatch
def gd_queued(dirs: RunDirs, n: int, reps: int, table: Table) -> dict[str, float]:
    gd = gpudispatch_command()
    run = dirs.fresh(f"gd-{n}")
    root = run / "q"
    commands = run / "commands.txt"
    commands.write_text("true\n" * n)
    bulk, _ = spawn([*gd, "submit", "--dir", str(root), "--each-line", str(commands)])
    table.add("gpudispatch", "bulk submit (`submit --each-line`), s", n, f"{bulk:.2f}")
    one = median_spawn([*gd, "submit", "--dir", str(root), "--", "true"], reps)
    table.add("gpudispatch", "one more `submit -- true`, ms", n, f"{one * 1e3:.0f}")
    shown = [spawn([*gd, "status", "--dir", str(root)]) for _ in range(reps)]
    status = statistics.median(s for s, _ in shown)
    status_mb = max(m for _, m in shown)
    table.add("gpudispatch", "`status` (table), s / MB", n, f"{status:.2f} / {status_mb:.0f}")
    first, run_mb = gd_first_start(run, root)
    table.add("gpudispatch", "`run`: first job ended, s / dispatcher MB", n,
              f"{first:.2f} / {run_mb:.0f}")
    return {"submit": one, "status": status, "status_mb": status_mb, "first": first,
            "run_mb": run_mb}


def gd_first_start(run: Path, root: Path) -> tuple[float, float]:
    node = GpuDispatch(run)
    with Inotify([root / "completed", root / "failed"]) as ino:
        t0 = time.perf_counter_ns()
        node.proc = node.popen()
        wait_count(ino, [root / "completed", root / "failed"], 1, 300)
        first = (time.perf_counter_ns() - t0) / NS
    time.sleep(2)  # let it go on a little: its steady memory, not its first moment
    memory = peak_mb(node.proc.pid)
    node.stop()
    return first, memory


def gd_finished(dirs: RunDirs, n: int, table: Table) -> float:
    gd = gpudispatch_command()
    root = dirs.fresh(f"gd-finished-{n}") / "q"
    root.mkdir()
    fill_finished(root, n)
    cold, cold_mb = spawn([*gd, "status", "--dir", str(root), "--json"])
    warm, warm_mb = spawn([*gd, "status", "--dir", str(root), "--json"])
    table.add("gpudispatch", "`status --json` on N finished, first / next (cached), s", n,
              f"{cold:.2f} / {warm:.2f}")
    table.add("gpudispatch", "`status --json` peak MB", n, f"{max(cold_mb, warm_mb):.0f}")
    return warm


def gd_drain(dirs: RunDirs, n: int) -> float:
    """ms per job: n trivial scripts renamed into queue/ of a running dispatcher, until
    the n-th is in completed/."""
    run = dirs.fresh(f"gd-drain-{n}")
    node = GpuDispatch(run)
    node.start()
    try:
        staged = [node.stage(f"job{i:06d}.sh", "true") for i in range(n)]
        with Inotify(node.done_dirs) as ino:
            t0 = time.perf_counter_ns()
            for path in staged:
                node.drop(path)
            wait_count(ino, node.done_dirs, n, 3600)
            return (time.perf_counter_ns() - t0) / NS / n * 1e3
    finally:
        node.stop()


# ---------------------------------------------------------------------- task-spooler
def tsp_queued(dirs: RunDirs, n: int, reps: int, table: Table) -> None:
    if shutil.which("tsp") is None:
        return
    if n > TSP_MAX_QUEUED:
        table.add("task-spooler", "N `tsp` calls, s", n, "refused (queue full)")
        return
    tsp = TaskSpooler(dirs.fresh(f"tsp-{n}"))
    tsp.start()
    try:
        tsp.submit("sleep", "100000")  # holds the one slot: the rest stay queued
        calls = min(n, TSP_MAX_QUEUED - 50)  # each queued job keeps a client connected
        t0 = time.perf_counter_ns()
        for _ in range(calls - 1):
            tsp.submit("true")
        loop = (time.perf_counter_ns() - t0) / NS * n / calls
        table.add("task-spooler", "N `tsp` calls, s" + (f" (from {calls})" if calls < n
                                                         else ""), n, f"{loop:.2f}")
        one = median_spawn(["tsp", "true"], reps, tsp.env)
        table.add("task-spooler", "one more `tsp true`, ms", n, f"{one * 1e3:.1f}")
        listing = median_spawn(["tsp", "-l"], reps, tsp.env)
        table.add("task-spooler", "`tsp -l`, s", n, f"{listing:.3f}")
    finally:
        tsp.stop()


# ---------------------------------------------------------------------- gflow
class Gflow:
    """gflow's daemon with a private HOME (its state, config and tmux server there)."""

    def __init__(self, bindir: Path, run: Path) -> None:
        self.bin = bindir
        self.env = dict(os.environ, HOME=str(run), TMUX_TMPDIR=str(run),
                        PATH=f"{bindir}:{os.environ['PATH']}")

    def run(self, *argv: str) -> None:
        subprocess.run([str(self.bin / argv[0]), *argv[1:]], env=self.env, check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=120)

    def daemon_pid(self) -> int | None:
        out = subprocess.run([str(self.bin / "gflowd"), "status"], env=self.env,
                             capture_output=True, text=True, timeout=60).stdout
        for line in out.splitlines():
            if line.startswith("PID:"):
                return int(line.split()[1])
        return None


def gflow_queued(bindir: Path | None, dirs: RunDirs, n: int, reps: int, table: Table) -> None:
    if bindir is None:
        return
    gf = Gflow(bindir, dirs.fresh(f"gflow-{n}"))
    gf.run("gflowd", "start")
    try:
        gbatch = [str(bindir / "gbatch"), "--begin", "now+1d", "true"]
        array = sum(spawn([str(bindir / "gbatch"), "--begin", "now+1d", "--array",
                           f"1-{min(GFLOW_ARRAY_MAX, n - done)}", "true"], gf.env)[0]
                    for done in range(0, n, GFLOW_ARRAY_MAX))
        table.add("gflow", "bulk submit (`gbatch --array`, 1,000 a call), s", n,
                  f"{array:.2f}")
        listing = statistics.median(spawn([str(bindir / "gqueue")], gf.env)[0]
                                    for _ in range(reps))
        table.add("gflow", "`gqueue`, s", n, f"{listing:.2f}")
        pid = gf.daemon_pid()
        if pid:
            table.add("gflow", "daemon MB", n, f"{peak_mb(pid):.0f}")
        one = median_spawn(gbatch, reps, gf.env)
        table.add("gflow", "one more `gbatch`, ms", n, f"{one * 1e3:.0f}")
        calls = min(n, 1000)
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            spawn(gbatch, gf.env)
        loop = (time.perf_counter_ns() - t0) / NS * n / calls
        table.add("gflow", "N `gbatch` calls, s" + (" (from 1,000)" if n > 1000 else ""),
                  n, f"{loop:.1f}")
    finally:
        gf.run("gflowd", "stop")


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="sizes 1,000 and 10,000 only")
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--drain", default="2000,20000", help="drain sizes ('' for none)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--gflow", type=Path, help="folder of gflowd, gbatch and gqueue")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.quick:
        sizes = [s for s in sizes if s <= 10000]
    gflow = args.gflow
    if gflow is None and shutil.which("gflowd"):
        gflow = Path(shutil.which("gflowd")).parent
    table = Table()
    found: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="gd-scale-") as tmp:
        dirs = RunDirs(Path(tmp))
        for n in sizes:
            print(f"== {n:,} jobs", file=sys.stderr, flush=True)
            found[n] = gd_queued(dirs, n, args.reps, table)
            found[n]["json"] = gd_finished(dirs, n, table)
            tsp_queued(dirs, n, args.reps, table)
            gflow_queued(gflow, dirs, n, args.reps, table)
        drains = [int(s) for s in args.drain.split(",") if s]
        per_job = {}
        for n in drains:
            print(f"== drain {n:,}", file=sys.stderr, flush=True)
            per_job[n] = gd_drain(dirs, n)
            table.add("gpudispatch", "drain, ms per job (dispatcher running)", n,
                      f"{per_job[n]:.2f}")
        dirs.cleanup()
    table.print(sorted(set(sizes) | set(per_job)))
    small, large = min(sizes), max(sizes)
    if small != large:
        a, b = found[small], found[large]
        print(f"\nratios, {large:,} against {small:,} (issue 16's limits in brackets):")
        print(f"  status           {b['status'] / a['status']:.2f}x  [<= 3x], "
              f"{b['status_mb']:.0f} MB [<= 150 MB]")
        print(f"  run, first start {b['first'] / a['first']:.2f}x  [<= 3x], "
              f"{b['run_mb']:.0f} MB [<= 150 MB]")
        print(f"  submit one more  {b['submit'] / a['submit']:.2f}x  [<= 1.5x]")
        print(f"  status --json    {b['json']:.2f} s for {large:,} finished [about 1 s]")
    if len(per_job) >= 2:
        lo, hi = min(per_job), max(per_job)
        print(f"  drain per job    {per_job[hi] / per_job[lo]:.2f}x, {hi:,} against {lo:,} "
              "[<= 1.15x]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
