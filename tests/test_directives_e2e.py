"""``#GPUDISPATCH`` directives with real dispatchers: priority, --after, --gpus K,
--timeout, --retries, malformed lines."""

from __future__ import annotations

from datetime import datetime

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
    wait_state,
    wait_until,
    where,
    write_script,
)

pytestmark = pytest.mark.slow


def _header(*directives: str) -> str:
    return "".join(f"#GPUDISPATCH {d}\n" for d in directives)


def _seconds(rec: dict) -> float:
    return (datetime.fromisoformat(rec["ended_at"])
            - datetime.fromisoformat(rec["started_at"])).total_seconds()


def test_priority_first_then_alphanumeric(tmp_path, root, launch):
    runs = tmp_path / "runs.txt"
    jobs = {"a.sh": None, "b.sh": "--priority 5", "c.sh": "--priority -1",
            "d.sh": "--priority 5", "e.sh": None, "f.sh": "--priority 10"}
    for name, directive in jobs.items():
        header = _header(directive) if directive else ""
        write_script(root / "queue" / name, job_text(runs=runs, header=header))
    proc = launch.run(root, "--slots", "1", "--drain")
    assert proc.wait() == 0
    assert read_lines(runs) == ["f.sh", "b.sh", "d.sh", "a.sh", "e.sh", "c.sh"]


def test_after_waits_for_dependency_with_two_dispatchers(tmp_path, root, launch):
    runs, gate = tmp_path / "runs.txt", tmp_path / "gate"
    write_script(root / "queue" / "prep.sh", job_text(runs=runs, gate=gate))
    write_script(root / "queue" / "a_train.sh",
                 job_text(runs=runs, header=_header("--after prep.sh")))
    write_script(root / "queue" / "b_free.sh", job_text(runs=runs))
    first = launch.run(root, "--slots", "1")
    second = launch.run(root, "--slots", "1")
    wait_until(lambda: logfile_text(root).count("Job Dispatcher Started") == 2)
    wait_state(root, "b_free.sh", "completed", proc=first)
    wait_until(lambda: logfile_text(root).count("a_train.sh") >= 2,  # both saw it
               message=lambda: logfile_text(root))
    # prep may still be in a keeper's hand-over, claimed the moment b_free's monitor ends
    wait_state(root, "prep.sh", "running", proc=first)
    assert where(root, "a_train.sh") == "queue"  # a slot is free, yet it waits
    open_gate(gate)
    wait_state(root, "a_train.sh", "completed", proc=first)
    assert read_lines(runs) in (["prep.sh", "b_free.sh", "a_train.sh"],
                                ["b_free.sh", "prep.sh", "a_train.sh"])
    assert record(root, "a_train.sh")["started_at"] >= record(root, "prep.sh")["ended_at"]
    assert first.alive() and second.alive()


def test_after_a_failed_or_missing_dependency_fails(tmp_path, root, launch):
    runs = tmp_path / "runs.txt"
    write_script(root / "queue" / "a_dep.sh", job_text(runs=runs, exit_code=1))
    write_script(root / "queue" / "b_child.sh",
                 job_text(runs=runs, header=_header("--after a_dep.sh")))
    write_script(root / "queue" / "c_orphan.sh",
                 job_text(runs=runs, header=_header("--after never.sh")))
    proc = launch.run(root, "--slots", "2", "--drain")
    assert proc.wait(timeout=20) == 1  # --drain: a job failed
    assert read_lines(runs) == ["a_dep.sh"]
    assert where(root, "b_child.sh") == "failed"
    assert record(root, "b_child.sh")["reason"] == "dependency a_dep.sh failed"
    assert where(root, "c_orphan.sh") == "failed"
    assert record(root, "c_orphan.sh")["reason"] == "dependency never.sh does not exist"


