"""A full or read-only disk under ROOT, on a real small tmpfs: the dispatcher says why once,
starts nothing new, keeps every outcome (written once the disk takes writes again), goes
on by itself, never crashes, strands or re-runs a job.

Mounting needs root (CI runs the suite as root); elsewhere these tests skip, saying so.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import (
    PYTHON,
    WaitTimeout,
    job_text,
    logfile_text,
    open_gate,
    q,
    read_lines,
    record,
    wait_lines,
    wait_state,
    wait_until,
    where,
    write_script,
)

pytestmark = pytest.mark.slow

FULL = "disk full under"
READ_ONLY = "is read-only"
BACK = "takes writes again: starting new jobs"


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@pytest.fixture
def tmpfs(tmp_path) -> Iterator[Callable[[str], Path]]:
    """Mount a real tmpfs with the given options (``size=2m``); unmounted afterwards.
    Requested before ``launch``, so it is unmounted after every process has gone."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the suite as root)")
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        result = _mount("-t", "tmpfs", "-o", options, "tmpfs", str(point))
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _queue_root(disk: Path) -> Path:
    root = disk / "root"
    (root / "queue").mkdir(parents=True)
    return root


def _start(launch, root: Path, *args: str):
    """``gpudispatch run`` logging to stderr as well: ``logfile.txt`` is on the full disk,
    and the test reads why the dispatcher waits while it waits."""
    argv = [PYTHON, "-m", "gpudispatch", "run", "--dir", str(root), "--slots", "1", *args]
    return launch._start(argv, root, None, None)


def _said(proc, text: str, timeout: float = 15.0) -> None:
    wait_until(lambda: text in proc.output(), timeout,
               message=lambda: f"{text!r} in the dispatcher's output:\n{proc.output()[-3000:]}")


def _stays(root: Path, name: str, state: str, seconds: float = 2.5) -> None:
    """``name`` is still in ``state`` after a few of the dispatcher's one-second retries."""
    with pytest.raises(WaitTimeout):
        wait_until(lambda: where(root, name) != state, seconds)


def _fill_inodes(folder: Path) -> None:
    """Create empty files until the filesystem has no inode left."""
    folder.mkdir()
    n = 0
    while True:
        try:
            (folder / str(n)).touch()
        except OSError:
            return
        n += 1


def _clean_exit(proc) -> None:
    assert proc.alive(), proc.output()[-3000:]
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    assert "Traceback" not in proc.output()


def test_a_job_that_fills_the_disk_is_recorded_once_space_returns(tmp_path, tmpfs, launch):
    disk = tmpfs("size=2m")
    root, runs, filler = _queue_root(disk), tmp_path / "runs.txt", disk / "filler"
    write_script(root / "queue" / "fill.sh",
                 job_text(f"head -c 4000000 /dev/zero > {q(filler)}", runs=runs, exit_code=3))
    # Staged on the same disk: renamed into queue/ while it is full (a rename needs no room).
    write_script(disk / "staged" / "after.sh", job_text(runs=runs))
    # Bad input, failed when found: its record waits for room too.
    write_script(disk / "staged" / "bad.sh", "#!/bin/sh\n#GPUDISPATCH --retries x\n")
    proc = _start(launch, root)
    _said(proc, FULL)
    assert where(root, "fill.sh") == "running"  # its outcome waits for room
    os.rename(disk / "staged" / "bad.sh", root / "queue" / "bad.sh")
    _said(proc, "bad.sh failed")
    os.rename(disk / "staged" / "after.sh", root / "queue" / "after.sh")
    _said(proc, "1 new jobs added to queue ['after.sh']")
    _stays(root, "after.sh", "queue")
    assert read_lines(runs) == ["fill.sh"]
    assert proc.alive()

    filler.unlink()
    wait_state(root, "fill.sh", "failed", proc=proc)
    rec = record(root, "fill.sh")
    assert (rec["exit_code"], rec["reason"], rec["attempts"]) == (3, "exit code 3", 1)
    wait_state(root, "after.sh", "completed", proc=proc)
    assert read_lines(runs) == ["fill.sh", "after.sh"]
    wait_state(root, "bad.sh", "failed", proc=proc)
    assert "--retries x" in record(root, "bad.sh")["reason"]
    log = logfile_text(root)  # the lines the full disk refused are written, in order
    assert log.count(FULL) == 1 and proc.output().count(FULL) == 1
    assert log.index(FULL) < log.index(BACK) < log.index("Running job after.sh")
    _clean_exit(proc)


