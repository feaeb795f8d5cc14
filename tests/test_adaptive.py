"""Hyperband's arithmetic (pure) against W&B's own ``sweeps.hyperband_stop_runs``, and
the W&B distributions asked of an Optuna trial for method bayes."""

from __future__ import annotations

import math
import random
import warnings

import pytest

from gpudispatch.adaptive import (
    band_thresholds,
    early_stop_reason,
    hyperband_bands,
    hyperband_cut,
    metric_series,
    trial_params,
)
from gpudispatch.job import Directives, JobState
from gpudispatch.outcome import Ending, decide

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from sweeps import RunState, SweepRun
    from sweeps.hyperband_stopping import hyperband_stop_runs


@pytest.mark.parametrize(("et", "bands"), [
    ({"min_iter": 1, "eta": 3}, [3 ** i for i in range(100)]),
    ({"min_iter": 2, "eta": 2}, [2 * 2 ** i for i in range(100)]),
    ({"max_iter": 27, "s": 3, "eta": 3}, [1, 3, 9]),
    ({"max_iter": 81, "s": 2}, [9, 27]),  # eta defaults to 3
    ({"max_iter": 5, "s": 2, "eta": 2}, [1, 2]),
    ({"max_iter": 10, "s": 5, "eta": 3}, [1, 3]),  # stops once a band is under 1
    ({"max_iter": 2, "s": 1, "eta": 3}, []),
])
def test_bands_as_wandb_defines_them(et: dict, bands: list) -> None:
    assert hyperband_bands(et) == bands


def test_thresholds_keep_the_top_one_in_eta() -> None:
    histories = [[5.0, 4.0, 3.0], [1.0, 1.0], [3.0], [2.0, 9.0, 0.5]]
    # band 1: sorted [1, 2, 3, 5], int(4/3) = 1 -> 2.0; band 2: [1, 4, 9] -> 4.0;
    # band 3: [0.5, 3] -> index 0 -> 0.5; band 9: nobody -> inf
    assert band_thresholds([1, 2, 3, 9], histories, 3) == [2.0, 4.0, 0.5, math.inf]


@pytest.mark.parametrize(("history", "strict", "cut"), [
    ([], True, None),  # no band reached yet
    ([3.0], True, (1, 3.0)),  # above band 1's cut
    ([2.0], True, None),  # at the cut: kept
    ([2.0, 5.0], True, (2, 5.0)),  # the last band reached decides
    ([0.1, 5.0], False, None),  # not strict: its best so far
    ([2.0, 3.0, 9.0], True, (2, 3.0)),  # band 3 is not one: band 2 still decides
])
def test_cut_at_the_last_band_reached(history, strict, cut) -> None:
    assert hyperband_cut(history, [1, 2, 4], [2.0, 2.5, 1.0], strict) == cut


def wandb_stops(histories: dict[str, list[float]], running: set[str], et: dict,
                goal: str) -> set[str]:
    runs = [SweepRun(name=name, history=[{"loss": v} for v in h],
                     state=RunState.running if name in running else RunState.finished)
            for name, h in histories.items()]
    config = {"method": "grid", "metric": {"name": "loss", "goal": goal},
              "early_terminate": {"type": "hyperband", **et},
              "parameters": {"a": {"values": [1]}}}
    return {run.name for run in hyperband_stop_runs(runs, config)}


def our_stops(histories: dict[str, list[float]], running: set[str], et: dict,
              goal: str) -> set[str]:
    series = {n: metric_series([{"step": i, "loss": v} for i, v in enumerate(h)], "loss",
                               goal == "maximize")[0] for n, h in histories.items()}
    bands = hyperband_bands(et)
    thresholds = band_thresholds(bands, series.values(), et.get("eta", 3))
    return {n for n in running
            if hyperband_cut(series[n], bands, thresholds, et.get("strict", True))}


