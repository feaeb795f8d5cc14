"""Sweep specs: parsing, errors before anything is queued, scripts, and queueing."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from gpudispatch.job import JobState, parse_directives
from gpudispatch.results import metric_history
from gpudispatch.store import FolderQueue
from gpudispatch.sweep import (
    SweepError,
    build_sweep,
    dry_run_text,
    job_names,
    queue_sweep,
    sweep_params,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DATE = datetime(2024, 1, 2, 3, 4)


def spec(**overrides: object) -> dict:
    base: dict = {
        "program": "train.py",
        "method": "grid",
        "parameters": {"lr": {"values": [0.1, 0.01]}, "bs": {"values": [32, 64]}},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def test_grid_order_last_key_fastest_and_names_sort() -> None:
    sweep = build_sweep(spec(name="lr sweep!"))
    assert [j.params for j in sweep.jobs] == [
        {"lr": 0.1, "bs": 32}, {"lr": 0.1, "bs": 64}, {"lr": 0.01, "bs": 32},
        {"lr": 0.01, "bs": 64},
    ]
    assert [j.name for j in sweep.jobs] == [f"lr-sweep-000{i}.sh" for i in range(1, 5)]


def test_job_names_pad_to_keep_run_order() -> None:
    names = list(job_names("s", 12345))
    assert names[0] == "s-00001.sh" and sorted(names) == names


def test_script_text_dry_run() -> None:
    sweep = build_sweep(spec(prefix="p", headers=["set -e"], footers=["echo done"],
                             directives={"gpus": 2, "timeout": "2h"}), user="me", date=DATE)
    assert sweep.jobs[0].text == (
        "#!/bin/sh\n\n# This script was automatically generated\n# user: me\n"
        "# date: 2024-01-02 03:04\n#GPUDISPATCH --gpus 2 --timeout 2h\n\nset -e\n\n"
        "/usr/bin/env python -u train.py \\\n    --lr=0.1 \\\n    --bs=32\n\necho done\n"
    )
    directives = parse_directives(sweep.jobs[0].text)
    assert (directives.gpus, directives.timeout) == (2, 7200)
    text = dry_run_text(sweep)
    assert text.startswith("# sweep p (grid): 4 jobs, dry run, nothing queued\n")
    assert "==> p-0004.sh <== lr=0.01 bs=64\n#!/bin/sh" in text
    assert text.count("#!/bin/sh") == 4


@pytest.mark.parametrize(
    ("overrides", "first_line_of_command"),
    [
        ({"interpreter": "python3", "interpreter_options": ""},
         "/usr/bin/env python3 train.py \\"),
        ({"interpreter_options": "-u -X dev"}, "/usr/bin/env python -u -X dev train.py \\"),
        ({"program": "my train.py"}, "/usr/bin/env python -u 'my train.py' \\"),
        ({"command": ["${env}", "${interpreter}", "${program}", "${args}"]},
         "/usr/bin/env python -u train.py \\"),
        ({"command": ["torchrun", "--nproc_per_node=2", "${program}", "${args}", "--x y"],
          "program": "t.py"}, "torchrun --nproc_per_node=2 t.py \\"),
    ],
)
def test_command_forms(overrides: dict, first_line_of_command: str) -> None:
    text = build_sweep(spec(**overrides)).jobs[0].text
    assert first_line_of_command in text.splitlines()


def test_command_words_after_args_end_the_command() -> None:
    text = build_sweep(spec(command=["python", "t.py", "${args}", "--x y"])).jobs[0].text
    assert text.splitlines()[-1] == "    '--x y'"


def test_random_is_reproducible_and_capped() -> None:
    parameters = {
        "lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-1},
        "drop": {"distribution": "uniform", "min": 0, "max": 0.5},
        "layers": {"distribution": "int_uniform", "min": 1, "max": 4},
        "width": {"distribution": "q_uniform", "min": 32, "max": 256, "q": 32},
        "opt": {"distribution": "categorical", "values": ["sgd", "adam"]},
        "act": {"values": ["relu", "gelu"], "probabilities": [0.5, 0.5]},
        "epochs": {"value": 3},
        "inferred_int": {"min": 1, "max": 2},
        "ln": {"distribution": "log_uniform", "min": -2, "max": 0},
    }
    s = spec(method="random", run_cap=30, seed=5, parameters=parameters)
    runs = list(sweep_params(s))
    assert runs == list(sweep_params(s)) and len(runs) == 30
    assert runs != list(sweep_params({**s, "seed": 6}))
    for r in runs:
        assert 1e-5 <= r["lr"] <= 1e-1 and 0 <= r["drop"] <= 0.5
        assert r["layers"] in range(1, 5) and r["width"] % 32 == 0
        assert r["epochs"] == 3 and r["inferred_int"] in (1, 2)
        assert 0.13 < r["ln"] <= 1.0


def test_grid_run_cap_and_int_uniform_axis() -> None:
    s = spec(parameters={"n": {"distribution": "int_uniform", "min": 1, "max": 5},
                         "k": {"value": [1, 2]}}, run_cap=3)
    assert list(sweep_params(s)) == [{"n": 1, "k": [1, 2]}, {"n": 2, "k": [1, 2]},
                               {"n": 3, "k": [1, 2]}]


def test_wandb_only_keys_accepted_with_a_note_and_metric_kept() -> None:
    sweep = build_sweep(spec(project="p", entity="e", description="d", controller={
        "type": "local"}, metric={"name": "loss", "goal": "minimize", "impute": "worst"}))
    assert sweep.metric == {"name": "loss", "goal": "minimize", "impute": "worst"}
    assert sweep.description == "d"
    assert sweep.notes == ("ignored (they mean something to W&B only): project, entity, "
                           "controller, metric.impute",)


@pytest.mark.parametrize("overrides", [
    {"metric": {"name": "loss", "target": 0.1}},
])
def test_unsupported_keys_refused_unless_ignored_with_a_note(overrides: dict) -> None:
    with pytest.raises(SweepError, match="not supported yet"):
        build_sweep(spec(**overrides))
    sweep = build_sweep(spec(**overrides), ignore_unsupported=True)
    assert any("--ignore-unsupported" in note for note in sweep.notes)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"bogus": 1}, "'bogus'"),
        ({"method": "bayes"}, "run_cap"),
        ({"method": "bayes", "run_cap": 3}, "'metric' is required"),
        ({"method": "custom"}, "'custom'"),
        ({"early_terminate": {"type": "hyperband", "min_iter": 3}}, "needs 'metric'"),
        ({"metric": {"name": "l"}, "early_terminate": {"type": "asha"}}, "hyperband"),
        ({"metric": {"name": "l"}, "early_terminate": {"type": "hyperband"}}, "min_iter"),
        ({"metric": {"name": "l"}, "early_terminate": {"type": "hyperband", "max_iter": 9}},
         "'s'"),
        ({"metric": {"name": "l"}, "early_terminate": {"type": "hyperband", "min_iter": 1,
                                                       "eta": 1}}, "eta"),
        ({"metric": {"name": "l"}, "early_terminate": {"type": "hyperband", "min_iter": 1,
                                                       "bogus": 1}}, "bogus"),
        ({"metric": {"name": "l"}, "early_terminate": {"type": "hyperband", "max_iter": 2,
                                                       "s": 1, "eta": 3}}, "no band"),
        ({"method": "random"}, "run_cap"),
        ({"run_cap": 0}, "run_cap"),
        ({"seed": "x"}, "seed"),
        ({"program": None}, "program"),
        ({"parameters": {}}, "parameters"),
        ({"parameters": {"lr": 0.1}}, "parameters.lr"),
        ({"parameters": {"lr": {"valus": [1]}}}, "parameters.lr"),
        ({"parameters": {"lr": {"values": [1], "min": 0}}}, "'min'"),
        ({"parameters": {"lr": {"values": []}}}, "parameters.lr"),
        ({"parameters": {"lr": {"value": 1, "values": [1]}}}, "parameters.lr"),
        ({"parameters": {"lr": {"distribution": "normal", "mu": 0, "sigma": 1}}}, "grid"),
        ({"parameters": {"lr": {"distribution": "gamma"}}}, "'gamma'"),
        ({"method": "random", "run_cap": 2, "parameters": {"lr": {"distribution": "normal",
          "sigma": -1}}}, "sigma"),
        ({"method": "random", "run_cap": 2, "parameters": {"lr": {"distribution": "beta",
          "a": 0}}}, "beta"),
        ({"parameters": {"lr": {"distribution": "q_uniform", "min": 0, "max": 1, "q": 0}}},
         "q"),
        ({"parameters": {"lr": {"values": [1, 2], "probabilities": [0.5, 0.5]}}}, "grid"),
        ({"parameters": {"lr": {"min": 1, "max": 1}}}, "less than"),
        ({"scheduler": {"engine": "optuna"}}, "scheduler"),
        ({"job": "me/job:v1", "program": None}, "Launch"),
        ({"command": ["python", "t.py"]}, "passes no parameters"),
        ({"parameters": {"lr": {"distribution": "uniform", "min": 0}}}, "'max'"),
        ({"parameters": {"lr": {"distribution": "uniform", "min": 1, "max": 0}}},
         "parameters.lr"),
        ({"parameters": {"lr": {"distribution": "uniform", "min": "a", "max": 1}}}, "'min'"),
        ({"parameters": {"lr": {"distribution": "int_uniform", "min": 0.5, "max": 1}}},
         "parameters.lr"),
        ({"parameters": {"lr": {"distribution": "log_uniform_values", "min": 0, "max": 1}}},
         "parameters.lr"),
        ({"parameters": {"lr": {"values": [1, 2], "probabilities": [0.5]}}}, "probabilities"),
        ({"parameters": {"lr": {"parameters": {}}}}, "parameters.lr.parameters"),
        ({"parameters": {"lr": {"parameters": {"a": {"value": 1}}, "value": 2}}}, "nested"),
        ({"parameters": {"lr": {"min": 0.0, "max": 1.0}}}, "grid"),
        ({"directives": {"gpus": "two"}}, "directives"),
        ({"directives": {"nonsense": 1}}, "directives"),
        ({"directives": ["--timeout forever"]}, "directives"),
        ({"headers": [1]}, "headers"),
        ({"prefix": ".hidden"}, "prefix"),
        ({"command": ["python", "${program}"]}, "${args}"),
        ({"command": ["python", "${args_jsn}", "${args}"]}, "${args_jsn}"),
        ({"metric": {"name": "loss", "goal": "lowest"}}, "goal"),
    ],
)
def test_spec_errors_name_the_key(overrides: dict, message: str) -> None:
    with pytest.raises(SweepError) as info:
        build_sweep(spec(**overrides))
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_spec_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SweepError, match="cannot read"):
        build_sweep(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("[1, 2]\n")
    with pytest.raises(SweepError, match="mapping"):
        build_sweep(bad)


def test_yaml_file_prefix_program_path_and_floats(tmp_path: Path) -> None:
    path = tmp_path / "lr-sweep.yaml"
    path.write_text(
        "program: sub/train.py\nparameters:\n  lr:\n    values: [1e-3, 2.5E+2, 5]\n"
    )
    sweep = build_sweep(path)
    assert sweep.name == "lr-sweep" and sweep.jobs[0].name == "lr-sweep-0001.sh"
    assert [j.params["lr"] for j in sweep.jobs] == [0.001, 250.0, 5]
    assert f"python -u {tmp_path / 'sub' / 'train.py'} \\" in sweep.jobs[0].text


def test_queue_sweep_writes_scripts_and_records(tmp_path: Path) -> None:
    queue = FolderQueue(tmp_path / "q")
    sweep = build_sweep(spec(prefix="s"))
    names = queue_sweep(sweep.jobs, queue, sweep.name)
    assert names == [j.name for j in sweep.jobs]
    assert queue.names(JobState.QUEUED) == names
    for job in sweep.jobs:
        assert (queue.layout.queue / job.name).read_text() == job.text
        assert os.access(queue.layout.queue / job.name, os.X_OK)
        record = queue.read_record(job.name)
        assert record.params == job.params and record.extra == {"sweep": "s"}


def test_queue_sweep_collision_queues_nothing(tmp_path: Path) -> None:
    queue = FolderQueue(tmp_path / "q")
    sweep = build_sweep(spec(prefix="s"))
    queue.enqueue_text(sweep.jobs[2].name, "#!/bin/sh\n")
    queue.move(sweep.jobs[2].name, JobState.QUEUED, JobState.COMPLETED)
    with pytest.raises(SweepError, match="s-0003.sh"):
        queue_sweep(sweep.jobs, queue, sweep.name)
    assert queue.names(JobState.QUEUED) == []


def test_example_sweep_runs_and_reports_metrics(tmp_path: Path) -> None:
    """examples/sweep.yaml's first script, run by the real /bin/sh, writes its metrics."""
    sweep = build_sweep(EXAMPLES / "sweep.yaml")
    assert len(sweep.jobs) == 6 and sweep.metric == {"name": "val_loss", "goal": "minimize"}
    script = tmp_path / sweep.jobs[0].name
    script.write_text(sweep.jobs[0].text.replace("python -u", f"{sys.executable} -u", 1))
    metrics = tmp_path / "m.json"
    subprocess.run(["/bin/sh", str(script)], check=True, capture_output=True, timeout=60,
                   env={**os.environ, "GPUDISPATCH_METRICS": str(metrics)})
    history = metric_history(metrics)  # one line per epoch
    assert [entry["step"] for entry in history] == [1, 2, 3, 4, 5]
    assert set(history[-1]) == {"step", "val_loss", "weight"}
