"""How fast the command line starts, against the bare interpreter, in one run (issue 16).

    .venv/bin/python bench/cli_start.py [--reps 30] [--bulk 2000] [--no-bulk]

1. Median wall time of ``python -I -c pass`` (the same interpreter as the venv's
   ``gpudispatch`` script), ``gpudispatch submit -- true`` and ``gpudispatch status`` on a
   small queue (10 queued, 10 finished), each started the way a shell starts it (the
   console script, with ``posix_spawn``); the three alternate within every repetition so
   they share the machine's noise. Requirement: submit <= 3x, status <= 4x the bare start.
2. Unless ``--no-bulk``: N commands (``sh -c true``) queued with one
   ``gpudispatch submit --each-line FILE`` and drained by ``gpudispatch run --drain``,
   against N ``tsp sh -c true`` calls and ``tsp -w`` on the last (task-spooler, one slot).
   Also N scripts (written beforehand) renamed into ``queue/`` and drained the same way.
   Requirement: each takes no longer than task-spooler's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from notify import Inotify
from peers import GpuDispatch, RunDirs, TaskSpooler, gpudispatch_command, write_script
from run_all import wait_count

NS = 1e9
_QUIET = [
    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
    (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
]


def spawn_time(argv: list[str], env: dict[bytes, bytes]) -> float:
    """Seconds from spawning ``argv`` (output to /dev/null) to its exit; it must exit 0."""
    t0 = time.perf_counter_ns()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=_QUIET)
    _, status = os.waitpid(pid, 0)
    elapsed = (time.perf_counter_ns() - t0) / NS
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {os.waitstatus_to_exitcode(status)}")
    return elapsed


def small_queue(root: Path, cli: list[str]) -> None:
    """A queue with 10 queued jobs and 10 finished ones (made by a drained dispatcher)."""
    done = root / "done"
    for i in range(10):
        subprocess.run([*cli, "submit", "--dir", str(done), "--name", f"d{i:02d}.sh", "--",
                        "true"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*cli, "run", "--dir", str(done), "--slots", "1", "--drain", "-q"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for i in range(10):
        subprocess.run([*cli, "submit", "--dir", str(done), "--name", f"q{i:02d}.sh", "--",
                        "true"], check=True, stdout=subprocess.DEVNULL)


def bench_start(reps: int, work: Path) -> dict[str, list[float]]:
    cli = gpudispatch_command()
    python = str(Path(sys.executable))
    small_queue(work, cli)
    env = {k.encode(): v.encode() for k, v in os.environ.items()
           if not k.startswith(("GPUDISPATCH", "PYTHON"))}
    commands = {
        "python -I -c pass": [python, "-I", "-c", "pass"],
        "gpudispatch submit -- true": [*cli, "submit", "--dir", str(work / "sub"), "--",
                                       "true"],
        "gpudispatch status (small queue)": [*cli, "status", "--dir", str(work / "done")],
    }
    if not os.path.isabs(commands["gpudispatch status (small queue)"][0]):
        raise SystemExit("bench: gpudispatch must be an installed console script")
    for argv in commands.values():  # warm the page cache; not timed
        spawn_time(argv, env)
    times: dict[str, list[float]] = {k: [] for k in commands}
    keys = list(commands)
    for rep in range(reps):
        for key in keys[rep % 3:] + keys[: rep % 3]:
            times[key].append(spawn_time(commands[key], env))
    return times


def drain(cli: list[str], root: Path, n: int) -> None:
    """``run --slots 1 --drain`` on ``root``; all n jobs must complete."""
    done = subprocess.run([*cli, "run", "--dir", str(root), "--slots", "1", "--drain", "-q"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    completed = sum(1 for p in (root / "completed").iterdir() if p.name.endswith(".sh"))
    if done.returncode != 0 or completed != n:
        raise RuntimeError(f"run --drain exited {done.returncode}; {completed} of {n} done")


def _each_line_drain(cli: list[str], run: Path, lines: Path, n: int) -> float:
    """``submit --each-line`` then ``run --drain`` (no dispatcher before)."""
    os.sync()
    t0 = time.perf_counter_ns()
    subprocess.run([*cli, "submit", "--dir", str(run / "q"), "--each-line", str(lines)],
                   check=True, stdout=subprocess.DEVNULL)
    drain(cli, run / "q", n)
    return (time.perf_counter_ns() - t0) / NS


def _each_line_running(cli: list[str], run: Path, lines: Path, n: int) -> float:
    """``submit --each-line`` into an idle dispatcher (as ``tsp`` calls reach its idle
    server), until the n-th script is in ``completed/``."""
    node = GpuDispatch(run)
    node.start()
    try:
        done = node.root / "completed"
        os.sync()
        with Inotify([done]) as ino:
            t0 = time.perf_counter_ns()
            subprocess.run([*cli, "submit", "--dir", str(node.root), "--each-line",
                            str(lines)], check=True, stdout=subprocess.DEVNULL)
            t_end = wait_count(ino, [done], n, timeout=max(120, n * 0.05))
    finally:
        node.stop()
    return (t_end - t0) / NS


def _files_drain(cli: list[str], run: Path, lines: Path, n: int) -> float:
    """n scripts (written beforehand, not timed) renamed into ``queue/``, then
    ``run --drain``."""
    staging, queue = run / "staging", run / "q" / "queue"
    staging.mkdir()
    queue.mkdir(parents=True)
    for i in range(n):
        write_script(staging / f"job{i:05d}.sh", "true")
    os.sync()
    t0 = time.perf_counter_ns()
    for i in range(n):
        os.rename(staging / f"job{i:05d}.sh", queue / f"job{i:05d}.sh")
    drain(cli, run / "q", n)
    return (time.perf_counter_ns() - t0) / NS


def _tsp_calls(cli: list[str], run: Path, lines: Path, n: int) -> float:
    """n ``tsp sh -c true`` calls (its server started beforehand) and ``tsp -w``."""
    tsp = TaskSpooler(run)
    tsp.start()
    try:
        os.sync()
        t0 = time.perf_counter_ns()
        for _ in range(n - 1):
            tsp.submit("sh", "-c", "true")
        last = tsp.tsp("sh", "-c", "true", capture=True).strip()
        tsp.tsp("-w", last)
        return (time.perf_counter_ns() - t0) / NS
    finally:
        tsp.stop()


BULK = {
    "tsp": ("{n} tsp calls + tsp -w", _tsp_calls),
    "running": ("submit --each-line, dispatcher running", _each_line_running),
    "drain": ("submit --each-line + run --drain", _each_line_drain),
    "files": ("{n} files into queue/ + run --drain", _files_drain),
}


def bench_bulk(n: int, reps: int, work: Path, keep: bool = True) -> dict[str, list[float]]:
    """Seconds for each way of queueing and draining n trivial commands, every way once
    a repetition, in an order that rotates (they share the machine's noise)."""
    cli = gpudispatch_command()
    lines = work / "commands.txt"
    lines.write_text("true\n" * n)
    dirs = RunDirs(work / "bulk", keep=keep)
    times: dict[str, list[float]] = {k: [] for k in BULK}
    keys = list(BULK)
    for rep in range(reps):
        for key in keys[rep % len(keys):] + keys[:rep % len(keys)]:
            label, measure = BULK[key]
            times[key].append(measure(cli, dirs.fresh(key), lines, n))
            print(f"  rep {rep + 1} {label.format(n=n):45s} {times[key][-1]:6.2f} s",
                  flush=True)
    dirs.cleanup(final=True)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--bulk", type=int, default=2000, metavar="N")
    ap.add_argument("--bulk-reps", type=int, default=3, metavar="N")
    ap.add_argument("--no-bulk", action="store_true")
    ap.add_argument("--delete-between", action="store_true",
                    help="delete each run's folder before the next (default: at the end; "
                    "see peers.RunDirs)")
    args = ap.parse_args()
    failed = False
    with tempfile.TemporaryDirectory(prefix="cli-start-") as tmp:
        work = Path(tmp)
        times = bench_start(args.reps, work)
        bare = statistics.median(times["python -I -c pass"])
        print(f"CLI start, median of {args.reps} (min-max), {sys.executable}:")
        for key, limit in zip(times, (None, 3.0, 4.0), strict=True):
            med = statistics.median(times[key])
            ratio = med / bare
            verdict = "" if limit is None else (
                f"  ratio {ratio:4.2f} (<= {limit:g}: {'PASS' if ratio <= limit else 'FAIL'})")
            failed |= limit is not None and ratio > limit
            print(f"  {key:34s} {med * 1e3:6.1f} ms ({min(times[key]) * 1e3:.1f}-"
                  f"{max(times[key]) * 1e3:.1f}){verdict}")
        if not args.no_bulk:
            print(f"{args.bulk} trivial commands (true), queued and drained (one slot), "
                  f"{args.bulk_reps} repetitions:", flush=True)
            times = bench_bulk(args.bulk, args.bulk_reps, work, keep=not args.delete_between)
            theirs = statistics.median(times["tsp"])
            print(f"  {BULK['tsp'][0].format(n=args.bulk):52s} {theirs:6.2f} s (median)")
            for key in ("running", "drain", "files"):
                value = statistics.median(times[key])
                ratios = sorted(t / o for t, o in zip(times[key], times["tsp"], strict=True))
                ok = value <= theirs
                failed |= not ok
                print(f"  {BULK[key][0].format(n=args.bulk):52s} {value:6.2f} s  ratio "
                      f"{value / theirs:4.2f} (<= 1: {'PASS' if ok else 'FAIL'}; per "
                      f"repetition {', '.join(f'{r:.2f}' for r in ratios)})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
