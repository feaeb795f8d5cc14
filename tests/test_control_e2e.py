"""Steering a queue with real dispatchers: submit, cancel, retry, pause/resume, logs."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess

import pytest
from conftest import (
    PYTHON,
    cli,
    gate_wait,
    job_env,
    job_text,
    logfile_text,
    names_in,
    open_gate,
    pid_alive,
    q,
    read_lines,
    record,
    snapshot,
    wait_idle,
    wait_lines,
    wait_record,
    wait_state,
    wait_until,
    where,
    write_script,
)

from gpudispatch.store import FolderQueue

pytestmark = pytest.mark.slow


def _status(root) -> dict[str, dict]:
    result = cli("status", "--dir", str(root), "--json", check=True)
    return {job["name"]: job for job in json.loads(result.stdout)}


# ---------------------------------------------------------------------- submit
def test_submit_scripts_and_refuse_taken_names(tmp_path, root, launch):
    script = tmp_path / "train.sh"
    script.write_text(job_text('echo "train $GPUDISPATCH_ATTEMPT"'))
    assert cli("submit", "--dir", str(root), str(script), check=True).stdout == "train.sh\n"
    taken = cli("submit", "--dir", str(root), str(script))
    assert taken.returncode != 0 and "already queued" in taken.stderr
    renamed = cli("submit", "--dir", str(root), "--rename", "--priority", "9", str(script),
                  check=True)
    assert renamed.stdout == "train-2.sh\n"
    assert "#GPUDISPATCH --priority 9" in (root / "queue" / "train-2.sh").read_text()
    missing = cli("submit", "--dir", str(root), str(tmp_path / "nope.sh"))
    assert missing.returncode != 0 and "nope.sh" in missing.stderr
    proc = launch.run(root, "--slots", "1", "--drain")
    assert proc.wait() == 0
    assert names_in(root, "completed") == ["train-2.sh", "train.sh"]
    # the priority directive put the renamed copy first
    assert record(root, "train-2.sh")["ended_at"] <= record(root, "train.sh")["started_at"]
    again = cli("submit", "--dir", str(root), str(script))
    assert again.returncode != 0 and "already completed" in again.stderr


def test_submit_command_keeps_every_word(tmp_path, root, launch):
    work = tmp_path / "work dir"
    work.mkdir()
    words = ["a b", "c'd", "$HOME", "`id`", "*", "-n", ""]
    result = cli("submit", "--dir", str(root), "--name", "cmd.sh", "--",
                 "printf", "[%s]", *words, cwd=work, check=True)
    assert result.stdout == "cmd.sh\n"
    write_script(root / "queue" / "where.sh", job_text("pwd"))
    wrapped = cli("submit", "--dir", str(root), "--name", "pwd.sh", "--", "pwd", cwd=work,
                  check=True)
    assert wrapped.returncode == 0
    proc = launch.run(root, "--slots", "1", "--drain", cwd=tmp_path)
    assert proc.wait() == 0
    out = (root / "logs" / "cmd.sh.log").read_text()
    assert out == "".join(f"[{w}]" for w in words)
    assert (root / "logs" / "pwd.sh.log").read_text() == f"{work}\n"  # run where submitted


def test_submit_while_a_dispatcher_runs(tmp_path, root, launch):
    proc = launch.run(root, "--slots", "1")
    wait_idle(root)
    cli("submit", "--dir", str(root), "--name", "late.sh", "--", "true", check=True)
    wait_state(root, "late.sh", "completed", proc=proc)


# ---------------------------------------------------------------------- cancel
def test_cancel_queued_job_never_runs(tmp_path, root, launch):
    runs, gate = tmp_path / "runs.txt", tmp_path / "gate"
    write_script(root / "queue" / "a.sh", job_text(runs=runs, gate=gate))
    write_script(root / "queue" / "b.sh", job_text(runs=runs))
    write_script(root / "queue" / "c.sh", job_text(runs=runs))
    proc = launch.run(root, "--slots", "1")
    wait_lines(runs, 1)
    result = cli("cancel", "--dir", str(root), "b.sh", check=True)
    assert "removed from the queue" in result.stdout
    assert where(root, "b.sh") == "failed"
    assert record(root, "b.sh")["reason"] == "cancelled"
    open_gate(gate)
    wait_state(root, "c.sh", "completed", proc=proc)
    assert read_lines(runs) == ["a.sh", "c.sh"]
    assert where(root, "b.sh") == "failed"


def test_cancel_running_job_kills_its_grandchildren(tmp_path, root, launch):
    runs, gate = tmp_path / "runs.txt", tmp_path / "never"
    gc_pid = tmp_path / "gc.pid"
    body = (f"sh -c 'echo $$ > {q(gc_pid)}.tmp && mv {q(gc_pid)}.tmp {q(gc_pid)}; "
            f"{gate_wait(gate).strip()}' &\nwait\n")
    write_script(root / "queue" / "a.sh", job_text(body, runs=runs))
    write_script(root / "queue" / "b.sh", job_text(runs=runs))
    proc = launch.run(root, "--slots", "1")
    rec = wait_record(root, "a.sh", lambda r: r.get("pid") is not None)
    grandchild = int(wait_until(lambda: gc_pid.exists() and gc_pid.read_text().strip()))
    result = cli("cancel", "--dir", str(root), "--grace", "30", "a.sh", timeout=20, check=True)
    assert "cancelled" in result.stdout
    wait_state(root, "a.sh", "failed", proc=proc)
    done = record(root, "a.sh")
    assert done["reason"] == "cancelled" and done["attempts"] == 1
    wait_until(lambda: not pid_alive(grandchild), timeout=5, message="grandchild to die")
    assert not pid_alive(rec["pid"])
    wait_state(root, "b.sh", "completed", proc=proc)  # the queue goes on
    assert read_lines(runs) == ["a.sh", "b.sh"]


def test_cancel_and_retry_bad_names_fail_clearly(root):
    (root / "logs").mkdir()
    for verb in ("cancel", "retry", "logs"):
        result = cli(verb, "--dir", str(root), "ghost.sh")
        assert result.returncode != 0
        assert "ghost.sh" in result.stderr, (verb, result.stderr)


# ---------------------------------------------------------------------- retry
def test_retry_failed_job_keeps_attempts(tmp_path, root, launch):
    flag = tmp_path / "fixed"
    write_script(root / "queue" / "flaky.sh",
                 job_text(f"[ -e {q(flag)} ] || exit 3\necho fixed"))
    write_script(root / "queue" / "ok.sh", job_text())
    proc = launch.run(root, "--slots", "1", "--drain")
    assert proc.wait() == 1  # --drain: a job failed
    assert where(root, "flaky.sh") == "failed"
    completed = cli("retry", "--dir", str(root), "ok.sh")
    assert completed.returncode != 0 and "only failed jobs" in completed.stderr
    flag.touch()
    result = cli("retry", "--dir", str(root), "flaky.sh", check=True)
    assert "attempts so far: 1" in result.stdout
    assert where(root, "flaky.sh") == "queue"
    assert _status(root)["flaky.sh"]["state"] == "queued"
    proc = launch.run(root, "--slots", "1", "--drain")
    assert proc.wait() == 0
    assert where(root, "flaky.sh") == "completed"
    rec = record(root, "flaky.sh")
    assert rec["attempts"] == 2 and rec["exit_code"] == 0 and rec["reason"] is None
    assert (root / "logs" / "flaky.sh.2.log").read_text() == "fixed\n"


# ---------------------------------------------------------------------- pause
def test_pause_resume_and_pause_survives_restart(tmp_path, root, launch):
    runs, gate = tmp_path / "runs.txt", tmp_path / "gate"
    write_script(root / "queue" / "a.sh", job_text(runs=runs, gate=gate))
    proc = launch.run(root, "--slots", "1")
    wait_lines(runs, 1)
    assert "paused" in cli("pause", "--dir", str(root), check=True).stdout
    write_script(root / "queue" / "b.sh", job_text(runs=runs))
    wait_until(lambda: "['b.sh']" in logfile_text(root), message=lambda: logfile_text(root))
    open_gate(gate)  # the running job goes on and finishes
    wait_state(root, "a.sh", "completed", proc=proc)
    table = cli("status", "--dir", str(root), check=True).stdout
    assert "PAUSED" in table
    assert where(root, "b.sh") == "queue"
    # A restarted dispatcher is still paused.
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    proc = launch.run(root, "--slots", "1")
    wait_until(lambda: logfile_text(root).count("['b.sh']") == 2,
               message=lambda: logfile_text(root))
    assert where(root, "b.sh") == "queue", snapshot(root)
    assert read_lines(runs) == ["a.sh"]
    cli("resume", "--dir", str(root), check=True)
    wait_state(root, "b.sh", "completed", timeout=5, proc=proc)  # not at the next 10 s scan
    assert "PAUSED" not in cli("status", "--dir", str(root), check=True).stdout


# ---------------------------------------------------------------------- logs
def test_logs_prints_and_follows(tmp_path, root, launch):
    gate = tmp_path / "gate"
    write_script(root / "queue" / "a.sh",
                 job_text("echo line1\n" + gate_wait(gate) + "echo line2\n"))
    proc = launch.run(root, "--slots", "1")
    wait_until(lambda: (root / "logs" / "a.sh.log").exists()
               and "line1" in (root / "logs" / "a.sh.log").read_text())
    assert cli("logs", "--dir", str(root), "a.sh", check=True).stdout == "line1\n"
    out = tmp_path / "follow.out"
    with open(out, "wb") as fh:
        follower = subprocess.Popen(
            [PYTHON, "-m", "gpudispatch", "logs", "--dir", str(root), "-f", "a.sh"],
            stdout=fh, stderr=subprocess.STDOUT, env=job_env())
    try:
        wait_until(lambda: out.read_text() == "line1\n", message=lambda: out.read_text())
        assert follower.poll() is None  # still following while the job runs
        open_gate(gate)
        assert follower.wait(timeout=10) == 0
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert out.read_text() == "line1\nline2\n"
    wait_state(root, "a.sh", "completed", proc=proc)


# ---------------------------------------------------------------------- watch & hooks
def test_status_watch_refreshes_until_interrupted(tmp_path, root, launch):
    runs, gate = tmp_path / "runs.txt", tmp_path / "gate"
    write_script(root / "queue" / "a.sh", job_text(runs=runs, gate=gate))
    proc = launch.run(root, "--gpus", "0")
    wait_lines(runs, 1)
    master, slave = pty.openpty()  # a live view renders on a terminal
    os.set_blocking(master, False)
    seen = bytearray()

    def screen() -> str:
        try:
            while chunk := os.read(master, 65536):
                seen.extend(chunk)
        except (BlockingIOError, OSError):
            pass
        return seen.decode(errors="replace")

    watcher = subprocess.Popen(
        [PYTHON, "-m", "gpudispatch", "status", "--dir", str(root), "--watch",
         "--interval", "0.1"], stdin=slave, stdout=slave, stderr=slave,
        env={**job_env(), "COLUMNS": "160", "LINES": "40", "TERM": "xterm"})
    os.close(slave)
    try:
        wait_until(lambda: "running 1" in screen(), message=screen)
        open_gate(gate)
        wait_state(root, "a.sh", "completed", proc=proc)
        wait_until(lambda: "completed 1" in screen(), message=screen)  # refreshed in place
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(timeout=10) == 0
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
        os.close(master)


def test_on_finish_hook_gets_the_outcome_and_a_failing_hook_is_only_logged(
        tmp_path, root, launch):
    hooks = tmp_path / "hooks.txt"
    command = (f'echo "$GPUDISPATCH_JOB|$GPUDISPATCH_STATE|$GPUDISPATCH_EXIT_CODE|'
               f'$GPUDISPATCH_LOG" >> {q(hooks)}; '
               # SIGPIPE (bit 0x1000) must not be ignored in the hook, as it is in Python
               "ign=$(awk '/^SigIgn/{print $2}' /proc/self/status); "
               f'[ $((0x$ign & 0x1000)) -eq 0 ] || echo SIGPIPE-ignored >> {q(hooks)}; '
               '[ "$GPUDISPATCH_JOB" != a.sh ]')
    write_script(root / "queue" / "a.sh", job_text())
    write_script(root / "queue" / "b.sh", job_text(exit_code=6))
    proc = launch.run(root, "--slots", "1", "--on-finish", command)
    wait_state(root, "b.sh", "failed", proc=proc)
    wait_lines(hooks, 2)
    wait_until(lambda: "on-finish hook for a.sh returned 1" in logfile_text(root),
               message=lambda: logfile_text(root))
    lines = sorted(read_lines(hooks))
    assert lines == [f"a.sh|completed|0|{root}/logs/a.sh.log",
                     f"b.sh|failed|6|{root}/logs/b.sh.log"]
    write_script(root / "queue" / "c.sh", job_text())
    wait_state(root, "c.sh", "completed", proc=proc)


def test_cancel_never_signals_a_stale_pid_from_an_old_record(tmp_path, root):
    """A record may still hold an earlier run's pid, since reused by another process."""
    import subprocess

    from gpudispatch.job import JobRecord, JobState
    from gpudispatch.store import FolderQueue

    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        queue = FolderQueue(root)
        queue.enqueue_text("a.sh", "#!/bin/sh\ntrue\n")
        assert queue.claim("a.sh")
        queue.write_record(JobRecord(name="a.sh", pid=bystander.pid, attempts=1))
        result = cli("cancel", "--dir", str(root), "a.sh", "--grace", "1", check=True)
        assert "cancelled" in result.stdout
        assert bystander.poll() is None, "an unrelated process group was signalled"
        assert where(root, "a.sh") == "failed"
        assert record(root, "a.sh")["reason"] == "cancelled"
        assert queue.locate("a.sh") is JobState.FAILED
    finally:
        bystander.kill()
        bystander.wait()


