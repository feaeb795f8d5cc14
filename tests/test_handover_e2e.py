"""The keeper refills a slot the moment its job ends (a hand-over); what may not follow."""

from __future__ import annotations

import signal

import pytest
from conftest import (
    cli,
    job_text,
    logfile_text,
    open_gate,
    read_lines,
    wait_lines,
    wait_state,
    wait_until,
    where,
    write_script,
)

pytestmark = pytest.mark.slow


def test_pause_after_the_next_job_was_handed_over(tmp_path, root, launch):
    runs, gate = tmp_path / "runs.txt", tmp_path / "gate"
    write_script(root / "queue" / "a.sh", job_text(runs=runs, gate=gate))
    write_script(root / "queue" / "b.sh", job_text(runs=runs))
    proc = launch.run(root, "--slots", "1")
    wait_lines(runs, 1)  # a runs; b is now handed over to follow it
    cli("pause", "--dir", str(root), check=True)  # no file event: the dispatcher sleeps on
    open_gate(gate)
    wait_state(root, "a.sh", "completed", proc=proc)
    assert where(root, "b.sh") == "queue" and read_lines(runs) == ["a.sh"]
    cli("resume", "--dir", str(root), check=True)
    wait_state(root, "b.sh", "completed", proc=proc)


def test_higher_priority_job_dropped_later_goes_before_the_handed_over_one(
        tmp_path, root, launch):
    runs, gate = tmp_path / "runs.txt", tmp_path / "gate"
    write_script(root / "queue" / "a.sh", job_text(runs=runs, gate=gate))
    write_script(root / "queue" / "b.sh", job_text(runs=runs))
    proc = launch.run(root, "--slots", "1")
    wait_lines(runs, 1)
    write_script(root / "queue" / "z-urgent.sh",
                 job_text(runs=runs, header="#GPUDISPATCH --priority 9\n"))
    wait_until(lambda: "['z-urgent.sh']" in logfile_text(root))
    open_gate(gate)
    wait_state(root, "b.sh", "completed", proc=proc)
    assert read_lines(runs) == ["a.sh", "z-urgent.sh", "b.sh"]


def test_warm_stop_does_not_start_the_handed_over_job(tmp_path, root, launch):
    runs, gate = tmp_path / "runs.txt", tmp_path / "gate"
    write_script(root / "queue" / "a.sh", job_text(runs=runs, gate=gate))
    write_script(root / "queue" / "b.sh", job_text(runs=runs))
    proc = launch.run(root, "--slots", "1")
    wait_lines(runs, 1)
    proc.signal(signal.SIGTERM)
    open_gate(gate)
    assert proc.wait() == 0
    assert where(root, "a.sh") == "completed" and where(root, "b.sh") == "queue"
    assert read_lines(runs) == ["a.sh"]


def test_priority_order_holds_with_two_dispatchers(tmp_path, root, launch):
    runs, gate = tmp_path / "runs.txt", tmp_path / "gate"
    priority = {"f.sh": 10, "b.sh": 5, "d.sh": 5, "a.sh": 0, "e.sh": 0, "c.sh": -1}
    for name, p in priority.items():
        write_script(root / "queue" / name,
                     job_text(runs=runs, gate=gate, header=f"#GPUDISPATCH --priority {p}\n"))
    cli("pause", "--dir", str(root), check=True)
    first = launch.run(root, "--slots", "1")
    second = launch.run(root, "--slots", "1")
    wait_until(lambda: logfile_text(root).count("6 new jobs added") == 2,
               message=lambda: logfile_text(root))
    cli("resume", "--dir", str(root), check=True)
    wait_lines(runs, 2)
    assert set(read_lines(runs)) == {"f.sh", "b.sh"}  # the two highest, one per dispatcher
    open_gate(gate)
    for name in priority:
        wait_state(root, name, "completed", proc=first)
    order = read_lines(runs)
    assert sorted(order) == sorted(priority) and second.alive()
    # Two lanes: a job may start just before one of equal or higher rank that started
    # at the same moment on the other dispatcher, never before anything ranked higher
    # that was waiting longer.
    for i, early in enumerate(order):
        for late in order[i + 2:]:
            assert priority[early] >= priority[late], order


def test_a_handed_over_run_says_so_in_its_record(tmp_path, root, launch):
    """The report marks hand-overs (issue 14): the record of a run the keeper started the
    moment its slot's job ended says so; a run started by the dispatcher does not."""
    from conftest import record

    runs, gate = tmp_path / "runs.txt", tmp_path / "gate"
    write_script(root / "queue" / "a.sh", job_text(runs=runs, gate=gate))
    write_script(root / "queue" / "b.sh", job_text(runs=runs))
    proc = launch.run(root, "--slots", "1")
    wait_lines(runs, 1)  # a runs; b is now handed over to follow it
    open_gate(gate)
    wait_state(root, "b.sh", "completed", proc=proc)
    assert record(root, "b.sh")["extra"].get("handed_over") is True
    assert "handed_over" not in record(root, "a.sh")["extra"]
