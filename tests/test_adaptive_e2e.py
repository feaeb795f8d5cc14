"""Sweeps that learn, through real dispatchers on tmp queues with real /bin/sh jobs:
method bayes (Optuna's study under ROOT, told and asked by the dispatcher), a kill -9 of
the dispatcher in the middle of one, and hyperband stopping hopeless runs early."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import STATES, cli, names_in, record, wait_until

pytestmark = pytest.mark.slow

# Reports the 2-D quadratic of its --x and --y (awk: no interpreter to start per run).
QUAD = r"""
for a in "$@"; do case $a in --x=*) x=${a#--x=};; --y=*) y=${a#--y=};; esac; done
sleep "${PAUSE:-0}"
awk -v x="$x" -v y="$y" 'BEGIN { printf "{\"step\": 1, \"loss\": %.12g}\n",
    (x - 0.37) ^ 2 + (y + 0.21) ^ 2 }' >> "$GPUDISPATCH_METRICS"
"""
def steps_program(steps: int, pause: float) -> str:
    """A program that reports its --q as the loss at each of ``steps`` steps."""
    return rf"""
q=${{1#--q=}}
i=1
while [ $i -le {steps} ]; do
  echo "{{\"step\": $i, \"loss\": $q}}" >> "$GPUDISPATCH_METRICS"
  i=$((i + 1))
  sleep {pause}
done
"""


STEPS = steps_program(6, 0.15)


def sweep_files(tmp_path: Path, spec: dict, program: str, pause: float = 0) -> Path:
    (tmp_path / "prog.sh").write_text(program)
    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    settings = {"interpreter": "sh", "interpreter_options": "",
                "headers": [f"PAUSE={pause}; export PAUSE"]}
    (tmp_path / f"{spec['name']}.gpudispatch.yaml").write_text(yaml.safe_dump(settings))
    with warnings.catch_warnings():  # W&B's validator accepts the very file we run
        warnings.simplefilter("ignore")
        from sweeps import schema_violations_from_proposed_config
    assert schema_violations_from_proposed_config(spec) == []
    return path


def bayes_spec(name: str, cap: int) -> dict:
    return {"name": name, "program": "prog.sh", "method": "bayes", "run_cap": cap,
            "metric": {"name": "loss", "goal": "minimize"},
            "parameters": {"x": {"min": -1.0, "max": 1.0}, "y": {"min": -1.0, "max": 1.0}}}


def hyperband_spec(name: str, min_iter: int, values: list[float]) -> dict:
    """A grid sweep over ``q`` whose runs hyperband may stop early."""
    return {"name": name, "program": "prog.sh", "method": "grid",
            "metric": {"name": "loss", "goal": "minimize"},
            "early_terminate": {"type": "hyperband", "min_iter": min_iter, "eta": 3},
            "parameters": {"q": {"values": values}}}


def study_of(root: Path, name: str):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(
        str(root / ".gpudispatch" / "sweeps" / name / "study.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def all_names(root: Path) -> list[str]:
    return sorted(n for s in STATES for n in names_in(root, s))


def loss_of(root: Path, name: str) -> float:
    lines = (root / "logs" / f"{name}.metrics.json").read_text().splitlines()
    return json.loads(lines[-1])["loss"]


def check_study_matches_queue(root: Path, name: str, cap: int) -> None:
    """Exactly ``cap`` trials, each one job PREFIX-(k+1).sh, completed, told its value."""
    names = [f"{name}-{k:04d}.sh" for k in range(1, cap + 1)]
    assert all_names(root) == names, all_names(root)
    assert names_in(root, "completed") == names
    trials = study_of(root, name).get_trials()
    assert [t.number for t in trials] == list(range(cap))
    for trial, job in zip(trials, names, strict=True):
        assert trial.state is optuna.trial.TrialState.COMPLETE, (trial, job)
        assert trial.user_attrs["job"] == job
        assert trial.value == pytest.approx(loss_of(root, job))
        rec = record(root, job)
        assert rec["params"] == {"x": trial.params["x"], "y": trial.params["y"]}
        assert rec["extra"]["sweep_trial"] == trial.number and rec["extra"]["sweep"] == name


def test_bayes_sweep_end_to_end(launch, tmp_path):
    root = tmp_path / "root"
    spec = sweep_files(tmp_path, bayes_spec("quad", 8), QUAD)
    out = cli("sweep", str(spec), "--dir", str(root), check=True).stdout
    assert "queued 2 jobs for sweep quad (bayes" in out
    assert names_in(root, "queue") == ["quad-0001.sh", "quad-0002.sh"]  # no more yet
    proc = launch.run(root, "--slots", "2", "--drain")
    assert proc.wait(90) == 0, proc.output()
    check_study_matches_queue(root, "quad", 8)
    assert (root / ".gpudispatch" / "sweeps" / "quad" / "done").exists()
    status = cli("sweep", "quad", "--status", "--dir", str(root), check=True).stdout
    assert "8 completed); bayes, 8 of 8 runs asked, done" in status
    again = cli("sweep", str(spec), "--dir", str(root))
    assert again.returncode != 0 and "already in" in again.stderr
    rows = json.loads(cli("results", "--dir", str(root), "--sweep", "quad", "--json",
                          check=True).stdout)
    assert len(rows) == 8 and rows[0]["loss"] == min(r["loss"] for r in rows)


def test_kill9_of_the_dispatcher_mid_bayes_sweep_loses_and_repeats_no_trial(launch, tmp_path):
    root = tmp_path / "root"
    cap = 10
    spec = sweep_files(tmp_path, bayes_spec("k9", cap), QUAD, pause=0.3)
    cli("sweep", str(spec), "--dir", str(root), check=True)
    first = launch.run(root, "--slots", "2")
    wait_until(lambda: len(names_in(root, "completed")) >= 3 and names_in(root, "running"),
               30, message=lambda: first.output()[-2000:])
    first.kill9()  # its running jobs go on under their monitors
    assert len(all_names(root)) < cap
    # The instant between asking a trial and queueing its script: asked, nothing queued.
    study_of(root, "k9").ask()
    second = launch.run(root, "--slots", "2", "--drain")
    assert second.wait(90) == 0, second.output()
    check_study_matches_queue(root, "k9", cap)
    log = (root / "logfile.txt").read_text()
    assert re.search(r"sweep k9: trial \d+ was asked but not queued; queued k9-\d{4}\.sh", log)


def test_hyperband_stops_hopeless_runs_and_keeps_the_best(launch, tmp_path):
    root = tmp_path / "root"
    spec = sweep_files(tmp_path, hyperband_spec("hb", 1, [0.1, 0.2, 5, 6, 7, 8]), STEPS)
    cli("sweep", str(spec), "--dir", str(root), check=True)
    proc = launch.run(root, "--slots", "2", "--drain", "--kill-grace", "2")
    assert proc.wait(60) == 0, proc.output()  # stopped early is not a failure
    assert names_in(root, "failed") == []
    assert names_in(root, "completed") == [f"hb-{i:04d}.sh" for i in range(1, 7)]
    status = cli("sweep", "hb", "--status", "--dir", str(root), check=True).stdout
    assert re.search(r"; [4-5] stopped early by hyperband$", status.strip()), status
    best = record(root, "hb-0001.sh")
    assert best["reason"] is None and best["exit_code"] == 0
    assert len((root / "logs" / "hb-0001.sh.metrics.json").read_text().splitlines()) == 6
    for i, q in zip(range(3, 7), (5, 6, 7, 8), strict=True):
        rec = record(root, f"hb-{i:04d}.sh")
        assert re.fullmatch(rf"stopped early by hyperband at step \d+ \(loss={q}\)",
                            rec["reason"]), rec
        steps = (root / "logs" / f"hb-{i:04d}.sh.metrics.json").read_text().splitlines()
        assert len(steps) < 6  # it did not run to the end


# A multi-step run of the quadratic: fails for x < -0.6; logs 4 steps, 0.2 s apart.
QUAD_STEPS = r"""
for a in "$@"; do case $a in --x=*) x=${a#--x=};; --y=*) y=${a#--y=};; esac; done
if awk -v x="$x" 'BEGIN { exit !(x < -0.6) }'; then echo "x too small" >&2; exit 1; fi
i=1
while [ $i -le 4 ]; do
  awk -v x="$x" -v y="$y" -v i="$i" 'BEGIN { printf "{\"step\": %d, \"loss\": %.12g}\n",
      i, (x - 0.37) ^ 2 + (y + 0.21) ^ 2 + 1 / i }' >> "$GPUDISPATCH_METRICS"
  i=$((i + 1))
  sleep 0.2
done
"""


def test_bayes_with_hyperband_tells_each_outcome(launch, tmp_path):
    """Completed runs are told their last value, failed ones FAIL, runs stopped early
    PRUNED (with what they reported); --drain exits 1 only for the failures."""
    root = tmp_path / "root"
    spec = sweep_files(tmp_path, {**bayes_spec("mix", 12), "early_terminate": {
        "type": "hyperband", "min_iter": 1, "eta": 2}}, QUAD_STEPS)
    cli("sweep", str(spec), "--dir", str(root), check=True)
    proc = launch.run(root, "--slots", "3", "--drain", "--kill-grace", "2")
    code = proc.wait(120)
    failed, completed = names_in(root, "failed"), names_in(root, "completed")
    assert code == (1 if failed else 0), proc.output()
    assert len(failed) + len(completed) == 12
    trials = {t.user_attrs["job"]: t for t in study_of(root, "mix").get_trials()}
    assert len(trials) == 12
    states = optuna.trial.TrialState
    pruned = 0
    for job, trial in trials.items():
        rec = record(root, job)
        if job in failed:
            assert trial.state is states.FAIL and "exit code 1" in rec["reason"], rec
        elif (rec["reason"] or "").startswith("stopped early by hyperband"):
            pruned += 1
            assert trial.state is states.PRUNED, (job, trial)
            assert list(trial.intermediate_values.values())[-1] == pytest.approx(
                loss_of(root, job))
        else:
            assert rec["reason"] is None and trial.state is states.COMPLETE
            assert trial.value == pytest.approx(loss_of(root, job))
            assert len((root / "logs" / f"{job}.metrics.json").read_text().splitlines()) == 4
    assert pruned >= 1  # eta 2 keeps half: some run is stopped


def test_an_early_stop_asked_before_a_kill9_is_carried_out_after(launch, tmp_path):
    """The stop is a request on disk: the next dispatcher adopts the job and stops it,
    and it still ends completed with the reason."""
    from gpudispatch.store import FolderQueue

    root = tmp_path / "root"
    spec = sweep_files(tmp_path, {
        "name": "hk", "program": "prog.sh", "method": "grid",
        "metric": {"name": "loss", "goal": "minimize"},
        "early_terminate": {"type": "hyperband", "min_iter": 100, "eta": 3},  # never cuts
        "parameters": {"q": {"values": [1]}}},
        "echo '{\"step\": 1, \"loss\": 1}' >> \"$GPUDISPATCH_METRICS\"; sleep 60")
    cli("sweep", str(spec), "--dir", str(root), check=True)
    first = launch.run(root, "--slots", "1")
    wait_until(lambda: names_in(root, "running") == ["hk-0001.sh"]
               and (root / "logs" / "hk-0001.sh.metrics.json").exists(), 20)
    first.kill9()
    reason = "stopped early by hyperband at step 1 (loss=1)"
    FolderQueue(root).request_early_stop("hk-0001.sh", reason)
    second = launch.run(root, "--slots", "1", "--drain", "--kill-grace", "2")
    assert second.wait(30) == 0, second.output()
    assert names_in(root, "completed") == ["hk-0001.sh"]
    assert record(root, "hk-0001.sh")["reason"] == reason
