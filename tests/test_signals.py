"""Warm stop (first SIGTERM/SIGINT) and cold stop (the second) of a real dispatcher."""

from __future__ import annotations

import signal

import pytest
from conftest import (
    gate_wait,
    job_text,
    logfile_text,
    names_in,
    open_gate,
    pid_alive,
    q,
    read_lines,
    record,
    snapshot,
    wait_lines,
    wait_record,
    wait_until,
    where,
    write_script,
)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_warm_stop_finishes_running_job_and_starts_no_new_one(tmp_path, root, launch, sig):
    runs, gate = tmp_path / "runs.txt", tmp_path / "gate"
    write_script(root / "queue" / "a.sh", job_text("echo finished", runs=runs, gate=gate))
    write_script(root / "queue" / "b.sh", job_text(runs=runs))
    write_script(root / "queue" / "c.sh", job_text(runs=runs))
    proc = launch.run(root, "--slots", "1")
    wait_lines(runs, 1)
    wait_record(root, "a.sh", lambda r: r.get("pid") is not None)
    proc.signal(sig)
    wait_until(lambda: "Warm stop" in logfile_text(root), message=lambda: logfile_text(root))
    assert proc.alive()  # it waits for a.sh
    open_gate(gate)
    assert proc.wait() == 0
    assert where(root, "a.sh") == "completed"
    assert (root / "logs" / "a.sh.log").read_text() == "finished\n"
    assert record(root, "a.sh")["exit_code"] == 0
    assert names_in(root, "queue") == ["b.sh", "c.sh"], snapshot(root)
    assert read_lines(runs) == ["a.sh"]


def test_cold_stop_kills_the_group_and_requeues_with_reason(tmp_path, root, launch):
    runs, gate = tmp_path / "runs.txt", tmp_path / "gate"
    gc_pid = tmp_path / "grandchild.pid"
    body = (
        f"sh -c 'echo $$ > {q(gc_pid)}.tmp && mv {q(gc_pid)}.tmp {q(gc_pid)}; "
        f"{gate_wait(gate).strip()}' &\nwait\n"
    )
    write_script(root / "queue" / "a.sh", job_text(body, runs=runs))
    write_script(root / "queue" / "b.sh", job_text(runs=runs))
    # A long grace: the job must die of the SIGTERM to its group, not a late SIGKILL.
    proc = launch.run(root, "--slots", "1", "--kill-grace", "60")
    rec = wait_record(root, "a.sh", lambda r: r.get("pid") is not None)
    grandchild = int(wait_until(lambda: gc_pid.exists() and gc_pid.read_text().strip()))
    assert pid_alive(grandchild)
    proc.signal(signal.SIGTERM)
    wait_until(lambda: "Warm stop" in logfile_text(root), message=lambda: logfile_text(root))
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    wait_until(lambda: not pid_alive(grandchild), timeout=5, message="grandchild to die")
    assert not pid_alive(rec["pid"])
    assert names_in(root, "queue") == ["a.sh", "b.sh"], snapshot(root)
    assert names_in(root, "running") == []
    again = record(root, "a.sh")
    assert "cold stop" in again["reason"]
    assert again["attempts"] == 1
    assert again["exit_code"] == 128 + signal.SIGTERM  # as its monitor (a shell) saw it
    assert read_lines(runs) == ["a.sh"]
    assert not gate.exists()
    # The requeued job runs again on the next start, counted as a second attempt.
    open_gate(gate)
    proc = launch.run(root, "--slots", "1", "--drain")
    assert proc.wait() == 0
    assert names_in(root, "completed") == ["a.sh", "b.sh"]
    assert record(root, "a.sh")["attempts"] == 2


def test_jobs_start_with_default_signal_dispositions(tmp_path, root, launch):
    """SIGTERM, SIGINT, SIGHUP and SIGPIPE are not ignored in jobs (the keeper ignores
    them for itself): a pipeline ends quietly when its reader is done."""
    write_script(root / "queue" / "a.sh", job_text(
        "grep SigIgn /proc/self/status\nyes | head -n 2\n"))
    proc = launch.run(root, "--slots", "1", "--drain")
    assert proc.wait() == 0
    out = (root / "logs" / "a.sh.log").read_text().splitlines()
    ignored = int(out[0].split()[1], 16)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        assert not ignored & (1 << (sig - 1)), f"{sig.name} is ignored in the job"
    assert out[1:] == ["y", "y"]  # no 'yes: standard output: Broken pipe'
