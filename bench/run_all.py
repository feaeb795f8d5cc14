"""gpudispatch against task-spooler and the seed's polling loop, in one run.

    .venv/bin/python bench/run_all.py [--quick] [--big] [--only latency,drain,status]

Prints each repetition as it goes and a table at the end: our median, the peer's median
from the same run, the ratio and the requirement (issue 3 "Speed", issue 4 "status").
See bench/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import os
import random
import select
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from notify import Inotify, Overflow
from peers import (
    REPO,
    GpuDispatch,
    RunDirs,
    SeedLoop,
    TaskSpooler,
    count_files,
    gpudispatch_command,
    write_script,
)

sys.path.insert(0, str(REPO / "src"))

from gpudispatch.job import JobRecord  # noqa: E402
from gpudispatch.store import HOST, FolderQueue  # noqa: E402

NS = 1e9


@dataclass
class Config:
    lat_reps: int = 5
    lat_samples: int = 10  # per gap kind: 2 x 10 drops per repetition
    seed_lat_samples: int = 8
    drain_reps: int = 3
    drain_jobs: int = 2000
    variant_reps: int = 3
    status_jobs: int = 10_000
    status_reps: int = 5
    big_jobs: int = 10_000


@dataclass
class Row:
    metric: str
    unit: str
    ours: list[float]
    peer: str = ""
    theirs: list[float] = field(default_factory=list)
    max_ratio: float | None = None  # requirement: ours <= max_ratio * theirs
    max_abs: float | None = None  # requirement: ours < max_abs

    @property
    def ratio(self) -> float | None:
        if not self.ours or not self.theirs:
            return None
        return statistics.median(self.ours) / statistics.median(self.theirs)

    @property
    def requirement(self) -> str:
        if self.max_ratio is not None:
            return f"ratio <= {self.max_ratio:g}"
        if self.max_abs is not None:
            return f"< {self.max_abs:g} {self.unit}"
        return "(info)"

    @property
    def verdict(self) -> str:
        if self.max_ratio is not None and self.ratio is not None:
            return "PASS" if self.ratio <= self.max_ratio else "FAIL"
        if self.max_abs is not None and self.ours:
            return "PASS" if statistics.median(self.ours) < self.max_abs else "FAIL"
        return ""


def say(*parts) -> None:
    print(*parts, flush=True)


def med(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    text = ", ".join(f"{v * scale:.{digits}f}" for v in values)
    return f"median {med(values) * scale:.{digits}f} [{text}]"


def rotated(items: list, rep: int) -> list:
    k = rep % len(items)
    return items[k:] + items[:k]


# ---------------------------------------------------------------------- 1. latency
def folder_latency(peer, gaps: list[float]) -> list[float]:
    """ms from the rename into queue/ to the job's first action, for each idle gap (s)
    between the previous job's end and the drop."""
    marks = peer.run_dir / "marks"
    marks.mkdir()
    out = []
    with Inotify([marks]) as seen, Inotify(peer.done_dirs) as done:
        for i, gap in enumerate(gaps):
            name, mark = f"lat{i:03d}.sh", f"m{i:03d}"
            staged = peer.stage(name, f": > {shlex.quote(str(marks / mark))}")
            time.sleep(gap)
            t0 = time.perf_counter_ns()
            peer.drop(staged)
            t1 = seen.wait_for(mark, 30)
            done.wait_for(name, 30)
            out.append((t1 - t0) / 1e6)
    return out


