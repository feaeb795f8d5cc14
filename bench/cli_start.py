"""CLI start and bulk submission against the interpreter and task-spooler (issue 16).

    .venv/bin/python bench/cli_start.py [--reps 15] [--jobs 2000] [--bulk-reps 3]

1. Median wall time of ``python -I -c pass`` (the same interpreter), ``gpudispatch
   submit -- true`` and ``gpudispatch status`` on a small queue, and their ratios.
2. ``gpudispatch submit --each-line`` of N commands with a dispatcher running, until the
   N-th is in ``completed/``, against N ``tsp sh -c true`` calls until ``tsp -w`` of the
   last returns (task-spooler's own way to queue many), in the same run, alternating.
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
from peers import GpuDispatch, RunDirs, gpudispatch_command
from run_all import tsp_drain, wait_count


def median_ms(argv: list[str], reps: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=False)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def cli_start(reps: int) -> None:
    with tempfile.TemporaryDirectory(prefix="gd-cli-") as tmp:
        env = dict(os.environ, GPUDISPATCH_ROOT=f"{tmp}/root")
        gd = gpudispatch_command()
        subprocess.run([*gd, "submit", "--", "true"], env=env, capture_output=True,
                       check=True)
        bare = median_ms([sys.executable, "-I", "-c", "pass"], reps, env)
        submit = median_ms([*gd, "submit", "--", "true"], reps, env)
        status = median_ms([*gd, "status"], reps, env)
    print(f"python -I -c pass   {bare:6.1f} ms")
    print(f"gpudispatch submit  {submit:6.1f} ms  {submit / bare:4.1f}x  (issue 16: <= 3x)")
    print(f"gpudispatch status  {status:6.1f} ms  {status / bare:4.1f}x  (issue 16: <= 4x)")


def each_line_drain(run: Path, n: int) -> float:
    """s from starting ``submit --each-line`` to the n-th job in completed/."""
    node = GpuDispatch(run)
    node.start()
    try:
        commands = run / "commands.txt"
        commands.write_text("true\n" * n)
        with Inotify(node.done_dirs) as ino:
            t0 = time.perf_counter_ns()
            subprocess.run([*gpudispatch_command(), "submit", "--dir", str(node.root),
                            "--each-line", str(commands)], stdout=subprocess.DEVNULL,
                           check=True)
            t_end = wait_count(ino, node.done_dirs, n, timeout=max(120, n * 0.05))
    finally:
        node.stop()
    return (t_end - t0) / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--bulk-reps", type=int, default=3)
    args = parser.parse_args()
    cli_start(args.reps)
    base = Path(tempfile.mkdtemp(prefix="gd-bulk-"))
    dirs = RunDirs(base)
    ours, theirs = [], []
    for rep in range(args.bulk_reps):
        for who in (("gd", "tsp") if rep % 2 == 0 else ("tsp", "gd")):
            run = dirs.fresh(f"bulk-{who}")
            if who == "gd":
                ours.append(each_line_drain(run, args.jobs))
            else:
                theirs.append(tsp_drain(run, args.jobs, 1)[0])
        print(f"  rep {rep + 1}: submit --each-line + drain {ours[-1]:6.2f} s, "
              f"{args.jobs} tsp calls + drain {theirs[-1]:6.2f} s")
    dirs.cleanup()
    base.rmdir()
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"{args.jobs} jobs: --each-line {a:.2f} s, tsp {b:.2f} s, ratio {a / b:.2f}x "
          "(issue 16: <= 1)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
