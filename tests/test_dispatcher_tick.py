"""The dispatcher loop driven by hand, one ``tick(now)`` at a time (no sleeping, no
processes started: the queue is paused, so jobs are discovered but not run)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpudispatch.dispatcher import Dispatcher, DispatcherOptions
from gpudispatch.dispatcher import intake as intake_module
from gpudispatch.store import FolderQueue


@pytest.fixture
def paused(tmp_path):
    queue = FolderQueue(tmp_path / "root")
    queue.set_paused(True)
    made = []

    def make(**options) -> Dispatcher:
        d = Dispatcher(queue, DispatcherOptions(console=False, **{"slots": [0], **options}))
        made.append(d)
        return d

    yield queue, make
    for d in made:
        d.close()


def added_lines(queue: FolderQueue) -> list[str]:
    return [line for line in queue.layout.logfile.read_text().splitlines()
            if "new jobs added to queue" in line]


def test_file_still_open_for_writing_is_not_taken_until_closed(paused):
    queue, make = paused
    d = make()
    path = queue.layout.queue / "a.sh"
    with open(path, "w") as fh:
        fh.write("#!/bin/sh\necho half")
        fh.flush()
        d.tick(now=1.0)
        assert added_lines(queue) == []
    d.tick(now=1.1)
    assert len(added_lines(queue)) == 1 and "['a.sh']" in added_lines(queue)[0]


def test_without_leases_a_file_is_taken_once_size_and_mtime_stay_still(paused, monkeypatch):
    queue, make = paused
    monkeypatch.setattr(intake_module, "read_if_complete",
                        lambda path, st: (None, Path(path).read_bytes()))
    d = make(wait=1.0)
    path = queue.layout.queue / "a.sh"
    path.write_text("#!/bin/sh\n")
    d.tick(now=100.0)  # first sight: remembered, not taken
    assert added_lines(queue) == []
    with open(path, "a") as fh:
        fh.write("echo more\n")  # still growing
    os.utime(path, ns=(1, 1))
    d.tick(now=100.9)
    assert added_lines(queue) == []
    d.tick(now=101.5)  # changed at the last look: the clock starts again
    assert added_lines(queue) == []
    d.tick(now=102.6)  # unchanged for a whole --wait: complete
    assert len(added_lines(queue)) == 1


def test_a_job_that_can_never_fit_fails_when_first_seen(paused):
    queue, make = paused
    d = make(slots=[0, 1])
    (queue.layout.queue / "big.sh").write_text("#!/bin/sh\n#GPUDISPATCH --gpus 3\ntrue\n")
    d.tick(now=1.0)
    assert (queue.layout.failed / "big.sh").exists()
    assert "asks for 3 GPUs but this dispatcher has 2" in queue.read_record("big.sh").reason


def test_hidden_and_editor_files_are_ignored(paused):
    queue, make = paused
    d = make()
    for name in (".a.sh", "a.sh~", "a.sh.swp", "notes.txt"):
        (queue.layout.queue / name).write_text("#!/bin/sh\n")
    d.tick(now=1.0)
    assert added_lines(queue) == []
