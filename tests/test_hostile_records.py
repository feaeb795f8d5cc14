"""Records of the wrong shape, special files where a record belongs, and temp files that
cannot be redirected: in-process checks on real files, FIFOs and symlinks in tmp_path."""

from __future__ import annotations

import json
import logging
import os
import socket

import pytest

from gpudispatch import safeio
from gpudispatch.job import _PLAIN_TYPES, JobRecord, RecordError, parse_iso, safe_iso
from gpudispatch.store import HOST, RECORD_MAX_BYTES, FolderQueue, write_atomic

GOOD = {"name": "a.sh", "gpus": [0, 1], "started_at": "2024-01-01T10:00:00+00:00",
        "attempts": 1, "exit_code": 0, "params": {"lr": 0.1}}


# ---------------------------------------------------------------------- the record's shape
def test_every_record_field_is_checked() -> None:
    assert set(_PLAIN_TYPES) == set(JobRecord.FIELDS) == set(vars(JobRecord(name="x.sh")))


@pytest.mark.parametrize(
    "data, fragment",
    [
        (None, "null, not a JSON object"),
        ([], "a list, not a JSON object"),
        ("a.sh", "a string, not a JSON object"),
        (5, "a number, not a JSON object"),
        ({}, "no name"),
        ({"name": 3}, "'name'"),
        ({"name": ""}, "'name'"),
        ({**GOOD, "started_at": "yesterday"}, "'started_at' should be an ISO 8601 time"),
        ({**GOOD, "ended_at": 12}, "'ended_at'"),
        ({**GOOD, "submitted_at": ["x"]}, "'submitted_at'"),
        ({**GOOD, "gpus": 5}, "'gpus' should be a list of GPU indices, not 5"),
        ({**GOOD, "gpus": ["0"]}, "'gpus'"),
        ({**GOOD, "gpus": [-1]}, "'gpus'"),
        ({**GOOD, "gpus": [True]}, "'gpus'"),
        ({**GOOD, "attempts": "x"}, "'attempts' should be a count"),
        ({**GOOD, "attempts": -1}, "'attempts'"),
        ({**GOOD, "attempts": 1.5}, "'attempts'"),
        ({**GOOD, "attempts": None}, "'attempts'"),
        ({**GOOD, "exit_code": "0"}, "'exit_code'"),
        ({**GOOD, "pid": 0}, "'pid'"),
        ({**GOOD, "pid": True}, "'pid'"),
        ({**GOOD, "params": []}, "'params' should be an object"),
        ({**GOOD, "params": None}, "'params'"),
        ({**GOOD, "extra": "x"}, "'extra' should be an object"),
        ({**GOOD, "log": 7}, "'log'"),
        ({**GOOD, "log": "/a\x00b"}, "'log'"),
        ({**GOOD, "reason": {"a": 1}}, "'reason'"),
        ({**GOOD, "host": 1}, "'host'"),
        ({**GOOD, "backend": None}, "'backend'"),
        ({**GOOD, "backend_id": 12}, "'backend_id'"),
        ({**GOOD, "dispatcher": []}, "'dispatcher'"),
    ],
)
def test_records_of_the_wrong_shape_are_refused(data, fragment: str) -> None:
    with pytest.raises(RecordError) as info:
        JobRecord.from_json(json.dumps(data))
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)  # callers catching ValueError still do


@pytest.mark.parametrize(
    "text", [b"", b"{", b"\xff\xfe", b"[" * 100_000, b'{"name": "a.sh"', b"nul\x00"]
)
def test_text_that_is_not_json_is_refused(text: bytes) -> None:
    with pytest.raises(RecordError, match="not JSON"):
        JobRecord.from_json(text)


@pytest.mark.parametrize(
    "data",
    [
        GOOD,
        {"name": "a.sh"},
        {**GOOD, "future_field": {"x": 1}},  # newer versions may add fields
        {**GOOD, "started_at": None, "pid": None, "exit_code": -9},
        {**GOOD, "started_at": "2024-01-01T10:00:00"},  # naive: taken as local time
    ],
)
def test_records_of_the_right_shape_are_read(data) -> None:
    record = JobRecord.from_json(json.dumps(data))
    assert record.name == "a.sh"
    assert JobRecord.from_json(record.to_json()) == record


