"""Reproducible runs (issue 15): what a snapshot and a capsule cost.

Prints, for a git repository of 1,000 tracked files (a few untracked and modified):
- the time to take its snapshot (built from nothing, and found made: a second submit
  of the same tree),
- the per-job capsule cost without a snapshot (one ``capsule.collect`` and ``keep`` per submit,
  median of N: clean and dirty tree with nothing changed since the last submit, and
  right after an edit, when ``git diff`` must run), and what one job of a 1,000-run
  sweep pays (one capsule shared),
- how many snapshots a 100-run ``sweep --snapshot`` stores (one).

    python bench/snapshot.py [--files 1000] [--runs 50]
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

from gpudispatch import capsule, snapshot
from gpudispatch.layout import Layout


def sh(*args: str, cwd: Path) -> None:
    subprocess.run(args, cwd=cwd, check=True, capture_output=True)


def make_repo(path: Path, files: int) -> None:
    path.mkdir()
    sh("git", "init", "-q", cwd=path)
    sh("git", "config", "user.email", "bench@example.com", cwd=path)
    sh("git", "config", "user.name", "bench", cwd=path)
    for i in range(files):
        sub = path / f"pkg{i // 100}"
        sub.mkdir(exist_ok=True)
        (sub / f"mod{i}.py").write_text(f"VALUE = {i}\n" + "# padding\n" * 40)
    (path / ".gitignore").write_text("*.ckpt\n")
    sh("git", "add", "-A", cwd=path)
    sh("git", "commit", "-qm", "init", cwd=path)


def submit_capsule(layout: Layout, cwd: str, argv: list[str]) -> dict:
    """What a submit pays for its capsule: made, and kept as its file."""
    return capsule.keep(layout, capsule.collect(layout, cwd, argv))


def median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo, root = Path(tmp) / "repo", Path(tmp) / "root"
        make_repo(repo, args.files)
        layout = Layout(root).create()
        cwd = str(repo)

        start = time.perf_counter()
        snap = snapshot.take(layout, cwd)
        first = time.perf_counter() - start
        start = time.perf_counter()
        again = snapshot.take(layout, cwd)
        second = time.perf_counter() - start
        assert again.reused and again.id == snap.id
        (repo / "pkg0" / "mod0.py").write_text("VALUE = -1\n")
        (repo / "notes.txt").write_text("untracked\n")
        (repo / "model.ckpt").write_bytes(b"\0" * (1 << 20))  # ignored: not copied
        start = time.perf_counter()
        dirty = snapshot.take(layout, cwd)
        third = time.perf_counter() - start
        print(f"snapshot of a repository of {args.files} tracked files: "
              f"{first:.3f} s built, {second:.3f} s found made, "
              f"{third:.3f} s dirty (1 modified, 1 untracked, 1 ignored)  (limit 1 s)")
        assert dirty.id != snap.id

        argv = ["gpudispatch", "submit", "train.sh"]
        # As a user's tree: files a second old, the index refreshed by their `git status`
        # (an index written in the same second as its files makes git re-read them all).
        time.sleep(1.1)
        sh("git", "status", cwd=repo)
        submit_capsule(layout, cwd, argv)  # fills the caches, as the first submit does
        dirty_ms = median_ms(lambda: submit_capsule(layout, cwd, argv), args.runs)
        sh("git", "add", "-A", cwd=repo)
        sh("git", "commit", "-qm", "two", cwd=repo)
        time.sleep(1.1)
        sh("git", "status", cwd=repo)
        submit_capsule(layout, cwd, argv)
        clean_ms = median_ms(lambda: submit_capsule(layout, cwd, argv), args.runs)
        edited = repo / "pkg2" / "mod200.py"

        def after_an_edit() -> None:
            edited.write_text(f"VALUE = {time.monotonic_ns()}\n")
            os.utime(edited, (time.time() - 5, time.time() - 5))
            start = time.perf_counter()
            submit_capsule(layout, cwd, argv)
            missed.append(time.perf_counter() - start)

        missed: list[float] = []
        for _ in range(max(5, args.runs // 5)):
            after_an_edit()
        miss_ms = statistics.median(missed) * 1000
        plain = Path(tmp) / "plain"
        plain.mkdir()
        nogit_ms = median_ms(lambda: submit_capsule(layout, str(plain), argv), args.runs)
        print(f"capsule per submit, no snapshot (median of {args.runs}), {args.files} tracked "
              f"files: {clean_ms:.1f} ms clean tree, {dirty_ms:.1f} ms dirty tree, "
              f"{miss_ms:.1f} ms right after an edit (git diff runs), {nogit_ms:.2f} ms "
              "outside git  (limit 5 ms)")
        print(f"capsule per job of a 1,000-run sweep (one capsule shared): "
              f"{clean_ms:.1f} us")

        spec = Path(tmp) / "sweep.yaml"
        spec.write_text("name: toy\nprogram: pkg0/mod1.py\nmethod: grid\nparameters:\n"
                        "  seed:\n    values: [" + ", ".join(map(str, range(100))) + "]\n")
        before = {p.name for p in layout.snapshots.iterdir()}
        (repo / "pkg1" / "mod100.py").write_text("VALUE = 'edited'\n")
        proc = subprocess.run([sys.executable, "-m", "gpudispatch", "sweep", "--dir",
                               str(root), "--snapshot", str(spec)], cwd=repo,
                              capture_output=True, text=True, check=True)
        made = {p.name for p in layout.snapshots.iterdir()} - before
        queued = len(os.listdir(layout.queue))
        print(f"sweep --snapshot of {queued} runs: {len(made)} snapshot stored "
              f"({proc.returncode=})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
