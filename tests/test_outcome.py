"""What a job's end means (pure): reasons, retries, interruptions, out of memory."""

from __future__ import annotations

import pytest

from gpudispatch.job import Directives, JobState
from gpudispatch.outcome import MAX_INTERRUPTIONS, Ending, decide, describe_status, oom_in_tail


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