def test_read_only_root_strands_nothing_and_resumes_when_writable(tmp_path, tmpfs, launch):
    disk = tmpfs("size=4m")
    root, runs, gate = _queue_root(disk), tmp_path / "runs.txt", tmp_path / "gate"
    write_script(root / "queue" / "a.sh", job_text(runs=runs, gate=gate))
    write_script(root / "queue" / "b.sh", job_text(runs=runs))  # handed over to follow a
    proc = _start(launch, root)
    wait_lines(runs, 1)
    # A remount read-only is refused while files are open for writing (a's log): ROOT
    # gets a read-only bind mount of itself on top, which every new path lookup meets.
    assert _mount("--bind", str(root), str(root)).returncode == 0
    assert _mount("-o", "remount,bind,ro", str(root)).returncode == 0
    open_gate(gate)  # a ends: its monitor cannot write its status, b cannot be claimed
    _said(proc, READ_ONLY)
    _stays(root, "b.sh", "queue")
    assert where(root, "a.sh") == "running"
    assert read_lines(runs) == ["a.sh"]
    assert proc.alive()

    assert subprocess.run(["umount", "-l", str(root)]).returncode == 0  # writable again
    wait_state(root, "a.sh", "completed", proc=proc)
    wait_state(root, "b.sh", "completed", proc=proc)
    assert read_lines(runs) == ["a.sh", "b.sh"]
    assert [record(root, n)["attempts"] for n in ("a.sh", "b.sh")] == [1, 1]
    assert proc.output().count(READ_ONLY) == 1
    _said(proc, BACK)
    _clean_exit(proc)


def test_a_job_whose_log_cannot_be_created_waits_in_the_queue(tmp_path, tmpfs, launch):
    disk = tmpfs("size=4m,nr_inodes=200")
    root, runs = _queue_root(disk), tmp_path / "runs.txt"
    write_script(disk / "staged" / "job.sh", job_text(runs=runs))
    proc = _start(launch, root)
    _said(proc, "Job queue empty. Waiting...")
    _fill_inodes(disk / "inodes")  # no file can be created: not its log, not a record
    os.rename(disk / "staged" / "job.sh", root / "queue" / "job.sh")
    _said(proc, "job.sh: its log could not be created (No space left on device)")
    _said(proc, FULL)
    wait_state(root, "job.sh", "queue", proc=proc)  # unchanged, not failed
    _stays(root, "job.sh", "queue")
    assert read_lines(runs) == []

    for path in (disk / "inodes").iterdir():
        path.unlink()
    wait_state(root, "job.sh", "completed", proc=proc)
    assert read_lines(runs) == ["job.sh"]
    assert record(root, "job.sh")["attempts"] == 1
    _clean_exit(proc)


def test_restart_during_a_full_disk_does_not_run_a_finished_job_again(tmp_path, tmpfs,
                                                                      launch):
    disk = tmpfs("size=2m")
    root, runs, filler = _queue_root(disk), tmp_path / "runs.txt", disk / "filler"
    # The first job of this queue: its monitor's status is the first line of the journal.
    write_script(root / "queue" / "fill.sh",
                 job_text(f"head -c 4000000 /dev/zero > {q(filler)}", runs=runs))
    first = _start(launch, root)
    _said(first, FULL)
    _said(first, "fill.sh returned 0")
    first.kill9()  # its outcome not written yet; the keeper goes with it
    assert where(root, "fill.sh") == "running"

    second = _start(launch, root)  # comes up on the full disk
    _said(second, FULL)
    filler.unlink()
    wait_state(root, "fill.sh", "completed", proc=second)
    rec = record(root, "fill.sh")
    assert (rec["exit_code"], rec["attempts"]) == (0, 1)
    assert read_lines(runs) == ["fill.sh"]  # concluded from its status, not run again
    assert "fill.sh ended while no dispatcher was running" in second.output()
    _clean_exit(second)


def _chattr(flag: str, path: Path) -> bool:
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


def test_a_logs_folder_that_refuses_writes_is_waited_out(tmp_path, launch):
    """`logs/` made unwritable while a job runs (immutable: refused even to root, as
    `chmod a-w` refuses any other user): its outcome waits, nothing new starts, nothing
    crashes or is stranded; all goes on once the folder takes writes again."""
    root, runs, gate = tmp_path / "root", tmp_path / "runs.txt", tmp_path / "gate"
    write_script(root / "queue" / "a.sh", job_text(runs=runs, gate=gate))
    proc = _start(launch, root)
    wait_lines(runs, 1)
    if not _chattr("+i", root / "logs"):
        pytest.skip("this filesystem has no immutable flag (chattr +i)")
    try:
        write_script(root / "queue" / "b.sh", job_text(runs=runs))
        open_gate(gate)
        _said(proc, "is not writable")
        _stays(root, "b.sh", "queue")
        assert where(root, "a.sh") == "running"
        assert proc.alive()
    finally:
        assert _chattr("-i", root / "logs")
    wait_state(root, "a.sh", "completed", proc=proc)
    wait_state(root, "b.sh", "completed", proc=proc)
    assert read_lines(runs) == ["a.sh", "b.sh"]
    assert record(root, "a.sh")["exit_code"] == 0
    _said(proc, BACK)
    _clean_exit(proc)