def tsp_latency(tsp: TaskSpooler, gaps: list[float]):
    """ms from invoking ``tsp sh -c ': > MARK'`` to the marker; the client's own time;
    and the marker's time after the client returned (the submit-excluded latency)."""
    marks = tsp.run_dir / "marks"
    marks.mkdir()
    lat, client, after = [], [], []
    with Inotify([marks]) as seen:
        for i, gap in enumerate(gaps):
            mark = f"m{i:03d}"
            time.sleep(gap)
            t0 = time.perf_counter_ns()
            pid = tsp.spawn("sh", "-c", f": > {shlex.quote(str(marks / mark))}")
            pidfd = os.pidfd_open(pid)  # works on a zombie too: nothing is missed
            t_mark = t_exit = None
            deadline = time.monotonic() + 30
            try:
                while t_mark is None or t_exit is None:
                    wait = deadline - time.monotonic()
                    if wait <= 0:
                        raise TimeoutError("tsp job did not start within 30 s")
                    ready, _, _ = select.select([seen, pidfd], [], [], wait)
                    now = time.perf_counter_ns()
                    if pidfd in ready and t_exit is None:
                        t_exit = now
                    if seen in ready and mark in seen.take():
                        t_mark = now
            finally:
                os.close(pidfd)
                os.waitpid(pid, 0)
            lat.append((t_mark - t0) / 1e6)
            client.append((t_exit - t0) / 1e6)
            after.append((t_mark - t_exit) / 1e6)
    tsp.tsp("-w")  # the last job has finished before the server goes
    return lat, client, after


SHORT_GAP = (0.05, 0.2)  # the previous job ended a moment ago
LONG_GAP = (0.6, 1.0)  # nothing has happened for over half a second


def bench_latency(cfg: Config, dirs: RunDirs, rng: random.Random) -> list[Row]:
    """Each repetition drops lat_samples jobs per gap kind, short and long gaps shuffled."""
    say(f"\n== 1. start latency, idle queue ({cfg.lat_reps} reps x {cfg.lat_samples} "
        f"samples after a short gap + {cfg.lat_samples} after a long one; seed loop x "
        f"{cfg.seed_lat_samples}) ==")
    res: dict[str, list[float]] = {
        "gpudispatch long": [], "gpudispatch short": [], "tsp long": [], "tsp short": [],
        "tsp client": [], "tsp after": [], "seed": [],
    }

    def gap_plan() -> tuple[list[float], list[bool]]:
        kinds = [True] * cfg.lat_samples + [False] * cfg.lat_samples
        rng.shuffle(kinds)
        return [rng.uniform(*(LONG_GAP if k else SHORT_GAP)) for k in kinds], kinds

    def split(name: str, lat: list[float], kinds: list[bool]) -> str:
        long_ = [x for x, k in zip(lat, kinds, strict=True) if k]
        short = [x for x, k in zip(lat, kinds, strict=True) if not k]
        res[f"{name} long"].append(med(long_))
        res[f"{name} short"].append(med(short))
        return (f"{med(long_):7.2f} ms after a long gap, {med(short):7.2f} ms after a short "
                f"one (max {max(long_):.1f} / {max(short):.1f})")

    for rep in range(cfg.lat_reps):
        for peer in rotated(["gpudispatch", "tsp", "seed"], rep):
            run = dirs.fresh(f"lat-{peer}")
            if peer == "tsp":
                tsp = TaskSpooler(run)
                tsp.start()
                gaps, kinds = gap_plan()
                try:
                    lat, client, after = tsp_latency(tsp, gaps)
                finally:
                    tsp.stop()
                res["tsp client"].append(med(client))
                res["tsp after"].append(med(after))
                say(f"  rep {rep + 1} task-spooler {split('tsp', lat, kinds)}; client "
                    f"{med(client):.2f} ms, job {med(after):.2f} ms after it")
                continue
            node = GpuDispatch(run) if peer == "gpudispatch" else SeedLoop(run)
            if peer == "gpudispatch":
                gaps, kinds = gap_plan()
            else:  # the seed sleeps in whole periods: spread drops over one period
                gaps = [rng.uniform(0.05, 0.05 + node.wait) for _ in range(cfg.seed_lat_samples)]
            node.start()
            try:
                lat = folder_latency(node, gaps)
            finally:
                node.stop()
            if peer == "gpudispatch":
                say(f"  rep {rep + 1} gpudispatch  {split('gpudispatch', lat, kinds)}")
            else:
                res["seed"].append(med(lat))
                say(f"  rep {rep + 1} seed loop    {med(lat):7.2f} ms "
                    f"(min {min(lat):.1f}, max {max(lat):.1f})")
    dirs.cleanup()
    metric = "start latency, idle queue"
    return [
        Row(f"{metric}, long gap ({LONG_GAP[0]:g}-{LONG_GAP[1]:g} s)", "ms",
            res["gpudispatch long"], "task-spooler", res["tsp long"], max_ratio=1.0),
        Row(f"{metric}, short gap ({SHORT_GAP[0]:g}-{SHORT_GAP[1]:g} s)", "ms",
            res["gpudispatch short"], "task-spooler", res["tsp short"], max_ratio=1.0),
        Row(f"{metric}, long gap", "ms", res["gpudispatch long"], "seed loop", res["seed"]),
        Row(f"{metric}, short gap", "ms", res["gpudispatch short"], "seed loop", res["seed"]),
        Row("  tsp: client call alone", "ms", res["tsp client"]),
        Row("  tsp: job start after client returned", "ms", res["tsp after"]),
    ]


