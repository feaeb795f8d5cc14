"""Intake on a sweep-sized folder: files are read a batch at a time, so the loop starts
the first jobs before it has read the last files."""

from __future__ import annotations

import os

from gpudispatch.dispatcher.intake import DISCOVER_BATCH, DISCOVER_FIRST, Intake
from gpudispatch.job import JobState
from gpudispatch.store import FolderQueue


def test_a_large_folder_is_read_a_batch_at_a_time(tmp_path) -> None:
    queue = FolderQueue(tmp_path / "root")
    total = DISCOVER_BATCH + 500
    for i in range(total):
        path = queue.layout.script(JobState.QUEUED, f"j{i:05d}.sh")
        with open(path, "w") as fh:
            fh.write("#!/bin/sh\ntrue\n")
        os.chmod(path, 0o755)
    intake = Intake(queue, wait=1.0, impossible=lambda directives, name: None)
    added, rejected = intake.discover(0.0, busy=lambda name: False, watched=True)
    assert not rejected
    # a small first bite while nothing is pending: the first jobs start at once
    assert len(added) == DISCOVER_FIRST and added[0] == "j00000.sh"
    added, _ = intake.discover(0.0, busy=lambda name: False, watched=True)
    assert len(added) == DISCOVER_BATCH and added[0] == f"j{DISCOVER_FIRST:05d}.sh"
    assert len(intake.backlog) == 500 - DISCOVER_FIRST  # the loop is woken at once for them
    added, _ = intake.discover(0.0, busy=lambda name: False, watched=True)
    assert len(added) == 500 - DISCOVER_FIRST and not intake.backlog
    assert len(intake.pending) == total
    added, _ = intake.discover(11.0, busy=lambda name: False, watched=True)  # a rescan
    assert added == [] and not intake.backlog  # what is pending is not read again


def _drop(queue: FolderQueue, name: str, header: str = "") -> None:
    path = queue.layout.script(JobState.QUEUED, name)
    with open(path, "w") as fh:
        fh.write(f"#!/bin/sh\n{header}true\n")
    os.chmod(path, 0o755)


def test_the_run_order_takes_in_new_jobs_after_a_take_and_a_give_back(tmp_path) -> None:
    """Jobs that sort after all the others (a bulk submission's) are appended; one that
    sorts among them (a higher priority, a smaller name) puts the order right again."""
    queue = FolderQueue(tmp_path / "root")
    intake = Intake(queue, wait=1.0, impossible=lambda directives, name: None)

    def discover(*names: str, header: str = "") -> list[str]:
        for name in names:
            _drop(queue, name, header)
        intake.events.update(names)
        intake.discover(0.5, busy=lambda name: False, watched=True)
        return [job.name for job in intake.order()]

    assert discover("b.sh", "c.sh") == ["b.sh", "c.sh"]
    assert discover("e.sh", "d.sh") == ["b.sh", "c.sh", "d.sh", "e.sh"]
    taken = intake.take("b.sh")
    assert taken is not None and [j.name for j in intake.order()] == ["c.sh", "d.sh", "e.sh"]
    assert discover("a.sh") == ["a.sh", "c.sh", "d.sh", "e.sh"]
    assert discover("z.sh", header="#GPUDISPATCH --priority 3\n") == [
        "z.sh", "a.sh", "c.sh", "d.sh", "e.sh"]
    intake.give_back(taken)
    assert [j.name for j in intake.order()] == ["z.sh", "a.sh", "b.sh", "c.sh", "d.sh", "e.sh"]
    assert discover("f.sh") == ["z.sh", "a.sh", "b.sh", "c.sh", "d.sh", "e.sh", "f.sh"]
