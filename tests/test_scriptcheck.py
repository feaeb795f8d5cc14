"""Script checks (no processes)."""

from __future__ import annotations

import os

import pytest

from gpudispatch.control import env_text, line_script
from gpudispatch.job import HEADER_MAX_BYTES
from gpudispatch.scriptcheck import ScriptRejected, check_script, shebang_argv


@pytest.mark.parametrize(
    "head, argv",
    [(b"#!/bin/sh\n", ["/bin/sh"]), (b"#!/usr/bin/env python3\nx", ["/usr/bin/env", "python3"]),
     (b"#! /bin/bash -eu\n", ["/bin/bash", "-eu"]), (b"echo hi\n", None), (b"#!\n", None)],
)
def test_shebang(head, argv):
    assert shebang_argv(head) == argv


def _check(path):
    return check_script(str(path), os.lstat(path))


def test_executable_script_runs_as_is_and_others_through_their_interpreter(tmp_path):
    good = tmp_path / "good.sh"
    good.write_text("#!/bin/bash\ntrue\n")
    good.chmod(0o755)
    assert _check(good).argv == [str(good)] and _check(good).note is None
    assert not _check(good).plain_sh
    sh = tmp_path / "sh.sh"
    sh.write_text("#!/bin/sh\ntrue\n")
    sh.chmod(0o755)  # what exec() would do; the monitor may then source it
    assert _check(sh).argv == ["/bin/sh", str(sh)] and _check(sh).plain_sh
    plain = tmp_path / "plain.sh"
    plain.write_text("#!/bin/sh\ntrue\n")
    assert _check(plain).argv == ["/bin/sh", str(plain)] and "not executable" in _check(plain).note


@pytest.mark.parametrize(
    "make, fragment",
    [(lambda p: p.write_bytes(b""), "is empty"),
     (lambda p: p.write_bytes(b"#!/bin/sh\r\necho\r\n"), "CRLF"),
     (lambda p: p.write_bytes(b"\x7fELF\x00\x01"), "binary"),
     (lambda p: p.mkdir(), "a directory"),
     (lambda p: os.mkfifo(p), "named pipe"),
     (lambda p: p.symlink_to("/bin/true"), "symlink")],
)
def test_rejected_scripts_say_why(tmp_path, make, fragment):
    path = tmp_path / "x.sh"
    make(path)
    with pytest.raises(ScriptRejected, match=fragment):
        _check(path)


@pytest.mark.parametrize(("body", "inline"), [
    ("true", True),
    ("set -e\npython train.py --lr 0.1 --out run.1 2>&1 | tee x.txt", True),
    ("set -eu  # strict\nx=$(ls)\necho ./a.sh", True),
    ("exec python train.py", False),  # would replace the monitor
    ("trap 'rm -f x' EXIT\nwork", False),  # would replace its EXIT trap
    ("cleanup() { rm x; }\ncleanup", False),  # a function may shadow what the trap runs
    ("alias printf=echo", False),
    ('eval "$CMD"', False),
    (". ./env.sh\nwork", False),
    ("source env.sh", False),
    ("set -euo pipefail", False),  # set but -e, -u, -x: could stop the trap running
    ("set -- a b", False),
    ("ulimit -f 0", False),  # could keep it from appending its status
    ("echo $__gpudispatch_run", False),  # the values it keeps
    # comment lines are no code: bulk submission's header line, with a path in it
    ('# gpudispatch-submission: {"extra":{"file":"/home/u/source/exec.json"}}\ntrue', True),
    ("  # trap, eval and exec are words here\ntrue  # and set -o here", False),  # not here
    ('x="\n# $(exec sleep 1)"', True),  # in a string: runs in a subshell, not the monitor
])
def test_a_plain_sh_script_is_run_inline_only_when_it_cannot_take_the_monitors_shell(
        tmp_path, body, inline):
    script = tmp_path / "a.sh"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    assert _check(script).plain_sh
    assert _check(script).inline is inline


def test_inline_needs_all_of_the_script_read_and_plain_sh(tmp_path):
    long = tmp_path / "long.sh"
    long.write_text("#!/bin/sh\n" + "true\n" * (HEADER_MAX_BYTES // 5))
    long.chmod(0o755)
    assert _check(long).plain_sh and not _check(long).inline  # its end was not read
    bash = tmp_path / "bash.sh"
    bash.write_text("#!/bin/bash\ntrue\n")
    bash.chmod(0o755)
    assert not _check(bash).inline
    plain = tmp_path / "plain.sh"  # not executable: run with /bin/sh, inline too
    plain.write_text("#!/bin/sh\ntrue\n")
    assert _check(plain).inline


def test_a_submitted_commands_kept_environment_may_be_sourced_inline(tmp_path):
    """``submit`` loads the submitting shell's environment with ``. FILE``: inline when
    that file holds exports alone, as ``control.env_text`` writes them."""
    env_dir = tmp_path / ".gpudispatch" / "env"
    env_dir.mkdir(parents=True)
    env_file = env_dir / "0123abcd.env"
    env_file.write_text(env_text({"PATH": "/usr/bin", "X": "it's\nmulti-line", "E": ""}))
    script = tmp_path / "a.sh"
    script.write_text(line_script("true", str(tmp_path), str(env_file)))
    script.chmod(0o755)
    assert _check(script).inline
    with open(env_file, "a") as fh:  # anything else in it: run in a subshell
        fh.write("trap '' EXIT\n")
    assert not _check(script).inline
    env_file.write_text(env_text({"__gpudispatch_run": "1"}))
    assert not _check(script).inline
    elsewhere = tmp_path / "x.env"
    elsewhere.write_text(env_text({"X": "1"}))
    script.write_text(line_script("true", None, str(elsewhere)))
    assert not _check(script).inline  # not a kept environment's path
