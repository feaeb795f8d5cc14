"""The Slurm backend against a direct ``sbatch --array``, in one run (issue 17's figure).

    .venv/bin/python bench/slurm_drain.py [--jobs 300] [--wait 2.0]

Both on the same single-node Slurm (``bash .ci/slurm-up.sh``): N trivial scripts dropped
into a fresh queue and drained by the backend (in this process, polling every ``--wait``
seconds, as ``gpudispatch run --backend slurm --drain`` does), against ``sbatch
--array=1-N --wrap true`` followed until Slurm has ended every task (one ``squeue`` per
``--wait``). Prints each time, the ratio, and how many Slurm commands the backend ran.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from gpudispatch.backends.slurm import SlurmBackend, run_command  # noqa: E402
from gpudispatch.job import JobState  # noqa: E402
from gpudispatch.store import FolderQueue  # noqa: E402


def backend_drain(n: int, wait: float, where: Path) -> tuple[float, collections.Counter]:
    queue = FolderQueue(where / "root")
    for i in range(n):
        queue.enqueue_text(f"b{i:04d}.sh", "#!/bin/sh\ntrue\n")
        old = time.time() - 10
        os.utime(queue.layout.script(JobState.QUEUED, f"b{i:04d}.sh"), (old, old))
    calls: collections.Counter = collections.Counter()

    def counting(argv, stdin=None, env=None):
        calls[argv[0] if argv[0] != "scontrol" else " ".join(argv[:3])] += 1
        return run_command(argv, stdin, env)

    backend = SlurmBackend(queue, poll_interval=wait, runner=counting)
    start = time.monotonic()
    while True:
        backend.tick()
        done = len(queue.names(JobState.COMPLETED)) + len(queue.names(JobState.FAILED))
        if done == n:
            break
        time.sleep(min(wait, 0.1))
    took = time.monotonic() - start
    failed = len(queue.names(JobState.FAILED))
    if failed:
        print(f"  ({failed} jobs failed)")
    return took, calls


def array_drain(n: int, wait: float) -> float:
    start = time.monotonic()
    out = subprocess.run(["sbatch", "--parsable", f"--array=1-{n}", "--output=/dev/null",
                          "--job-name=bench-array", "--wrap", "true"],
                         capture_output=True, text=True, check=True).stdout.strip()
    job = out.split(";")[0]
    while True:
        left = subprocess.run(["squeue", "--noheader", f"--jobs={job}", "--format=%i"],
                              capture_output=True, text=True).stdout.split()
        if not left:
            return time.monotonic() - start
        time.sleep(wait)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--wait", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gd-slurm-bench-") as tmp:
        ours, calls = backend_drain(args.jobs, args.wait, Path(tmp))
    print(f"gpudispatch backend  {ours:7.1f} s  for {args.jobs} jobs "
          f"(Slurm commands: {dict(calls)})")
    theirs = array_drain(args.jobs, args.wait)
    print(f"sbatch --array       {theirs:7.1f} s")
    print(f"ratio                {ours / theirs:7.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
