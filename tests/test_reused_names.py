"""Re-used names: history is never overwritten, and one name never runs twice at once.

A finished name dropped again is its job's next run (its earlier logs and record kept, as
``retry`` does); a name dropped while it runs waits until that run has ended.
"""

from __future__ import annotations

import json
import os

from conftest import (
    cli,
    job_text,
    names_in,
    open_gate,
    read_lines,
    record,
    snapshot,
    wait_lines,
    wait_record,
    wait_state,
    wait_until,
    where,
    write_script,
)

from gpudispatch.job import JobRecord, JobState, now_iso
from gpudispatch.store import FolderQueue


def _log(root, name: str) -> str:
    return (root / "logs" / name).read_text()


def test_a_finished_name_dropped_again_is_its_next_run(root, launch):
    write_script(root / "queue" / "x.sh", "#!/bin/sh\necho first\n")
    assert launch.run(root, "--slots", "1", "--drain").wait() == 0
    assert record(root, "x.sh")["attempts"] == 1

    write_script(root / "queue" / "x.sh", "#!/bin/sh\necho second\nexit 3\n")
    assert launch.run(root, "--slots", "1", "--drain").wait() == 1
    assert where(root, "x.sh") == "failed"
    assert "x.sh" not in names_in(root, "completed"), snapshot(root)  # in one place only
    rec = record(root, "x.sh")
    assert rec["attempts"] == 2 and rec["exit_code"] == 3
    assert _log(root, "x.sh.log") == "first\n"  # the first run's output is kept
    assert _log(root, "x.sh.2.log") == "second\n"
    assert rec["log"].endswith("x.sh.2.log")
    earlier = rec["extra"]["earlier_runs"]
    assert [(e["attempts"], e["exit_code"], e["reason"]) for e in earlier] == [(1, 0, None)]

    # Dropped a third time, its own --retries count anew (the earlier runs were not its).
    write_script(root / "queue" / "x.sh",
                 "#!/bin/sh\n#GPUDISPATCH --retries 1\necho third\nexit 1\n")
    assert launch.run(root, "--slots", "1", "--drain").wait() == 1
    rec = record(root, "x.sh")
    assert rec["attempts"] == 4, rec  # run 3, and its one retry
    assert _log(root, "x.sh.3.log") == _log(root, "x.sh.4.log") == "third\n"
    assert _log(root, "x.sh.log") == "first\n" and _log(root, "x.sh.2.log") == "second\n"
    assert [e["exit_code"] for e in rec["extra"]["earlier_runs"]] == [0, 3]
    status = json.loads(cli("status", "--dir", str(root), "--json", check=True).stdout)
    assert [j["state"] for j in status if j["name"] == "x.sh"] == ["failed"]


def test_a_name_dropped_while_it_runs_waits_for_that_run(tmp_path, root, launch):
    """Two slots, so nothing but the rule keeps the second copy from starting at once."""
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    write_script(root / "queue" / "x.sh", job_text("echo one", runs=runs, gate=gate)
                 .replace('"$GPUDISPATCH_JOB"', "v1"))
    proc = launch.run(root, "--slots", "2", "--drain")
    wait_lines(runs, 1)
    write_script(root / "queue" / "x.sh",
                 job_text("echo two", runs=runs).replace('"$GPUDISPATCH_JOB"', "v2"))
    write_script(root / "queue" / "y.sh", job_text(runs=runs))  # seen after x.sh
    wait_state(root, "y.sh", "completed", proc=proc)
    assert read_lines(runs) == ["v1", "y.sh"]  # the second x.sh did not start beside it
    assert where(root, "x.sh") == "queue" and "x.sh" in names_in(root, "running")
    open_gate(gate)
    assert proc.wait() == 0
    assert read_lines(runs) == ["v1", "y.sh", "v2"]
    assert names_in(root, "completed") == ["x.sh", "y.sh"] and names_in(root, "queue") == []
    assert record(root, "x.sh")["attempts"] == 2
    assert _log(root, "x.sh.log") == "one\n" and _log(root, "x.sh.2.log") == "two\n"


def test_two_dispatchers_never_run_one_name_twice_at_once(tmp_path, root, launch):
    """A second dispatcher with a free slot must not take a copy of a name the first one
    runs: a rename onto the running file would destroy it and lose one outcome."""
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    write_script(root / "queue" / "x.sh",
                 job_text("echo one", runs=runs, gate=gate).replace('"$GPUDISPATCH_JOB"', "v1"))
    first = launch.run(root, "--slots", "1")
    wait_lines(runs, 1)
    second = launch.run(root, "--slots", "1")
    wait_until(lambda: len(os.listdir(root / ".gpudispatch" / "dispatchers")) == 2)
    write_script(root / "queue" / "x.sh",
                 job_text("echo two", runs=runs).replace('"$GPUDISPATCH_JOB"', "v2"))
    write_script(root / "queue" / "y.sh", job_text(runs=runs))  # the free slot takes it
    wait_state(root, "y.sh", "completed", proc=second)
    assert read_lines(runs) == ["v1", "y.sh"]
    assert where(root, "x.sh") == "queue"
    open_gate(gate)
    wait_record(root, "x.sh", lambda r: r["attempts"] == 2 and r["ended_at"] is not None)
    wait_state(root, "x.sh", "completed")
    assert read_lines(runs) == ["v1", "y.sh", "v2"]
    assert _log(root, "x.sh.log") == "one\n" and _log(root, "x.sh.2.log") == "two\n"
    assert first.alive() and second.alive()


def test_a_retry_never_replaces_a_copy_dropped_meanwhile(root):
    """A run that would go back to the queue finds its name there again: the new script
    is the next run, and this one ends in failed/ saying so (the store alone)."""
    queue = FolderQueue(root)
    write_script(root / "running" / "x.sh", "#!/bin/sh\nexit 1\n")
    write_script(root / "queue" / "x.sh", "#!/bin/sh\necho new\n")
    rec = JobRecord(name="x.sh", attempts=1, reason="exit code 1; retrying",
                    ended_at=now_iso())
    assert queue.requeue("x.sh", rec) is JobState.FAILED
    assert (root / "queue" / "x.sh").read_text() == "#!/bin/sh\necho new\n"
    assert (root / "failed" / "x.sh").read_text() == "#!/bin/sh\nexit 1\n"
    assert record(root, "x.sh")["reason"] == (
        "exit code 1; not run again: x.sh was dropped again and runs next")
    assert not os.path.exists(root / "running" / "x.sh")
    nxt = queue.fresh_record("x.sh")  # the new one continues the record
    assert nxt.attempts == 1 and nxt.own_attempts == 0
    assert nxt.extra["earlier_runs"][0]["reason"].startswith("exit code 1; not run again")
