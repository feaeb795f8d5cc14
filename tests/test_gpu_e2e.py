"""GPU awareness with real dispatchers and a fake GPU probe (this machine has no GPU):
packing by declared memory, GPUs held by foreign processes, out-of-memory retries."""

from __future__ import annotations

import json

import pytest
from conftest import (
    cli,
    job_env,
    job_text,
    open_gate,
    record,
    wait_record,
    wait_state,
    wait_until,
    write_script,
)

GIB = 2**30
pytestmark = pytest.mark.slow


def fake_gpus(path, foreign_on=()):
    gpus = []
    for index in (0, 1):
        held = 40 * GIB if index in foreign_on else 0
        processes = [{"pid": 1, "used_bytes": held, "user": "alice", "command": "python"}]
        gpus.append({"index": index, "name": "Fake H100", "memory_total": 80 * GIB,
                     "memory_used": held, "processes": processes if held else []})
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(gpus))
    tmp.replace(path)


@pytest.fixture
def gpu_env(tmp_path):
    fake = tmp_path / "gpus.json"
    fake_gpus(fake)
    return fake, {**job_env(), "GPUDISPATCH_FAKE_GPUS": str(fake)}


def test_memory_jobs_share_a_gpu_while_their_sums_fit(launch, root, tmp_path, gpu_env):
    fake, env = gpu_env
    gate = tmp_path / "gate"
    for name in ("a.sh", "b.sh", "c.sh"):
        write_script(root / "queue" / name,
                     job_text(gate=gate, header="#GPUDISPATCH --gpu-mem 30G\n"))
    proc = launch.run(root, "--gpus", "0,1", "--gpu-poll", "0.2", env=env)
    for name in ("a.sh", "b.sh", "c.sh"):
        wait_state(root, name, "running", proc=proc)
    placed = {name: wait_record(root, name, lambda r: r.get("pid"))["gpus"]
              for name in ("a.sh", "b.sh", "c.sh")}
    # 30G + 30G fit one 80G GPU; the third would not, so it takes the other GPU.
    assert sorted(map(tuple, placed.values())) == [(0,), (0,), (1,)], placed
    status = cli("status", "--dir", str(root), env=env)
    assert "a.sh (30.0 GiB)" in status.stdout
    open_gate(gate)
    for name in ("a.sh", "b.sh", "c.sh"):
        wait_state(root, name, "completed", proc=proc)


def test_whole_gpu_jobs_never_share(launch, root, tmp_path, gpu_env):
    fake, env = gpu_env
    gate = tmp_path / "gate"
    runs = tmp_path / "runs"
    for name in ("a.sh", "b.sh", "c.sh"):
        write_script(root / "queue" / name, job_text(gate=gate, runs=runs))
    proc = launch.run(root, "--gpus", "0,1", env=env)
    wait_state(root, "a.sh", "running", proc=proc)
    wait_state(root, "b.sh", "running", proc=proc)
    placed = {tuple(wait_record(root, n, lambda r: r.get("pid"))["gpus"]) for n in ("a.sh", "b.sh")}
    assert placed == {(0,), (1,)}
    assert (root / "queue" / "c.sh").exists()  # no GPU left: it waits
    open_gate(gate)
    wait_state(root, "c.sh", "completed", proc=proc)


def test_gpu_held_by_foreign_process_is_busy_until_freed(launch, root, tmp_path, gpu_env):
    fake, env = gpu_env
    fake_gpus(fake, foreign_on=(0, 1))
    runs = tmp_path / "runs"
    write_script(root / "queue" / "a.sh", job_text(runs=runs))
    proc = launch.run(root, "--gpus", "0,1", "--gpu-poll", "0.1", env=env)
    wait_until(lambda: (root / ".gpudispatch" / "gpus.json").exists(), 10)
    status = cli("status", "--dir", str(root), env={**env, "COLUMNS": "200"})  # one line
    assert "held by alice" in status.stdout
    assert not runs.exists() and (root / "queue" / "a.sh").exists()
    fake_gpus(fake, foreign_on=(0,))
    wait_state(root, "a.sh", "completed", proc=proc)
    assert record(root, "a.sh")["gpus"] == [1]


def test_foreign_processes_ignored_when_asked(launch, root, tmp_path, gpu_env):
    fake, env = gpu_env
    fake_gpus(fake, foreign_on=(0, 1))
    write_script(root / "queue" / "a.sh", job_text())
    proc = launch.run(root, "--gpus", "0,1", "--no-respect-foreign", env=env)
    wait_state(root, "a.sh", "completed", proc=proc)


def test_out_of_memory_is_recognised_and_retried_alone(launch, root, tmp_path, gpu_env):
    fake, env = gpu_env
    gate = tmp_path / "gate"
    # A packed neighbour keeps GPU 0 partly used the whole time.
    write_script(root / "queue" / "a-neighbour.sh",
                 job_text(gate=gate, header="#GPUDISPATCH --gpu-mem 10G\n"))
    oom = (
        'echo "attempt $GPUDISPATCH_ATTEMPT on $CUDA_VISIBLE_DEVICES"\n'
        'if [ "$GPUDISPATCH_ATTEMPT" = 1 ]; then\n'
        '  echo "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB" >&2\n'
        "  exit 1\nfi\n"
    )
    proc = launch.run(root, "--gpus", "0,1", "--gpu-poll", "0.2", env=env)
    wait_state(root, "a-neighbour.sh", "running", proc=proc)
    write_script(root / "queue" / "b-oom.sh",
                 job_text(oom, header="#GPUDISPATCH --gpu-mem 10G --oom-retries 1\n"))
    rec = wait_record(root, "b-oom.sh", lambda r: r.get("attempts") == 2 and r.get("ended_at"))
    wait_state(root, "b-oom.sh", "completed", proc=proc)
    first = (root / "logs" / "b-oom.sh.log").read_text()
    second = (root / "logs" / "b-oom.sh.2.log").read_text()
    # First run packed beside the neighbour (best fit); the retry ran alone on GPU 1.
    assert "attempt 1 on 0" in first and "CUDA out of memory" in first
    assert "attempt 2 on 1" in second
    assert rec["extra"]["run_alone"] is True
    open_gate(gate)
    wait_state(root, "a-neighbour.sh", "completed", proc=proc)


def test_out_of_memory_without_retries_fails_with_reason_oom(launch, root, gpu_env):
    fake, env = gpu_env
    write_script(root / "queue" / "oom.sh",
                 job_text('echo "RuntimeError: CUDA out of memory." >&2', exit_code=1))
    proc = launch.run(root, "--gpus", "0,1", "--drain", env=env)
    assert proc.wait() == 1  # --drain: a job failed
    assert record(root, "oom.sh")["reason"] == "oom"
    assert (root / "failed" / "oom.sh").exists()


def test_jobs_number_gpus_as_nvidia_smi_does(launch, root, tmp_path):
    out = tmp_path / "order"
    write_script(root / "queue" / "a.sh",
                 job_text(f'echo "$CUDA_DEVICE_ORDER $CUDA_VISIBLE_DEVICES" > {out}'))
    env = {k: v for k, v in job_env().items() if k != "CUDA_DEVICE_ORDER"}
    proc = launch.run(root, "--gpus", "1", "--drain", env=env)
    assert proc.wait() == 0
    assert out.read_text().split() == ["PCI_BUS_ID", "1"]
