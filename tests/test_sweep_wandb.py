"""One sweep file for W&B and gpudispatch, checked against W&B's own code (the ``sweeps``
package and ``wandb``, both from the ``wandb[sweeps]`` test extra): its validator accepts
our example, every distribution samples as W&B's ``HyperParameter.ppf`` does, its grid
steps through the same points, and a program gets the very argument words ``wandb agent``
would give it."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np  # noqa: E402  (wandb[sweeps], in the test extras, brings these)
import pytest
import scipy.stats as stats  # noqa: E402
import sweeps  # noqa: E402
import yaml
from sweeps.grid_search import grid_search_next_runs  # noqa: E402
from sweeps.params import HyperParameter  # noqa: E402
from sweeps.random_search import random_search_next_runs  # noqa: E402

from gpudispatch.sweep import SweepError, build_sweep, sweep_params

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
N = 3000  # draws per distribution, ours and W&B's


def violations(config: dict) -> list[str]:
    return sweeps.schema_violations_from_proposed_config(config)


# --- one file for both ----------------------------------------------------------------------


def test_wandb_validator_accepts_our_example() -> None:
    config = yaml.safe_load((EXAMPLES / "sweep.yaml").read_text())
    assert violations(config) == []
    sweep = build_sweep(EXAMPLES / "sweep.yaml")
    assert sweep.notes == ()  # nothing of ours at its top level any more
    # ... and its settings, in the file beside it, still reach every script.
    assert "#GPUDISPATCH --gpus 1 --timeout 10m\n\nset -e\n" in sweep.jobs[0].text


def test_wandb_validator_accepts_our_bayes_example() -> None:
    config = yaml.safe_load((EXAMPLES / "bayes.yaml").read_text())
    assert violations(config) == []
    sweep = build_sweep(EXAMPLES / "bayes.yaml")
    assert (sweep.method, sweep.notes, len(sweep.jobs)) == ("bayes", (), 20)
    assert sweep.spec["early_terminate"] == {"type": "hyperband", "min_iter": 1, "eta": 3}


def test_our_keys_at_the_top_level_still_work_with_a_note(tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text("program: t.py\nparameters:\n  a: {values: [1]}\n"
                    "directives: {gpus: 2}\nheaders: [set -e]\n")
    assert "Additional properties" in " ".join(violations(yaml.safe_load(path.read_text())))
    sweep = build_sweep(path)
    assert "#GPUDISPATCH --gpus 2" in sweep.jobs[0].text
    assert sweep.notes == ("directives, headers at the top level of the sweep file make W&B's "
                           "validator refuse it; move them to old.gpudispatch.yaml (see README)",)


@pytest.mark.parametrize(("parameters", "note"), [
    ({"2nd lr": {"values": [1]}}, "parameters.2nd lr: W&B's validator refuses this parameter "
                                  "name"),
    ({"x": {"distribution": "log_uniform", "min": -3, "max": 0}},
     "parameters.x: W&B's validator refuses log_uniform (min/max are "
     "exponents) as deprecated; log_uniform_values takes the values"),
    ({"m": {"parameters": {"a b": {"value": 1}}}}, "parameters.m.parameters.a b"),
    ({"c": {"distribution": "categorical", "values": [1, 2], "probabilities": [0.5, 0.5]}},
     "probabilities"),
])
def test_what_wandb_refuses_runs_with_a_note(parameters: dict, note: str) -> None:
    spec = {"program": "t.py", "method": "random", "run_cap": 2, "parameters": parameters}
    assert violations(spec) != []
    notes = build_sweep(spec).notes
    assert len(notes) == 1 and note in notes[0], notes


WANDB_FILES = {
    "every_distribution": {
        "program": "t.py", "method": "random", "run_cap": 5,
        "parameters": {
            "c": {"value": 1}, "v": {"values": ["a", "b"]},
            "p": {"values": [1, 2], "probabilities": [0.3, 0.7]},
            "p2": {"distribution": "categorical_w_probabilities", "values": [1, 2],
                   "probabilities": [0.3, 0.7]},
            "i": {"min": 1, "max": 4}, "u": {"min": 0.5, "max": 2},
            "q": {"distribution": "q_uniform", "min": 0, "max": 8, "q": 2},
            "lv": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
            "qlv": {"distribution": "q_log_uniform_values", "min": 1, "max": 100, "q": 1},
            "ilv": {"distribution": "inv_log_uniform_values", "min": 1e-3, "max": 1},
            "n": {"distribution": "normal", "mu": 1, "sigma": 2},
            "qn": {"distribution": "q_normal", "q": 0.5},
            "ln": {"distribution": "log_normal"},
            "qln": {"distribution": "q_log_normal", "mu": 1, "sigma": 0.5, "q": 1},
            "b": {"distribution": "beta", "a": 2, "b": 3},
            "qb": {"distribution": "q_beta", "q": 0.1},
            "model": {"parameters": {"layers": {"values": [1, 2]},
                                     "act": {"parameters": {"name": {"value": "relu"}}}}},
        },
    },
    "grid_q_uniform_and_macros": {
        "program": "t.py", "method": "grid",
        "command": ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"],
        "parameters": {"q": {"distribution": "q_uniform", "min": 0, "max": 1, "q": 0.25},
                       "i": {"distribution": "int_uniform", "min": 1, "max": 2}},
        "controller": {"type": "local"}, "job": "me/proj/job:v1",
        "project": "p", "entity": "e", "metric": {"name": "loss", "impute": "worst"},
    },
}


@pytest.mark.parametrize("name", sorted(WANDB_FILES))
def test_files_wandb_accepts_are_read_fully(tmp_path: Path, name: str) -> None:
    config = WANDB_FILES[name]
    assert violations(config) == []
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    sweep = build_sweep(path)
    runs = list(sweep.jobs)
    assert runs
    assert all("W&B's validator refuses" not in note for note in sweep.notes)
    if config["method"] == "grid":
        assert len(runs) == 4 * 2
        assert {r.params["q"] for r in runs} == {0.0, 0.25, 0.5, 0.75}  # max left out
        return
    for run in runs:
        assert set(run.params) == set(config["parameters"])
        assert run.params["model"]["act"] == {"name": "relu"}
        assert run.params["model"]["layers"] in (1, 2)
        assert run.params["c"] == 1 and 0 <= run.params["qb"] <= 1


# --- each distribution, as W&B samples it ------------------------------------------------------

DISTRIBUTIONS = [
    {"distribution": "uniform", "min": -2, "max": 3.5},
    {"min": 0.5, "max": 3.0},
    {"min": -3, "max": 7},
    {"distribution": "int_uniform", "min": 10, "max": 12},
    {"distribution": "q_uniform", "min": 0, "max": 10, "q": 3},
    {"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.25},
    {"distribution": "q_uniform", "min": 0, "max": 10},
    {"distribution": "log_uniform", "min": -4, "max": 1},
    {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
    {"distribution": "q_log_uniform", "min": 0, "max": 5, "q": 2},
    {"distribution": "q_log_uniform_values", "min": 1, "max": 1000, "q": 5},
    {"distribution": "q_log_uniform_values", "min": 1e-3, "max": 1.0, "q": 0.01},
    {"distribution": "inv_log_uniform", "min": 1, "max": 4},
    {"distribution": "inv_log_uniform_values", "min": 1e-3, "max": 1},
    {"distribution": "normal", "mu": 2, "sigma": 3},
    {"distribution": "normal"},
    {"distribution": "q_normal", "mu": 10, "sigma": 5, "q": 2},
    {"distribution": "q_normal", "mu": 0, "sigma": 1, "q": 0.5},
    {"distribution": "log_normal", "mu": 0.5, "sigma": 0.7},
    {"distribution": "q_log_normal", "mu": 2, "sigma": 0.5, "q": 1},
    {"distribution": "beta", "a": 2, "b": 5},
    {"distribution": "q_beta", "a": 0.5, "b": 0.5, "q": 0.1},
    {"values": [1, 2, 3, 4]},
    {"values": ["a", "b", "c"], "probabilities": [0.6, 0.3, 0.1]},
]


def _wandb_draws(config: dict, seed: int) -> list:
    """W&B's draws: its ``sample()`` is ``ppf(random.uniform(0, 1))``, vectorised here."""
    param = HyperParameter("x", config)
    u = np.random.default_rng(seed).uniform(size=N)
    drawn = param.ppf(u)
    return [np.asarray(v).item() for v in drawn]


