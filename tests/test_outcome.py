"""What a job's end means (pure): reasons, retries, interruptions, out of memory."""

from __future__ import annotations

import pytest

from gpudispatch.job import Directives, JobState
from gpudispatch.outcome import (
    MAX_INTERRUPTIONS,
    Ending,
    decide,
    describe_status,
    last_error_line,
    oom_in_tail,
)


@pytest.mark.parametrize(
    "code, text",
    [(0, None), (2, "exit code 2"), (-15, "killed by SIGTERM"),
     (137, "exit code 137 (killed by SIGKILL)")],
)
def test_describe_status(code, text):
    assert describe_status(code) == text


@pytest.mark.parametrize(
    "output, oom",
    [(b"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", True),
     (b"RuntimeError: CUDA error: out of memory while trying to allocate", True),
     (b"jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory", True),
     (b"CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate", True),
     (b"MemoryError\n", False), (b"all good", False)],
)
def test_out_of_memory_patterns(output, oom):
    assert oom_in_tail(b"x" * 1000 + output) is oom


R1 = Directives(retries=1)
# (ending, directives, attempts, interruptions, oom used) -> (state, reason start, interrupted)
CASES = [
    (Ending(0), Directives(), 1, 0, 0, JobState.COMPLETED, None, False),
    (Ending(3), Directives(), 1, 0, 0, JobState.FAILED, "exit code 3", False),
    (Ending(3), R1, 1, 0, 0, JobState.QUEUED, "exit code 3", False),
    (Ending(3), R1, 2, 0, 0, JobState.FAILED, "exit code 3", False),
    # an interrupted run is not a failure: the next real failure still gets its retry
    (Ending(3), R1, 2, 1, 0, JobState.QUEUED, "exit code 3", False),
    (Ending(None), Directives(), 1, 0, 0, JobState.QUEUED, "interrupted", True),
    (Ending(None), Directives(), MAX_INTERRUPTIONS, MAX_INTERRUPTIONS - 1, 0,
     JobState.FAILED, "interrupted 10 times", False),
    (Ending(143, kill_reason="cold stop"), Directives(), 1, 0, 0, JobState.QUEUED,
     "interrupted: cold stop", True),
    (Ending(143, kill_reason="timeout"), Directives(timeout=5), 1, 0, 0, JobState.FAILED,
     "timeout after 5s", False),
    (Ending(143, cancelled=True), R1, 1, 0, 0, JobState.FAILED, "cancelled", False),
    (Ending(1, oom=True), Directives(oom_retries=1), 1, 0, 0, JobState.QUEUED, "oom", False),
    (Ending(1, oom=True), Directives(oom_retries=1), 2, 0, 1, JobState.FAILED, "oom", False),
    (Ending(0, oom=True), Directives(), 1, 0, 0, JobState.COMPLETED, None, False),
]


@pytest.mark.parametrize("ending, directives, attempts, interruptions, used, state, reason, "
                         "interrupted", CASES)
def test_decide(ending, directives, attempts, interruptions, used, state, reason, interrupted):
    verdict = decide(ending, directives, attempts, interruptions, used)
    assert verdict.state is state
    assert verdict.interrupted is interrupted
    if reason is None:
        assert verdict.reason is None
    else:
        assert verdict.reason.startswith(reason)


def test_out_of_memory_retry_runs_alone():
    verdict = decide(Ending(1, oom=True), Directives(oom_retries=1), 1, 0, 0)
    assert verdict.oom_retry and verdict.run_alone


@pytest.mark.parametrize(("tail", "line"), [
    (b"Traceback (most recent call last):\n  File \"t.py\", line 3\n"
     b"ValueError: bogus activation\n", "ValueError: bogus activation"),
    (b"torch.cuda.OutOfMemoryError: CUDA out of memory.\n",
     "torch.cuda.OutOfMemoryError: CUDA out of memory."),
    (b"RuntimeError: CUDA error: device-side assert triggered\nCUDA kernel errors might be "
     b"asynchronously reported\n", "RuntimeError: CUDA error: device-side assert triggered"),
    (b"x.sh: 3: nosuchcmd: not found\n", "x.sh: 3: nosuchcmd: not found"),
    (b"x.sh: line 3: foo: command not found\n", "x.sh: line 3: foo: command not found"),
    (b"x.sh: line 2:  1234 Killed    python train.py\n",
     "x.sh: line 2:  1234 Killed    python train.py"),
    (b"ls: cannot access '/x': No such file or directory\n", None),
    (b"an Error happened in prose\n", None),
    (b"", None),
])
def test_the_last_error_line_of_a_log(tail: bytes, line: str | None) -> None:
    assert last_error_line(tail) == line


def test_a_failure_reason_carries_its_error_line_and_retries_still_count() -> None:
    ending = Ending(1, error_line="ValueError: bogus activation")
    verdict = decide(ending, Directives(), 1, 0, 0)
    assert verdict.reason == "exit code 1: ValueError: bogus activation"
    assert verdict.state is JobState.FAILED
    assert decide(Ending(0, error_line="ValueError: x"), Directives(), 1, 0, 0).reason is None
    long = "E: " + "x" * 500
    assert len(last_error_line(f"ValueError{long}\n".encode()) or "") <= 200
