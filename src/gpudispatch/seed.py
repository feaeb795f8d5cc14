"""``jobdispatcher --gpu N [--dir DIR] [--wait SEC]``: the seed's command, on the new engine."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gpudispatch import argcheck
from gpudispatch.argcheck import OptionError
from gpudispatch.dispatcher import Dispatcher, DispatcherOptions
from gpudispatch.gpus import MAX_GPU_INDEX
from gpudispatch.store import FolderQueue


def build_parser() -> argparse.ArgumentParser:
    # The seed passed its description as prog; its users know this usage line.
    parser = argparse.ArgumentParser(
        "Python script to automate the execution of shell scripts on GPUs."
    )
    parser.add_argument("--gpu", type=int, required=True, help="GPU id")
    parser.add_argument(
        "--dir", default="../", help="Directory name for queues (default: '../')"
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=1.0,
        metavar="SEC",
        help="Wait time (seconds) between checks for new items in queue.",
    )
    parser.add_argument(
        "--drain", action="store_true",
        help="Exit once the queue is empty and nothing runs (status 1 if a job failed)."
    )
    parser.add_argument(
        "--allow-other-users", action="store_true",
        help="Run scripts other users own in the queue (as this user); else they fail."
    )
    return parser


def seed_root(directory: str, gpu: int) -> Path:
    return Path(os.path.expanduser(directory)) / f"gpu{gpu}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = seed_root(args.dir, args.gpu)
    try:  # one line and exit 2 for a value that would hang, spin or crash later
        argcheck.seconds(args.wait, "--wait")
        argcheck.count(args.gpu, "--gpu", minimum=0, maximum=MAX_GPU_INDEX)
        for folder in (Path(os.path.expanduser(args.dir)), root):
            if os.path.exists(folder) and not os.path.isdir(folder):
                raise OptionError(f"--dir: {folder} is not a folder")
    except OptionError as exc:
        print(f"jobdispatcher: {exc}", file=sys.stderr)
        return 2
    queue = FolderQueue(root)
    options = DispatcherOptions(slots=[args.gpu], wait=args.wait, drain=args.drain,
                                allow_other_users=args.allow_other_users)
    return Dispatcher(queue, options).run()


if __name__ == "__main__":
    raise SystemExit(main())