@pytest.mark.parametrize(
    "text, ok",
    [("2024-01-01T10:00:00+00:00", True), ("2024-01-01T10:00:00", True), (None, False),
     ("", False), ("yesterday", False), (5, False), (["x"], False), ("9999-99-99", False)],
)
def test_safe_iso_never_raises_and_times_are_aware(text, ok: bool) -> None:
    moment = safe_iso(text)
    assert (moment is not None) is ok
    if ok:
        assert moment.tzinfo is not None
        assert parse_iso(text) == moment


def test_naive_and_aware_times_can_be_subtracted() -> None:
    start = parse_iso("2024-01-01T10:00:00")
    end = parse_iso("2024-01-01T10:00:00+00:00")
    assert isinstance((end - start).total_seconds(), float)


# ---------------------------------------------------------------------- read_record
@pytest.fixture
def queue(tmp_path) -> FolderQueue:
    return FolderQueue(tmp_path / "root")


def _aside(queue: FolderQueue, name: str) -> list[str]:
    return sorted(n for n in os.listdir(queue.layout.logs) if n.startswith(f"{name}.json.bad-"))


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"null", "null, not a JSON object"),
        (b"[]", "a list"),
        (b'"a.sh"', "a string"),
        (json.dumps({**GOOD, "started_at": "yesterday"}).encode(), "'started_at'"),
        (json.dumps({**GOOD, "gpus": 5}).encode(), "'gpus'"),
        (json.dumps({**GOOD, "attempts": "x"}).encode(), "'attempts'"),
        (json.dumps({**GOOD, "params": []}).encode(), "'params'"),
        (b"{not json", "not JSON"),
        (b"[" * 200_000, "not JSON"),
    ],
)
def test_a_bad_record_is_set_aside_with_a_warning(queue, caplog, content, fragment) -> None:
    path = queue.layout.record("a.sh")
    with open(path, "wb") as fh:
        fh.write(content)
    with caplog.at_level(logging.WARNING, logger="gpudispatch.store"):
        assert queue.read_record("a.sh") == JobRecord(name="a.sh")
    (aside,) = _aside(queue, "a.sh")
    assert not os.path.lexists(path)
    with open(os.path.join(queue.layout.logs, aside), "rb") as fh:
        assert fh.read() == content  # kept as it was, for a person to look at
    (message,) = _warnings(caplog)
    assert fragment in message and aside in message and "\n" not in message
    # the job goes on: the next write and read work as usual
    queue.write_record(JobRecord(name="a.sh", attempts=2))
    assert queue.read_record("a.sh").attempts == 2


def test_a_fifo_at_the_record_does_not_hang(queue, caplog) -> None:
    path = queue.layout.record("a.sh")
    os.mkfifo(path)
    with caplog.at_level(logging.WARNING, logger="gpudispatch.store"):
        assert queue.read_record("a.sh") == JobRecord(name="a.sh")
    assert "FIFO" in _warnings(caplog)[0]
    assert len(_aside(queue, "a.sh")) == 1 and not os.path.lexists(path)


@pytest.mark.parametrize("target", ["/dev/zero", "/etc/hostname", "outside.json"])
def test_a_symlinked_record_is_not_followed(queue, tmp_path, caplog, target: str) -> None:
    if target == "outside.json":
        target = str(tmp_path / "outside.json")
        with open(target, "w") as fh:
            json.dump({**GOOD, "reason": "from outside"}, fh)
    os.symlink(target, queue.layout.record("a.sh"))
    with caplog.at_level(logging.WARNING, logger="gpudispatch.store"):
        assert queue.read_record("a.sh") == JobRecord(name="a.sh")
    assert "symbolic link" in _warnings(caplog)[0]
    (aside,) = _aside(queue, "a.sh")
    assert os.readlink(os.path.join(queue.layout.logs, aside)) == target  # the link moved


def test_a_directory_or_socket_at_the_record_is_refused(queue, caplog) -> None:
    os.mkdir(queue.layout.record("d.sh"))
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(queue.layout.record("s.sh"))
        with caplog.at_level(logging.WARNING, logger="gpudispatch.store"):
            assert queue.read_record("d.sh") == JobRecord(name="d.sh")
            assert queue.read_record("s.sh") == JobRecord(name="s.sh")
    finally:
        sock.close()
    text = " ".join(_warnings(caplog))
    assert "a directory" in text and "not a regular file" in text


