"""``status``, ``logs`` and ``results`` on a folder someone tampered with: records of the
wrong shape, FIFOs and symlinks at derived paths, logs outside ROOT, odd names. Real
files and real ``gpudispatch`` processes; a hang shows as the subprocess timeout."""

from __future__ import annotations

import json
import os

import pytest
from conftest import cli, job_env, job_text

from gpudispatch.store import FolderQueue

pytestmark = pytest.mark.slow

VERBS = (("status",), ("status", "--json"), ("status", "--all"), ("results",),
         ("results", "--json"), ("results", "--csv"))
GOOD = {"name": "a.sh", "gpus": [0], "started_at": "2024-01-01T10:00:00+00:00",
        "ended_at": "2024-01-01T10:00:05+00:00", "exit_code": 0, "attempts": 1}


@pytest.fixture
def queue(tmp_path) -> FolderQueue:
    return FolderQueue(tmp_path / "root")


def finished(queue: FolderQueue, name: str, state: str = "completed") -> None:
    """A job that ran: its script in completed/ (or failed/), as a dispatcher leaves it."""
    with open(os.path.join(queue.layout.root, state, name), "w") as fh:
        fh.write(job_text())


def write_record(queue: FolderQueue, name: str, content: bytes | dict) -> str:
    path = queue.layout.record(name)
    with open(path, "wb") as fh:
        fh.write(content if isinstance(content, bytes) else json.dumps(content).encode())
    return path


def run_cli(queue: FolderQueue, *args: str, timeout: float = 20):
    """``gpudispatch ARGS --dir ROOT``, wide enough that table cells are not folded."""
    env = {**job_env(), "COLUMNS": "250"}
    return cli(*args, "--dir", str(queue.layout.root), timeout=timeout, env=env)


def assert_clean(result, ok: bool = True) -> None:
    """No traceback; exit 0 when ``ok``, else a non-zero exit with one line on stderr."""
    assert "Traceback" not in result.stderr, result.stderr
    if ok:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# ---------------------------------------------------------------------- records
@pytest.mark.parametrize(
    "content",
    [b"null", b"[]", b'"a.sh"', b"{", b"[" * 100_000,
     json.dumps({**GOOD, "started_at": "yesterday"}).encode(),
     json.dumps({**GOOD, "gpus": 5}).encode(),
     json.dumps({**GOOD, "attempts": "x"}).encode(),
     json.dumps({**GOOD, "params": ["x"], "extra": 3}).encode()],
)
def test_records_of_the_wrong_shape(queue, content: bytes) -> None:
    finished(queue, "a.sh")
    finished(queue, "ok.sh")
    write_record(queue, "ok.sh", {**GOOD, "name": "ok.sh"})
    write_record(queue, "a.sh", content)
    first = run_cli(queue, "status")
    assert_clean(first)
    assert "a.sh" in first.stdout and "ok.sh" in first.stdout
    assert "record of a.sh" in first.stderr and "set aside" in first.stderr
    aside = [n for n in os.listdir(queue.layout.logs) if n.startswith("a.sh.json.bad-")]
    assert len(aside) == 1
    for verb in VERBS:
        assert_clean(run_cli(queue, *verb))
    jobs = {j["name"]: j for j in json.loads(run_cli(queue, "status", "--json").stdout)}
    assert jobs["ok.sh"]["exit_code"] == 0 and jobs["a.sh"]["exit_code"] is None


def test_a_fifo_at_a_record_does_not_hang_status(queue) -> None:
    finished(queue, "a.sh")
    os.mkfifo(queue.layout.record("a.sh"))
    for verb in VERBS:
        assert_clean(run_cli(queue, *verb))


def test_a_record_linked_to_dev_zero_does_not_eat_memory(queue) -> None:
    finished(queue, "a.sh")
    os.symlink("/dev/zero", queue.layout.record("a.sh"))
    result = run_cli(queue, "status")
    assert_clean(result)
    assert "symbolic link" in result.stderr


def test_a_record_linked_outside_root_is_not_read(queue, tmp_path) -> None:
    finished(queue, "a.sh")
    outside = tmp_path / "secret.json"
    outside.write_text(json.dumps({**GOOD, "reason": "SECRET-REASON"}))
    os.symlink(outside, queue.layout.record("a.sh"))
    result = run_cli(queue, "status", "--json")
    assert_clean(result)
    assert "SECRET-REASON" not in result.stdout


def test_special_files_at_metrics_and_gpu_report(queue) -> None:
    finished(queue, "a.sh")
    write_record(queue, "a.sh", GOOD)
    os.mkfifo(queue.layout.metrics("a.sh"))
    os.mkfifo(queue.layout.gpu_report)
    for verb in VERBS:
        assert_clean(run_cli(queue, *verb))


@pytest.mark.parametrize(
    "report",
    [b"[]", b'{"at": "now"}', b'{"at": 1e300, "gpus": 5}',
     b'{"at": 1e300, "gpus": [{"index": 0}]}', b'{"at": 1e300, "gpus": [7]}'],
)
def test_a_gpu_report_of_another_shape(queue, report: bytes) -> None:
    finished(queue, "a.sh")
    with open(queue.layout.gpu_report, "wb") as fh:
        fh.write(report)
    result = run_cli(queue, "status")
    assert_clean(result)
    assert "a.sh" in result.stdout


