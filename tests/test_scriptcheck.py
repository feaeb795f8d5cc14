"""Script checks (no processes)."""

from __future__ import annotations

import os

import pytest

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
