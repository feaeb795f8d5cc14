"""Script checks, exit-status wording and out-of-memory detection (no processes)."""

from __future__ import annotations

import os

import pytest

from gpudispatch.runner import (
    ScriptRejected,
    check_script,
    describe_status,
    ran_out_of_gpu_memory,
    shebang_argv,
)


@pytest.mark.parametrize(
    "head, argv",
    [(b"#!/bin/sh\n", ["/bin/sh"]), (b"#!/usr/bin/env python3\nx", ["/usr/bin/env", "python3"]),
     (b"#! /bin/bash -eu\n", ["/bin/bash", "-eu"]), (b"echo hi\n", None), (b"#!\n", None)],
)
def test_shebang(head, argv):
    assert shebang_argv(head) == argv


@pytest.mark.parametrize(
    "code, text",
    [(0, None), (2, "exit code 2"), (-15, "killed by SIGTERM"),
     (137, "exit code 137 (killed by SIGKILL)")],
)
def test_describe_status(code, text):
    assert describe_status(code) == text


@pytest.mark.parametrize(
    "output, oom",
    [("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", True),
     ("RuntimeError: CUDA error: out of memory while trying to allocate", True),
     ("jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory", True),
     ("CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate", True),
     ("MemoryError\n", False), ("all good", False)],
)
def test_out_of_memory_is_read_from_the_log_tail(tmp_path, output, oom):
    log = tmp_path / "x.log"
    log.write_text("x" * 200_000 + "\n" + output + "\n")
    assert ran_out_of_gpu_memory(str(log)) is oom
    assert ran_out_of_gpu_memory(str(tmp_path / "missing.log")) is False


def _check(path):
    return check_script(str(path), os.lstat(path))


def test_executable_script_runs_as_is_and_others_through_their_interpreter(tmp_path):
    good = tmp_path / "good.sh"
    good.write_text("#!/bin/sh\ntrue\n")
    good.chmod(0o755)
    assert _check(good).argv == [str(good)] and _check(good).note is None
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