def _ours(config: dict, seed: int) -> list:
    runs = sweep_params({"method": "random", "run_cap": N, "seed": seed,
                         "parameters": {"x": config}})
    return [run["x"] for run in runs]


@pytest.mark.parametrize("config", DISTRIBUTIONS, ids=lambda c: json.dumps(c, sort_keys=True))
def test_distribution_samples_as_wandb(config: dict) -> None:
    theirs, ours = _wandb_draws(config, 11), _ours(config, 11)
    # The same kinds of value: ints where W&B gives ints (int_uniform, an int q)...
    assert {type(v) for v in ours} == {type(v) for v in theirs}, (ours[:5], theirs[:5])
    if "values" in config:  # each value as often as W&B draws it
        values = config["values"]
        assert set(ours) <= set(values)
        counts = [sum(v == x for v in ours) for x in values]
        expected = [N * p for p in config.get("probabilities", [1 / len(values)] * len(values))]
        assert stats.chisquare(counts, expected).pvalue > 1e-5, counts
        return
    # ... in W&B's range (its ppf near 0 and 1), on W&B's quantisation grid ...
    low, high = (np.asarray(HyperParameter("x", config).ppf(p)).item()
                 for p in (1e-12, 1 - 1e-12))
    slack = 1e-9 * max(1.0, abs(low), abs(high))
    assert all(low - slack <= v <= high + slack for v in ours), (low, high, min(ours),
                                                                  max(ours))
    if "q" in config:
        q = config["q"]
        assert all(math.isclose(v / q, round(v / q), abs_tol=1e-6) for v in ours)
    # ... and the same distribution: a two-sample Kolmogorov-Smirnov test (fixed seeds).
    result = stats.ks_2samp(ours, theirs)
    assert result.pvalue > 1e-5, (result, sorted(ours)[::N // 10], sorted(theirs)[::N // 10])


def test_the_tests_catch_a_wrong_distribution() -> None:
    """Without W&B's semantics the test above fails: log_uniform's min/max are exponents,
    and a log_uniform_values reading of them is told apart."""
    wrong = _ours({"distribution": "log_uniform_values", "min": math.exp(-4),
                   "max": math.exp(1)}, 11)
    right = _wandb_draws({"distribution": "log_uniform", "min": -4, "max": 1}, 11)
    assert stats.ks_2samp(wrong, right).pvalue > 1e-5  # the same thing, by the values
    swapped = _ours({"distribution": "uniform", "min": math.exp(-4), "max": math.exp(1)}, 11)
    assert stats.ks_2samp(swapped, right).pvalue < 1e-6


def test_grid_points_are_wandbs() -> None:
    parameters = {
        "q": {"distribution": "q_uniform", "min": 0.1, "max": 1.0, "q": 0.2},
        "qi": {"distribution": "q_uniform", "min": 0, "max": 10, "q": 3},
        "i": {"distribution": "int_uniform", "min": -1, "max": 1},
        "v": {"values": [[64, 32], None, "x"]},
        "c": {"value": True},
        "m": {"parameters": {"a": {"values": [1, 2]}}},
    }
    config = {"method": "grid", "parameters": parameters}
    theirs = [r.config for r in grid_search_next_runs([], config, n=10_000) if r is not None]
    ours = list(sweep_params(config))
    canon = sorted(json.dumps({k: {"value": v} for k, v in run.items()}, sort_keys=True)
                   for run in ours)
    assert canon == sorted(json.dumps(c, sort_keys=True) for c in theirs)
    assert len(ours) == 5 * 4 * 3 * 3 * 2


def test_nested_parameters_as_wandb_nests_them() -> None:
    config = {"method": "random", "parameters": {
        "opt": {"parameters": {"lr": {"min": 0.0, "max": 1.0}, "name": {"value": "adam"},
                               "beta": {"parameters": {"b1": {"value": 0.9}}}}},
        "bs": {"value": 8}}}
    theirs = random_search_next_runs(config)[0].config
    ours = sweep_params({**config, "run_cap": 1, "seed": 1})[0]
    assert list(ours["opt"]) == list(theirs["opt"]["value"]) == ["beta", "lr", "name"]
    assert ours["opt"]["beta"] == theirs["opt"]["value"]["beta"] == {"b1": 0.9}


# --- the argument text of `wandb agent` ----------------------------------------------------

ARGV_PROGRAM = "import json, sys\nprint(json.dumps(sys.argv[1:]))\n"
PARAMS = {"lr": 0.001, "use_bn": False, "aug": True, "layers": [64, 32], "opt": None,
          "name": "two words $HOME 'q'", "big": 1e-05, "n": 3,
          "model": {"parameters": {"act": {"value": "relu"}, "depth": {"value": 2}}}}


def _argv_of(tmp_path: Path, command: list[str] | None, arg_style: str | None = None,
             env: dict | None = None) -> list[str]:
    """The words the program receives when the sweep's first script runs (real sh)."""
    program = tmp_path / "argv.py"
    program.write_text(ARGV_PROGRAM)
    spec = {"program": str(program), "method": "grid",
            "parameters": {k: v if isinstance(v, dict) else {"value": v}
                           for k, v in PARAMS.items()}}
    if command:
        spec["command"] = command
    assert violations(spec) == []
    settings = {"interpreter": sys.executable, "interpreter_options": ""}
    if arg_style:
        settings["arg_style"] = arg_style
    script = tmp_path / "run.sh"
    script.write_text(build_sweep(spec, settings=settings).jobs[0].text)
    out = subprocess.run(["/bin/sh", str(script)], capture_output=True, text=True,
                         timeout=60, check=True, env={**os.environ, **(env or {})})
    return json.loads(out.stdout)


def _agent_args() -> dict:
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    values = {k: v if not isinstance(v, dict) else
              {n: d["value"] for n, d in sorted(v["parameters"].items())}
              for k, v in PARAMS.items()}
    return create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})


