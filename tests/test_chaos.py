"""Chaos: ``kill -9`` of the dispatcher, its keeper, the job monitors, or all of them.

One random round of ``bench/chaos.py`` (seed from ``$CHAOS_SEED``, else random, and
printed on failure), the cases of the issue one by one, and a check of the checker.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import sys
from pathlib import Path

import pytest
from conftest import (
    REPO,
    cli,
    job_text,
    logfile_text,
    names_in,
    open_gate,
    q,
    read_lines,
    record,
    snapshot,
    wait_lines,
    wait_state,
    wait_until,
    where,
    write_script,
)

from gpudispatch.cgroups import detect


def _load_chaos():
    """``bench/chaos.py`` as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gpudispatch_bench_chaos",
                                                  REPO / "bench" / "chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


chaos = _load_chaos()


# ---------------------------------------------------------------------- the chaos round
@pytest.mark.slow
@pytest.mark.parametrize("containment", [
    "process-group",
    pytest.param("cgroup", marks=pytest.mark.skipif(
        detect("cgroup").base is None, reason="no cgroup can be made here (not root?)")),
])
def test_chaos_round(tmp_path, containment):
    """60 jobs under random kills: nothing lost, doubled or wrong (about 10-20 s)."""
    seed = int(os.environ.get("CHAOS_SEED") or random.randrange(2**32))
    print(f"chaos seed {seed} (rerun with CHAOS_SEED={seed})")
    # With cgroups, jobs long enough for some to be moved into theirs before they end.
    result = chaos.run_round(seed, tmp_path / "chaos", n_jobs=60, chaos_seconds=15,
                             drain_timeout=25, containment=containment,
                             longest=1.0 if containment == "cgroup" else 0.4)
    assert result.ok, f"CHAOS_SEED={seed} --containment {containment}\n{result.report()}"
    kills = sum(result.kills[kind] for kind in chaos.KINDS)
    assert kills >= 3, f"CHAOS_SEED={seed}: only {kills} kills\n{result.report()}"


# ---------------------------------------------------------------------- the cases
def _keepers(dispatcher_pid: int) -> list[int]:
    return wait_until(lambda: chaos.keepers_of(dispatcher_pid),
                      message=f"a keeper (child Python process) of {dispatcher_pid}")


@pytest.mark.slow
def test_keeper_killed_while_a_job_runs(tmp_path, root, launch):
    runs = tmp_path / "runs.txt"
    write_script(root / "queue" / "a.sh", job_text("sleep 2\necho ok", runs=runs))
    disp = launch.run(root, "--slots", "2", "--drain")
    wait_lines(runs, 1)
    assert chaos.kill9(_keepers(disp.pid))
    assert disp.wait(30) == 0, f"{snapshot(root)}\n{logfile_text(root)}\n{disp.output()}"
    assert where(root, "a.sh") == "completed", f"{snapshot(root)}\n{logfile_text(root)}"
    rec = record(root, "a.sh")
    assert rec["exit_code"] == 0 and rec["attempts"] == 1, rec
    assert read_lines(runs) == ["a.sh"]  # ran exactly once
    assert (root / "logs" / "a.sh.log").read_text() == "ok\n"


@pytest.mark.slow
def test_dispatcher_killed_while_a_failing_job_runs(tmp_path, root, launch):
    runs, gate = tmp_path / "runs.txt", tmp_path / "gate"
    write_script(root / "queue" / "three.sh", job_text(runs=runs, gate=gate, exit_code=3))
    first = launch.run(root, "--slots", "1")
    wait_lines(runs, 1)
    first.kill9()
    second = launch.run(root, "--slots", "1", "--drain")
    wait_until(lambda: logfile_text(root).count("Job Dispatcher Started") >= 2,
               message=lambda: logfile_text(root))
    open_gate(gate)
    assert second.wait(30) == 1, f"{snapshot(root)}\n{logfile_text(root)}"  # a job failed
    assert where(root, "three.sh") == "failed", snapshot(root)
    rec = record(root, "three.sh")
    assert rec["exit_code"] == 3 and rec["reason"] == "exit code 3", rec
    assert rec["attempts"] == 1, rec
    assert read_lines(runs) == ["three.sh"]  # ran exactly once
    assert "retry 0 of 0" not in logfile_text(root)


