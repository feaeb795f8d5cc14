"""``--after`` cycles and self-dependencies fail at once, the reason naming the cycle:
the pure rules table-driven, then one real dispatcher that must drain such a queue."""

from __future__ import annotations

import pytest
from conftest import job_text, names_in, record, write_script

from gpudispatch.job import Directives, JobState
from gpudispatch.scheduler import (
    QueuedJob,
    SlotState,
    cycle_reason,
    find_cycle,
    impossible_reason,
    plan,
)


def job(name: str, *after: str, priority: int = 0) -> QueuedJob:
    return QueuedJob(name, Directives(after=tuple(after), priority=priority), 0.0)


def run_plan(jobs: list[QueuedJob], deps: dict[str, JobState | None] | None = None,
             n_slots: int = 1):
    """Plan with every job queued (its state QUEUED) unless ``deps`` says otherwise."""
    states = {j.name: JobState.QUEUED for j in jobs}
    states.update(deps or {})
    ordered = sorted(jobs, key=lambda j: j.sort_key)
    return plan(ordered, [None] * n_slots, [SlotState()] * n_slots, states, 0.0)


@pytest.mark.parametrize(
    "graph, start, cycle",
    [
        ({"a": ["a"]}, "a", ["a"]),
        ({"a": ["b"], "b": ["a"]}, "a", ["a", "b"]),
        ({"a": ["b"], "b": ["a"]}, "b", ["b", "a"]),
        ({"a": ["b"], "b": ["c"], "c": ["a"]}, "a", ["a", "b", "c"]),
        ({"x": ["a"], "a": ["b"], "b": ["a"]}, "x", ["a", "b"]),  # x waits on a cycle
        ({"a": ["b"], "b": ["c"], "c": []}, "a", None),
        ({"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []}, "a", None),  # a diamond
        ({"a": ["gone"]}, "a", None),  # not queued: the path ends there
        ({"a": ["b"]}, "a", None),
        ({f"j{i}": [f"j{i + 1}"] for i in range(5000)} | {"j5000": ["j0"]}, "j0",
         [f"j{i}" for i in range(5001)]),  # long chains: no recursion limit
    ],
)
def test_find_cycle(graph: dict, start: str, cycle: list[str] | None) -> None:
    assert find_cycle(start, graph.get) == cycle


def test_find_cycle_shares_what_it_learned() -> None:
    graph = {"a": ["b"], "b": ["c"], "c": []}
    visited: list[str] = []

    def after_of(name: str):
        visited.append(name)
        return graph.get(name)

    done: set[str] = set()
    assert find_cycle("a", after_of, done) is None
    assert find_cycle("b", after_of, done) is None
    assert visited == ["a", "b", "c"]  # b and c were not walked again


@pytest.mark.parametrize(
    "cycle, reason",
    [(["a.sh"], "depends on itself (--after a.sh)"),
     (["a.sh", "b.sh"], "dependency cycle: a.sh -> b.sh -> a.sh"),
     (["a.sh", "b.sh", "c.sh"], "dependency cycle: a.sh -> b.sh -> c.sh -> a.sh")],
)
def test_cycle_reason(cycle: list[str], reason: str) -> None:
    assert cycle_reason(cycle) == reason


def test_impossible_reason_knows_a_job_after_itself() -> None:
    after_self = Directives(after=("a.sh", "b.sh"))
    assert impossible_reason(after_self, [None], name="a.sh") == \
        "depends on itself (--after a.sh)"
    assert impossible_reason(after_self, [None], name="c.sh") is None
    assert impossible_reason(after_self, [None]) is None  # without a name: as before


@pytest.mark.parametrize(
    "jobs, deps, failures, starts",
    [
        # a job after itself
        ([job("a.sh", "a.sh")], None, [("a.sh", "depends on itself (--after a.sh)")], []),
        # a <-> b: both fail at once, each naming the cycle; c goes on
        ([job("a.sh", "b.sh"), job("b.sh", "a.sh"), job("c.sh")], None,
         [("a.sh", "dependency cycle: a.sh -> b.sh -> a.sh"),
          ("b.sh", "dependency cycle: a.sh -> b.sh -> a.sh")],
         [("c.sh", [0])]),
        # a -> b -> c -> a, found from whichever member comes first
        ([job("b.sh", "c.sh"), job("c.sh", "a.sh"), job("a.sh", "b.sh")], None,
         [("a.sh", "dependency cycle: a.sh -> b.sh -> c.sh -> a.sh"),
          ("b.sh", "dependency cycle: a.sh -> b.sh -> c.sh -> a.sh"),
          ("c.sh", "dependency cycle: a.sh -> b.sh -> c.sh -> a.sh")], []),
        # x waits on a cycle: the cycle fails now, x next time (its dependency failed)
        ([job("a.sh", "b.sh"), job("b.sh", "a.sh"), job("x.sh", "a.sh", priority=9)], None,
         [("a.sh", "dependency cycle: a.sh -> b.sh -> a.sh"),
          ("b.sh", "dependency cycle: a.sh -> b.sh -> a.sh")], []),
        # a chain is no cycle: the first starts, the others wait
        ([job("a.sh"), job("b.sh", "a.sh"), job("c.sh", "b.sh")], None, [], [("a.sh", [0])]),
        # waiting on a running job is no cycle even if that job named us once
        ([job("b.sh", "a.sh")], {"a.sh": JobState.RUNNING}, [], []),
        # a member that fails for another reason is failed once, for that reason
        ([job("a.sh", "b.sh", "gone.sh"), job("b.sh", "a.sh")], {"gone.sh": None},
         [("a.sh", "dependency gone.sh does not exist")], []),
    ],
)
def test_plan_fails_cycles_at_once(jobs, deps, failures, starts) -> None:
    result = run_plan(jobs, deps)
    assert sorted(result.failures) == sorted(failures)
    assert result.starts == starts


# ---------------------------------------------------------------------- a real dispatcher
@pytest.mark.slow
def test_drain_ends_with_a_cycle_and_a_job_after_itself(root, launch) -> None:
    write_script(root / "queue" / "a.sh", job_text(header="#GPUDISPATCH --after b.sh\n"))
    write_script(root / "queue" / "b.sh", job_text(header="#GPUDISPATCH --after a.sh\n"))
    write_script(root / "queue" / "self.sh", job_text(header="#GPUDISPATCH --after self.sh\n"))
    write_script(root / "queue" / "x.sh", job_text(header="#GPUDISPATCH --after a.sh\n"))
    write_script(root / "queue" / "ok.sh", job_text())
    proc = launch.run(root, "--slots", "1", "--drain")
    assert proc.wait(30) == 1  # --drain: jobs failed
    assert names_in(root, "completed") == ["ok.sh"]
    assert names_in(root, "failed") == ["a.sh", "b.sh", "self.sh", "x.sh"]
    assert record(root, "a.sh")["reason"] == "dependency cycle: a.sh -> b.sh -> a.sh"
    assert record(root, "b.sh")["reason"] == "dependency cycle: a.sh -> b.sh -> a.sh"
    assert record(root, "self.sh")["reason"] == "depends on itself (--after self.sh)"
    assert record(root, "x.sh")["reason"] == "dependency a.sh failed"
