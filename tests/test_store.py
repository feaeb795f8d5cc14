"""FolderQueue: atomic enqueue, claims, moves, records, pause flag."""

import os
import threading

import pytest

from gpudispatch.job import JobRecord, JobState
from gpudispatch.layout import Layout, is_job_name
from gpudispatch.store import FolderQueue, QueueError


@pytest.mark.parametrize(
    "name, ok",
    [("a.sh", True), ("with space.sh", True), ("-dash.sh", True), ("ünï.sh", True),
     (".hidden.sh", False), ("a.sh~", False), ("a.sh.swp", False), ("a.txt", False),
     ("#a.sh#", False)],
)
def test_job_names(name, ok):
    assert is_job_name(name) is ok


def test_layout_builds_every_path(tmp_path):
    layout = Layout(tmp_path / "x" / ".." / "root")
    assert layout.root == tmp_path / "root"
    assert layout.script(JobState.QUEUED, "a.sh") == str(tmp_path / "root" / "queue" / "a.sh")
    assert layout.job_log("a.sh", 1).endswith("logs/a.sh.log")
    assert layout.job_log("a.sh", 3).endswith("logs/a.sh.3.log")


def test_enqueue_is_atomic_and_refuses_taken_names(tmp_path):
    queue = FolderQueue(tmp_path)
    assert queue.enqueue_text("a.sh", "#!/bin/sh\n", params={"lr": 1}) == "a.sh"
    assert os.access(queue.layout.script(JobState.QUEUED, "a.sh"), os.X_OK)
    assert queue.read_record("a.sh").params == {"lr": 1}
    with pytest.raises(QueueError, match="already queued"):
        queue.enqueue_text("a.sh", "#!/bin/sh\n")
    assert queue.enqueue_text("a.sh", "#!/bin/sh\n", rename=True) == "a-2.sh"
    assert os.listdir(queue.layout.tmp) == []
    with pytest.raises(QueueError):
        queue.enqueue_text("../evil.sh", "x")


def test_exactly_one_racing_claim_wins(tmp_path):
    queue = FolderQueue(tmp_path)
    queue.enqueue_text("a.sh", "#!/bin/sh\n")
    results = []
    barrier = threading.Barrier(8)

    def claim():
        barrier.wait()
        results.append(queue.claim("a.sh"))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    assert queue.locate("a.sh") is JobState.RUNNING


def test_records_and_views(tmp_path):
    queue = FolderQueue(tmp_path)
    queue.enqueue_text("a.sh", "#!/bin/sh\n")
    queue.write_record(JobRecord(name="a.sh", attempts=2, reason="x"))
    (view,) = list(queue.jobs())
    data = view.to_dict()
    assert data["state"] == "queued" and data["attempts"] == 2 and data["reason"] == "x"
    assert queue.read_record("missing.sh") == JobRecord(name="missing.sh")


def test_pause_flag(tmp_path):
    queue = FolderQueue(tmp_path)
    assert not queue.is_paused()
    queue.set_paused(True)
    assert FolderQueue(tmp_path).is_paused()
    queue.set_paused(False)
    queue.set_paused(False)
    assert not queue.is_paused()


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(QueueError, match="not a gpudispatch queue"):
        FolderQueue(tmp_path / "nope", create=False)


def test_existing_root_made_by_hand_gets_its_missing_folders(tmp_path):
    (tmp_path / "queue").mkdir()
    queue = FolderQueue(tmp_path, create=False)
    queue.set_paused(True)  # needs .gpudispatch/tmp
    assert queue.is_paused() and (tmp_path / "completed").is_dir()