@pytest.mark.slow
def test_everything_killed_the_job_is_interrupted_and_runs_again(tmp_path, root, launch):
    """Dispatcher, keeper and monitor die: nothing can know the job's code, so it goes
    back to the queue as interrupted (not failed) and runs again, without --retries."""
    runs = tmp_path / "runs.txt"
    write_script(root / "queue" / "b.sh", job_text("sleep 1", runs=runs))
    first = launch.run(root, "--slots", "1")
    wait_lines(runs, 1)
    _keepers(first.pid)
    tree = chaos.gpudispatch_tree(root)
    chaos.kill9([first.pid, *(p.pid for p in tree)])
    first.proc.wait(10)
    assert chaos.job_processes(root), "the job's own processes must survive"
    cli("pause", "--dir", str(root), check=True)  # hold the requeued job where we see it
    second = launch.run(root, "--slots", "1")

    def requeued() -> dict | None:
        rec = chaos._record(root, "b.sh")
        reason = str((rec or {}).get("reason") or "")
        return rec if where(root, "b.sh") == "queue" and reason.startswith("interrupted") \
            else None

    wait_until(requeued, timeout=15, message=lambda: f"b.sh requeued as interrupted; "
               f"{snapshot(root)}; record {chaos._record(root, 'b.sh')}\n{logfile_text(root)}")
    cli("resume", "--dir", str(root), check=True)
    wait_state(root, "b.sh", "completed", timeout=15, proc=second)
    assert read_lines(runs) == ["b.sh", "b.sh"]
    assert record(root, "b.sh")["exit_code"] == 0
    second.signal(signal.SIGTERM)
    assert second.wait() == 0


@pytest.mark.slow
def test_dispatcher_and_keeper_killed_the_monitor_keeps_the_code(tmp_path, root, launch):
    runs = tmp_path / "runs.txt"
    write_script(root / "queue" / "b.sh", job_text("sleep 1", runs=runs))
    first = launch.run(root, "--slots", "1")
    wait_lines(runs, 1)
    chaos.kill9([first.pid, *_keepers(first.pid)])
    first.proc.wait(10)
    second = launch.run(root, "--slots", "1", "--drain")
    assert second.wait(30) == 0, f"{snapshot(root)}\n{logfile_text(root)}"
    assert where(root, "b.sh") == "completed", snapshot(root)
    rec = record(root, "b.sh")
    assert rec["exit_code"] == 0 and rec["attempts"] == 1, rec
    assert read_lines(runs) == ["b.sh"]  # ran exactly once


@pytest.mark.slow
def test_jobs_start_in_alphanumeric_order(tmp_path, root, launch):
    """Two slots, uneven durations: a job never starts before an earlier one. Two jobs
    started together may log in either order, so 50 ms of slack; with these durations
    the slots free up at least 0.1 s apart (0001 runs beside the whole 0002-0007 chain),
    so a real reordering shows as a gap of 0.1 s or more."""
    starts = tmp_path / "starts.txt"
    durations = [1.5, 0.1, 0.1, 0.6, 0.1, 0.1, 0.8, 0.1]
    names = [f"digits-{i:04d}.sh" for i in range(1, len(durations) + 1)]
    for name, seconds in zip(names, durations, strict=True):
        write_script(root / "queue" / name, job_text(
            f'echo "$GPUDISPATCH_JOB $(date +%s%N)" >> {q(starts)}\nsleep {seconds}'))
    disp = launch.run(root, "--slots", "2", "--drain")
    assert disp.wait(30) == 0, f"{snapshot(root)}\n{logfile_text(root)}"
    assert names_in(root, "completed") == names
    seen = {}
    for line in read_lines(starts):
        name, ns = line.split()
        assert name not in seen, f"{name} started twice"
        seen[name] = int(ns)
    assert sorted(seen) == names
    order = sorted(seen, key=seen.get)
    late = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]
            if seen[b] < seen[a] - 50_000_000]
    assert not late, f"started before an earlier job (later, earlier): {late}; order {order}"


