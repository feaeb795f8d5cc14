"""Bad input: each odd file in the queue ends with a clear reason, and the queue goes on.

One real dispatcher drains a queue holding every case (a good job sorts last), then each
case is checked on its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    PYTHON,
    job_env,
    logfile_text,
    names_in,
    record,
    snapshot,
    where,
)

pytestmark = pytest.mark.slow

GOOD = "#!/bin/sh\necho \"ran $GPUDISPATCH_JOB\"\n"
ODD_NAMES = ["with space.sh", "quote'd\"name.sh", "ünïcödé-名前.sh", "-leading-dash.sh",
             "$(touch pwned).sh", "semi;colon.sh"]


def _make(queue: Path, outside: Path) -> None:
    def put(name: str, data: bytes | str, mode: int = 0o755) -> None:
        path = queue / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        os.chmod(path, mode)

    put("noexec_sh.sh", "#!/bin/sh\necho \"sh-ran $0\"\n", 0o644)
    put("noexec_bash.sh", "#!/bin/bash\necho \"bash-ran ${BASH_VERSION:+yes}\"\n", 0o644)
    put("noexec_noshebang.sh", "echo noshebang-ran\n", 0o644)
    put("noshebang_exec.sh", "echo exec-noshebang-ran\n", 0o755)
    put("crlf.sh", "#!/bin/sh\r\necho crlf\r\n")
    put("empty.sh", b"")
    put("binary.sh", b"\x7fELF\x02\x01\x01\x00\x00\x00garbage\x00\xff\xfe")
    put("badinterp.sh", "#!/no/such/interpreter\necho never\n")
    (queue / "dir.sh").mkdir()
    (queue / "dir.sh" / "inner.sh").write_text(GOOD)
    os.mkfifo(queue / "fifo.sh")
    (outside / "target.sh").write_text(GOOD)
    os.chmod(outside / "target.sh", 0o755)
    os.symlink(outside / "target.sh", queue / "link.sh")
    os.symlink(outside / "missing.sh", queue / "dangling.sh")
    for name in ODD_NAMES:
        put(name, GOOD)
    put("zzz_good.sh", GOOD)


@pytest.fixture(scope="module")
def drained(tmp_path_factory):
    """Drain the queue of odd files once; return its root and the dispatcher's output."""
    base = tmp_path_factory.mktemp("bad")
    root, outside, work = base / "root", base / "outside", base / "work"
    for path in (root / "queue", outside, work):
        path.mkdir(parents=True)
    _make(root / "queue", outside)
    proc = subprocess.run(
        [PYTHON, "-m", "gpudispatch", "run", "--dir", str(root), "--slots", "1", "--drain"],
        cwd=work, env=job_env(), capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL,
    )
    return root, work, proc


def _log(root: Path, name: str) -> str:
    return (root / "logs" / f"{name}.log").read_text()


def test_dispatcher_keeps_going_to_the_good_job(drained):
    root, _, proc = drained
    assert proc.returncode == 1, proc.stderr  # --drain: a job failed
    assert where(root, "zzz_good.sh") == "completed", snapshot(root)
    assert _log(root, "zzz_good.sh") == "ran zzz_good.sh\n"
    assert names_in(root, "queue") == [] and names_in(root, "running") == []
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("name, interp, output", [
    ("noexec_sh.sh", "/bin/sh", None),
    ("noexec_bash.sh", "/bin/bash", "bash-ran yes\n"),
    ("noexec_noshebang.sh", "/bin/sh", "noshebang-ran\n"),
])
def test_not_executable_runs_through_its_interpreter(drained, name, interp, output):
    root, _, _ = drained
    assert where(root, name) == "completed", record(root, name)
    assert f"{name} is not executable; running it with {interp}" in logfile_text(root)
    if output is None:
        output = f"sh-ran {root / 'running' / name}\n"
    assert _log(root, name) == output
    assert record(root, name)["exit_code"] == 0


@pytest.mark.parametrize("name, reason", [
    ("crlf.sh", "CRLF"),
    ("empty.sh", "is empty"),
    ("binary.sh", "binary"),
    ("dir.sh", "directory"),
    ("fifo.sh", "is a named pipe (FIFO), not a regular file"),
    ("link.sh", "symlink"),
    ("dangling.sh", "symlink"),
    ("badinterp.sh", "names /no/such/interpreter in its #! line"),
])
def test_unrunnable_input_fails_with_reason(drained, name, reason):
    root, _, _ = drained
    assert where(root, name) == "failed", snapshot(root)
    rec = record(root, name)
    assert rec["reason"] and reason in rec["reason"], rec
    assert rec["ended_at"] is not None
    assert reason in logfile_text(root) or name in logfile_text(root)


def test_executable_without_shebang_runs_with_sh(drained):
    """An executable script without ``#!`` runs as a shell would run it (with /bin/sh)."""
    root, _, _ = drained
    rec = record(root, "noshebang_exec.sh")
    assert where(root, "noshebang_exec.sh") == "completed", rec
    assert _log(root, "noshebang_exec.sh") == "exec-noshebang-ran\n"
    assert ("noshebang_exec.sh is executable without a #! line; running it with /bin/sh"
            in logfile_text(root))


def test_rejected_scripts_do_not_stall_the_queue(drained):
    """A rejected script frees its slot at once: the next job starts without waiting for
    a periodic scan (which comes only every 10 s while file events work)."""
    from datetime import datetime

    root, _, _ = drained
    starts = [datetime.fromisoformat(record(root, n)["ended_at"])
              for n in ("badinterp.sh", "binary.sh", "crlf.sh", "dangling.sh", "dir.sh",
                        "empty.sh", "fifo.sh", "link.sh", "zzz_good.sh")]
    assert (max(starts) - min(starts)).total_seconds() < 5, starts


def test_symlink_target_is_untouched(drained):
    root, _, _ = drained
    target = root.parent / "outside" / "target.sh"
    assert target.read_text() == GOOD
    assert os.path.islink(root / "failed" / "link.sh")


@pytest.mark.parametrize("name", ODD_NAMES)
def test_odd_names_run_correctly(drained, name):
    root, work, _ = drained
    assert where(root, name) == "completed", snapshot(root)
    assert _log(root, name) == f"ran {name}\n"
    rec = record(root, name)
    assert rec["name"] == name and rec["exit_code"] == 0
    assert not (work / "pwned").exists() and not (root / "pwned").exists()


def test_odd_names_in_status_json(drained):
    import json

    root, _, _ = drained
    out = subprocess.run(
        [sys.executable, "-m", "gpudispatch", "status", "--dir", str(root), "--json"],
        capture_output=True, text=True, env=job_env(), check=True,
    ).stdout
    states = {job["name"]: job["state"] for job in json.loads(out)}
    for name in ODD_NAMES:
        assert states[name] == "completed"
    assert states["fifo.sh"] == "failed" and states["dir.sh"] == "failed"
