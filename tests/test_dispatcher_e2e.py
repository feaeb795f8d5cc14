"""``gpudispatch run``: slots, GPUs, --drain, ROOT, job logs and records, status, file events."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from datetime import datetime

import pytest
from conftest import (
    cli,
    job_env,
    job_text,
    logfile_text,
    names_in,
    open_gate,
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

pytestmark = pytest.mark.slow


def _cuda_job(tmp_path, name, gate=None):
    """A job that writes the CUDA_VISIBLE_DEVICES it saw ('unset' when it had none)."""
    seen = tmp_path / f"{name}.cuda"
    body = f'echo "${{CUDA_VISIBLE_DEVICES-unset}}" > {q(seen)}.tmp && mv {q(seen)}.tmp {q(seen)}\n'
    text = "#!/bin/sh\n" + body
    if gate is not None:
        text += f"while [ ! -e {q(gate)} ]; do sleep 0.02; done\n"
    return text, seen


def _seen(path):
    return wait_until(lambda: path.exists() and path.read_text().strip() + "\n",
                      message=f"{path} to be written").strip()


def test_gpus_next_job_goes_to_first_free_gpu(tmp_path, root, launch):
    gates = {n: tmp_path / f"gate-{n}" for n in "abcd"}
    seen = {}
    for n in "ab":
        text, seen[n] = _cuda_job(tmp_path, n, gates[n])
        write_script(root / "queue" / f"{n}.sh", text)
    proc = launch.run(root, "--gpus", "0,1")
    assert (_seen(seen["a"]), _seen(seen["b"])) == ("0", "1")  # concurrent, distinct
    open_gate(gates["b"])  # GPU 1 frees while GPU 0 stays busy
    wait_state(root, "b.sh", "completed", proc=proc)
    text, seen["c"] = _cuda_job(tmp_path, "c", gates["c"])
    write_script(root / "queue" / "c.sh", text)
    assert _seen(seen["c"]) == "1"
    open_gate(gates["a"])  # now only GPU 0 is free
    wait_state(root, "a.sh", "completed", proc=proc)
    text, seen["d"] = _cuda_job(tmp_path, "d")
    write_script(root / "queue" / "d.sh", text)
    wait_state(root, "d.sh", "completed", proc=proc)
    assert _seen(seen["d"]) == "0"
    open_gate(gates["c"])
    wait_state(root, "c.sh", "completed", proc=proc)
    assert {n: record(root, f"{n}.sh")["gpus"] for n in "abcd"} == {
        "a": [0], "b": [1], "c": [1], "d": [0]}
    assert "Running job a.sh on GPU 0..." in logfile_text(root)


def test_cpu_slots_run_concurrently_with_empty_cuda(tmp_path, root, launch):
    gate = tmp_path / "gate"
    seen = {}
    for n in "ab":
        text, seen[n] = _cuda_job(tmp_path, n, gate)
        write_script(root / "queue" / f"{n}.sh", text)
    env = {**job_env(), "CUDA_VISIBLE_DEVICES": "3"}
    proc = launch.run(root, "--slots", "2", "--drain", env=env)
    assert (_seen(seen["a"]), _seen(seen["b"])) == ("", "")  # set, empty, both running
    assert names_in(root, "running") == ["a.sh", "b.sh"]
    open_gate(gate)
    assert proc.wait() == 0
    assert [record(root, f"{n}.sh")["gpus"] for n in "ab"] == [[], []]


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None or os.path.exists("/dev/nvidia0"),
                    reason="this host has a GPU")
def test_gpus_all_without_gpus_exits_with_message(root):
    result = cli("run", "--dir", str(root), "--gpus", "all", "--drain", timeout=30)
    assert result.returncode != 0
    assert "--gpus" in result.stderr
    assert not (root / "logfile.txt").exists()  # it never started


def test_drain_runs_everything_then_exits(tmp_path, root, launch):
    runs = tmp_path / "runs.txt"
    for n in ("a.sh", "b.sh", "c.sh"):
        write_script(root / "queue" / n, job_text(runs=runs))
    proc = launch.run(root, "--slots", "2", "--drain")
    assert proc.wait() == 0
    assert sorted(read_lines(runs)) == ["a.sh", "b.sh", "c.sh"]
    assert names_in(root, "completed") == ["a.sh", "b.sh", "c.sh"]
    assert names_in(root, "queue") == names_in(root, "running") == []


def test_without_drain_it_keeps_waiting(tmp_path, root, launch):
    proc = launch.run(root, "--slots", "1")
    wait_idle(root)
    write_script(root / "queue" / "a.sh", job_text())
    wait_state(root, "a.sh", "completed", proc=proc)
    wait_idle(root, 2)
    assert proc.alive()


def test_root_from_environment(tmp_path, launch):
    root = tmp_path / "envroot"
    write_script(root / "queue" / "a.sh", job_text("echo from-env"))
    env = {**job_env(), "GPUDISPATCH_ROOT": str(root)}
    proc = launch.run(root, "--slots", "1", "--drain", env=env, with_dir=False)
    assert proc.wait() == 0
    assert where(root, "a.sh") == "completed"
    result = cli("status", "--json", env=env, check=True)
    assert [j["name"] for j in json.loads(result.stdout)] == ["a.sh"]


def test_job_output_and_record(tmp_path, root, launch):
    write_script(root / "queue" / "ok.sh", job_text("echo to-stdout; echo to-stderr >&2"))
    write_script(root / "queue" / "ko.sh", job_text("echo failing", exit_code=3))
    before = datetime.now().astimezone()
    proc = launch.run(root, "--gpus", "4", "--drain")
    assert proc.wait() == 1  # --drain: a job failed
    assert "to-stdout" not in proc.output()  # the job's output is not the dispatcher's
    log = (root / "logs" / "ok.sh.log").read_text()
    assert "to-stdout" in log and "to-stderr" in log
    ok, ko = record(root, "ok.sh"), record(root, "ko.sh")
    for rec in (ok, ko):
        assert rec["gpus"] == [4]
        assert rec["host"] == os.uname().nodename
        assert isinstance(rec["pid"], int) and rec["pid"] > 0
        assert rec["attempts"] == 1
        start = datetime.fromisoformat(rec["started_at"])
        end = datetime.fromisoformat(rec["ended_at"])
        assert before.replace(microsecond=0) <= start.replace(microsecond=0) <= end
    assert ok["name"] == "ok.sh" and ok["exit_code"] == 0 and ok["reason"] is None
    assert ok["log"] == str(root / "logs" / "ok.sh.log")
    assert ko["exit_code"] == 3 and ko["reason"] == "exit code 3"
    assert (root / "logs" / "ko.sh.log").read_text() == "failing\n"
    assert where(root, "ko.sh") == "failed"


STATUS_KEYS = {"name", "state", "gpus", "exit_code", "attempts", "started_at", "ended_at",
               "log", "reason"}


def test_status_json_every_state(tmp_path, root, launch):
    gate = tmp_path / "gate"
    runs = tmp_path / "runs.txt"
    write_script(root / "queue" / "a_ok.sh", job_text())
    write_script(root / "queue" / "b_bad.sh", job_text(exit_code=1))
    write_script(root / "queue" / "c_run.sh", job_text(runs=runs, gate=gate))
    write_script(root / "queue" / "d_wait.sh", job_text())
    proc = launch.run(root, "--gpus", "1")
    wait_lines(runs, 1)
    wait_record(root, "c_run.sh", lambda r: r["pid"] is not None)
    result = cli("status", "--dir", str(root), "--json", check=True)
    jobs = {j["name"]: j for j in json.loads(result.stdout)}
    for job in jobs.values():
        assert set(job) >= STATUS_KEYS, job
    assert {n: j["state"] for n, j in jobs.items()} == {
        "a_ok.sh": "completed", "b_bad.sh": "failed", "c_run.sh": "running",
        "d_wait.sh": "queued"}
    assert jobs["a_ok.sh"]["exit_code"] == 0 and jobs["a_ok.sh"]["reason"] is None
    assert jobs["b_bad.sh"]["exit_code"] == 1 and jobs["b_bad.sh"]["reason"] == "exit code 1"
    run = jobs["c_run.sh"]
    assert run["gpus"] == [1] and run["attempts"] == 1 and run["exit_code"] is None
    assert run["started_at"] and run["ended_at"] is None
    assert run["log"] == str(root / "logs" / "c_run.sh.log")
    queued = jobs["d_wait.sh"]
    assert queued["started_at"] is None and queued["ended_at"] is None
    assert queued["gpus"] == [] and queued["attempts"] == 0
    for job in jobs.values():
        for key in ("started_at", "ended_at"):
            if job[key] is not None:
                datetime.fromisoformat(job[key])
    table = cli("status", "--dir", str(root), check=True).stdout
    assert "c_run.sh" in table and "running" in table
    open_gate(gate)
    wait_state(root, "d_wait.sh", "completed", proc=proc)


def test_status_on_missing_root_fails_clearly(tmp_path):
    result = cli("status", "--dir", str(tmp_path / "nope"), "--json")
    assert result.returncode != 0
    assert "not a gpudispatch queue" in result.stderr


# ---------------------------------------------------------------------- file events
def test_file_event_starts_a_job_in_an_idle_queue(tmp_path, root, launch):
    proc = launch.run(root, "--slots", "1", "--wait", "30")  # polling cannot explain it
    wait_idle(root)
    t0 = time.monotonic()
    write_script(root / "queue" / "a.sh", job_text())
    wait_state(root, "a.sh", "completed", timeout=5, proc=proc)
    assert time.monotonic() - t0 < 5


def test_half_written_file_waits_until_closed(tmp_path, root, launch):
    out = tmp_path / "out.txt"
    proc = launch.run(root, "--slots", "1", "--wait", "30")
    wait_idle(root)
    with open(root / "queue" / "w.sh", "w") as fh:
        os.chmod(root / "queue" / "w.sh", 0o755)
        fh.write(f"#!/bin/sh\necho part1 >> {q(out)}\n")
        fh.flush()
        # A later job (alphanumerically after w.sh) runs meanwhile: the dispatcher is
        # awake and has seen w.sh, yet leaves it alone while it is open for writing.
        write_script(root / "queue" / "z.sh", job_text())
        wait_state(root, "z.sh", "completed", proc=proc)
        assert where(root, "w.sh") == "queue"
        assert not out.exists()
        fh.write(f"echo part2 >> {q(out)}\n")
    wait_state(root, "w.sh", "completed", timeout=5, proc=proc)
    assert read_lines(out) == ["part1", "part2"]


def test_hidden_files_and_editor_temporaries_are_ignored(tmp_path, root, launch):
    ran = tmp_path / "ran.txt"
    ignored = [".x.sh", "x.sh~", "x.sh.swp", ".x.sh.swp", "#x.sh#", "x.sh.tmp", "notes.txt"]
    for name in ignored:
        write_script(root / "queue" / name, job_text(f"echo {q(name)} >> {q(ran)}"))
    proc = launch.run(root, "--slots", "1", "--drain")
    assert proc.wait() == 0
    assert not ran.exists(), read_lines(ran)
    assert names_in(root, "queue") == sorted(ignored), snapshot(root)
    assert names_in(root, "failed") == [] and names_in(root, "completed") == []
    # and they stay ignored while the dispatcher works, with events arriving
    proc = launch.run(root, "--slots", "1")
    wait_idle(root, 2)
    write_script(root / "queue" / ".y.sh", job_text(f"echo .y.sh >> {q(ran)}"))
    write_script(root / "queue" / "z.sh", job_text())
    wait_state(root, "z.sh", "completed", proc=proc)
    wait_idle(root, 3)
    assert not ran.exists()
    assert ".x.sh" not in logfile_text(root) and ".y.sh" not in logfile_text(root)


def test_polls_every_wait_seconds_without_file_events(tmp_path, root, launch):
    """With watchdog unavailable the dispatcher falls back to scanning every --wait s."""
    blocker = tmp_path / "no_watchdog" / "watchdog"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('watchdog disabled by the test')\n")
    env = {**job_env(), "PYTHONPATH": os.pathsep.join(
        filter(None, [str(blocker.parent), os.environ.get("PYTHONPATH")]))}
    proc = launch.run(root, "--slots", "1", "--wait", "0.2", env=env)
    wait_idle(root)
    write_script(root / "queue" / "a.sh", job_text())
    wait_state(root, "a.sh", "completed", timeout=5, proc=proc)
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0


def test_a_failed_jobs_reason_says_why(root, launch):
    """The reason carries the last line of the log that says why: a Python exception, a
    command that is not there (issue 12: not just "exit code 1")."""
    write_script(root / "queue" / "a_py.sh", job_text(
        f"{q(sys.executable)} -c \"raise ValueError('bogus activation')\" || exit $?"))
    write_script(root / "queue" / "b_cmd.sh", job_text("no-such-command-here --lr 3 || exit $?"))
    write_script(root / "queue" / "c_quiet.sh", job_text("echo fine", exit_code=4))
    proc = launch.run(root, "--slots", "1", "--drain")
    assert proc.wait(30) == 1
    assert record(root, "a_py.sh")["reason"] == "exit code 1: ValueError: bogus activation"
    reason = record(root, "b_cmd.sh")["reason"]
    assert reason.startswith("exit code 127: ") and "no-such-command-here" in reason, reason
    assert reason.endswith("not found"), reason
    assert record(root, "c_quiet.sh")["reason"] == "exit code 4"
