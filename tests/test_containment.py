"""What a job leaves behind ends with it: children in its process group that it put in
the background, or that ignore SIGTERM, are gone once its end is recorded."""

from __future__ import annotations

import pytest
from conftest import job_text, pid_alive, q, record, wait_until, where, write_script

pytestmark = pytest.mark.slow


def _child(pid_file, trap_term: bool) -> str:
    """A background child that writes its pid and sleeps (ignoring SIGTERM if asked)."""
    trap = 'trap "" TERM; ' if trap_term else ""
    return (f"sh -c '{trap}echo $$ > {q(pid_file)}.tmp && mv {q(pid_file)}.tmp "
            f"{q(pid_file)}; exec sleep 300' &\n"
            f"while [ ! -s {q(pid_file)} ]; do sleep 0.01; done\n")


def test_background_children_end_with_the_job(tmp_path, root, launch):
    pid_file = tmp_path / "child.pid"
    write_script(root / "queue" / "a.sh", job_text(_child(pid_file, False) + "exit 0"))
    proc = launch.run(root, "--slots", "1", "--drain")
    assert proc.wait(timeout=30) == 0
    assert where(root, "a.sh") == "completed"
    child = int(pid_file.read_text())
    wait_until(lambda: not pid_alive(child), timeout=5, message="the job's child to end")


def test_a_child_ignoring_sigterm_ends_after_a_timeout(tmp_path, root, launch):
    """--kill-grace 60: the job's shell ends at the SIGTERM; its child, which ignores it,
    must not outlive the job (nor wait for the grace period)."""
    pid_file = tmp_path / "child.pid"
    body = _child(pid_file, True) + "sleep 300\n"
    write_script(root / "queue" / "slow.sh",
                 job_text(body, header="#GPUDISPATCH --timeout 1\n"))
    proc = launch.run(root, "--slots", "1", "--drain", "--kill-grace", "60")
    assert proc.wait(timeout=30) == 1
    assert record(root, "slow.sh")["reason"].startswith("timeout")
    child = int(pid_file.read_text())
    wait_until(lambda: not pid_alive(child), timeout=5, message="the child to end")