@pytest.mark.parametrize("seed", range(40))
def test_same_runs_stopped_as_wandb(seed: int) -> None:
    rng = random.Random(seed)
    et = rng.choice([{"min_iter": 1, "eta": 3}, {"min_iter": 2, "eta": 2},
                     {"max_iter": 9, "s": 2, "eta": 3}, {"min_iter": 1, "eta": 2,
                                                         "strict": False},
                     {"max_iter": 16, "s": 3, "eta": 2}])
    goal = rng.choice(["minimize", "maximize"])
    histories = {f"r{i}": [round(rng.uniform(0, 10), 1) for _ in range(rng.randint(0, 12))]
                 for i in range(rng.randint(1, 12))}
    running = {n for n in histories if rng.random() < 0.6}
    assert our_stops(histories, running, et, goal) == wandb_stops(histories, running, et, goal)


def test_series_skips_what_is_not_a_value_and_keeps_steps() -> None:
    lines = [{"step": 1, "loss": 2}, {"step": 2}, {"step": 3, "loss": float("nan")},
             {"step": 4, "loss": True}, {"loss": 1.5}, {"step": 6, "loss": "x"}]
    assert metric_series(lines, "loss", False) == ([2, 1.5], [1, 2])
    assert metric_series(lines, "loss", True) == ([-2, -1.5], [1, 2])
    assert early_stop_reason("val_loss", 3, 0.42) == (
        "stopped early by hyperband at step 3 (val_loss=0.42)")


def test_an_early_stop_is_completed_not_failed() -> None:
    reason = early_stop_reason("loss", 1, 5.0)
    verdict = decide(Ending(143, "cancelled", True, stopped_early=reason), Directives(), 1,
                     0, 0)
    assert (verdict.state, verdict.reason) == (JobState.COMPLETED, reason)
    plain = decide(Ending(143, "cancelled", True), Directives(), 1, 0, 0)
    assert (plain.state, plain.reason) == (JobState.FAILED, "cancelled")


def test_every_random_distribution_is_asked_of_the_trial() -> None:
    import optuna  # in the test extras: missing, it fails here rather than skip
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = {"parameters": {
        "u": {"min": -1.0, "max": 1.0}, "i": {"min": 1, "max": 5},
        "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
        "q": {"distribution": "q_uniform", "min": 0, "max": 10, "q": 2},
        "n": {"distribution": "normal", "mu": 3, "sigma": 0.5},
        "c": {"values": ["a", "b"]}, "lst": {"values": [[1, 2], [3]]},
        "k": {"value": 7}, "m": {"parameters": {"depth": {"values": [1, 2]}}}}}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        trial = study.ask()
        p = trial_params(spec, trial)
        assert -1 <= p["u"] <= 1 and p["i"] in range(1, 6) and 1e-4 <= p["lr"] <= 1e-1
        assert p["q"] % 2 == 0 and p["c"] in "ab" and p["lst"] in ([1, 2], [3])
        assert p["k"] == 7 and p["m"]["depth"] in (1, 2) and isinstance(p["n"], float)
        assert set(trial.params) == {"u", "i", "lr", "q", "n", "c", "lst", "m.depth"}
        # the same params again from what the study keeps (a restart's recovery)
        assert trial_params(spec, optuna.trial.FixedTrial(trial.params)) == p
        study.tell(trial, 0.0)
    dist = study.trials[0].distributions  # a log one is asked in log space
    assert (dist["lr"].low, dist["lr"].high) == pytest.approx((math.log(1e-4), math.log(0.1)))


def test_bayes_without_optuna_is_refused_in_one_line(tmp_path) -> None:
    import subprocess

    import yaml
    from conftest import PYTHON, job_env

    spec = tmp_path / "b.yaml"
    spec.write_text(yaml.safe_dump({"program": "t.py", "method": "bayes", "run_cap": 3,
                                    "metric": {"name": "l"},
                                    "parameters": {"x": {"min": 0.0, "max": 1.0}}}))
    code = ("import sys; sys.modules['optuna'] = None\n"
            "from gpudispatch.cli import main\n"
            f"raise SystemExit(main(['sweep', {str(spec)!r}, '--dir', "
            f"{str(tmp_path / 'root')!r}]))")
    result = subprocess.run([PYTHON, "-c", code], env=job_env(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "gpudispatch sweep: method bayes needs Optuna: pip install 'gpudispatch[bayes]'; "
        "nothing was queued"]
    assert not (tmp_path / "root").exists()