def test_gpus_k_gets_k_distinct_gpus_and_waits_for_them(tmp_path, root, launch):
    runs, gate = tmp_path / "runs.txt", tmp_path / "gate"
    seen = tmp_path / "big.cuda"
    write_script(root / "queue" / "a_small.sh", job_text(runs=runs, gate=gate))
    write_script(root / "queue" / "b_big.sh", job_text(
        f'echo "$CUDA_VISIBLE_DEVICES" > {q(seen)}', runs=runs, header=_header("--gpus 2")))
    write_script(root / "queue" / "c_huge.sh", job_text(runs=runs, header=_header("--gpus 3")))
    proc = launch.run(root, "--gpus", "0,1", "--reserve-after", "0")
    wait_state(root, "c_huge.sh", "failed", proc=proc)  # at once, never waits forever
    assert record(root, "c_huge.sh")["reason"] == "asks for 3 GPUs but this dispatcher has 2"
    wait_lines(runs, 1)
    wait_until(lambda: "b_big.sh" in logfile_text(root))
    assert where(root, "b_big.sh") == "queue"  # one GPU is free, it needs two
    open_gate(gate)
    wait_state(root, "b_big.sh", "completed", proc=proc)
    assert seen.read_text().strip() == "0,1"
    assert record(root, "b_big.sh")["gpus"] == [0, 1]
    assert read_lines(runs) == ["a_small.sh", "b_big.sh"]


def test_small_job_backfills_behind_a_waiting_big_one(tmp_path, root, launch):
    runs, gate = tmp_path / "runs.txt", tmp_path / "gate"
    write_script(root / "queue" / "a_busy.sh", job_text(runs=runs, gate=gate))
    write_script(root / "queue" / "b_big.sh",
                 job_text(runs=runs, header=_header("--gpus 2")))
    write_script(root / "queue" / "c_small.sh", job_text(runs=runs))
    proc = launch.run(root, "--gpus", "0,1")  # default: backfill for 300 s
    wait_state(root, "c_small.sh", "completed", proc=proc)  # GPU 1 did not stay idle
    assert where(root, "b_big.sh") == "queue"
    assert record(root, "c_small.sh")["gpus"] == [1]
    open_gate(gate)
    wait_state(root, "b_big.sh", "completed", proc=proc)


def test_reserve_after_zero_holds_the_line_for_the_big_job(tmp_path, root, launch):
    runs, gate = tmp_path / "runs.txt", tmp_path / "gate"
    write_script(root / "queue" / "a_busy.sh", job_text(runs=runs, gate=gate))
    write_script(root / "queue" / "b_big.sh",
                 job_text(runs=runs, header=_header("--gpus 2")))
    write_script(root / "queue" / "c_small.sh", job_text(runs=runs))
    proc = launch.run(root, "--gpus", "0,1", "--reserve-after", "0")
    wait_lines(runs, 1)
    wait_until(lambda: "c_small.sh" in logfile_text(root))
    assert where(root, "c_small.sh") == "queue", snapshot(root)
    open_gate(gate)
    wait_state(root, "c_small.sh", "completed", proc=proc)
    assert read_lines(runs) == ["a_busy.sh", "b_big.sh", "c_small.sh"]


def test_timeout_kills_the_group_within_a_second(tmp_path, root, launch):
    gate = tmp_path / "never"
    gc_pid = tmp_path / "gc.pid"
    body = (f"sh -c 'echo $$ > {q(gc_pid)}.tmp && mv {q(gc_pid)}.tmp {q(gc_pid)}; "
            f"{gate_wait(gate).strip()}' &\n{gate_wait(gate)}")
    write_script(root / "queue" / "slow.sh", job_text(body, header=_header("--timeout 1")))
    write_script(root / "queue" / "z_next.sh", job_text())
    proc = launch.run(root, "--slots", "1", "--drain", "--kill-grace", "30")
    grandchild = int(wait_until(lambda: gc_pid.exists() and gc_pid.read_text().strip()))
    assert proc.wait(timeout=15) == 1  # --drain: a job failed
    assert where(root, "slow.sh") == "failed"
    rec = record(root, "slow.sh")
    assert rec["reason"].startswith("timeout"), rec
    assert 1.0 <= _seconds(rec) < 2.0, rec
    wait_until(lambda: not pid_alive(grandchild), timeout=5, message="grandchild to die")
    assert where(root, "z_next.sh") == "completed"


