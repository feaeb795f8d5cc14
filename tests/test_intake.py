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
