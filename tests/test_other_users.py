"""Other users and the queue: their scripts do not run as us unless we say so, and a file
another user is still writing is not taken before its writer closes it.

A real second Unix user (``gdtestuser``, created here or by ``scripts/test.sh``) owns the
scripts; creating it needs root, so these tests skip for anyone else.
"""

from __future__ import annotations

import os
import pwd
import subprocess

import pytest
from conftest import (
    PYTHON,
    log_messages,
    logfile_text,
    read_lines,
    record,
    snapshot,
    wait_state,
    wait_until,
    write_script,
)
from test_slurm_backend import FakeSlurm, _queue

from gpudispatch.backends.slurm import SlurmBackend
from gpudispatch.job import JobState
from gpudispatch.layout import Layout

OTHER = "gdtestuser"


@pytest.fixture(scope="module")
def other() -> pwd.struct_passwd:
    """The second user, created if absent (as CI does in scripts/test.sh)."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to create a second user and give it files")
    try:
        return pwd.getpwnam(OTHER)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", OTHER], check=True,
                       capture_output=True)
        return pwd.getpwnam(OTHER)


def theirs(path, text: str, user: pwd.struct_passwd):
    write_script(path, text)
    os.chown(path, user.pw_uid, user.pw_gid)
    return path


def test_a_script_of_another_user_fails_with_its_owner_named(tmp_path, root, launch, other):
    os.chmod(root / "queue", 0o777)  # as a shared queue would be
    ran = tmp_path / "ran"
    write_script(root / "queue" / "a-mine.sh", f"#!/bin/sh\necho a-mine >> {ran}\n")
    theirs(root / "queue" / "b-theirs.sh", f"#!/bin/sh\necho b-theirs >> {ran}\n", other)
    write_script(root / "queue" / "c-mine.sh", f"#!/bin/sh\necho c-mine >> {ran}\n")
    proc = launch.run(root, "--slots", "1", "--drain")
    assert proc.wait() == 1  # --drain: a job failed
    assert read_lines(ran) == ["a-mine", "c-mine"]  # theirs never ran; the queue went on
    wait_state(root, "b-theirs.sh", "failed")
    reason = record(root, "b-theirs.sh")["reason"]
    assert (f"owned by user {OTHER} (uid {other.pw_uid}), not by the dispatcher's user root"
            in reason), reason
    assert "--allow-other-users" in reason
    messages = log_messages(root)
    assert any(m.startswith("WARNING: b-theirs.sh failed: is owned by user") for m in messages)
    assert any("writable by other users" in m and "--allow-other-users" in m
               for m in messages)
    assert "\n" not in reason


def test_allow_other_users_runs_them_as_the_dispatchers_user(tmp_path, root, launch, other):
    ran = tmp_path / "ran"
    theirs(root / "queue" / "theirs.sh", f"#!/bin/sh\nid -u >> {ran}\n", other)
    proc = launch.run(root, "--slots", "1", "--drain", "--allow-other-users")
    assert proc.wait() == 0, proc.output()
    assert read_lines(ran) == ["0"]  # as root, which is what the flag says it allows


def test_the_slurm_backend_refuses_them_too(tmp_path, other):
    slurm = FakeSlurm()
    queue = _queue(tmp_path, "mine.sh", "theirs.sh")
    os.chown(queue.layout.script(JobState.QUEUED, "theirs.sh"), other.pw_uid, other.pw_gid)
    SlurmBackend(queue, runner=slurm).tick(0)
    assert queue.locate("theirs.sh") is JobState.FAILED
    assert f"owned by user {OTHER}" in (queue.read_record("theirs.sh").reason or "")
    assert queue.locate("mine.sh") is JobState.RUNNING and slurm.sbatch_calls() == 1

    allowed = _queue(tmp_path / "allowed", "theirs.sh")
    os.chown(allowed.layout.script(JobState.QUEUED, "theirs.sh"), other.pw_uid, other.pw_gid)
    SlurmBackend(allowed, runner=slurm, allow_other_users=True).tick(0)
    assert allowed.locate("theirs.sh") is JobState.RUNNING and slurm.sbatch_calls() == 2


def test_the_flag_is_documented_in_help():
    result = subprocess.run([PYTHON, "-m", "gpudispatch", "run", "--help"],
                            capture_output=True, text=True, check=True)
    assert "--allow-other-users" in result.stdout


def test_logs_is_created_writable_by_its_owner_only(tmp_path):
    """Whatever the umask: records and outputs are where others must not plant files."""
    old = os.umask(0)
    try:
        layout = Layout(tmp_path / "q").create()
    finally:
        os.umask(old)
    assert os.stat(layout.logs).st_mode & 0o022 == 0, oct(os.stat(layout.logs).st_mode)


def test_a_file_still_open_for_writing_is_not_taken_until_closed(tmp_path, root, launch,
                                                                 other):
    """Without CAP_LEASE (as root in a container) no lease can tell that another user's
    file is still being written; it stays still for longer than the dispatcher waits, and
    must not be taken until its writer closes it."""
    out = tmp_path / "out"
    dispatcher = launch._start(
        ["setpriv", "--bounding-set", "-lease", PYTHON, "-m", "gpudispatch", "run", "-q",
         "--dir", str(root), "--slots", "1", "--allow-other-users"], root, None, None)
    wait_until(lambda: "Job queue empty" in logfile_text(root), 20,
               message=lambda: dispatcher.output())
    path = root / "queue" / "w.sh"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755)
    try:
        os.fchown(fd, other.pw_uid, other.pw_gid)
        os.write(fd, f"#!/bin/sh\necho first >> {out}\n".encode())
        # The writer: the other user's `cat`, holding the file open as its stdout.
        writer = subprocess.Popen(
            ["setpriv", "--reuid", OTHER, "--regid", OTHER, "--clear-groups", "cat"],
            stdin=subprocess.PIPE, stdout=fd)
    finally:
        os.close(fd)
    try:
        wait_until(lambda: f"w.sh is still open for writing (pid {writer.pid})"
                   in logfile_text(root), 15, message=lambda: logfile_text(root))
        assert os.path.exists(path), snapshot(root)  # not taken, though still for > 1 s
        assert read_lines(out) == []
        writer.communicate(f"echo second >> {out}\n".encode(), timeout=10)  # and closes
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    wait_state(root, "w.sh", "completed", 15, proc=dispatcher)
    assert read_lines(out) == ["first", "second"]  # the whole script ran, once