def test_retries_count_attempts(tmp_path, root, launch):
    runs = tmp_path / "runs.txt"
    count = tmp_path / "count"
    # Fails twice, then succeeds: needs --retries 2.
    flaky = (f'echo x >> {q(count)}\n'
             f'[ "$(wc -l < {q(count)})" -ge 3 ] || exit 7\n'
             'echo "attempt $GPUDISPATCH_ATTEMPT"\n')
    write_script(root / "queue" / "flaky.sh",
                 job_text(flaky, runs=runs, header=_header("--retries 2")))
    write_script(root / "queue" / "hopeless.sh",
                 job_text(runs=runs, exit_code=4, header=_header("--retries 1")))
    write_script(root / "queue" / "once.sh", job_text(runs=runs, exit_code=5))
    proc = launch.run(root, "--slots", "1", "--drain")
    assert proc.wait(timeout=20) == 1  # --drain: a job failed
    assert where(root, "flaky.sh") == "completed"
    flaky_rec = record(root, "flaky.sh")
    assert flaky_rec["attempts"] == 3 and flaky_rec["exit_code"] == 0
    assert (root / "logs" / "flaky.sh.3.log").read_text() == "attempt 3\n"
    assert (root / "logs" / "flaky.sh.2.log").exists() and (root / "logs" / "flaky.sh.log").exists()
    assert where(root, "hopeless.sh") == "failed"
    hopeless = record(root, "hopeless.sh")
    assert hopeless["attempts"] == 2 and hopeless["exit_code"] == 4
    assert record(root, "once.sh")["attempts"] == 1
    counts = {n: read_lines(runs).count(n) for n in ("flaky.sh", "hopeless.sh", "once.sh")}
    assert counts == {"flaky.sh": 3, "hopeless.sh": 2, "once.sh": 1}


def test_malformed_directive_fails_quoting_the_line(tmp_path, root, launch):
    runs = tmp_path / "runs.txt"
    write_script(root / "queue" / "bad.sh",
                 job_text(runs=runs, header=_header("--gpus two")))
    write_script(root / "queue" / "ok.sh", job_text(runs=runs))
    proc = launch.run(root, "--gpus", "0", "--drain")
    assert proc.wait() == 1  # --drain: a job failed
    assert where(root, "bad.sh") == "failed"
    assert "'#GPUDISPATCH --gpus two'" in record(root, "bad.sh")["reason"]
    assert read_lines(runs) == ["ok.sh"]
    assert names_in(root, "completed") == ["ok.sh"]


def test_timeout_still_applies_to_a_job_adopted_after_a_restart(tmp_path, root, launch):
    runs, gate = tmp_path / "runs.txt", tmp_path / "never"
    write_script(root / "queue" / "t.sh",
                 job_text(runs=runs, gate=gate, header=_header("--timeout 2")))
    first = launch.run(root, "--slots", "1", "--kill-grace", "30")
    rec = wait_record(root, "t.sh", lambda r: r.get("pid") is not None)
    assert rec["extra"]["directives"] == {"timeout": 2.0}
    first.kill9()
    second = launch.run(root, "--slots", "1", "--kill-grace", "30", "--drain")
    assert second.wait(timeout=15) == 1  # --drain: a job failed
    assert where(root, "t.sh") == "failed", snapshot(root)
    done = record(root, "t.sh")
    assert done["reason"].startswith("timeout"), done
    assert 2.0 <= _seconds(done) < 3.5, done
    assert read_lines(runs) == ["t.sh"]  # waited for and stopped, never run again
    assert not pid_alive(rec["pid"])
