"""The pure scheduling rules: order, slot kinds, impossible jobs, dependencies, backfill."""

import pytest

from gpudispatch.job import Directives, JobState
from gpudispatch.scheduler import (
    QueuedJob,
    SlotState,
    dependency_verdict,
    impossible_reason,
    plan,
)

GIB = 2**30


def job(name, queued_at=0.0, alone=False, **directives):
    if "after" in directives:
        directives["after"] = tuple(directives["after"])
    return QueuedJob(name, Directives(**directives), queued_at, alone)


def run_plan(jobs, slots, free=None, deps=None, now=0.0, reserve_after=300.0, states=None):
    ordered = sorted(jobs, key=lambda j: j.sort_key)
    if states is None:
        free = range(len(slots)) if free is None else free
        states = [SlotState() if i in free else SlotState(jobs=1, exclusive=True)
                  for i in range(len(slots))]
    return plan(ordered, slots, states, deps or {}, now, reserve_after)


@pytest.mark.parametrize(
    "jobs, slots, free, expected",
    [
        # alphanumeric order, first free slot
        ([job("b.sh"), job("a.sh")], [0], None, [("a.sh", [0])]),
        ([job("a.sh"), job("b.sh")], [0, 1], None, [("a.sh", [0]), ("b.sh", [1])]),
        ([job("a.sh")], [0, 1], [1], [("a.sh", [1])]),
        # priority beats names
        ([job("a.sh"), job("z.sh", priority=5)], [0], None, [("z.sh", [0])]),
        ([job("a.sh", priority=-1), job("b.sh")], [0], None, [("b.sh", [0])]),
        # K GPUs at once, distinct
        ([job("big.sh", gpus=2)], [0, 1, 2], None, [("big.sh", [0, 1])]),
        ([job("big.sh", gpus=2)], [0, 1, 2], [2], []),
        # --gpus 0 wants a CPU slot; plain jobs take any slot
        ([job("cpu.sh", gpus=0)], [0, None], None, [("cpu.sh", [1])]),
        ([job("a.sh"), job("b.sh")], [None, None], None, [("a.sh", [0]), ("b.sh", [1])]),
        ([job("g.sh", gpus=1)], [None, 3], None, [("g.sh", [1])]),
        # nothing free: nothing starts
        ([job("a.sh")], [0], [], []),
    ],
)
def test_assignments(jobs, slots, free, expected):
    assert run_plan(jobs, slots, free).starts == expected


@pytest.mark.parametrize(
    "directives, slots, fragment",
    [
        (Directives(gpus=3), [0, 1], "asks for 3 GPUs but this dispatcher has 2"),
        (Directives(gpus=1), [None, None], "asks for 1 GPUs but this dispatcher has 0"),
        (Directives(gpus=0), [0, 1], "CPU-only slot"),
        (Directives(), [], "no slots"),
    ],
)
def test_impossible_jobs_fail_at_once(directives, slots, fragment):
    assert fragment in impossible_reason(directives, slots)
    result = run_plan([QueuedJob("x.sh", directives, 0.0)], slots) if slots else None
    if result is not None:
        assert result.starts == [] and result.failures[0][0] == "x.sh"


@pytest.mark.parametrize(
    "after, states, verdict",
    [
        (("a.sh",), {"a.sh": JobState.COMPLETED}, None),
        (("a.sh",), {"a.sh": JobState.RUNNING}, "wait"),
        (("a.sh",), {"a.sh": JobState.QUEUED}, "wait"),
        (("a.sh",), {"a.sh": JobState.FAILED}, "dependency a.sh failed"),
        (("a.sh",), {}, "dependency a.sh does not exist"),
        (("a.sh", "b.sh"), {"a.sh": JobState.COMPLETED, "b.sh": JobState.FAILED},
         "dependency b.sh failed"),
    ],
)
def test_dependency_verdicts(after, states, verdict):
    assert dependency_verdict(after, states) == verdict


def test_dependent_job_waits_and_lets_others_pass():
    jobs = [job("a.sh", after=["prep.sh"]), job("b.sh")]
    result = run_plan(jobs, [0], deps={"prep.sh": JobState.RUNNING})
    assert result.starts == [("b.sh", [0])]


def test_failed_dependency_fails_the_job():
    result = run_plan([job("a.sh", after=["prep.sh"])], [0], deps={"prep.sh": JobState.FAILED})
    assert result.failures == [("a.sh", "dependency prep.sh failed")]


def test_small_job_backfills_behind_a_blocked_big_one():
    jobs = [job("a-big.sh", gpus=2, queued_at=0.0), job("b-small.sh", queued_at=0.0)]
    result = run_plan(jobs, [0, 1], free=[1], now=10.0, reserve_after=300.0)
    assert result.starts == [("b-small.sh", [1])]


def test_big_job_holds_the_line_after_reserve_after():
    jobs = [job("a-big.sh", gpus=2, queued_at=0.0), job("b-small.sh", queued_at=0.0)]
    result = run_plan(jobs, [0, 1], free=[1], now=301.0, reserve_after=300.0)
    assert result.starts == []


def gpu(capacity=80 * GIB, reserved=0, jobs=0, exclusive=False, blocked=None):
    return SlotState(jobs=jobs, exclusive=exclusive, reserved=reserved, capacity=capacity,
                     total=80 * GIB, blocked=blocked)


def test_memory_jobs_pack_onto_one_gpu_and_reserve_at_once():
    jobs = [job(f"j{i}.sh", gpu_mem=30 * GIB) for i in range(3)]
    result = run_plan(jobs, [0, 1], states=[gpu(), gpu()])
    # best fit: the second goes where the first left the least room that still fits
    assert result.starts == [("j0.sh", [0]), ("j1.sh", [0]), ("j2.sh", [1])]


def test_packing_respects_memory_held_by_foreign_processes():
    jobs = [job("a.sh", gpu_mem=30 * GIB)]
    result = run_plan(jobs, [0, 1], states=[gpu(capacity=20 * GIB), gpu()])
    assert result.starts == [("a.sh", [1])]


def test_whole_gpu_jobs_do_not_share_and_are_not_shared():
    states = [gpu(reserved=10 * GIB, jobs=1), gpu(jobs=1, exclusive=True)]
    result = run_plan([job("whole.sh"), job("small.sh", gpu_mem=GIB)], [0, 1], states=states)
    assert result.starts == [("small.sh", [0])]


def test_foreign_busy_gpu_is_skipped():
    states = [gpu(blocked="40 GiB held by alice"), gpu()]
    assert run_plan([job("a.sh")], [0, 1], states=states).starts == [("a.sh", [1])]


def test_unknown_memory_means_no_sharing():
    states = [SlotState(jobs=1, reserved=GIB), SlotState()]
    result = run_plan([job("a.sh", gpu_mem=GIB), job("b.sh", gpu_mem=GIB)], [0, 1], states=states)
    assert result.starts == [("a.sh", [1])]


def test_a_job_that_ran_out_of_memory_runs_alone():
    states = [gpu(reserved=10 * GIB, jobs=1), gpu()]
    result = run_plan([job("oom.sh", gpu_mem=GIB, alone=True)], [0, 1], states=states)
    assert result.starts == [("oom.sh", [1])]


def test_more_memory_than_any_gpu_fails_at_once():
    reason = impossible_reason(Directives(gpu_mem=100 * GIB), [0, 1], [80 * GIB, 80 * GIB])
    assert "largest GPU here has 80.0 GiB" in reason