# ---------------------------------------------------------------------- 2. drain
def stage_jobs(folder: Path, n: int) -> list[Path]:
    folder.mkdir(exist_ok=True)
    paths = [folder / f"job{i:05d}.sh" for i in range(n)]
    for path in paths:
        write_script(path, "true")
    return paths


def wait_count(ino: Inotify, folders: list[Path], n: int, timeout: float) -> int:
    """perf_counter_ns when ``n`` distinct scripts have arrived in ``folders``."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(seen) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(seen)} of {n} jobs finished in {timeout:.0f} s")
            now, names = ino.read(min(1.0, deadline - time.monotonic()))
            seen.update(name for name in names if name.endswith(".sh"))
        return now
    except Overflow:
        while sum(count_files(f) for f in folders) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs did not finish in {timeout:.0f} s") from None
            time.sleep(0.02)
        return time.perf_counter_ns()


def busy_cpu() -> float:
    """CPU seconds the whole machine has spent so far, all CPUs (``/proc/stat``: user,
    nice, system, irq, softirq; not idle, iowait or steal). Over a drain it is what every
    process of the peer cost (task-spooler's jobs are reaped by no one we could ask),
    the bench's own loop and whatever else ran: a measure of work, where the wall time
    also counts the waits (and, on a shared machine, the CPU other guests took)."""
    with open("/proc/stat") as fh:
        fields = fh.readline().split()[1:8]
    user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields)
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def folder_drain(peer, n: int) -> tuple[float, float, float]:
    """s from the first rename into queue/ to the n-th script in completed/ (peer idle),
    s the renames took, and the machine's CPU seconds meanwhile (:func:`busy_cpu`)."""
    peer.start()
    try:
        staged = stage_jobs(peer.run_dir / "staging", n)
        os.sync()
        time.sleep(0.2)
        with Inotify(peer.done_dirs) as ino:
            cpu0 = busy_cpu()
            t0 = time.perf_counter_ns()
            for path in staged:
                os.rename(path, peer.queue_dir / path.name)
            t_dropped = time.perf_counter_ns()
            t_end = wait_count(ino, peer.done_dirs, n, timeout=max(120, n * 0.05))
            cpu = busy_cpu() - cpu0
    finally:
        peer.stop()
    failed = count_files(peer.done_dirs[1])
    if failed:
        raise RuntimeError(f"{peer.name}: {failed} of {n} trivial jobs failed")
    return (t_end - t0) / NS, (t_dropped - t0) / NS, cpu


def gpudispatch_drain_flag(run: Path, n: int) -> float:
    """s from starting ``gpudispatch run --drain`` on a pre-filled queue to its exit."""
    node = GpuDispatch(run)
    node.create()
    for path in stage_jobs(run / "staging", n):
        os.rename(path, node.queue_dir / path.name)
    os.sync()
    time.sleep(0.2)
    t0 = time.perf_counter_ns()
    proc = node.popen(drain=True)
    code = proc.wait(timeout=max(120, n * 0.05))
    t_end = time.perf_counter_ns()
    done = count_files(node.root / "completed")
    if code != 0 or done != n:
        raise RuntimeError(f"gpudispatch --drain exited {code} with {done} of {n} completed")
    return (t_end - t0) / NS


def tsp_drain(run: Path, n: int, list_reps: int
              ) -> tuple[float, float, list[float], float]:
    """s from the first of n sequential ``tsp sh -c true`` to ``tsp -w LAST`` returning;
    s the submitting took, ``tsp -l`` times, the machine's CPU s (:func:`busy_cpu`)."""
    tsp = TaskSpooler(run)
    tsp.start()
    try:
        os.sync()
        time.sleep(0.2)
        cpu0 = busy_cpu()
        t0 = time.perf_counter_ns()
        for _ in range(n - 1):
            tsp.submit("sh", "-c", "true")
        last = tsp.tsp("sh", "-c", "true", capture=True).strip()
        t_submitted = time.perf_counter_ns()
        tsp.tsp("-w", last)
        t_end = time.perf_counter_ns()
        cpu = busy_cpu() - cpu0
        listings = []
        for _ in range(list_reps):
            t = time.perf_counter_ns()
            text = tsp.tsp("-l", capture=True)
            listings.append((time.perf_counter_ns() - t) / NS)
        finished = sum(" finished " in line for line in text.splitlines())
        if finished != n:
            raise RuntimeError(f"tsp lists {finished} of {n} jobs finished")
    finally:
        tsp.stop()
    return (t_end - t0) / NS, (t_submitted - t0) / NS, listings, cpu


def bench_drain(cfg: Config, dirs: RunDirs) -> tuple[list[Row], list[float]]:
    n = cfg.drain_jobs
    say(f"\n== 2. drain {n} trivial jobs ({cfg.drain_reps} reps; --drain variant "
        f"{cfg.variant_reps}) ==")
    res: dict[str, list[float]] = {"gpudispatch": [], "tsp": [], "seed": [], "flag": []}
    cpu: dict[str, list[float]] = {"gpudispatch": [], "tsp": []}  # ms a job, whole machine
    tsp_list: list[float] = []
    for rep in range(max(cfg.drain_reps, cfg.variant_reps)):
        peers = ["gpudispatch", "tsp", "seed", "flag"]
        if rep >= cfg.variant_reps:
            peers.remove("flag")
        if rep >= cfg.drain_reps:
            peers = ["flag"]
        for peer in rotated(peers, rep):
            run = dirs.fresh(f"drain-{peer}")
            if peer == "tsp":
                total, submit, listing, used = tsp_drain(run, n, cfg.status_reps)
                tsp_list.extend(listing)
                res["tsp"].append(total)
                cpu["tsp"].append(used / n * 1e3)
                say(f"  rep {rep + 1} task-spooler        {total:6.2f} s  "
                    f"(submitting took {submit:.2f} s; tsp -l {med(listing) * 1e3:.0f} ms; "
                    f"CPU {used / n * 1e3:.2f} ms a job)")
            elif peer == "flag":
                total = gpudispatch_drain_flag(run, n)
                res["flag"].append(total)
                say(f"  rep {rep + 1} gpudispatch --drain {total:6.2f} s  (process start to exit)")
            else:
                node = GpuDispatch(run) if peer == "gpudispatch" else SeedLoop(run)
                total, dropped, used = folder_drain(node, n)
                res[peer].append(total)
                if peer in cpu:
                    cpu[peer].append(used / n * 1e3)
                say(f"  rep {rep + 1} {node.name:19s} {total:6.2f} s  "
                    f"(renames took {dropped * 1e3:.0f} ms; CPU {used / n * 1e3:.2f} ms a job)")
    dirs.cleanup()
    rows = [
        Row(f"drain {n}, dispatcher running", "s", res["gpudispatch"], "task-spooler",
            res["tsp"], max_ratio=1.0),
        Row(f"drain {n}, dispatcher running", "s", res["gpudispatch"], "seed loop", res["seed"]),
        Row(f"drain {n}, run --drain (variant)", "s", res["flag"], "task-spooler", res["tsp"],
            max_ratio=1.0),
        Row("  CPU a job, whole machine, dispatcher running", "ms", cpu["gpudispatch"],
            "task-spooler", cpu["tsp"]),
    ]
    return rows, tsp_list


def bench_big(cfg: Config, dirs: RunDirs) -> list[Row]:
    n = cfg.big_jobs
    say(f"\n== 2b. drain {n} trivial jobs (1 rep each) ==")
    ours = folder_drain(GpuDispatch(dirs.fresh("big-gpudispatch")), n)[0]
    say(f"  gpudispatch  {ours:6.2f} s")
    tsp = tsp_drain(dirs.fresh("big-tsp"), n, 1)[0]
    say(f"  task-spooler {tsp:6.2f} s")
    seed = folder_drain(SeedLoop(dirs.fresh("big-seed")), n)[0]
    say(f"  seed loop    {seed:6.2f} s")
    dirs.cleanup()
    return [
        Row(f"drain {n}, dispatcher running", "s", [ours], "task-spooler", [tsp]),
        Row(f"drain {n}, dispatcher running", "s", [ours], "seed loop", [seed]),
    ]


# ---------------------------------------------------------------------- 3. status
def fill_finished(root: Path, n: int) -> None:
    """n finished jobs as a dispatcher leaves them: script in completed/ (1 in 20 in
    failed/) and a full record in logs/."""
    queue = FolderQueue(root)
    layout = queue.layout
    pid = os.getpid()
    for i in range(n):
        name = f"exp{i:05d}_lr0.001_seed{i % 7}.sh"
        ok = i % 20 != 0
        folder = layout.completed if ok else layout.failed
        write_script(folder / name, f"python -u train.py --lr 0.001 --seed {i % 7}")
        start = 1_700_000_000 + 60 * i
        queue.write_record(JobRecord(
            name=name, gpus=[i % 4], host=HOST, pid=100_000 + i, dispatcher=f"{HOST}.{pid}",
            submitted_at=_iso(start - 5), started_at=_iso(start), ended_at=_iso(start + 55),
            exit_code=0 if ok else 1, attempts=1, reason=None if ok else "exit code 1",
            log=layout.job_log(name, 1), params={"lr": 0.001, "seed": i % 7},
        ))


def _iso(seconds: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(seconds, timezone.utc).astimezone().isoformat(
        timespec="milliseconds")


def time_command(cmd: list[str]) -> tuple[float, bytes]:
    t0 = time.perf_counter_ns()
    out = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True)
    elapsed = (time.perf_counter_ns() - t0) / NS
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {out.returncode}: {out.stderr.decode()}")
    return elapsed, out.stdout


def bench_status(cfg: Config, dirs: RunDirs, tsp_list: list[float]) -> list[Row]:
    n = cfg.status_jobs
    say(f"\n== 3. status on {n} finished jobs ({cfg.status_reps} reps each) ==")
    root = dirs.fresh("status") / "q"
    t = time.monotonic()
    fill_finished(root, n)
    os.sync()
    say(f"  (wrote {n} scripts and records in {time.monotonic() - t:.1f} s)")
    base = [*gpudispatch_command(), "status", "--dir", str(root)]
    variants = {"table": base, "json": [*base, "--json"]}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for rep in range(cfg.status_reps):
        for key in rotated(list(variants), rep):
            elapsed, out = time_command(variants[key])
            times[key].append(elapsed)
            if key == "json" and rep == 0:
                import json

                if len(json.loads(out)) != n:
                    raise RuntimeError("status --json does not list every job")
        say(f"  rep {rep + 1} status {times['table'][-1] * 1e3:5.0f} ms   "
            f"status --json {times['json'][-1] * 1e3:5.0f} ms")
    dirs.cleanup()
    peer = "tsp -l (2000 fin.)" if tsp_list else ""
    return [
        Row(f"status, {n} finished", "s", times["table"], peer, tsp_list, max_abs=1.0),
        Row(f"status --json, {n} finished", "s", times["json"], peer, tsp_list, max_abs=1.0),
    ]


# ---------------------------------------------------------------------- report
def fmt(value: float, unit: str) -> str:
    return f"{value:.2f} ms" if unit == "ms" else f"{value * 1e3:.0f} ms" if value < 1 \
        else f"{value:.2f} s"


def print_table(rows: list[Row]) -> None:
    header = ("metric", "gpudispatch", "peer", "peer median", "ratio", "requirement", "")
    lines = [header]
    for row in rows:
        lines.append((
            row.metric,
            fmt(med(row.ours), row.unit) if row.ours else "-",
            row.peer,
            fmt(med(row.theirs), row.unit) if row.theirs else "",
            f"{row.ratio:.2f}x" if row.ratio is not None else "",
            row.requirement,
            row.verdict,
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    say("\n" + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    say("  ".join("-" * w for w in widths))
    for line in lines[1:]:
        say("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions (about 2-3 minutes)")
    parser.add_argument("--big", action="store_true",
                        help="also drain 10,000 jobs through each peer (the seed needs ~90 s)")
    parser.add_argument("--big-jobs", type=int, default=10_000, metavar="N",
                        help="jobs per --big drain (default 10000)")
    parser.add_argument("--jobs", type=int, default=2000, metavar="N",
                        help="jobs per drain (default 2000)")
    parser.add_argument("--only", default="latency,drain,status",
                        help="comma-separated sections of latency,drain,big,status "
                        "(default: all but big)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where run folders go (default: the system temp dir)")
    parser.add_argument("--seed", type=int, default=1, help="random seed for the gaps")
    parser.add_argument("--delete-between", action="store_true",
                        help="delete each run's folder before the next (default: at the "
                        "end; see peers.RunDirs)")
    args = parser.parse_args(argv)
    cfg = Config(drain_jobs=args.jobs, big_jobs=args.big_jobs)
    if args.quick:
        # The drains keep 3 repetitions each, the --drain variant too: one run is no
        # median on a machine this noisy (one alone read 1.15x and 1.83x, beside 0.95x).
        cfg.lat_reps, cfg.lat_samples, cfg.seed_lat_samples = 3, 6, 4
    sections = set(args.only.split(",")) | ({"big"} if args.big else set())
    base = Path(tempfile.mkdtemp(prefix="gpudispatch-bench-", dir=args.workdir))
    dirs = RunDirs(base, keep=not args.delete_between)
    rng = random.Random(args.seed)
    say(f"gpudispatch bench: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
        f"runs under {base}")
    started = time.monotonic()
    rows: list[Row] = []
    tsp_list: list[float] = []
    try:
        if "latency" in sections:
            rows += bench_latency(cfg, dirs, rng)
        if "drain" in sections:
            drain_rows, tsp_list = bench_drain(cfg, dirs)
            rows += drain_rows
        if "big" in sections:
            rows += bench_big(cfg, dirs)
        if "status" in sections:
            rows += bench_status(cfg, dirs, tsp_list)
    finally:
        dirs.cleanup(final=True)
        try:
            base.rmdir()
        except OSError:
            pass
    print_table(rows)
    say(f"\n({time.monotonic() - started:.0f} s; medians of per-repetition medians; "
        f"load now {os.getloadavg()[0]:.2f})")
    return 1 if any(row.verdict == "FAIL" for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
