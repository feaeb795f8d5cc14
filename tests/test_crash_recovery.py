"""Nothing is lost, nothing runs twice: shared queues and ``kill -9`` of the dispatcher."""

from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from conftest import (
    gate_wait,
    job_text,
    logfile_text,
    names_in,
    open_gate,
    parent_pid,
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

from gpudispatch.job import now_iso
from gpudispatch.store import FolderQueue

pytestmark = pytest.mark.slow


def test_two_dispatchers_never_run_a_job_twice(tmp_path, root, launch):
    shared = tmp_path / "shared.txt"
    first = launch.run(root, "--slots", "2")
    second = launch.run(root, "--slots", "2")
    wait_until(lambda: logfile_text(root).count("Job queue empty. Waiting...") >= 2,
               message=lambda: logfile_text(root))
    names = [f"job{i:03d}.sh" for i in range(200)]
    text = job_text(f'echo "$GPUDISPATCH_JOB" >> {q(shared)}')
    tmp = root / "staging"
    tmp.mkdir()
    for name in names:  # all written first, then renamed in as fast as possible
        (tmp / name).write_text(text)
        os.chmod(tmp / name, 0o755)
    for name in names:
        os.rename(tmp / name, root / "queue" / name)
    wait_until(lambda: len(names_in(root, "completed")) == 200, timeout=40,
               message=lambda: snapshot(root))
    counts = Counter(read_lines(shared))
    assert set(counts) == set(names)
    assert [n for n, c in counts.items() if c != 1] == []
    owners = Counter(record(root, n)["dispatcher"] for n in names)
    assert len(owners) == 2, owners  # both took part in the race
    assert all(record(root, n)["attempts"] == 1 for n in names)
    for proc in (first, second):
        proc.signal(signal.SIGTERM)
    assert first.wait() == 0 and second.wait() == 0


def _running_job(root, runs, name):
    """Wait until ``name`` runs and its record holds its pid; return the record."""
    wait_lines(runs, 1)
    return wait_record(root, name, lambda r: r.get("pid") is not None)


def test_kill9_dispatcher_then_restart_waits_for_the_running_job(tmp_path, root, launch):
    runs, gate = tmp_path / "runs.txt", tmp_path / "gate"
    write_script(root / "queue" / "long.sh", job_text(runs=runs, gate=gate))
    first = launch.run(root, "--gpus", "0")
    rec = _running_job(root, runs, "long.sh")
    first.kill9()
    assert pid_alive(rec["pid"])  # the job outlives its dispatcher
    second = launch.run(root, "--gpus", "0")
    wait_until(lambda: f"long.sh is still running (pid {rec['pid']})" in logfile_text(root),
               message=lambda: logfile_text(root))
    # GPU 0 is still taken by the adopted job: a new job must wait for it.
    write_script(root / "queue" / "next.sh", job_text(runs=runs))
    wait_until(lambda: "['next.sh']" in logfile_text(root), message=lambda: logfile_text(root))
    assert where(root, "next.sh") == "queue"
    assert where(root, "long.sh") == "running"
    open_gate(gate)
    wait_state(root, "next.sh", "completed", proc=second)
    assert read_lines(runs) == ["long.sh", "next.sh"]  # long.sh ran exactly once
    done = record(root, "long.sh")
    assert where(root, "long.sh") == "completed"
    assert done["attempts"] == 1 and done["exit_code"] == 0 and done["reason"] is None
    assert record(root, "next.sh")["started_at"] >= done["ended_at"]
    assert logfile_text(root).count("long.sh returned 0") == 1


def test_job_that_ended_while_no_dispatcher_ran_keeps_its_exit_code(tmp_path, root, launch):
    runs, gate = tmp_path / "runs.txt", tmp_path / "gate"
    write_script(root / "queue" / "ends.sh", job_text(runs=runs, gate=gate, exit_code=3))
    first = launch.run(root, "--slots", "1")
    rec = _running_job(root, runs, "ends.sh")
    first.kill9()
    open_gate(gate)  # the job ends while no dispatcher runs
    wait_until(lambda: not pid_alive(rec["pid"]))
    journal = Path(FolderQueue(root).layout.exit_journal())
    wait_until(lambda: journal.exists() and b" 3 ends.sh\n" in journal.read_bytes(),
               message="the monitor to write the exit status")
    second = launch.run(root, "--slots", "1", "--drain")
    assert second.wait() == 1  # --drain: a job failed
    assert where(root, "ends.sh") == "failed"
    done = record(root, "ends.sh")
    assert done["exit_code"] == 3 and done["reason"] == "exit code 3"
    assert done["attempts"] == 1
    assert read_lines(runs) == ["ends.sh"]  # not run again
    assert "ends.sh ended while no dispatcher was running" in logfile_text(root)


def test_drain_waits_for_a_job_whose_lock_an_exiting_monitor_still_holds(tmp_path, root,
                                                                         launch):
    """A monitor that is exiting has left /proc's command lines but still holds the job's
    lock for a moment: --drain must look again, not finish and leave the job in running/."""
    runs, gate = tmp_path / "runs.txt", tmp_path / "gate"
    write_script(root / "queue" / "ends.sh", job_text(runs=runs, gate=gate, exit_code=3))
    first = launch.run(root, "--slots", "1")
    rec = _running_job(root, runs, "ends.sh")
    first.kill9()
    open_gate(gate)
    wait_until(lambda: not pid_alive(rec["pid"]))
    held, release = tmp_path / "held", tmp_path / "release"
    # The lock without a monitor: what a second dispatcher sees in that moment.
    holder = subprocess.Popen(
        ["flock", str(root / "running" / "ends.sh"), "sh", "-c",
         f"touch {q(held)}; while [ ! -e {q(release)} ]; do sleep 0.02; done"])
    try:
        wait_until(held.exists, message="flock to hold the job's lock")
        second = launch.run(root, "--slots", "1", "--drain")
        wait_until(lambda: "Job queue empty. Waiting..." in logfile_text(root).split(
            "Job Dispatcher Started")[-1], message=lambda: logfile_text(root))
        assert second.proc.poll() is None, f"{snapshot(root)}\n{logfile_text(root)}"
        release.touch()
        assert holder.wait(10) == 0
        assert second.wait(30) == 1, f"{snapshot(root)}\n{logfile_text(root)}"
    finally:
        release.touch()
        holder.wait(10)
    assert where(root, "ends.sh") == "failed", snapshot(root)
    done = record(root, "ends.sh")
    assert done["exit_code"] == 3 and done["attempts"] == 1, done
    assert read_lines(runs) == ["ends.sh"]


def test_job_cut_off_with_its_dispatcher_runs_again(tmp_path, root, launch):
    runs, gate = tmp_path / "runs.txt", tmp_path / "gate"
    write_script(root / "queue" / "cut.sh", job_text("echo attempt $GPUDISPATCH_ATTEMPT",
                                                     runs=runs, gate=gate))
    first = launch.run(root, "--slots", "1")
    rec = _running_job(root, runs, "cut.sh")
    assert parent_pid(rec["pid"]) == first.pid  # the dispatcher starts monitors itself
    # Nothing is left to write an exit code: dispatcher, monitor and job all die.
    first.kill9()
    wait_until(lambda: not pid_alive(first.pid))
    os.killpg(rec["pid"], signal.SIGKILL)
    wait_until(lambda: not pid_alive(rec["pid"]))
    assert FolderQueue(root).exit_status("cut.sh") is None
    assert where(root, "cut.sh") == "running"
    open_gate(gate)
    second = launch.run(root, "--slots", "1", "--drain")
    assert second.wait() == 0
    assert where(root, "cut.sh") == "completed", snapshot(root)
    done = record(root, "cut.sh")
    assert done["attempts"] == 2 and done["exit_code"] == 0
    assert read_lines(runs) == ["cut.sh", "cut.sh"]
    assert (root / "logs" / "cut.sh.2.log").read_text() == "attempt 2\n"
    assert "cut.sh was interrupted" in logfile_text(root)
    assert done["extra"]["interruptions"] == 1  # not a failure: --retries untouched


def test_restart_after_kill9_with_queue_left_finishes_everything_once(tmp_path, root, launch):
    """kill -9 mid-queue: every job ends completed exactly once after a restart."""
    runs, gate = tmp_path / "runs.txt", tmp_path / "gate"
    write_script(root / "queue" / "a.sh", job_text(runs=runs))
    write_script(root / "queue" / "b.sh", job_text(runs=runs, gate=gate))
    for n in ("c.sh", "d.sh"):
        write_script(root / "queue" / n, job_text(runs=runs))
    first = launch.run(root, "--slots", "1")
    wait_lines(runs, 2)
    wait_record(root, "b.sh", lambda r: r.get("pid") is not None)
    first.kill9()
    second = launch.run(root, "--slots", "1")
    wait_until(lambda: "b.sh is still running" in logfile_text(root),
               message=lambda: logfile_text(root))
    open_gate(gate)
    wait_until(lambda: names_in(root, "completed") == ["a.sh", "b.sh", "c.sh", "d.sh"],
               message=lambda: snapshot(root))
    assert sorted(read_lines(runs)) == ["a.sh", "b.sh", "c.sh", "d.sh"]
    second.signal(signal.SIGTERM)
    assert second.wait() == 0


# A ``trap`` keeps a script from being run inline (by its monitor itself): it then runs in
# a subshell of its monitor, the job's own process, which outlives the monitor.
SUBSHELL = "trap '' USR1\n"


@pytest.mark.parametrize("mode", ["subshell", "inline"])
def test_monitor_and_dispatcher_killed_before_the_start_record_waits_for_the_job(
        tmp_path, root, launch, mode):
    """Its first moments: the start record (with the monitor's pid) is written 50 ms after
    the start, so a dispatcher and monitor killed sooner leave nothing naming the job's
    processes. The next dispatcher finds them by their environment and waits for them
    before it runs the job again (never two runs of one job at once). In a subshell the
    job's shell goes on; inline (the monitor is the job's shell) a child of it does."""
    runs, gate = tmp_path / "runs.txt", tmp_path / "gate"
    end = f"echo end $GPUDISPATCH_ATTEMPT >> {q(runs)}"
    # In a plain /bin/sh job, $$ is its monitor and $PPID the dispatcher that spawned it.
    if mode == "subshell":
        first_run = SUBSHELL + f"kill -9 $PPID $$\n{gate_wait(gate)}"
    else:  # the kill ends the script: a child of it goes on
        first_run = f'sh -c "{gate_wait(gate).strip()}; {end}" &\nkill -9 $PPID $$\n'
    write_script(root / "queue" / "early.sh", job_text(
        f'if [ "$GPUDISPATCH_ATTEMPT" = 1 ]; then\n{first_run}fi\n{end}', runs=runs))
    first = launch.run(root, "--slots", "1")
    wait_lines(runs, 1)
    wait_until(lambda: not pid_alive(first.pid))
    assert where(root, "early.sh") == "running"
    second = launch.run(root, "--slots", "1", "--drain")
    wait_until(lambda: "early.sh is still running" in logfile_text(root),
               message=lambda: f"{logfile_text(root)}\n{read_lines(runs)}")
    assert read_lines(runs) == ["early.sh"]  # not run again meanwhile
    open_gate(gate)
    assert second.wait() == 0, f"{snapshot(root)}\n{logfile_text(root)}"
    assert read_lines(runs) == ["early.sh", "end 1", "early.sh", "end 2"]
    done = record(root, "early.sh")
    assert where(root, "early.sh") == "completed", snapshot(root)
    assert done["attempts"] == 2 and done["exit_code"] == 0
    assert done["extra"]["interruptions"] == 1


def test_a_retry_killed_before_its_start_record_is_not_taken_for_the_run_before(
        tmp_path, root, launch):
    """Until a retry's start record is written, the record on disk is the failed run's
    (attempt 1, its exit code 3 in the journal): that code is not this run's end, and
    this run's processes are waited for before it runs again."""
    runs, gate, killed = tmp_path / "runs.txt", tmp_path / "gate", tmp_path / "killed"
    write_script(root / "queue" / "again.sh", job_text(
        f'[ "$GPUDISPATCH_ATTEMPT" = 1 ] && exit 3\n'
        f'if [ ! -e {q(killed)} ]; then : > {q(killed)}; kill -9 $PPID $$; {gate_wait(gate)}fi\n'
        f'echo "end $GPUDISPATCH_ATTEMPT" >> {q(runs)}', runs=runs,
        header="#GPUDISPATCH --retries 1\n" + SUBSHELL))
    first = launch.run(root, "--slots", "1")
    wait_lines(runs, 2)
    wait_until(lambda: not pid_alive(first.pid))
    second = launch.run(root, "--slots", "1", "--drain")
    wait_until(lambda: "again.sh is still running" in logfile_text(root),
               message=lambda: f"{logfile_text(root)}\n{read_lines(runs)}")
    assert read_lines(runs) == ["again.sh", "again.sh"]  # not run again meanwhile
    open_gate(gate)
    assert second.wait() == 0, f"{snapshot(root)}\n{logfile_text(root)}"
    assert read_lines(runs) == ["again.sh", "again.sh", "end 2", "again.sh", "end 3"]
    done = record(root, "again.sh")
    assert where(root, "again.sh") == "completed", snapshot(root)
    assert done["attempts"] == 3 and done["exit_code"] == 0, done
    assert done["extra"]["interruptions"] == 1


def test_a_job_whose_final_record_was_written_but_not_moved_is_not_run_again(
        tmp_path, root, launch):
    """Its dispatcher died between writing the end record and moving the script: the
    record and the journal tell the end; the next dispatcher only moves it."""
    runs = tmp_path / "runs.txt"
    write_script(root / "queue" / "done.sh", job_text(runs=runs))
    assert launch.run(root, "--slots", "1", "--drain").wait() == 0
    os.rename(root / "completed" / "done.sh", root / "running" / "done.sh")
    assert launch.run(root, "--slots", "1", "--drain").wait() == 0
    assert where(root, "done.sh") == "completed", snapshot(root)
    assert read_lines(runs) == ["done.sh"]
    rec = record(root, "done.sh")
    assert rec["attempts"] == 1 and rec["exit_code"] == 0, rec
    assert "done.sh ended while no dispatcher was running" in logfile_text(root)


def test_a_retry_whose_requeue_was_cut_short_goes_back_unchanged(tmp_path, root, launch):
    """Its dispatcher died between writing the requeued record and moving the script
    back to the queue: it goes back as the record says, its failure still counted (not
    an interruption: that would give it a retry more), and runs its retry once."""
    runs, gate = tmp_path / "runs.txt", tmp_path / "gate"
    write_script(root / "queue" / "retry.sh", job_text(
        '[ "$GPUDISPATCH_ATTEMPT" = 1 ] && exit 3', runs=runs, gate=gate,
        header="#GPUDISPATCH --retries 1\n"))
    first = launch.run(root, "--slots", "1")
    wait_record(root, "retry.sh", lambda r: r.get("pid"))  # its start record
    os.kill(first.pid, signal.SIGSTOP)  # it ends while its dispatcher cannot move it
    open_gate(gate)
    queue = FolderQueue(root)
    wait_until(lambda: queue.exit_status("retry.sh"), message=lambda: snapshot(root))
    first.kill9()
    # What the writer's requeue writes before its move (store.FolderQueue.requeue):
    rec = queue.read_record("retry.sh")
    rec.ended_at, rec.exit_code, rec.reason = now_iso(), 3, "exit code 3; retrying"
    rec.extra["requeued"] = True
    queue.write_record(rec)
    second = launch.run(root, "--slots", "1", "--drain")
    assert second.wait() == 0, f"{snapshot(root)}\n{logfile_text(root)}"
    assert "retry.sh goes back to the queue, as its record says" in logfile_text(root)
    assert where(root, "retry.sh") == "completed", snapshot(root)
    assert read_lines(runs) == ["retry.sh", "retry.sh"]
    done = record(root, "retry.sh")
    assert done["attempts"] == 2 and done["exit_code"] == 0, done
    assert done["extra"].get("interruptions", 0) == 0, done


def test_the_run_after_a_requeue_is_concluded_without_the_requeue(tmp_path, root, launch):
    """The run after a retry's requeue ended while no dispatcher ran, before its start
    record was written (a hand-over's is written 50 ms in): the record still tells of the
    requeue, the exit journal of this run. The next dispatcher concludes the job from the
    journal, and the record it writes no longer tells of the requeue: should it die
    between that record and the move, the one after it concludes the job again rather
    than send it back to the queue (it ran a third time: chaos, process groups)."""
    runs = tmp_path / "runs.txt"
    write_script(root / "running" / "retry.sh",
                 job_text(runs=runs, header="#GPUDISPATCH --retries 1\n"))
    queue = FolderQueue(root)
    rec = queue.fresh_record("retry.sh")
    rec.attempts, rec.ended_at, rec.exit_code = 1, now_iso(), 3
    rec.reason, rec.extra["requeued"] = "exit code 3; retrying", True
    queue.write_record(rec)  # what the requeue of its first run wrote
    inode = os.lstat(root / "running" / "retry.sh").st_ino
    with open(queue.layout.exit_journal(), "a") as fh:
        fh.write(f"{inode}.2 0 retry.sh\n")  # what the monitor of its second run wrote
    for _ in range(2):  # the second time as if the first had died before its move
        assert launch.run(root, "--slots", "1", "--drain").wait() == 0, snapshot(root)
        assert where(root, "retry.sh") == "completed", snapshot(root)
        done = record(root, "retry.sh")
        assert (done["attempts"], done["exit_code"]) == (2, 0), done
        assert "requeued" not in done["extra"], done
        os.rename(root / "completed" / "retry.sh", root / "running" / "retry.sh")
    assert not runs.exists()  # never run again
    assert "goes back to the queue" not in logfile_text(root)
