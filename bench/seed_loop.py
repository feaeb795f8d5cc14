"""The seed's ``jobdispatcher.py`` loop, re-implemented as its README describes it.

    python bench/seed_loop.py --gpu 0 [--dir DIR] [--wait SEC]

A peer for ``bench/run_all.py``, not part of gpudispatch. It keeps the seed's costs:

- while the queue is empty it sleeps ``--wait`` seconds between listings of ``queue/``;
- before every job it lists the whole queue folder again (twice, as the seed does: once
  to see that it is not empty, once to find new names), so a queue of n files costs
  O(n) per job and O(n^2) to drain;
- new ``*.sh`` names join an in-memory queue in alphanumeric order; names that vanished
  from the folder are dropped from it;
- each job is moved to the working directory (the seed runs from a folder beside the
  queue root), run with ``subprocess.run`` and ``CUDA_VISIBLE_DEVICES=GPU``, then moved
  to ``completed/`` (exit 0) or ``failed/``, with the seed's log lines in
  ``DIR/gpuN/logfile.txt``.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import shutil
import subprocess
import time


def shell_scripts(folder: str) -> list[str]:
    return [name for name in os.listdir(folder) if name.endswith(".sh")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        "Python script to automate the execution of shell scripts on GPUs."
    )
    parser.add_argument("--gpu", type=int, required=True, metavar="GPU", help="GPU id")
    parser.add_argument("--dir", default="../", metavar="DIR",
                        help="Directory name for queues (default: '../')")
    parser.add_argument("--wait", type=float, default=1, metavar="SEC",
                        help="Wait time (seconds) between checks for new items in queue.")
    args = parser.parse_args(argv)

    root = os.path.join(args.dir, f"gpu{args.gpu}")
    queue_dir = os.path.join(root, "queue")
    done_dir = os.path.join(root, "completed")
    failed_dir = os.path.join(root, "failed")
    work_dir = "."
    for folder in (queue_dir, done_dir, failed_dir):
        os.makedirs(folder, exist_ok=True)
    logging.basicConfig(
        filename=os.path.join(root, "logfile.txt"),
        format="%(asctime)s %(levelname)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        level=logging.DEBUG,
    )
    log = logging.getLogger()
    log.info("------------ Job Dispatcher Started ------------")

    pending: collections.deque[str] = collections.deque()
    while True:
        present = shell_scripts(queue_dir)
        if not present:
            log.info("Job queue empty. Waiting...")
            while not present:
                time.sleep(args.wait)
                present = shell_scripts(queue_dir)

        new = sorted(set(shell_scripts(queue_dir)) - set(pending))
        if new:
            pending.extend(new)
            log.info("%d new jobs added to queue %r", len(new), new)
        removed = set(pending) - set(present)
        if removed:
            log.info("Detected %d jobs removed from queue", len(removed))
            for name in removed:
                pending.remove(name)

        name = pending.popleft()
        here = os.path.join(work_dir, name)
        shutil.move(os.path.join(queue_dir, name), here)
        log.info("Running job %s...", name)
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)
        destination = done_dir
        try:
            result = subprocess.run([here])
        except PermissionError as exc:
            log.warning("PermissionError: %s", exc)
            destination = failed_dir
        else:
            if result.returncode == 0:
                log.info("%s returned %d", name, result.returncode)
            else:
                log.warning("%s returned %d", name, result.returncode)
                destination = failed_dir
        try:
            shutil.move(here, os.path.join(destination, name))
        except FileNotFoundError as exc:
            log.warning("FileNotFoundError: %s", exc)


if __name__ == "__main__":
    raise SystemExit(main())
