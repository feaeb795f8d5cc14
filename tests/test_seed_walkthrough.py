"""Seed parity: ``jobdispatcher --gpu N --dir D`` does what the seed README promises."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from conftest import (
    BIN,
    REPO,
    cli,
    gate_wait,
    job_text,
    log_messages,
    logfile_text,
    open_gate,
    q,
    read_lines,
    record,
    snapshot,
    wait_idle,
    wait_lines,
    wait_state,
    wait_until,
    where,
    write_script,
)

pytestmark = pytest.mark.slow

STARTED = "INFO: ------------ Job Dispatcher Started ------------"
IDLE = "INFO: Job queue empty. Waiting..."


def test_help_shows_the_seed_flags():
    result = subprocess.run([str(BIN / "jobdispatcher"), "-h"], capture_output=True, text=True)
    assert result.returncode == 0
    usage = result.stdout
    assert "Python script to automate the execution of shell scripts on GPUs." in usage
    assert "--gpu GPU" in usage
    assert "--dir DIR" in usage
    assert "--wait SEC" in usage
    assert "Directory name for queues (default: '../')" in usage


def test_creates_gpuN_under_default_dir_and_logs_started_then_idle(tmp_path, launch):
    work = tmp_path / "repo"
    work.mkdir()
    proc = launch.seed(3, None, cwd=work)  # no --dir: the seed's default is ../
    root = tmp_path / "gpu3"
    wait_idle(root)
    for sub in ("queue", "completed", "failed"):
        assert (root / sub).is_dir(), sub
    assert (root / "logfile.txt").is_file()
    assert log_messages(root)[:2] == [STARTED, IDLE]
    assert not (work / "gpu3").exists()
    assert proc.alive()


def test_readme_walkthrough(tmp_path, launch):
    """The seed README, step by step, with the examples this project ships."""
    work = tmp_path / "repo"
    work.mkdir()
    root = tmp_path / "gpu0"
    (root / "queue").mkdir(parents=True)
    # `cp examples/script*.sh . ; chmod +x ; mv script*.sh ../gpu0/queue`
    for name in ("script01.sh", "script02.sh", "script03.sh"):
        shutil.copy(REPO / "examples" / name, work / name)
        os.chmod(work / name, 0o755)
        os.rename(work / name, root / "queue" / name)
    proc = launch.seed(0, tmp_path, cwd=work)  # `jobdispatcher --gpu 0 --dir ../`
    for name in ("script01.sh", "script02.sh", "script03.sh"):
        wait_state(root, name, "completed", proc=proc)
    wait_idle(root)
    assert log_messages(root) == [
        STARTED,
        "INFO: 3 new jobs added to queue ['script01.sh', 'script02.sh', 'script03.sh']",
        "INFO: Running job script01.sh...",
        "INFO: script01.sh returned 0",
        "INFO: Running job script02.sh...",
        "INFO: script02.sh returned 0",
        "INFO: Running job script03.sh...",
        "INFO: script03.sh returned 0",
        IDLE,
    ]
    # Each ran on GPU 0, from the folder the dispatcher was started in; output kept.
    out = (root / "logs" / "script02.sh.log").read_text()
    assert f"script02: GPU '0' in {work}" in out
    assert "script02: done" in out

    # `cp examples/bad.sh . ; chmod +x bad.sh ; mv bad.sh ../gpu0/queue`
    shutil.copy(REPO / "examples" / "bad.sh", work / "bad.sh")
    os.chmod(work / "bad.sh", 0o755)
    os.rename(work / "bad.sh", root / "queue" / "bad.sh")
    wait_state(root, "bad.sh", "failed", proc=proc)
    wait_idle(root, count=2)
    assert log_messages(root)[9:] == [
        "INFO: 1 new jobs added to queue ['bad.sh']",
        "INFO: Running job bad.sh...",
        "WARNING: bad.sh returned 2",
        IDLE,
    ]
    assert sorted(os.listdir(root / "completed")) == ["script01.sh", "script02.sh", "script03.sh"]
    assert os.listdir(root / "failed") == ["bad.sh"]
    assert record(root, "bad.sh")["exit_code"] == 2

    # `gpudispatch status` works on the seed root.
    result = cli("status", "--dir", str(root), "--json", check=True)
    jobs = {job["name"]: job for job in json.loads(result.stdout)}
    assert {n: j["state"] for n, j in jobs.items()} == {
        "script01.sh": "completed", "script02.sh": "completed", "script03.sh": "completed",
        "bad.sh": "failed",
    }
    assert jobs["bad.sh"]["exit_code"] == 2 and jobs["bad.sh"]["gpus"] == [0]
    assert proc.alive()


def test_gpu_id_sets_cuda_visible_devices_and_cwd(tmp_path, launch):
    work = tmp_path / "here"
    work.mkdir()
    root = tmp_path / "gpu5"
    out = tmp_path / "seen.txt"
    write_script(root / "queue" / "probe.sh",
                 job_text(f'echo "$CUDA_VISIBLE_DEVICES|$(pwd)" > {q(out)}'))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "9"}
    proc = launch.seed(5, tmp_path, "--drain", cwd=work, env=env)
    assert proc.wait() == 0
    assert out.read_text().strip() == f"5|{work}"
    assert where(root, "probe.sh") == "completed"


def test_alphanumeric_order(tmp_path, launch):
    root = tmp_path / "gpu0"
    runs = tmp_path / "runs.txt"
    names = ["b.sh", "a10.sh", "B.sh", "a2.sh", "a1.sh", "_x.sh", "0z.sh"]
    for name in names:  # created in an order that is neither sorted nor reversed
        write_script(root / "queue" / name, job_text(runs=runs))
    proc = launch.seed(0, tmp_path, "--drain", cwd=tmp_path)
    assert proc.wait() == 0
    assert read_lines(runs) == sorted(names)


def test_removed_script_is_not_run_and_added_ones_run_after(tmp_path, launch):
    root = tmp_path / "gpu0"
    runs = tmp_path / "runs.txt"
    gate = tmp_path / "gate"
    write_script(root / "queue" / "m_first.sh", job_text(runs=runs, gate=gate))
    write_script(root / "queue" / "n_removed.sh", job_text(runs=runs))
    write_script(root / "queue" / "z_kept.sh", job_text(runs=runs))
    proc = launch.seed(0, tmp_path, cwd=tmp_path)
    wait_lines(runs, 1)
    assert read_lines(runs) == ["m_first.sh"]
    os.unlink(root / "queue" / "n_removed.sh")  # removed before it starts
    # Added while m_first.sh runs: alphanumerically first, still taken after it.
    write_script(root / "queue" / "a_added.sh", job_text(runs=runs))
    wait_until(lambda: "['a_added.sh']" in logfile_text(root),
               message=lambda: logfile_text(root))
    assert read_lines(runs) == ["m_first.sh"]  # nothing else started while it runs
    open_gate(gate)
    wait_state(root, "z_kept.sh", "completed", proc=proc)
    wait_idle(root)
    assert read_lines(runs) == ["m_first.sh", "a_added.sh", "z_kept.sh"], snapshot(root)
    assert where(root, "n_removed.sh") is None
    assert not (root / "logs" / "n_removed.sh.log").exists()
    first, added = record(root, "m_first.sh"), record(root, "a_added.sh")
    assert added["started_at"] >= first["ended_at"]


def test_seed_dispatcher_keeps_one_job_at_a_time(tmp_path, launch):
    """One GPU, one job: the second waits although nothing else limits it."""
    root = tmp_path / "gpu1"
    runs = tmp_path / "runs.txt"
    gate = tmp_path / "gate"
    write_script(root / "queue" / "a.sh", job_text(runs=runs, gate=gate))
    write_script(root / "queue" / "b.sh", job_text(runs=runs) + gate_wait(gate))
    proc = launch.seed(1, tmp_path, "--drain", cwd=tmp_path)
    wait_lines(runs, 1)
    wait_until(lambda: "Running job a.sh..." in logfile_text(root))
    assert where(root, "b.sh") == "queue"
    open_gate(gate)
    assert proc.wait() == 0
    assert read_lines(runs) == ["a.sh", "b.sh"]