@pytest.mark.parametrize("macro", ["args", "args_no_hyphens", "args_no_boolean_flags",
                                   "args_no_equals", "args_json", "args_append_hydra",
                                   "args_override_hydra"])
def test_arguments_are_wandb_agents(tmp_path: Path, macro: str) -> None:
    argv = _argv_of(tmp_path, ["${env}", "${interpreter}", "${program}", f"${{{macro}}}"])
    assert argv == _agent_args()[macro]


def test_default_command_is_wandbs(tmp_path: Path) -> None:
    argv = _argv_of(tmp_path, None)
    assert argv == _agent_args()["args"]
    assert argv[:5] == ["--lr=0.001", "--use_bn=False", "--aug=True", "--layers=[64, 32]",
                        "--opt=None"]
    assert "--model={'act': 'relu', 'depth': 2}" in argv


def test_args_json_file_and_envvar(tmp_path: Path) -> None:
    argv = _argv_of(tmp_path, ["${env}", "${interpreter}", "${program}", "--cfg",
                               "${args_json_file}", "--where=${envvar:GD_TEST_WHERE}",
                               "${envvar:GD_TEST_UNSET}"], env={"GD_TEST_WHERE": "a b"})
    assert argv[0] == "--cfg" and argv[2:] == ["--where=a b", "GD_TEST_UNSET"]
    assert not Path(argv[1]).exists()  # removed when the script ends
    # the file held W&B's args_json; read it again, from a script that keeps it
    text = build_sweep({"program": "p.py", "parameters": {"a": {"value": [1]}},
                        "command": ["cat", "${args_json_file}"]}).jobs[0].text
    assert '\n{"a": [1]}\nGPUDISPATCH_ARGS_JSON\n' in text


def test_classic_arg_style_is_create_shell_scripts(tmp_path: Path) -> None:
    argv = _argv_of(tmp_path, None, arg_style="classic")
    assert argv[:6] == ["--lr", "0.001", "--aug", "--layers", "64", "32"]
    assert argv[6:8] == ["--name", PARAMS["name"]]
    # only ${args} changes: the other macros keep the agent's text
    argv = _argv_of(tmp_path, ["${env}", "${interpreter}", "${program}", "${args_json}"],
                    arg_style="classic")
    assert argv == _agent_args()["args_json"]


def test_bad_arg_style() -> None:
    with pytest.raises(SweepError, match="arg_style"):
        build_sweep({"program": "p.py", "parameters": {"a": {"value": 1}}},
                    settings={"arg_style": "argparse"})


def test_seed_draws_are_deterministic_random_module_not_touched() -> None:
    state = random.getstate()
    spec = {"program": "p.py", "method": "random", "run_cap": 4,
            "parameters": {"x": {"distribution": "normal"}}}
    first, second = build_sweep(spec), build_sweep(spec)
    assert first.seed == second.seed is not None
    assert [j.params for j in first.jobs] == [j.params for j in second.jobs]
    assert random.getstate() == state
