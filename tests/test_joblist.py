"""``status --json``'s listing and its cache: whatever the cache holds, the listing says
what the folders and records say; the cache is used only for record files it read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gpudispatch.job import JobRecord, JobState
from gpudispatch.joblist import CACHE_FORMAT, job_texts
from gpudispatch.store import FolderQueue


def listing(queue: FolderQueue) -> list[dict]:
    return [json.loads(text) for text in job_texts(queue)]


def truth(queue: FolderQueue) -> list[dict]:
    return [view.to_dict() for view in queue.jobs()]


@pytest.fixture
def queue(tmp_path) -> FolderQueue:
    queue = FolderQueue(tmp_path / "q")
    for name in ("plain.sh", "other.sh", "own-state.sh", "pretty.sh", "none.sh", "bad.sh",
                 "é.sh", "tab\tname.sh"):
        queue.enqueue_text(name, "#!/bin/sh\ntrue\n")
    queue.write_record(JobRecord(name="plain.sh", gpus=[1], attempts=2, exit_code=0,
                                 params={"lr": 0.1, "tag": "a\"b\n"}))
    queue.write_record(JobRecord(name="é.sh", reason="ünïcode ✓"))
    queue.write_record(JobRecord(name="tab\tname.sh", attempts=1))
    layout = queue.layout
    with open(layout.record("other.sh"), "w") as fh:  # names another job: the file decides
        json.dump({"name": "plain.sh", "attempts": 3}, fh)
    with open(layout.record("own-state.sh"), "w") as fh:  # a key of the listing's inside
        json.dump({"name": "own-state.sh", "extra": {"state": "completed"}}, fh)
    with open(layout.record("pretty.sh"), "w") as fh:
        json.dump({"name": "pretty.sh", "attempts": 1}, fh, indent=4)
    with open(layout.record("bad.sh"), "w") as fh:
        fh.write('{"name": "bad.sh", "attempts": "many"}')
    return queue


def test_the_listing_is_each_view_first_and_from_its_cache_after(queue) -> None:
    cache = queue.layout.where("joblist_cache")
    first = listing(queue)
    assert first == truth(queue)
    got = {job["name"]: job for job in first}
    assert got["plain.sh"]["params"] == {"lr": 0.1, "tag": "a\"b\n"}
    assert got["other.sh"]["attempts"] == 3 and got["bad.sh"]["attempts"] == 0
    assert got["é.sh"]["reason"] == "ünïcode ✓" and got["tab\tname.sh"]["attempts"] == 1
    assert {job["state"] for job in first} == {"queued"}
    with open(cache, "rb") as fh:
        assert fh.readline() == CACHE_FORMAT
        cached = [line.split(b"\t", 2)[1].decode() for line in fh]
    # cached: records read whole and exactly; not one naming another job, one set aside,
    # or one whose name would break the cache's line
    assert cached == ["none.sh", "own-state.sh", "plain.sh", "pretty.sh", "é.sh"]
    before = os.stat(cache)
    assert listing(queue) == first
    assert os.stat(cache).st_ino == before.st_ino  # nothing changed: not written again


def test_the_cache_follows_every_change(queue) -> None:
    listing(queue)
    queue.write_record(JobRecord(name="plain.sh", attempts=5, reason="again"))  # rewritten
    assert queue.claim("é.sh") and queue.move("é.sh", JobState.RUNNING, JobState.FAILED)
    os.unlink(queue.layout.script(JobState.QUEUED, "pretty.sh"))  # gone
    queue.enqueue_text("new.sh", "#!/bin/sh\ntrue\n")
    queue.write_record(JobRecord(name="new.sh", attempts=1))
    after = listing(queue)
    assert after == truth(queue)
    got = {job["name"]: job for job in after}
    assert got["plain.sh"]["reason"] == "again" and got["é.sh"]["state"] == "failed"
    assert "pretty.sh" not in got and got["new.sh"]["attempts"] == 1
    assert listing(queue) == after


def test_a_cache_line_is_used_only_for_the_record_file_it_was_read_from(queue) -> None:
    cache = queue.layout.where("joblist_cache")
    listing(queue)
    with open(cache, "rb") as fh:
        lines = fh.read().split(b"\n")
    forged = [line.replace(b'"attempts": 2', b'"attempts": 99') for line in lines]
    with open(cache, "wb") as fh:
        fh.write(b"\n".join(forged))
    # the same record file: the cached text is what is listed (the cache is used) ...
    assert {j["name"]: j for j in listing(queue)}["plain.sh"]["attempts"] == 99
    # ... until the record is written again
    queue.write_record(JobRecord(name="plain.sh", attempts=2))
    assert listing(queue) == truth(queue)


@pytest.mark.parametrize("plant", ["garbage", "symlink", "fifo", "other format", "unsorted"])
def test_a_cache_that_is_not_one_is_ignored_and_replaced(queue, tmp_path, plant) -> None:
    cache = queue.layout.where("joblist_cache")
    listing(queue)
    good = Path(cache).read_bytes()
    os.unlink(cache)
    if plant == "garbage":
        Path(cache).write_bytes(b"\x00\xff" * 100)
    elif plant == "symlink":
        target = tmp_path / "elsewhere"
        target.write_bytes(good.replace(b'"attempts": 2', b'"attempts": 99'))
        os.symlink(target, cache)
    elif plant == "fifo":
        os.mkfifo(cache)
    elif plant == "other format":
        Path(cache).write_bytes(b"gpudispatch job-list cache 0\n" + good.split(b"\n", 1)[1])
    else:
        header, *lines = good.rstrip(b"\n").split(b"\n")
        Path(cache).write_bytes(b"\n".join([header, *reversed(lines)]) + b"\n")
    assert listing(queue) == truth(queue)
    assert os.path.isfile(cache) and not os.path.islink(cache)
    assert Path(cache).read_bytes().startswith(CACHE_FORMAT)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to plant another user's file")
def test_another_users_cache_is_not_trusted(queue) -> None:
    cache = queue.layout.where("joblist_cache")
    listing(queue)
    forged = Path(cache).read_bytes().replace(b'"attempts": 2', b'"attempts": 99')
    Path(cache).write_bytes(forged)
    os.chown(cache, 12345, 12345)
    assert {j["name"]: j for j in listing(queue)}["plain.sh"]["attempts"] == 2


def test_a_listing_cut_short_keeps_the_old_cache_and_leaves_no_temp(queue) -> None:
    cache = queue.layout.where("joblist_cache")
    listing(queue)
    before = Path(cache).read_bytes()
    queue.write_record(JobRecord(name="plain.sh", attempts=7))
    texts = job_texts(queue)
    next(texts)
    texts.close()  # a reader that went away (a closed pipe)
    assert Path(cache).read_bytes() == before
    assert os.listdir(queue.layout.where("tmp")) == []