def test_submit_each_line_queues_one_job_per_line_run_in_line_order(tmp_path, root, launch):
    order = tmp_path / "order.txt"
    commands = tmp_path / "commands.txt"
    lines = [f"echo {word} >> {q(order)}; echo {word} out" for word in
             ("zulu", "alpha", "mike", "bravo", "yankee", "charlie", "xray", "delta",
              "whiskey", "echo", "victor")]  # 11: line numbers must sort as numbers
    commands.write_text("\n".join([lines[0], "", "# a comment", *lines[1:]]) + "\n")
    out = cli("submit", "--dir", str(root), "--each-line", str(commands), "--retries", "1",
              cwd=tmp_path, check=True)
    names = out.stdout.split()
    assert len(names) == len(lines) and names == sorted(names)
    proc = launch.run(root, "--slots", "1", "--drain")
    assert proc.wait(60) == 0, logfile_text(root)
    assert read_lines(order) == [line.split()[1] for line in lines]
    for name, line in zip(names, lines, strict=True):
        assert (root / "logs" / f"{name}.log").read_text() == f"{line.split()[1]} out\n"
        assert "--retries 1" in (root / "completed" / name).read_text()


def test_status_shows_the_next_queued_jobs_in_run_order_and_counts_the_rest(root):
    """A sweep-sized queue: status reads the records of what it shows, not of every
    queued job; the next ones come in run order (priority first, then name)."""
    queue = FolderQueue(root)
    for i in range(30):
        queue.enqueue_text(f"job{i:02d}.sh", "#!/bin/sh\ntrue\n")
    queue.enqueue_text("zz-urgent.sh", "#!/bin/sh\n#GPUDISPATCH --priority 5\ntrue\n")
    table = cli("status", "--dir", str(root), "--queued", "3", check=True).stdout
    shown = [n for n in ("zz-urgent.sh", "job00.sh", "job01.sh", "job02.sh") if n in table]
    assert shown == ["zz-urgent.sh", "job00.sh", "job01.sh"], table
    assert table.index("zz-urgent.sh") < table.index("job00.sh") < table.index("job01.sh")
    assert "next 3 of 31 queued shown" in table and "queued 31" in table
    everything = cli("status", "--dir", str(root), "--all", check=True).stdout
    assert "job29.sh" in everything and "next " not in everything
