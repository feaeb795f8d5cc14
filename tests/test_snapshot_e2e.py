"""Reproducible runs end to end (issue 15): a real git repository in tmp_path, jobs
queued with ``--snapshot``, the tree edited and committed after the submit, then a real
dispatcher (``gpudispatch run --drain``) runs them: they run the code as submitted, and
their records name the commit and keep the diff. Also: a 100-run sweep stores one
snapshot, ``show``, ``rerun``, the default from the environment, refusals in one line,
and the Slurm backend."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from conftest import PYTHON, cli, job_env, names_in, record

pytestmark = pytest.mark.slow


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture
def repo(tmp_path) -> Path:
    path = tmp_path / "repo"
    (path / "sub").mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "t@example.com")
    git(path, "config", "user.name", "t")
    (path / "train.py").write_text("print('committed v1')\n")
    (path / "sub" / "run.sh").write_text(
        f"#!/bin/sh\n#GPUDISPATCH --retries 0\n{PYTHON} ../train.py\n")
    (path / "train.sh").write_text('#!/bin/sh\necho "train.sh v1 $*"\n')
    git(path, "add", "-A")
    git(path, "commit", "-qm", "v1")
    return path


def snapshots(root: Path) -> list[str]:
    folder = root / "snapshots"
    return sorted(p for p in os.listdir(folder) if not p.startswith(".")) if folder.exists() else []


def whole(root: Path, name: str) -> dict:
    """The whole capsule a record points to (kept once per submit under capsules/)."""
    path = Path(record(root, name)["extra"]["capsule"]["file"])
    assert path.parent == root / "capsules"
    return json.loads(path.read_text())


def drain(root: Path, cwd: Path, slots: int = 1, timeout: float = 60) -> int:
    """A real dispatcher that runs what is queued, then exits (started elsewhere than the
    repository: the snapshot, not the dispatcher's folder, decides where jobs run)."""
    proc = subprocess.run([PYTHON, "-m", "gpudispatch", "run", "-q", "--dir", str(root),
                           "--slots", str(slots), "--drain"], cwd=cwd, env=job_env(),
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode


def test_queued_jobs_run_the_code_as_submitted_after_edit_and_commit(tmp_path, repo):
    root = tmp_path / "root"
    submitted = git(repo, "rev-parse", "HEAD").strip()
    (repo / "train.py").write_text("print('edited at submit, not committed')\n")
    (repo / "helper.txt").write_text("untracked at submit\n")
    sub = repo / "sub"
    cli("submit", "--dir", str(root), "--snapshot", "run.sh", cwd=sub, check=True)
    cli("submit", "--dir", str(root), "--snapshot", "--name", "cmd.sh", "--",
        PYTHON, "-c", "import os; print(os.getcwd()); print(open('../helper.txt').read())",
        cwd=sub, check=True)
    lines = tmp_path / "lines.txt"
    lines.write_text(f"{PYTHON} ../train.py\ncat ../helper.txt\n")
    each = cli("submit", "--dir", str(root), "--snapshot", "--each-line", str(lines),
               cwd=sub, check=True).stdout.split()
    cli("submit", "--dir", str(root), "--name", "live.sh", "--", PYTHON, "../train.py",
        cwd=sub, check=True)  # no snapshot: runs what is there at run time
    assert len(snapshots(root)) == 1  # one tree state, one snapshot

    # After the submit: edit, commit, switch branches, delete the untracked file.
    (repo / "train.py").write_text("print('v2, committed after submit')\n")
    git(repo, "commit", "-qam", "v2")
    git(repo, "checkout", "-q", "-b", "later")
    (repo / "helper.txt").unlink()

    assert drain(root, cwd=tmp_path, slots=2) == 0, names_in(root, "failed")
    logs = root / "logs"
    assert (logs / "run.sh.log").read_text() == "edited at submit, not committed\n"
    assert (logs / "live.sh.log").read_text() == "v2, committed after submit\n"
    snap_id = snapshots(root)[0]
    tree = root / "snapshots" / snap_id / "tree"
    assert (logs / "cmd.sh.log").read_text() == f"{tree / 'sub'}\nuntracked at submit\n\n"
    assert [(logs / f"{n}.log").read_text() for n in each] == [
        "edited at submit, not committed\n", "untracked at submit\n"]

    summary = record(root, "run.sh")["extra"]["capsule"]
    cap = whole(root, "run.sh")
    assert summary["commit"] == submitted and summary["snapshot"] == snapshots(root)[0]
    assert summary["dirty"] is True and summary["diff"] == cap["git"]["diff"]
    assert cap["git"]["commit"] == submitted and cap["git"]["branch"] == "main"
    assert cap["git"]["dirty"] is True
    diff = Path(cap["git"]["diff"]).read_text()
    assert "-print('committed v1')" in diff
    assert "+print('edited at submit, not committed')" in diff
    assert cap["git"]["untracked"] == ["helper.txt"]
    assert cap["snapshot"]["id"] == snap_id and cap["snapshot"]["workdir"] == str(tree / "sub")
    assert cap["argv"][-2:] == ["--snapshot", "run.sh"]
    assert "PATH" in cap["env_names"]
    assert cap["python"]["version"] and Path(cap["python"]["packages"]).is_file()
    live = whole(root, "live.sh")
    assert "snapshot" not in live and live["git"]["commit"] == submitted
    assert record(root, "live.sh")["extra"]["capsule"]["snapshot"] is None

    # show: the capsule in words; an unknown name exits 2 in one line.
    shown = cli("show", "--dir", str(root), "run.sh", check=True).stdout
    assert submitted in shown and snap_id in shown and cap["git"]["diff"] in shown
    as_json = json.loads(cli("show", "--dir", str(root), "--json", "run.sh",
                             check=True).stdout)
    assert as_json["capsule"] == cap
    unknown = cli("show", "--dir", str(root), "nope.sh")
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1
    # A record pointing its capsule outside ROOT/capsules is not followed.
    forged = json.loads((root / "logs" / "live.sh.json").read_text())
    forged["extra"]["capsule"]["file"] = "/etc/passwd"
    (root / "logs" / "live.sh.json").write_text(json.dumps(forged))
    out = cli("show", "--dir", str(root), "live.sh", check=True).stdout
    assert "not under" in out and "root:" not in out
    assert "no job named 'nope.sh'" in unknown.stderr

    # rerun: the same script and snapshot under a new name; history kept.
    again = cli("rerun", "--dir", str(root), "run.sh", check=True)
    assert again.stdout == "run-2.sh\n"
    assert drain(root, cwd=tmp_path) == 0
    assert (logs / "run-2.sh.log").read_text() == "edited at submit, not committed\n"
    rerun_rec = record(root, "run-2.sh")
    assert rerun_rec["extra"]["rerun_of"] == "run.sh"
    assert rerun_rec["extra"]["capsule"] == summary  # the same capsule file and snapshot
    assert record(root, "run.sh")["exit_code"] == 0  # the first run's record stands
    assert "re-run of" in cli("show", "--dir", str(root), "run-2.sh", check=True).stdout
    warned = cli("rerun", "--dir", str(root), "live.sh", check=True)
    assert "without a snapshot" in warned.stderr and warned.stdout == "live-2.sh\n"


def test_a_100_run_sweep_stores_one_snapshot_and_runs_the_submitted_program(tmp_path,
                                                                            repo):
    root = tmp_path / "root"
    spec = repo / "sweep.yaml"
    spec.write_text("name: toy\nprogram: train.sh\ninterpreter: sh\ninterpreter_options: ''\n"
                    "method: grid\nparameters:\n  seed:\n    values: ["
                    + ", ".join(map(str, range(100))) + "]\n")
    (repo / "train.sh").write_text('#!/bin/sh\necho "train.sh at submit $*"\n')
    out = cli("sweep", "--dir", str(root), "--snapshot", str(spec), cwd=repo, check=True)
    assert "100" in out.stdout
    assert len(snapshots(root)) == 1
    (repo / "train.sh").write_text('#!/bin/sh\necho "edited after submit $*"\n')
    git(repo, "commit", "-qam", "later")
    queued = names_in(root, "queue")
    assert len(queued) == 100
    snap_id = snapshots(root)[0]
    script = (root / "queue" / queued[0]).read_text()
    assert f"snapshots/{snap_id}/tree/train.sh" in script and str(repo / "train.sh") not in script
    caps = {json.dumps(record(root, n)["extra"]["capsule"], sort_keys=True) for n in queued}
    assert len(caps) == 1  # one capsule shared by every run, kept once
    assert [p.suffix for p in (root / "capsules").iterdir() if p.is_file()] == [".json"]
    assert drain(root, cwd=tmp_path, slots=4, timeout=180) == 0
    outputs = {(root / "logs" / f"{n}.log").read_text() for n in queued}
    assert len(outputs) == 100  # each its own seed...
    assert all(o.startswith("train.sh at submit") for o in outputs)  # ...all the old code
    assert len(snapshots(root)) == 1


def test_snapshot_by_default_from_the_environment_and_no_snapshot_overrides(tmp_path, repo):
    root = tmp_path / "root"
    env = {**job_env(), "GPUDISPATCH_SNAPSHOT": "1"}
    cli("submit", "--dir", str(root), "--name", "a.sh", "--", "true", cwd=repo, env=env,
        check=True)
    assert record(root, "a.sh")["extra"]["capsule"]["snapshot"]
    cli("submit", "--dir", str(root), "--no-snapshot", "--name", "b.sh", "--", "true",
        cwd=repo, env=env, check=True)
    assert record(root, "b.sh")["extra"]["capsule"]["snapshot"] is None
    cli("submit", "--dir", str(root), "--name", "c.sh", "--", "true", cwd=repo, check=True)
    assert record(root, "c.sh")["extra"]["capsule"]["snapshot"] is None
    assert whole(root, "c.sh")["git"]["commit"]  # a capsule in every record


def test_refusals_are_one_line_and_queue_nothing(tmp_path, repo):
    root = tmp_path / "root"
    env = {**job_env(), "GPUDISPATCH_SNAPSHOT_MAX": "1M"}
    with open(repo / "data.bin", "wb") as fh:
        fh.truncate(3 << 20)
    huge = cli("submit", "--dir", str(root), "--snapshot", "sub/run.sh", cwd=repo, env=env)
    assert huge.returncode == 1 and huge.stderr.count("\n") == 1, huge.stderr
    assert "data.bin is 3.0 MiB" in huge.stderr and "Traceback" not in huge.stderr
    (repo / "data.bin").unlink()
    (repo / "job.sh").write_text("#!/usr/bin/env python3\nprint(1)\n")
    py = cli("submit", "--dir", str(root), "--snapshot", "job.sh", cwd=repo)
    assert py.returncode == 1 and "runs through python3, not a shell" in py.stderr
    assert py.stderr.count("\n") == 1
    assert names_in(root, "queue") == []
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "big").write_bytes(b"x" * (2 << 20))
    out = cli("submit", "--dir", str(root), "--snapshot", "--", "true", cwd=plain, env=env)
    assert out.returncode == 1 and "not in a git work tree" in out.stderr
    assert out.stderr.count("\n") == 1 and names_in(root, "queue") == []


def test_show_a_job_dropped_by_hand_has_no_capsule(tmp_path, root):
    (root / "queue" / "hand.sh").write_text("#!/bin/sh\ntrue\n")
    out = cli("show", "--dir", str(root), "hand.sh", check=True).stdout
    assert "capsule" in out and "none" in out


def test_rerun_refuses_when_its_snapshot_is_gone(tmp_path, repo):
    root = tmp_path / "root"
    cli("submit", "--dir", str(root), "--snapshot", "--name", "a.sh", "--", "true",
        cwd=repo, check=True)
    shutil.rmtree(root / "snapshots" / snapshots(root)[0])
    out = cli("rerun", "--dir", str(root), "a.sh")
    assert out.returncode == 1 and "is missing" in out.stderr
    assert names_in(root, "queue") == ["a.sh"]
    assert cli("rerun", "--dir", str(root), "zz.sh").returncode == 2


@pytest.mark.slurm
@pytest.mark.skipif(shutil.which("sinfo") is None, reason="Slurm client tools not on PATH")
def test_slurm_job_runs_from_the_snapshot(tmp_path, repo):
    up = subprocess.run(["bash", str(Path(__file__).resolve().parent.parent / ".ci"
                                     / "slurm-up.sh")], capture_output=True, text=True,
                        timeout=120)
    assert up.returncode == 0, f"Slurm did not come up: {up.stderr[-200:]}"
    root = tmp_path / "root"
    name = f"t{uuid.uuid4().hex[:8]}-snap.sh"
    (repo / "train.py").write_text("import os; print('at submit', os.getcwd())\n")
    cli("submit", "--dir", str(root), "--snapshot", "--name", name, "--", PYTHON,
        "../train.py", cwd=repo / "sub", check=True)
    (repo / "train.py").write_text("print('edited after submit')\n")
    proc = subprocess.Popen([PYTHON, "-m", "gpudispatch", "run", "-q", "--backend", "slurm",
                             "--dir", str(root), "--wait", "0.2", "--drain"], cwd=tmp_path,
                            env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.wait(120) == 0, proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            subprocess.run(["scancel", f"--name={name}"], capture_output=True, check=False)
    tree = root / "snapshots" / snapshots(root)[0] / "tree"
    rec = record(root, name)
    assert rec["backend"] == "slurm"
    assert Path(rec["log"]).read_text() == f"at submit {tree / 'sub'}\n"
