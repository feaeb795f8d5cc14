"""``submit --each-line FILE``: one job per line, run in line order by a real dispatcher,
each line a command as ``sh -c LINE`` takes it; bad input is one clear line."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON, cli, job_env, names_in, q, read_lines

LINE_KINDS = [
    "echo plain",
    "echo 'two  spaces' \"and quotes\" $((1 + 2))",  # the shell sees the line as typed
    "FOO=bar; echo \"foo is $FOO\" | tr a-z A-Z",  # pipes, assignments, several commands
    "pwd",  # the working directory submit was called from
    "echo unicode ✓ é",
]


def submit_lines(root: Path, text: str, *flags: str, cwd: Path | None = None,
                 stdin: bool = False) -> subprocess.CompletedProcess:
    """``gpudispatch submit --each-line`` with ``text`` as a file, or on standard input."""
    args = [PYTHON, "-m", "gpudispatch", "submit", "--dir", str(root), *flags, "--each-line"]
    if stdin:
        args.append("-")
    else:
        source = root.parent / "commands.txt"
        source.write_text(text)
        args.append(str(source))
    return subprocess.run(args, input=text if stdin else None, env=job_env(), cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def drain(launch, root: Path) -> None:
    proc = launch.run(root, "--slots", "1", "--drain")
    assert proc.wait(60) == 0, proc.output()


def log_of(root: Path, name: str) -> str:
    return (root / "logs" / f"{name}.log").read_text()


@pytest.mark.parametrize("stdin", [False, True], ids=["file", "stdin"])
def test_each_line_runs_in_line_order_with_its_output_in_logs(root, launch, tmp_path,
                                                               stdin) -> None:
    runs = tmp_path / "runs"
    work = tmp_path / "work dir"
    work.mkdir()
    lines = [f"echo {i} >> {q(runs)}; {cmd}" for i, cmd in enumerate(LINE_KINDS)]
    # blank and white-space lines are skipped; a CRLF line ending is not part of a command
    text = "\n\n".join(lines[:2]) + "\n   \n" + "\r\n".join(lines[2:]) + "\r\n\n"
    result = submit_lines(root, text, cwd=work, stdin=stdin)
    assert result.returncode == 0, result.stderr
    names = result.stdout.split()
    assert len(names) == len(LINE_KINDS) and names == sorted(names)  # sorted = run order
    assert names_in(root, "queue") == names
    drain(launch, root)
    assert names_in(root, "completed") == names
    assert read_lines(runs) == [str(i) for i in range(len(LINE_KINDS))]
    outputs = [log_of(root, name) for name in names]
    assert outputs == ["plain\n", "two  spaces and quotes 3\n", "FOO IS BAR\n",
                       f"{work}\n", "unicode ✓ é\n"]


def test_each_line_takes_the_directives_and_later_batches_run_after(root, launch,
                                                                      tmp_path) -> None:
    runs = tmp_path / "runs"
    first = submit_lines(root, f"echo a >> {q(runs)}\necho b >> {q(runs)}\n", "--retries",
                         "2", "--timeout", "1h")
    assert first.returncode == 0, first.stderr
    second = submit_lines(root, f"echo c >> {q(runs)}\n")
    assert second.returncode == 0, second.stderr
    names = first.stdout.split() + second.stdout.split()
    assert names_in(root, "queue") == names
    for name in first.stdout.split():
        assert "#GPUDISPATCH --timeout 1h --retries 2\n" in (root / "queue" / name).read_text()
    drain(launch, root)
    assert read_lines(runs) == ["a", "b", "c"]


def test_each_line_script_holds_the_line_as_typed_after_the_directives(root, tmp_path):
    """The line is the script's own command (no ``exec sh -c``: one process fewer per
    job), after the directives, the kept environment and the ``cd`` ``submit --`` makes."""
    line = "python train.py --lr 1e-3 'a b' \"$HOME\" | tee out.txt"
    ours = submit_lines(root, line + "\n", "--gpus", "1", cwd=tmp_path)
    theirs = cli("submit", "--dir", str(root), "--gpus", "1", "--name", "ref.sh", "--",
                 "sh", "-c", line, cwd=tmp_path, check=True)
    assert ours.returncode == 0, ours.stderr
    (name,) = ours.stdout.split()
    assert name.endswith("-1-python.sh")
    made = (root / "queue" / name).read_text().splitlines()
    reference = (root / "queue" / theirs.stdout.strip()).read_text().splitlines()
    assert made[-1] == line  # as typed
    # the same directives, environment and folder as the command submit -- makes
    assert [m for m in made if not m.startswith("#") or m.startswith("#GPUDISPATCH")][:-1] \
        == [r for r in reference if not r.startswith("#") or r.startswith("#GPUDISPATCH")][:-1]


@pytest.mark.parametrize("data, flags, fragment", [
    (None, (), "cannot read"),  # no such file
    (b"", (), "holds no command"),
    (b"\n  \n\t\r\n", (), "holds no command"),
    (b"echo a\n\x00\x01\x02binary", (), "is binary (a NUL byte on line 2)"),
    (b"echo ok\necho \xff\xfe\n", (), "is not UTF-8 text (line 2)"),
    (b"echo a\n", ("--name", "x.sh"), "--name is for one command"),
    (b"echo a\n", ("extra.sh",), "give no SCRIPT"),
    (b"echo a\n", ("--gpus", "-1"), "bad option"),
])
def test_bad_input_is_one_line_and_queues_nothing(tmp_path, data, flags, fragment) -> None:
    root = tmp_path / "q"
    source = tmp_path / "commands.txt"
    if data is not None:
        source.write_bytes(data)
    result = subprocess.run(
        [PYTHON, "-m", "gpudispatch", "submit", "--dir", str(root), *flags, "--each-line",
         str(source)], env=job_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not os.path.exists(root / "queue") or names_in(root, "queue") == []


@pytest.mark.parametrize("source", ["dir", "dash-dash"])
def test_a_folder_or_a_command_with_it_is_refused(tmp_path, source) -> None:
    root = tmp_path / "q"
    if source == "dir":
        args = ("--each-line", str(tmp_path))
        fragment = "cannot read"
    else:
        (tmp_path / "c.txt").write_text("echo a\n")
        args = ("--each-line", str(tmp_path / "c.txt"), "--", "true")
        fragment = "give no SCRIPT or -- COMMAND"
    result = cli("submit", "--dir", str(root), *args)
    assert result.returncode != 0 and fragment in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(root / "queue") or names_in(root, "queue") == []


def test_a_failure_midway_names_what_was_queued(tmp_path, monkeypatch, capsys) -> None:
    """In-process: the third enqueue fails (as on a full disk); the two before it are
    printed and stay queued, and the error says so in one line."""
    from gpudispatch import cli
    from gpudispatch.store import FolderQueue

    real = FolderQueue.enqueue_text
    calls = []

    def failing(self, name, text, **kwargs):
        calls.append(name)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(self, name, text, **kwargs)

    monkeypatch.setattr(FolderQueue, "enqueue_text", failing)
    source = tmp_path / "c.txt"
    source.write_text("echo 1\necho 2\necho 3\necho 4\n")
    root = tmp_path / "q"
    assert cli.main(["submit", "--dir", str(root), "--each-line", str(source)]) == 1
    out, err = capsys.readouterr()
    assert out.split() == names_in(root, "queue") and len(out.split()) == 2
    assert err.strip() == ("gpudispatch submit: command 3 of 4 not queued: No space left "
                           "on device; the 2 before it were")


def test_each_line_writes_one_file_a_job_and_its_record_comes_from_the_header(
        root, launch, tmp_path) -> None:
    """No record file a job at submission (a file created costs more than a trivial job
    here): the submission (time, parameters, capsule) is a header line, which ``show``
    reads while the job waits and which becomes its record when it runs."""
    result = submit_lines(root, "echo one --lr 0.1\necho two --lr 0.2\n", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    names = result.stdout.split()
    assert sorted(os.listdir(root / "logs")) == []  # no record (nor anything) per job
    shown = cli("show", "--dir", str(root), names[0], check=True).stdout
    assert "submitted at" in shown and "capsule" in shown and "/capsules/" in shown
    listed = json.loads(cli("status", "--dir", str(root), "--json", check=True).stdout)
    queued = {job["name"]: job for job in listed}
    assert queued[names[1]]["params"] == {"lr": 0.2}
    drain(launch, root)
    for name, lr in zip(names, (0.1, 0.2), strict=True):
        record = json.loads((root / "logs" / f"{name}.json").read_text())
        assert record["params"] == {"lr": lr} and record["exit_code"] == 0
        assert record["submitted_at"] and record["submitted_at"] < record["started_at"]
        assert record["extra"]["capsule"]["file"].startswith(str(root / "capsules"))


def test_a_submission_line_that_is_no_record_leaves_a_fresh_record(root, launch) -> None:
    """The header line is the script owner's to write, as a record file is: one that is
    not a record is ignored, and the job runs with a fresh record."""
    queue = root / "queue"
    lines = {"bad-json.sh": "# gpudispatch-submission: {not json",
             "bad-type.sh": '# gpudispatch-submission: {"params": [1, 2]}',
             "not-object.sh": "# gpudispatch-submission: [1]",
             "after-code.sh": 'true\n# gpudispatch-submission: {"params": {"x": 1}}',
             "good.sh": '# gpudispatch-submission: {"params": {"x": 1}}'}
    for name, line in lines.items():
        (queue / name).write_text(f"#!/bin/sh\n{line}\n")
        (queue / name).chmod(0o755)
    drain(launch, root)
    assert names_in(root, "completed") == sorted(lines)
    for name in lines:
        record = json.loads((root / "logs" / f"{name}.json").read_text())
        assert record["params"] == ({"x": 1} if name == "good.sh" else {})
        assert record["submitted_at"] is None and record["exit_code"] == 0