def test_a_state_folder_replaced_by_a_file(queue) -> None:
    os.rmdir(queue.layout.completed)
    queue.layout.completed.write_text("not a folder")
    for verb in (("status",), ("results",), ("logs", "a.sh")):
        assert_clean(run_cli(queue, *verb), ok=False)


# ---------------------------------------------------------------------- logs
def test_logs_prints_a_log_inside_root(queue) -> None:
    finished(queue, "a.sh")
    log = queue.layout.job_log("a.sh", 1)
    with open(log, "w") as fh:
        fh.write("hello from the job\n")
    write_record(queue, "a.sh", {**GOOD, "log": log})
    result = run_cli(queue, "logs", "a.sh")
    assert_clean(result)
    assert result.stdout == "hello from the job\n"


@pytest.mark.parametrize("before", ["submitted", "ran once"])
def test_logs_of_a_run_whose_record_is_not_written_yet(queue, before: str) -> None:
    """A run's record is written 50 ms after its start: until then the record on disk
    tells the run before (or the submission), and ``logs`` reads this run's log, the
    next one, not "no output yet"."""
    finished(queue, "a.sh", "running")
    record = {"name": "a.sh", "submitted_at": "2024-01-01T09:00:00+00:00", "attempts": 0}
    if before == "ran once":
        record = {**GOOD, "log": queue.layout.job_log("a.sh", 1)}
        with open(queue.layout.job_log("a.sh", 1), "w") as fh:
            fh.write("the run before\n")
    write_record(queue, "a.sh", record)
    with open(queue.layout.job_log("a.sh", record["attempts"] + 1), "w") as fh:
        fh.write("this run\n")
    result = run_cli(queue, "logs", "a.sh")
    assert_clean(result)
    assert result.stdout == "this run\n"


@pytest.mark.parametrize("how", ["outside", "relative", "symlink-out", "symlink-in",
                                 "fifo", "dev-zero", "directory", "logs-dir-link"])
def test_logs_refuses_what_is_not_a_log_in_root(queue, tmp_path, how: str) -> None:
    finished(queue, "a.sh")
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET CONTENT\n")
    secret.chmod(0o600)
    log = queue.layout.job_log("a.sh", 1)
    if how == "outside":
        log = str(secret)
    elif how == "relative":
        log = "secret.txt"
    elif how == "symlink-out":
        os.symlink(secret, log)
    elif how == "symlink-in":
        other = queue.layout.job_log("b.sh", 1)
        with open(other, "w") as fh:
            fh.write("SECRET CONTENT\n")
        os.symlink(other, log)
    elif how == "fifo":
        os.mkfifo(log)
    elif how == "dev-zero":
        os.symlink("/dev/zero", log)
    elif how == "directory":
        os.mkdir(log)
    elif how == "logs-dir-link":  # a folder inside ROOT that leads outside
        os.symlink(tmp_path, os.path.join(queue.layout.root, "elsewhere"))
        log = os.path.join(queue.layout.root, "elsewhere", "secret.txt")
    write_record(queue, "a.sh", {**GOOD, "log": log})
    result = cli("logs", "--dir", str(queue.layout.root), "a.sh", cwd=tmp_path, timeout=20)
    assert_clean(result, ok=False)
    assert "SECRET" not in result.stdout and "not read" in result.stderr


@pytest.mark.parametrize("name", ["../a.sh", "x/../../a.sh", "..", "/etc/passwd"])
def test_logs_takes_job_names_not_paths(queue, name: str) -> None:
    finished(queue, "a.sh")
    result = run_cli(queue, "logs", name)
    assert_clean(result, ok=False)
    assert "not a job name" in result.stderr


# ---------------------------------------------------------------------- names
@pytest.mark.parametrize(
    "raw, shown",
    [(b"[red]a.sh", "[red]a.sh"), (b"[bold]b.sh", "[bold]b.sh"),
     (b"new\nline.sh", "new\\nline.sh"), (b"esc\x1b[31mred.sh", "esc\\x1b[31mred.sh"),
     (b"bad\xff.sh", "bad\\xff.sh")],
)
def test_odd_names_are_shown_escaped(queue, raw: bytes, shown: str) -> None:
    folder = os.fsencode(queue.layout.completed)
    with open(os.path.join(folder, raw), "w") as fh:
        fh.write(job_text())
    name = os.fsdecode(raw)
    with open(os.path.join(os.fsencode(queue.layout.logs), raw + b".json"), "w") as fh:
        json.dump({**GOOD, "name": name, "reason": "[/oops] reason"}, fh)
    for verb in VERBS:
        assert_clean(run_cli(queue, *verb))
    status = run_cli(queue, "status").stdout
    assert shown in status and "[/oops] reason" in status
    assert "\x1b[31m" not in status
    results = run_cli(queue, "results").stdout
    assert shown in results  # whole: results never cuts a name