# ---------------------------------------------------------------------- the checker
def _fake_round(tmp_path: Path, jobs, where_and_code, runs_lines):
    root, side = tmp_path / "root", tmp_path / "side"
    for folder in (*(root / s for s in chaos.STATES), root / "logs", side / "runs"):
        folder.mkdir(parents=True, exist_ok=True)
    for spec in jobs:
        state, code = where_and_code[spec.name]
        (root / state / spec.name).write_text("")
        (root / "logs" / f"{spec.name}.json").write_text(json.dumps({"exit_code": code}))
        (side / "runs" / spec.name).write_text("".join(
            f"{line}\n" for line in runs_lines.get(spec.name, [])))
    return root, side


def _run(start: int, end: int | None, code: int, slot: str = "0", pid: int = 100,
         n: int = 1) -> list[str]:
    lines = [f"START {start} {slot} {pid} 1 1 {n}"]
    return lines + ([f"END {start} {code} {end}"] if end is not None else [])


def test_check_finds_lost_doubled_wrong_and_overlaps(tmp_path):
    """The checker itself, on made-up folders and run logs (no processes)."""
    table = {  # name: (kind, folder, record exit_code, runs)
        "good.sh": ("ok", "completed", 0, _run(10, 20, 0, slot="1")),
        "twice.sh": ("ok", "completed", 0,
                     _run(30, 40, 0, slot="1") + _run(50, 60, 0, slot="1", n=2)),
        "failed-ok.sh": ("ok", "failed", 1, _run(70, 80, 0, slot="1")),
        "stuck.sh": ("retry", "running", None, _run(10, 20, 3, slot="2")),
        "retried.sh": ("retry", "completed", 0,
                       _run(30, 40, 3, slot="2") + _run(50, 60, 0, slot="2", n=2)),
        "rerun-fail.sh": ("fail", "failed", 3,
                          _run(70, 80, 3, slot="2") + _run(90, 95, 3, slot="2", n=2)),
        "overlap.sh": ("ok", "completed", 0, _run(100, 200, 0, slot="0")),
        "slotmate.sh": ("ok", "completed", 0, _run(150, 250, 0, slot="0", pid=200)),
        # its monitor (pid 999) was killed: that run may go on beside others
        "interrupted.sh": ("ok", "completed", 0, _run(150, None, 0, slot="0", pid=999)
                           + _run(210, 300, 0, slot="1", pid=300, n=2)),
    }
    jobs = [chaos.JobSpec(name, kind, 0.1) for name, (kind, *_) in table.items()]
    root, side = _fake_round(tmp_path, jobs, {n: (t[1], t[2]) for n, t in table.items()},
                             {n: t[3] for n, t in table.items()})
    result = chaos.RoundResult(1, tmp_path, jobs)
    chaos.check(root, side, result, {999}, 0)
    categories = {name: sorted({c for c, _ in p}) for name, p in result.problems.items()}
    assert categories == {
        "good.sh": [], "interrupted.sh": [], "retried.sh": [],
        "twice.sh": ["doubled"], "failed-ok.sh": ["wrong"], "stuck.sh": ["lost"],
        "rerun-fail.sh": ["doubled"], "overlap.sh": ["doubled"], "slotmate.sh": ["doubled"],
    }, result.report()
    assert (result.lost, result.doubled, result.wrong) == (1, 4, 1)