def test_a_huge_record_is_not_read_into_memory(queue, caplog) -> None:
    path = queue.layout.record("a.sh")
    with open(path, "wb") as fh:
        fh.truncate(RECORD_MAX_BYTES * 64)  # sparse: costs no disk
    with caplog.at_level(logging.WARNING, logger="gpudispatch.store"):
        assert queue.read_record("a.sh") == JobRecord(name="a.sh")
    assert "larger than" in _warnings(caplog)[0]
    assert len(_aside(queue, "a.sh")) == 1


def test_a_record_naming_another_job_keeps_its_own_name(queue) -> None:
    with open(queue.layout.record("a.sh"), "w") as fh:
        json.dump({**GOOD, "name": "../../evil"}, fh)
    record = queue.read_record("a.sh")
    assert record.name == "a.sh" and record.attempts == 1
    queue.write_record(record)
    assert sorted(os.listdir(queue.layout.logs)) == ["a.sh.json"]


def test_a_missing_record_is_fresh_and_silent(queue, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="gpudispatch.store"):
        assert queue.read_record("none.sh") == JobRecord(name="none.sh")
    assert _warnings(caplog) == []


def test_a_record_that_cannot_be_opened_is_left_alone(queue, caplog) -> None:
    """Only a record that was read and found bad is moved: one that cannot be opened
    (here a name too long for the filesystem; also EACCES for another user) is not."""
    path = queue.layout.record("a.sh")
    name_too_long = "x" * 300 + ".sh"
    with open(path, "w") as fh:
        json.dump(GOOD, fh)
    with caplog.at_level(logging.WARNING, logger="gpudispatch.store"):
        assert queue.read_record(name_too_long) == JobRecord(name=name_too_long)
    assert "cannot be read" in _warnings(caplog)[0]
    assert os.listdir(queue.layout.logs) == ["a.sh.json"]


def test_a_good_record_written_meanwhile_is_not_set_aside(queue) -> None:
    """set_aside moves the file only if it still is the bad one that was read."""
    path = queue.layout.record("a.sh")
    with open(path, "w") as fh:
        fh.write("null")
    bad = os.stat(path)
    queue.write_record(JobRecord(name="a.sh", attempts=3))  # replaced by a good one
    assert safeio.set_aside(path, bad) is None
    assert queue.read_record("a.sh").attempts == 3


# ---------------------------------------------------------------------- write_atomic
PLANTED = 1000  # more than a counter reaches in one test process


def _predictable_names(tmp_dir) -> list[str]:
    """The temp names a counter-based write_atomic would use: HOST.PID.N.tmp."""
    return [os.path.join(tmp_dir, f"{HOST}.{os.getpid()}.{n}.tmp") for n in range(PLANTED)]


def test_symlinks_at_predictable_temp_names_do_not_redirect_writes(queue, tmp_path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    for name in _predictable_names(queue.layout.tmp):
        os.symlink(victim, name)
    for attempts in range(20):
        queue.write_record(JobRecord(name="a.sh", attempts=attempts))
    assert victim.read_text() == "precious\n"
    assert queue.read_record("a.sh").attempts == 19
    assert len(os.listdir(queue.layout.tmp)) == PLANTED  # only the planted links are left


def test_a_failed_write_leaves_no_temp_file(tmp_path) -> None:
    tmp_dir = tmp_path / "tmp"
    tmp_dir.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    (target / "inside").write_text("x")  # a non-empty folder: replace() must fail
    with pytest.raises(OSError):
        write_atomic(target, b"data", tmp_dir)
    assert os.listdir(tmp_dir) == []


@pytest.mark.parametrize("hint, limit, expected", [(100, 1000, 100), (10, 1000, 100),
                                                   (10, 50, None), (200, 150, None)])
def test_read_limited_reads_what_grew_but_never_past_the_limit(tmp_path, hint: int,
                                                               limit: int, expected) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    fd = os.open(path, os.O_RDONLY)
    try:
        data = safeio.read_limited(fd, hint, limit)
    finally:
        os.close(fd)
    assert (None if data is None else len(data)) == expected
