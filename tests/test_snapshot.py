"""Snapshots and capsules (issue 15): the pure parts, and snapshots of real git work trees
taken in tmp_path, bad input included (a planted symlink, a broken snapshot, a file that
vanishes between the listing and the copy, a huge untracked file)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from gpudispatch import capsule, control, snapshot
from gpudispatch.layout import Layout
from gpudispatch.snapshot import SnapshotError


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout


def make_repo(path: Path) -> Path:
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "t@example.com")
    git(path, "config", "user.name", "t")
    (path / "train.py").write_text("print('v1')\n")
    (path / "sub").mkdir()
    (path / "sub" / "run.sh").write_text("#!/bin/sh\npython3 ../train.py\n")
    (path / ".gitignore").write_text("*.ckpt\n")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "one")
    return path


@pytest.fixture
def repo(tmp_path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.fixture
def layout(tmp_path) -> Layout:
    return Layout(tmp_path / "root").create()


# --------------------------------------------------------------------------- pure parts
def test_parse_status_reads_branch_commit_changes_and_untracked():
    out = (b"# branch.oid " + b"a" * 40 + b"\0# branch.head main\0"
           b"1 .M N... 100644 100644 100644 " + b"1" * 40 + b" " + b"1" * 40 + b" train.py\0"
           b"1 D. N... 100644 000000 000000 " + b"2" * 40 + b" " + b"0" * 40 + b" old.py\0"
           b"1 .M SC.. 160000 160000 160000 " + b"3" * 40 + b" " + b"3" * 40 + b" vendor\0"
           b"? notes with space.txt\0? nested/\0")
    state = snapshot.parse_status("/top", out)
    assert (state.commit, state.branch) == ("a" * 40, "main")
    assert state.touched == ["train.py", "old.py"]
    assert state.untracked == ["notes with space.txt"]
    assert state.nested == ["vendor", "nested/"]
    assert state.dirty
    empty = snapshot.parse_status("/top", b"# branch.oid (initial)\0# branch.head (detached)\0")
    assert (empty.commit, empty.branch, empty.dirty) == (None, None, False)


def test_with_workdir_goes_after_the_header_so_directives_stay_directives():
    text = "#!/bin/sh\n#GPUDISPATCH --gpus 1\n#SBATCH --mem=1G\n\npython train.py\n"
    out = control.with_workdir(text, "/r/snapshots/abc/tree/my dir")
    lines = out.split("\n")
    assert lines[:4] == text.split("\n")[:4]
    assert lines[4].startswith("cd '/r/snapshots/abc/tree/my dir' || exit 1")
    assert lines[5] == "python train.py"
    from gpudispatch.job import parse_directives

    assert parse_directives(out).gpus == 1


@pytest.mark.parametrize("text,ok", [
    ("echo hi\n", True), ("#!/bin/sh\n", True), ("#!/usr/bin/env bash\n", True),
    ("#!/bin/bash -e\n", True), ("#!/usr/bin/env python3\n", False),
    ("#!/usr/bin/python\n", False), ("#!/usr/bin/env -S zsh -f\n", True),
])
def test_shell_problem_lets_only_shells_take_a_cd(text, ok):
    assert (control.shell_problem(text) is None) == ok


def test_package_lines_read_dist_info_egg_info_and_conda(tmp_path):
    site = tmp_path / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    for name in ("numpy-1.26.4.dist-info", "PyYAML-6.0.1.dist-info",
                 "typing_extensions-4.9.0.dist-info", "six-1.16.0-py3.11.egg-info",
                 "numpy", "README.txt"):
        (site / name).mkdir()
    conda = tmp_path / "conda-meta"
    conda.mkdir()
    (conda / "cudatoolkit-11.8.0-h6a678d5_0.json").write_text("{}")
    lines = capsule.package_lines([str(site), str(conda)])
    assert lines == ["cudatoolkit==11.8.0 (conda h6a678d5_0)", "numpy==1.26.4",
                     "pyyaml==6.0.1", "six==1.16.0", "typing-extensions==4.9.0"]


def test_driver_version_from_proc_text():
    text = ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 "
            "22:23:56 UTC 2024\nGCC version:  gcc version 12.2.0\n")
    assert capsule.driver_version(text) == "550.54.15"
    open_text = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  560.35.03  Release"
    assert capsule.driver_version(open_text) == "560.35.03"
    assert capsule.driver_version("garbage") is None


def test_show_lines_survive_a_capsule_of_another_shape():
    assert capsule.show_lines({})  # no traceback, something to print
    rows = dict(capsule.show_lines({"git": "x", "snapshot": [], "python": 3, "gpu": "?",
                                    "env_names": "PATH", "argv": [1, None]}))
    assert rows["git"] == "not a git work tree" and rows["command"] == "1 None"


def test_read_head_reads_loose_and_packed_refs_and_worktrees(repo, tmp_path):
    commit = git(repo, "rev-parse", "HEAD").strip()
    assert snapshot.read_head(snapshot.git_dir(str(repo))) == (commit, "main")
    git(repo, "pack-refs", "--all")
    assert not (repo / ".git" / "refs" / "heads" / "main").exists()
    assert snapshot.read_head(snapshot.git_dir(str(repo))) == (commit, "main")
    git(repo, "worktree", "add", "-q", "-b", "side", str(tmp_path / "wt"))
    gitdir = snapshot.git_dir(str(tmp_path / "wt"))
    assert snapshot.read_head(gitdir) == (commit, "side")
    git(repo, "checkout", "-q", "--detach")
    assert snapshot.read_head(snapshot.git_dir(str(repo))) == (commit, None)


# --------------------------------------------------------------------------- snapshots
def test_snapshot_holds_the_tree_as_it_is_and_not_what_is_ignored(repo, layout):
    (repo / "train.py").write_text("print('edited, not committed')\n")
    (repo / "notes.txt").write_text("untracked\n")
    (repo / "model.ckpt").write_text("ignored\n")
    (repo / "sub" / "run.sh").unlink()
    (repo / "sub" / "keep.txt").write_text("so sub/ stays\n")
    snap = snapshot.take(layout, str(repo / "sub"))
    tree = Path(snap.tree)
    assert (tree / "train.py").read_text() == "print('edited, not committed')\n"
    assert (tree / "notes.txt").read_text() == "untracked\n"
    assert not (tree / "model.ckpt").exists()
    assert not (tree / "sub" / "run.sh").exists()
    assert snap.workdir == str(tree / "sub")
    marker = json.loads(Path(layout.snapshot_marker(snap.id)).read_text())
    assert marker["commit"] == git(repo, "rev-parse", "HEAD").strip()
    assert marker["deleted"] == ["sub/run.sh"]
    # Content-addressed: the same tree again is the same snapshot, found, not made.
    again = snapshot.take(layout, str(repo))
    assert again.id == snap.id and again.reused
    (repo / "notes.txt").write_text("changed\n")
    assert snapshot.take(layout, str(repo)).id != snap.id
    assert snap.relocate(str(repo / "train.py")) == str(tree / "train.py")
    assert snap.relocate("/elsewhere/x.py") == "/elsewhere/x.py"


def test_symlinks_are_kept_as_symlinks_never_followed(repo, layout, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not code\n")
    os.symlink(outside, repo / "data")            # untracked link to a folder
    os.symlink("train.py", repo / "main.py")     # untracked link to a file
    snap = snapshot.take(layout, str(repo))
    tree = Path(snap.tree)
    assert os.readlink(tree / "data") == str(outside)
    assert os.readlink(tree / "main.py") == "train.py"
    copied = [name for _, _, files in os.walk(layout.snapshots) for name in files]
    assert "secret.txt" not in copied  # the folder it points to was not copied


def test_clean_tree_snapshot_is_named_by_its_commit(repo, layout):
    snap = snapshot.take(layout, str(repo))
    assert snap.id == git(repo, "rev-parse", "HEAD").strip()[:12]
    assert (Path(snap.tree) / "sub" / "run.sh").read_text().startswith("#!/bin/sh")
    assert os.access(Path(snap.tree) / "train.py", os.R_OK)


def test_a_symlink_planted_as_a_snapshot_is_set_aside_never_used(repo, layout, tmp_path):
    snap_id = git(repo, "rev-parse", "HEAD").strip()[:12]
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "tree").mkdir(parents=True)
    (elsewhere / "snapshot.json").write_text(json.dumps({"id": snap_id}))
    layout.snapshots.mkdir()
    os.symlink(elsewhere, layout.snapshot_dir(snap_id))
    snap = snapshot.take(layout, str(repo))
    assert not os.path.islink(snap.tree.removesuffix("/tree"))
    assert (Path(snap.tree) / "train.py").exists()
    assert not (elsewhere / "tree" / "train.py").exists()  # nothing written through it
    assert any("is a symbolic link" in n or "not a snapshot" in n for n in snap.notes), snap.notes
    aside = [p for p in os.listdir(layout.snapshots) if ".bad-" in p]
    assert len(aside) == 1 and os.path.islink(layout.snapshots / aside[0])  # kept


def test_a_broken_snapshot_is_set_aside_and_made_anew(repo, layout):
    snap = snapshot.take(layout, str(repo))
    os.unlink(layout.snapshot_marker(snap.id))
    os.mkdir(layout.snapshot_marker(snap.id))  # a folder where the marker should be
    assert snapshot.usable(layout, snap.id)
    again = snapshot.take(layout, str(repo))
    assert not again.reused and again.notes
    assert snapshot.usable(layout, snap.id) is None


def test_a_snapshot_store_that_is_a_symlink_is_refused(repo, layout, tmp_path):
    (tmp_path / "other").mkdir()
    os.symlink(tmp_path / "other", layout.snapshots)
    with pytest.raises(SnapshotError, match="not a folder"):
        snapshot.take(layout, str(repo))
    assert os.listdir(tmp_path / "other") == []


def test_a_file_that_vanishes_mid_copy_refuses_the_snapshot(repo, layout):
    (repo / "scratch.txt").write_text("soon gone\n")
    state = snapshot.git_state(str(repo))  # listed...
    (repo / "scratch.txt").unlink()          # ...then gone before the copy
    with pytest.raises(SnapshotError, match="scratch.txt vanished while the snapshot"):
        snapshot.take(layout, str(repo), state)
    assert [p for p in os.listdir(layout.snapshots)] == []  # no half-made snapshot left


def test_a_huge_untracked_file_is_refused_in_one_line(repo, layout, monkeypatch):
    monkeypatch.setenv(snapshot.SNAPSHOT_MAX_ENV, "1M")
    with open(repo / "data.bin", "wb") as fh:
        fh.truncate(5 << 20)
    with pytest.raises(SnapshotError) as info:
        snapshot.take(layout, str(repo))
    message = str(info.value)
    assert "data.bin is 5.0 MiB" in message and "\n" not in message
    assert "nothing was queued" in message
    assert os.listdir(layout.snapshots) == []
    monkeypatch.setenv(snapshot.SNAPSHOT_MAX_ENV, "bogus")
    with pytest.raises(SnapshotError, match="GPUDISPATCH_SNAPSHOT_MAX"):
        snapshot.take(layout, str(repo))


def test_a_fifo_is_refused_outside_git_and_left_out_by_git(repo, layout, tmp_path):
    os.mkfifo(repo / "pipe")  # git lists no special file: not in the snapshot
    assert not os.path.lexists(Path(snapshot.take(layout, str(repo)).tree) / "pipe")
    plain = tmp_path / "plain"
    plain.mkdir()
    os.mkfifo(plain / "pipe")  # never opened: nothing blocks
    with pytest.raises(SnapshotError, match="pipe is a FIFO"):
        snapshot.take(layout, str(plain))


def test_outside_git_the_folder_is_copied_below_the_limit(tmp_path, layout, monkeypatch):
    work = tmp_path / "plain"
    (work / "src").mkdir(parents=True)
    (work / "src" / "train.py").write_text("print(1)\n")
    os.symlink("src/train.py", work / "link.py")
    snap = snapshot.take(layout, str(work))
    assert snap.id.startswith("nogit-")
    assert (Path(snap.tree) / "src" / "train.py").read_text() == "print(1)\n"
    assert os.readlink(Path(snap.tree) / "link.py") == "src/train.py"
    assert snap.workdir == snap.tree  # the working directory is what is copied
    monkeypatch.setenv(snapshot.SNAPSHOT_MAX_ENV, "1K")
    (work / "big.dat").write_bytes(b"x" * 4096)
    with pytest.raises(SnapshotError, match="not in a git work tree and holds more than"):
        snapshot.take(layout, str(work))
    monkeypatch.delenv(snapshot.SNAPSHOT_MAX_ENV)
    monkeypatch.setattr(snapshot, "PLAIN_MAX_FILES", 3)
    for i in range(3):
        (work / f"f{i}").write_text("x")
    with pytest.raises(SnapshotError, match="holds more than 3 files"):
        snapshot.take(layout, str(work))


def test_root_inside_the_work_tree_is_not_copied_into_itself(repo):
    layout = Layout(repo / "queue-root").create()
    first = snapshot.take(layout, str(repo))
    (repo / "new.txt").write_text("a change\n")
    second = snapshot.take(layout, str(repo))
    assert first.id != second.id
    assert not (Path(second.tree) / "queue-root").exists()
    assert sorted(os.listdir(second.tree)) == [".gitignore", "new.txt", "sub", "train.py"]


def test_root_inside_the_folder_is_not_copied_into_itself(tmp_path):
    work = tmp_path / "plain"
    work.mkdir()
    (work / "a.py").write_text("1\n")
    layout = Layout(work / "queue-root").create()
    snap = snapshot.take(layout, str(work))
    assert sorted(os.listdir(snap.tree)) == ["a.py"]


# --------------------------------------------------------------------------- capsule
def test_capsule_names_commit_keeps_diff_as_a_file_and_env_names_only(repo, layout,
                                                                       monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    (repo / "train.py").write_text("print('v2')\n")
    cap = capsule.collect(layout, str(repo / "sub"), ["gpudispatch", "submit", "x.sh"])
    gitp = cap["git"]
    assert gitp["commit"] == git(repo, "rev-parse", "HEAD").strip()
    assert gitp["branch"] == "main" and gitp["dirty"] is True
    diff = Path(gitp["diff"])
    assert diff.is_relative_to(layout.capsules) and "+print('v2')" in diff.read_text()
    assert "SECRET_TOKEN" in cap["env_names"] and "hunter2" not in json.dumps(cap)
    assert cap["argv"] == ["gpudispatch", "submit", "x.sh"]
    assert cap["python"]["version"] and Path(cap["python"]["packages"]).is_file()
    assert "pytest==" in Path(cap["python"]["packages"]).read_text()
    # The package list is kept once per environment: a second capsule names the same file.
    again = capsule.collect(layout, str(repo), [])
    assert again["python"]["packages"] == cap["python"]["packages"]
    assert len(os.listdir(layout.capsules / "packages")) == 1
    git(repo, "commit", "-qam", "two")
    clean = capsule.collect(layout, str(repo), [])["git"]
    assert clean["dirty"] is False and clean["diff"] is None


def test_capsule_outside_git_and_without_a_gpu_driver(tmp_path, layout):
    cap = capsule.collect(layout, str(tmp_path), [])
    assert "git" not in cap
    if not os.path.exists(capsule.NVIDIA_VERSION_FILE):
        assert cap["gpu"] is None


def test_package_list_is_kept_once_per_environment_and_follows_installs(tmp_path, layout,
                                                                         monkeypatch):
    prefix = tmp_path / "venv"
    site = prefix / "lib" / "python3.12" / "site-packages"
    (site / "torch-2.3.1.dist-info").mkdir(parents=True)
    (prefix / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.12.4\n")
    monkeypatch.setenv("VIRTUAL_ENV", str(prefix))
    first = capsule.python_part(layout)
    assert first["version"] == "3.12.4" and first["prefix"] == str(prefix)
    assert Path(first["packages"]).read_text() == "torch==2.3.1\n"
    assert capsule.python_part(layout) == first  # cached: same file, nothing listed again
    (site / "numpy-2.0.0.dist-info").mkdir()  # an install changes the folder's mtime
    os.utime(site, ns=(1, 1))  # (made certain: a coarse clock could keep the mtime)
    second = capsule.python_part(layout)
    assert second["packages"] != first["packages"]
    assert Path(second["packages"]).read_text() == "numpy==2.0.0\ntorch==2.3.1\n"
    assert Path(first["packages"]).exists()  # the earlier list stays for earlier runs


def test_gpu_part_asks_nvidia_smi_once_per_host_and_driver(tmp_path, layout, monkeypatch):
    version = tmp_path / "nvidia-version"
    version.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue\n")
    monkeypatch.setattr(capsule, "NVIDIA_VERSION_FILE", str(version))
    calls = tmp_path / "calls"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    smi = bindir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho x >> {calls}\necho '| NVIDIA-SMI 550.54.15   "
                   "Driver Version: 550.54.15   CUDA Version: 12.4     |'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)  # no NVML here
    part = capsule.gpu_part(layout)
    assert part == {"driver": "550.54.15", "cuda": "12.4"}
    assert capsule.gpu_part(layout) == part
    assert calls.read_text() == "x\n"  # asked once; the second came from the cache
    version.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  560.1  Tue\n")
    assert capsule.gpu_part(layout)["driver"] == "560.1"
    assert calls.read_text() == "x\nx\n"  # a new driver is asked again
    smi.unlink()
    version.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.2  Tue\n")
    assert capsule.gpu_part(layout) == {"driver": "570.2", "cuda": None}  # never fails
    monkeypatch.setattr(capsule, "NVIDIA_VERSION_FILE", str(tmp_path / "absent"))
    assert capsule.gpu_part(layout) is None


def test_a_snapshot_made_unreadable_is_set_aside_and_made_anew(tmp_path):
    """Run as a second user (root reads anything): a forked child drops to
    ``gdtestuser`` and takes snapshots in a tree of its own."""
    import ctypes  # noqa: F401 - loaded here: the child cannot read root's stdlib
    import pwd
    import shutil
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("needs root, to act as a second user")
    try:
        other = pwd.getpwnam("gdtestuser")
    except KeyError:
        pytest.skip("no user gdtestuser (scripts/test.sh creates it)")
    base = Path(tempfile.mkdtemp(prefix="gd-snap-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        os.chown(base, other.pw_uid, other.pw_gid)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            result = {}
            try:
                os.close(read)
                os.setgroups([])
                os.setgid(other.pw_gid)
                os.setuid(other.pw_uid)
                os.environ["HOME"] = str(base)
                repo = make_repo(base / "repo")
                layout = Layout(base / "root").create()
                first = snapshot.take(layout, str(repo))
                os.chmod(layout.snapshot_dir(first.id), 0)
                result["problem"] = snapshot.usable(layout, first.id)
                second = snapshot.take(layout, str(repo))
                result.update(same=second.id == first.id, reused=second.reused,
                              notes=second.notes, listing=sorted(os.listdir(layout.snapshots)),
                              ok=(Path(second.tree) / "train.py").read_text())
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                result["error"] = repr(exc)
            os.write(write, json.dumps(result).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as fh:
            result = json.loads(fh.read() or b"{}")
        os.waitpid(pid, 0)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert "error" not in result, result
    assert "cannot be read" in result["problem"] and "Permission denied" in result["problem"]
    assert result["same"] and not result["reused"] and result["ok"] == "print('v1')\n"
    assert "set aside" in result["notes"][0]
    assert len([n for n in result["listing"] if ".bad-" in n]) == 1  # kept, not deleted


def test_run_quiet_output_errors_exit_status_and_time_limit():
    code, out, err = snapshot.run_quiet(
        ["sh", "-c", "head -c 200000 /dev/zero; head -c 100000 /dev/zero >&2; exit 3"],
        None, 10)
    assert (code, len(out), len(err)) == (3, 200000, 100000)  # both pipes drained
    with pytest.raises(TimeoutError):
        snapshot.run_quiet(["sleep", "30"], None, 0.2)
    with pytest.raises(FileNotFoundError):
        snapshot.run_quiet(["no-such-program-here"], None, 1)
    with pytest.raises(SnapshotError, match="git rev-parse in"):
        snapshot.git("/", "rev-parse", "--verify", "no-such-ref")
