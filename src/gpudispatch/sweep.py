"""A sweep file (W&B's sweep configuration format) -> one script per run, in a queue.

A sweep file is a W&B sweep file: W&B's validator accepts ours, and every file it accepts
is read whole. W&B keys: ``program``, ``method`` (``grid``, ``random`` or ``bayes``;
default ``grid``; a bayes sweep's runs are asked one by one by the dispatcher, see
:mod:`gpudispatch.adaptive`), ``early_terminate`` (hyperband, any method; the dispatcher
stops runs early), ``parameters`` (every W&B distribution, sampled as W&B's ``sweeps`` package
samples it, ``probabilities``, nested ``parameters``), ``run_cap``, ``name`` (the default
job-name prefix), ``description``, ``metric`` (kept on the :class:`Sweep` and in each
record, so ``results`` ranks the runs) and ``command`` (W&B's agent's macros: ``${env}``,
``${interpreter}``, ``${program}``, every ``${args...}`` form, ``${envvar:NAME}``; the
default is W&B's ``${env} ${interpreter} ${program} ${args}``). Each run's arguments are
the words ``wandb agent`` would pass (``--lr=0.001 --use_bn=False --layers=[64, 32]``).

Keys accepted and not acted on are reported in :attr:`Sweep.notes` (``project``,
``entity``, ``controller``, ``job``...); ``metric.target`` is refused (not supported
yet) unless ``ignore_unsupported``; ``custom``, ``scheduler`` and ``metrics`` are
refused.

gpudispatch's own settings (``interpreter`` (default ``python``), ``interpreter_options``
(default ``-u``), ``headers``, ``footers``, ``directives`` (``#GPUDISPATCH`` lines, a
dict or a list of option strings), ``prefix``, ``seed`` and ``arg_style`` (``wandb`` or
``classic``: ``--lr 0.001`` and bare flags, as :func:`create_shell_script`)) live in
``NAME.gpudispatch.yaml`` beside the sweep file, or another file, or flags; at the top
level of the sweep file they still work, with a note (W&B's validator refuses them).

Everything is checked before anything is queued: an unknown key, a bad distribution or
directive raises :class:`SweepError` naming it. A sweep already in the queue (jobs named
``PREFIX-NNNN.sh``) is added to only on request: :func:`plan_more` finds the runs not
queued yet (``--resume``) or N more (``--extend``). A random sweep without a seed gets
one derived from its parameters and name (:func:`derived_seed`), recorded with each run.

Runs are made lazily: a sweep's size is counted arithmetically (the product of the grid's
axis lengths, or ``run_cap``) and each run's params and script are made only when it is
printed or queued, so a spec of 10**9 grid points costs no memory to read or to refuse
(``gpudispatch sweep`` asks for ``--yes`` above :data:`CONFIRM_ABOVE` runs).

A relative ``program`` is taken relative to the spec file's folder and written as an
absolute path, because the job runs later, from wherever the dispatcher runs it.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import shlex
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import yaml

from gpudispatch.job import DIRECTIVE_PREFIX, DirectiveError, parse_directives
from gpudispatch.layout import STATE_DIRS, is_job_name, name_problem, printable
from gpudispatch.params import (
    Distribution,
    Grid,
    LazySequence,
    beta,
    choice,
    constant,
    exp_uniform,
    int_uniform,
    iter_random_search,
    log_normal,
    normal,
    q_grid,
    quantized,
    uniform,
)
from gpudispatch.scripts import CONTINUATION, INDENT, current_user, header_lines, option_words
from gpudispatch.store import FolderQueue

# W&B's top-level keys (its validator allows no others). Those in WANDB_NOTED mean
# something only to W&B's servers or Launch: accepted, with a note that they are ignored.
WANDB_KEYS = frozenset(
    {"program", "method", "parameters", "run_cap", "name", "description", "metric", "command",
     "early_terminate", "project", "entity", "controller", "job", "image_uri", "apiVersion",
     "kind", "scheduler", "metrics"}
)
WANDB_NOTED = ("project", "entity", "controller", "job", "image_uri", "apiVersion", "kind")
# Accepted and not acted on only with --ignore-unsupported (else refused, one line).
UNSUPPORTED = ("metric.target",)
METRIC_NOTED = ("impute", "impute_while_running")  # bayes-only: noted, ignored
# gpudispatch's own settings: in a settings file next to the sweep file
# (``NAME.gpudispatch.yaml``), ``--settings FILE``, or flags; still read at the top
# level of a sweep file (with a note: W&B's validator refuses them there).
OUR_KEYS = frozenset(
    {"interpreter", "interpreter_options", "headers", "footers", "directives", "prefix", "seed",
     "arg_style"}
)
SPEC_KEYS = WANDB_KEYS | OUR_KEYS
METHODS = ("grid", "random", "bayes")
DRIVEN_METHODS = ("bayes",)  # asked run by run by the dispatcher (gpudispatch.adaptive)
HYPERBAND_KEYS = frozenset({"type", "min_iter", "max_iter", "s", "eta", "strict"})
ARG_STYLES = ("wandb", "classic")
SETTINGS_SUFFIX = ".gpudispatch.yaml"

# Which keys each distribution takes (besides ``distribution`` itself), as W&B's schema.
DISTRIBUTION_KEYS: dict[str, frozenset[str]] = {
    "constant": frozenset({"value"}),
    "categorical": frozenset({"values", "probabilities"}),
    "categorical_w_probabilities": frozenset({"values", "probabilities"}),
    "int_uniform": frozenset({"min", "max"}),
    "uniform": frozenset({"min", "max"}),
    "q_uniform": frozenset({"min", "max", "q"}),
    "log_uniform": frozenset({"min", "max"}),  # min/max are natural-log exponents
    "log_uniform_values": frozenset({"min", "max"}),
    "q_log_uniform": frozenset({"min", "max", "q"}),
    "q_log_uniform_values": frozenset({"min", "max", "q"}),
    "inv_log_uniform": frozenset({"min", "max"}),
    "inv_log_uniform_values": frozenset({"min", "max"}),
    "normal": frozenset({"mu", "sigma"}),
    "q_normal": frozenset({"mu", "sigma", "q"}),
    "log_normal": frozenset({"mu", "sigma"}),
    "q_log_normal": frozenset({"mu", "sigma", "q"}),
    "beta": frozenset({"a", "b"}),
    "q_beta": frozenset({"a", "b", "q"}),
}
GRID_DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "q_uniform")
# W&B agent's command macros: each a whole word of ``command``. ARG_MACROS carry params.
ARG_MACROS = ("${args}", "${args_no_hyphens}", "${args_no_boolean_flags}", "${args_no_equals}",
              "${args_json}", "${args_json_file}", "${args_append_hydra}",
              "${args_override_hydra}")
COMMAND_MACROS = frozenset({"${env}", "${interpreter}", "${program}", *ARG_MACROS})
DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
ENVVAR_MACRO = re.compile(r"\$\{envvar\:([A-Z0-9_]*)\}")  # as wandb's agent reads it
CONFIRM_ABOVE = 100_000  # runs; a larger sweep is queued only with --yes


class SweepError(ValueError):
    """A sweep spec that cannot be run as written; the message names the offending key."""


@dataclass(frozen=True)
class SweepJob:
    """One run of a sweep: its job name, its script text and the params it was made from."""

    name: str
    text: str
    params: dict[str, Any]


class SweepJobs(LazySequence[SweepJob]):
    """A sweep's jobs, each made (script and all) when it is reached, and their
    ``names``, which cost no script to list."""

    def __init__(self, names: Sequence[str], runs: Sequence[dict[str, Any]],
                 job: Callable[[str, dict[str, Any]], SweepJob]) -> None:
        super().__init__(len(runs), lambda: map(job, names, runs))
        self.names = names


@dataclass(frozen=True)
class Sweep:
    """A checked spec turned into jobs, plus what W&B's keys said about it.

    ``jobs`` are runs 1..N named ``PREFIX-0001.sh``...; ``runs(n)`` gives the params of the
    first ``n`` runs (for ``random`` a stream that goes on past N: ``--extend``), and
    ``make_job(name, params)`` one job's script. ``notes`` are one-line remarks about keys
    accepted but not acted on (``gpudispatch sweep`` prints them on stderr).
    """

    name: str
    method: str
    jobs: Sequence[SweepJob]  # made one at a time when iterated (a LazySequence)
    metric: dict[str, Any] | None = None
    description: str | None = None
    spec: dict[str, Any] = field(default_factory=dict, repr=False)
    seed: int | None = None
    seed_given: bool = False
    notes: tuple[str, ...] = ()
    runs: Callable[[int], Sequence[dict[str, Any]]] | None = field(default=None, repr=False)
    make_job: Callable[[str, dict[str, Any]], SweepJob] | None = field(default=None,
                                                                       repr=False)
    grid_size: int | None = None


# --- reading ---------------------------------------------------------------------------


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML reads ``1e-3`` as a string (YAML 1.1); sweep files mean a float (YAML 1.2)."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_spec(source: str | Path | Mapping[str, Any],
              what: str = "sweep spec") -> tuple[dict[str, Any], Path | None]:
    """The spec as a dict, and the file it came from (None for a dict)."""
    if isinstance(source, Mapping):
        return dict(source), None
    path = Path(source)
    try:
        data = yaml.load(path.read_text(), Loader=_Yaml12Loader)
    except OSError as exc:
        raise SweepError(f"cannot read {what} {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SweepError(f"{path} is not valid YAML{at}: {problem}") from None
    if not isinstance(data, Mapping):
        raise SweepError(f"{path}: a {what} must be a mapping of keys, not {_kind(data)}")
    return dict(data), path


def _kind(value: Any) -> str:
    return type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- parameters ------------------------------------------------------------------------


def _number(where: str, spec: Mapping[str, Any], key: str, default: Any = None) -> float:
    value = spec.get(key, default)
    if value is None:
        raise SweepError(f"{where}: needs {key!r}")
    if not _is_number(value) or (isinstance(value, float) and not math.isfinite(value)):
        raise SweepError(f"{where}: {key!r} must be a finite number, not {value!r}")
    return value


def distribution_name(where: str, spec: Mapping[str, Any]) -> str:
    """The distribution a parameter uses, named or inferred as W&B infers it (the first
    of its schema's forms that fits: int ``min`` and ``max`` mean ``int_uniform``, and
    ``1.0`` is a float, not an int, as for W&B)."""
    if "distribution" in spec:
        name = spec["distribution"]
        if name not in DISTRIBUTION_KEYS:
            raise SweepError(
                f"{where}: distribution {name!r} is not one of W&B's "
                f"({', '.join(DISTRIBUTION_KEYS)})"
            )
        return name
    if "value" in spec and "values" in spec:
        raise SweepError(f"{where}: give 'value' or 'values', not both")
    if "value" in spec:
        return "constant"
    if "values" in spec:
        return "categorical_w_probabilities" if "probabilities" in spec else "categorical"
    if "min" in spec and "max" in spec:
        return "int_uniform" if _is_int(spec["min"]) and _is_int(spec["max"]) else "uniform"
    raise SweepError(f"{where}: needs 'value', 'values', 'parameters', or 'min' and 'max'")


def parse_parameter(where: str, spec: Any) -> Distribution:
    """A parameter's spec -> a :class:`~gpudispatch.params.Distribution`."""
    if not isinstance(spec, Mapping):
        raise SweepError(f"{where}: must be a mapping such as {{values: [...]}}, not {spec!r}")
    name = distribution_name(where, spec)
    for key in spec:
        if key != "distribution" and key not in DISTRIBUTION_KEYS[name]:
            raise SweepError(f"{where}: unknown key {key!r} for distribution {name!r}")
    try:
        return _build_distribution(where, name, spec)
    except ValueError as exc:
        if isinstance(exc, SweepError):
            raise
        raise SweepError(f"{where}: {exc}") from None


def _categorical(where: str, spec: Mapping[str, Any]) -> Distribution:
    values = spec.get("values")
    if not isinstance(values, list) or not values:
        raise SweepError(f"{where}: 'values' must be a non-empty list, not {values!r}")
    probs = spec.get("probabilities")
    if probs is None:
        return choice(values)
    if not isinstance(probs, list) or not all(_is_number(p) and p >= 0 for p in probs):
        raise SweepError(f"{where}: 'probabilities' must be a list of numbers >= 0")
    if len(probs) != len(values) or not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
        raise SweepError(f"{where}: 'probabilities' must match 'values' and sum to 1")
    return choice(values, probs)


def _build_distribution(where: str, name: str, spec: Mapping[str, Any]) -> Distribution:
    """W&B's semantics for each (its ``sweeps`` package's ``HyperParameter.ppf``)."""
    if name == "constant":
        if "value" not in spec:
            raise SweepError(f"{where}: needs 'value'")
        return constant(spec["value"])
    if name.startswith("categorical"):
        return _categorical(where, spec)
    if name.endswith("normal"):
        mu, sigma = _number(where, spec, "mu", 0.0), _number(where, spec, "sigma", 1.0)
        base: Distribution = log_normal(mu, sigma) if "log" in name else normal(mu, sigma)
    elif name.endswith("beta"):
        base = beta(_number(where, spec, "a", 1.0), _number(where, spec, "b", 1.0))
    else:
        lo, hi = _number(where, spec, "min"), _number(where, spec, "max")
        if not lo < hi:  # W&B's validator: min must be less than max
            raise SweepError(f"{where}: 'min' ({lo}) must be less than 'max' ({hi})")
        if name == "int_uniform":
            if not (_is_int(lo) and _is_int(hi)):
                raise SweepError(f"{where}: int_uniform needs integer 'min' and 'max'")
            return int_uniform(lo, hi)
        if name.endswith("_values"):
            if lo <= 0:
                raise SweepError(f"{where}: {name} needs 'min' above 0, not {lo}")
            lo, hi = math.log(lo), math.log(hi)
            if name.startswith("inv_"):  # W&B: exp(-u), u uniform in [-log max, -log min]
                lo, hi = -hi, -lo
        if name in ("uniform", "q_uniform"):
            base = uniform(lo, hi)
        elif name.startswith("inv_"):
            base = exp_uniform(lo, hi, negate=True)
        else:
            base = exp_uniform(lo, hi)
    if name.startswith("q_"):
        return quantized(base, _number(where, spec, "q", 1.0))  # W&B's default q is 1.0
    return base


def grid_axis(where: str, definition: Distribution) -> Sequence[Any]:
    """The values a grid steps through for one parameter, as W&B's grid search: values,
    a constant, ``int_uniform`` (min..max) or ``q_uniform`` (``numpy.arange(min, max,
    q)``, max left out); other distributions and ``probabilities`` cannot be stepped."""
    if isinstance(definition, constant):
        return [definition.value]
    if isinstance(definition, choice):
        if definition.weights is not None:
            raise SweepError(f"{where}: method 'grid' takes no 'probabilities' (W&B refuses "
                             "them too); use method 'random'")
        return definition.values
    if isinstance(definition, int_uniform):
        return range(definition.lo, definition.hi + 1)  # not a list: it may be 10**9 long
    if isinstance(definition, quantized) and isinstance(definition.base, uniform):
        base = definition.base
        return q_grid(base.lo, base.hi, definition.q)
    raise SweepError(
        f"{where}: method 'grid' needs 'value', 'values', int_uniform or q_uniform, "
        f"not a {type(definition).__name__} distribution (use method 'random')"
    )


Path_ = tuple[str, ...]  # a parameter's place: ("model", "layers") for nested parameters


def parse_parameters(parameters: Any, where: str = "parameters") -> dict[Path_, Distribution]:
    """``parameters`` -> {path: definition}, in spec order; a parameter holding its own
    ``parameters`` (W&B's nested parameters) gives one path per leaf."""
    if not isinstance(parameters, Mapping) or not parameters:
        raise SweepError(f"{where!r} must be a non-empty mapping of parameter names")
    parsed: dict[Path_, Distribution] = {}
    for key, spec in parameters.items():
        if not isinstance(key, str) or not key or key.startswith("-"):
            raise SweepError(f"parameter name {key!r} must be a non-empty string not starting '-'")
        here = f"{where}.{key}"
        if isinstance(spec, Mapping) and "parameters" in spec:
            if len(spec) != 1:
                extra = sorted(k for k in spec if k != "parameters")
                raise SweepError(f"{here}: nested 'parameters' take no other keys ({extra})")
            inner = parse_parameters(spec["parameters"], f"{here}.parameters")
            parsed.update({(key, *path): d for path, d in inner.items()})
        else:
            parsed[(key,)] = parse_parameter(here, spec)
    return parsed


def nest(flat: Mapping[Path_, Any]) -> dict[str, Any]:
    """{("model", "layers"): 2} -> {"model": {"layers": 2}}: a run's params as W&B's
    agent hands them over (a nested parameter's value is a dict, its keys sorted as
    W&B's ``sweeps`` sorts them; the top level stays in spec order)."""
    params: dict[str, Any] = {}
    nested = False
    for path, value in flat.items():
        where = params
        for part in path[:-1]:
            where = where.setdefault(part, {})
            nested = True
        where[path[-1]] = value
    if not nested:
        return params
    return {k: _sorted(v) if (k,) not in flat else v for k, v in params.items()}


def _sorted(value: dict[str, Any]) -> dict[str, Any]:
    return {k: _sorted(v) if isinstance(v, dict) else v for k, v in sorted(value.items())}


WANDB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")  # W&B's schema's parameter names
WANDB_DEPRECATED = {"log_uniform": "log_uniform_values", "q_log_uniform": "q_log_uniform_values",
                    "inv_log_uniform": "inv_log_uniform_values"}


def wandb_refusals(parameters: Any, where: str = "parameters") -> list[str]:
    """What in ``parameters`` we run but W&B's validator refuses (one note each): a name
    outside its pattern, a distribution it calls deprecated (it looks at the top level
    only), ``probabilities`` under ``distribution: categorical``."""
    notes: list[str] = []
    if not isinstance(parameters, Mapping):
        return notes
    for key, spec in parameters.items():
        here = f"{where}.{key}"
        if isinstance(key, str) and not WANDB_NAME.fullmatch(key):
            notes.append(f"{here}: W&B's validator refuses this parameter name")
        if not isinstance(spec, Mapping):
            continue
        if "parameters" in spec:
            notes += wandb_refusals(spec["parameters"], f"{here}.parameters")
        name = spec.get("distribution")
        if name in WANDB_DEPRECATED and where == "parameters":
            notes.append(f"{here}: W&B's validator refuses {name} (min/max are exponents) "
                         f"as deprecated; {WANDB_DEPRECATED[name]} takes the values")
        if name == "categorical" and "probabilities" in spec:
            notes.append(f"{here}: W&B's validator refuses 'probabilities' under distribution "
                         "categorical (leave 'distribution' out)")
    return notes


def sweep_params(spec: Mapping[str, Any], seed: int | None = None,
                 count: int | None = None) -> Sequence[dict[str, Any]]:
    """The params of every run, in sweep order (a spec already checked by
    :func:`check_spec`), made one at a time: ``len`` costs nothing. ``count`` asks for
    more random runs than ``run_cap`` (the same stream, continued)."""
    definitions = parse_parameters(spec.get("parameters"))
    method = spec.get("method", "grid")
    cap = run_cap(spec)
    if method == "grid":
        grid = Grid({k: grid_axis("parameters." + ".parameters.".join(k), d)
                     for k, d in definitions.items()})
        size = grid.size if cap is None else min(cap, grid.size)
        if count is not None:
            size = min(count, grid.size)
        runs = LazySequence(size, lambda: map(nest, grid))
    else:
        n = count if count is not None else cap
        assert n is not None  # check_spec requires run_cap for random
        if seed is None:
            seed = spec.get("seed")
        runs = LazySequence(n, lambda: map(nest, iter_random_search(definitions, n, seed=seed)))
    if runs.count > sys.maxsize:  # len() could not even say how many
        raise SweepError(f"the sweep has {runs.count:,} runs, too many to queue")
    return runs


def grid_size(spec: Mapping[str, Any]) -> int:
    definitions = parse_parameters(spec.get("parameters"))
    return Grid({k: grid_axis(".".join(k), d) for k, d in definitions.items()}).size


def run_cap(spec: Mapping[str, Any]) -> int | None:
    """``run_cap`` as an int: ``1e8`` (a float to YAML) is accepted when it is whole."""
    cap = spec.get("run_cap")
    if isinstance(cap, float) and cap.is_integer():
        return int(cap)
    return cap


# --- the rest of the spec ----------------------------------------------------------------


def check_spec(spec: Mapping[str, Any], ignore_unsupported: bool = False) -> list[str]:
    """Raise :class:`SweepError` for the first problem with the top-level keys; else the
    notes on keys accepted but not acted on (one line each)."""
    for key in spec:
        if key not in SPEC_KEYS:
            raise SweepError(
                f"unknown key {key!r} in sweep spec (known: {', '.join(sorted(SPEC_KEYS))})"
            )
    method = spec.get("method", "grid")
    if method not in METHODS:
        raise SweepError(f"'method': {method!r} is not supported (use grid, random or bayes)")
    for key in ("scheduler", "metrics"):
        if key in spec:
            raise SweepError(f"{key!r} (W&B's custom optimizers) is not supported; "
                             "use method grid or random")
    cap = run_cap(spec)
    if cap is not None and (not _is_int(cap) or cap < 1):
        raise SweepError(f"'run_cap' must be a positive integer, not {spec['run_cap']!r}")
    if method in ("random", "bayes") and cap is None:
        raise SweepError(f"'run_cap' is required with method {method!r} (it would never end)")
    seed = spec.get("seed")
    if seed is not None and not _is_int(seed):
        raise SweepError(f"'seed' must be an integer, not {seed!r}")
    for key in ("program", "interpreter", "interpreter_options", "name", "description",
                "prefix", "job", "image_uri", "project", "entity", "apiVersion", "kind"):
        if key in spec and not isinstance(spec[key], str):
            raise SweepError(f"{key!r} must be a string, not {spec[key]!r}")
    if spec.get("arg_style", "wandb") not in ARG_STYLES:
        raise SweepError(f"'arg_style' must be one of {', '.join(ARG_STYLES)}, "
                         f"not {spec['arg_style']!r}")
    if "command" not in spec and not spec.get("program"):
        launch = " (a W&B Launch 'job' cannot run here)" if "job" in spec else ""
        raise SweepError(f"'program' is required (the script each run starts){launch}")
    metric = spec.get("metric")
    if metric is not None and not (isinstance(metric, Mapping) and isinstance(
            metric.get("name"), str)):
        raise SweepError("'metric' must be a mapping with a 'name'")
    if metric is not None and metric.get("goal", "minimize") not in ("minimize", "maximize"):
        raise SweepError(f"'metric.goal' must be minimize or maximize, not {metric['goal']!r}")
    if method == "bayes" and metric is None:
        raise SweepError("'metric' is required with method 'bayes' (what it learns from)")
    if "early_terminate" in spec:
        check_early_terminate(spec["early_terminate"], metric)
    notes = []
    noted = [k for k in WANDB_NOTED if k in spec]
    noted += [f"metric.{k}" for k in METRIC_NOTED if metric and k in metric]
    if noted:
        notes.append(f"ignored (they mean something to W&B only): {', '.join(noted)}")
    unsupported = [k for k in UNSUPPORTED if k in spec
                   or (k == "metric.target" and metric and "target" in metric)]
    if unsupported and not ignore_unsupported:
        what = {"metric.target": "'metric.target' (the sweep does not stop at a target)"}
        raise SweepError(f"{' and '.join(what[k] for k in unsupported)}: not supported yet; "
                         "nothing was queued (remove it, or pass --ignore-unsupported to "
                         "run every run to the end)")
    if unsupported:
        notes.append(f"ignored (--ignore-unsupported): {', '.join(unsupported)}: every run "
                     "runs to the end")
    return notes


def check_early_terminate(value: Any, metric: Any) -> None:
    """``early_terminate`` as W&B's schema has it: ``type: hyperband`` with ``min_iter``,
    or ``max_iter`` and ``s``; ``eta`` (above 1, default 3), ``strict`` (default true)."""
    if not isinstance(value, Mapping) or value.get("type") != "hyperband":
        raise SweepError("'early_terminate' must be a mapping with 'type: hyperband' "
                         "(the only early stopping W&B has)")
    unknown = sorted(str(k) for k in value if k not in HYPERBAND_KEYS)
    if unknown:
        raise SweepError(f"'early_terminate': unknown keys {unknown} "
                         f"(known: {', '.join(sorted(HYPERBAND_KEYS))})")
    if metric is None:
        raise SweepError("'early_terminate' needs 'metric' (the value runs are compared by)")
    if "min_iter" not in value and not ("max_iter" in value and "s" in value):
        raise SweepError("'early_terminate': give 'min_iter', or 'max_iter' and 's'")
    for key in ("min_iter", "max_iter"):
        if key in value and (not _is_int(value[key]) or value[key] < 1):
            raise SweepError(f"'early_terminate.{key}' must be an integer of 1 or more, "
                             f"not {value[key]!r}")
    if "s" in value and (not _is_number(value["s"]) or value["s"] < 1):
        raise SweepError(f"'early_terminate.s' must be a number of 1 or more, not {value['s']!r}")
    eta = value.get("eta", 3)
    if not _is_number(eta) or eta <= 1:
        raise SweepError(f"'early_terminate.eta' must be a number above 1, not {eta!r}")
    if not isinstance(value.get("strict", True), bool):
        raise SweepError("'early_terminate.strict' must be true or false")
    from gpudispatch.adaptive import hyperband_bands

    if not hyperband_bands(value):
        raise SweepError("'early_terminate': no band of 1 step or more (raise max_iter or "
                         "lower eta or s)")


def text_lines(key: str, value: Any) -> list[str]:
    """``headers``/``footers``: a list of shell lines (a single string is one line)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise SweepError(f"{key!r} must be a list of strings (shell lines), not {value!r}")


def directive_words(key: str, value: Any) -> list[str]:
    """One ``directives`` dict entry as option words: ``gpu_mem: 10G`` -> ``--gpu-mem 10G``."""
    flag = "--" + str(key).replace("_", "-")
    if isinstance(value, list):
        return [flag, *(shlex.quote(str(v)) for v in value)]
    return [flag, shlex.quote(str(value))]


def directive_lines(value: Any) -> list[str]:
    """``directives`` -> ``#GPUDISPATCH`` lines, checked the way the dispatcher reads them."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        words = [w for k, v in value.items() for w in directive_words(k, v)]
        lines = [f"{DIRECTIVE_PREFIX} {' '.join(words)}"] if words else []
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        lines = [f"{DIRECTIVE_PREFIX} {v.removeprefix(DIRECTIVE_PREFIX).strip()}" for v in value]
    else:
        raise SweepError(f"'directives' must be a mapping or a list of strings, not {value!r}")
    try:
        parse_directives("\n".join(lines))
    except DirectiveError as exc:
        raise SweepError(f"'directives': {exc}") from None
    return lines


# --- the command, as W&B's agent builds it -------------------------------------------------


def wandb_args(params: Mapping[str, Any]) -> dict[str, list[str]]:
    """Every argument macro's words, exactly as ``wandb agent`` makes them
    (``wandb.sdk.launch.sweeps.utils.create_sweep_command_args``): ``--lr=0.001``,
    ``--use_bn=False``, ``--layers=[64, 32]``, ``--opt=None``, a nested parameter as
    ``--model={'layers': 2}`` (Python's ``str`` of the value)."""
    out: dict[str, list[str]] = {m[2:-1]: [] for m in ARG_MACROS if m != "${args_json_file}"}
    for key, value in params.items():
        flag = f"{key}={value}"
        out["args"].append("--" + flag)
        out["args_no_hyphens"].append(flag)
        out["args_no_equals"] += [f"--{key}", str(value)]
        out["args_append_hydra"].append("+" + flag)
        out["args_override_hydra"].append("++" + flag)
        if isinstance(value, bool):
            if value:
                out["args_no_boolean_flags"].append("--" + key)
        else:
            out["args_no_boolean_flags"].append("--" + flag)
    out["args_json"] = [json.dumps(dict(params))]
    return out


def _literal_word(word: str) -> str:
    """A literal word of ``command`` for ``sh``: quoted, with W&B's ``${envvar:NAME}``
    becoming the variable's value when the job runs (its name when unset, as W&B does)."""
    out, at = [], 0
    for match in ENVVAR_MACRO.finditer(word):
        if match.start() > at:
            out.append(shlex.quote(word[at:match.start()]))
        var = match.group(1)
        out.append(f'"${{{var}-{var}}}"' if var else "''")
        at = match.end()
    if at < len(word) or not out:
        out.append(shlex.quote(word[at:]))
    return "".join(out)


@dataclass(frozen=True)
class Command:
    """A checked ``command``: each word a literal (shell text) or an argument macro."""

    words: tuple[tuple[str, str], ...]  # ("text", shell text) or ("args", macro name)
    arg_style: str = "wandb"

    @property
    def uses_json_file(self) -> bool:
        return ("args", "args_json_file") in self.words

    def lines(self, params: Mapping[str, Any]) -> list[str]:
        """The command's lines: the words before the first argument on the first line,
        then one argument a line, and the literal words after them joined on a line."""
        expanded = {k: [shlex.quote(w) for w in v] for k, v in wandb_args(params).items()}
        if self.arg_style == "classic":  # create_shell_script's words, already quoted
            expanded["args"] = [" ".join(w) for k, v in params.items()
                                if (w := option_words(str(k), v))]
        expanded["args_json_file"] = ['"$GPUDISPATCH_ARGS_JSON_FILE"']
        lines: list[str] = []
        current: list[str] = []
        for kind, text in self.words:
            if kind == "text":
                current.append(text)
                continue
            if current:
                lines.append(" ".join(current))
                current = []
            lines.extend(expanded[text])
        if current:
            lines.append(" ".join(current))
        return lines or ["true"]


def parse_command(spec: Mapping[str, Any], program: str) -> Command:
    """``command`` (default W&B's ``${env} ${interpreter} ${program} ${args}``) checked.

    ``${interpreter}`` is ``interpreter interpreter_options`` (``python -u``). A macro
    must be a whole word, as for W&B's agent (which drops one it does not know: here
    that is refused); literal words are quoted, being exec'd word by word by W&B.
    """
    interpreter = " ".join(
        p for p in (spec.get("interpreter", "python"), spec.get("interpreter_options", "-u")) if p
    )
    words = spec.get("command", DEFAULT_COMMAND)
    if not isinstance(words, list) or not all(isinstance(w, (str, int, float)) for w in words):
        raise SweepError(f"'command' must be a list of words, not {words!r}")
    words = [str(w) for w in words]
    for word in words:
        if word.startswith("${") and word.endswith("}") and word not in COMMAND_MACROS \
                and not ENVVAR_MACRO.fullmatch(word):
            raise SweepError(f"'command': macro {word!r} is not supported "
                             f"(use {', '.join(sorted(COMMAND_MACROS))})")
    if not any(w in ARG_MACROS for w in words):
        raise SweepError("'command' passes no parameters: add '${args}' (or another of "
                         f"{', '.join(ARG_MACROS)})")
    if "${program}" in words and not program:
        raise SweepError("'program' is required when 'command' uses '${program}'")
    expand = {"${env}": "/usr/bin/env", "${interpreter}": interpreter,
              "${program}": shlex.quote(program)}
    parsed = tuple(("args", w[2:-1]) if w in ARG_MACROS
                   else ("text", expand.get(w) or _literal_word(w)) for w in words)
    return Command(parsed, spec.get("arg_style", "wandb"))


def script_text(params: Mapping[str, Any], command: Command, *, headers: Sequence[str],
                footers: Sequence[str], directives: Sequence[str], user: str,
                date: datetime) -> str:
    """One run's script, laid out as :func:`create_shell_script` lays out the seed's."""
    lines = header_lines(user, date, directives)
    lines.append("")
    if headers:
        lines.extend(headers)
        lines.append("")
    if command.uses_json_file:  # W&B's agent writes the params to a file it names
        lines += ['GPUDISPATCH_ARGS_JSON_FILE=$(mktemp "${TMPDIR:-/tmp}/args.XXXXXX.json") '
                  "|| exit 1",
                  "trap 'rm -f \"$GPUDISPATCH_ARGS_JSON_FILE\"' EXIT",
                  "cat > \"$GPUDISPATCH_ARGS_JSON_FILE\" <<'GPUDISPATCH_ARGS_JSON'",
                  json.dumps(dict(params)), "GPUDISPATCH_ARGS_JSON", ""]
    command_lines = command.lines(params)
    lines.extend(line + CONTINUATION for line in command_lines[:1])
    lines.extend(INDENT + line + CONTINUATION for line in command_lines[1:-1])
    if len(command_lines) > 1:
        lines.append(INDENT + command_lines[-1])
    else:
        lines[-1] = lines[-1][: -len(CONTINUATION)]
    if footers:
        lines.append("")
        lines.extend(footers)
    return "\n".join(lines) + "\n"


def resolve_program(program: str, spec_file: Path | None) -> str:
    """A relative program is relative to the spec's folder (see the module docstring)."""
    if not program or spec_file is None or Path(program).is_absolute():
        return program
    return str((spec_file.parent / program).absolute())


def sweep_prefix(spec: Mapping[str, Any], spec_file: Path | None) -> str:
    """``prefix``, else W&B's ``name``, else the spec file's stem, made file-name safe."""
    if "prefix" in spec:
        prefix = spec["prefix"]
        if not prefix or not is_job_name(f"{prefix}-1.sh") or "/" in prefix:
            raise SweepError(f"'prefix': {prefix!r} cannot start a job file name")
        return prefix
    raw = spec.get("name") or (spec_file.stem if spec_file else "") or "sweep"
    safe = re.sub(r"[^A-Za-z0-9._+-]+", "-", raw).strip("-.") or "sweep"
    return safe


def job_name(prefix: str, index: int, width: int = 4) -> str:
    return f"{prefix}-{index:0{width}d}.sh"


def job_names(prefix: str, count: int) -> Sequence[str]:
    """``prefix-0001.sh``...: zero-padded so alphanumeric (run) order is sweep order."""
    width = max(4, len(str(count)))
    return LazySequence(count, lambda: (job_name(prefix, i, width)
                                        for i in range(1, count + 1)))


def settings_file_for(spec_file: Path | None) -> Path | None:
    """The settings file read with a sweep file: ``NAME.gpudispatch.yaml`` beside it."""
    if spec_file is None:
        return None
    return spec_file.with_name(spec_file.stem + SETTINGS_SUFFIX)


def load_settings(path: Path) -> dict[str, Any]:
    """gpudispatch's own settings for a sweep, from their YAML file (OUR_KEYS only)."""
    settings, _ = load_spec(path, "settings file")
    for key in settings:
        if key not in OUR_KEYS:
            raise SweepError(f"{path}: unknown key {key!r} (a settings file holds only "
                             f"{', '.join(sorted(OUR_KEYS))}; W&B's keys go in the sweep file)")
    return settings


def derived_seed(spec: Mapping[str, Any], prefix: str) -> int:
    """A random sweep's seed when none is given: from its parameters and name, so that a
    dry run shows the very values queued later (and recorded with each run)."""
    canonical = json.dumps([prefix, spec.get("parameters")], sort_keys=True, default=str)
    return int(hashlib.sha256(canonical.encode()).hexdigest()[:8], 16)


def build_sweep(
    source: str | Path | Mapping[str, Any],
    *,
    settings: Mapping[str, Any] | None = None,
    settings_file: Path | None = None,
    ignore_unsupported: bool = False,
    user: str | None = None,
    date: datetime | None = None,
    relocate: Callable[[str], str] | None = None,
) -> Sweep:
    """Check a spec; its jobs' scripts are made as ``jobs`` is iterated. Nothing touches
    a queue yet. ``relocate``: maps the program's absolute path (into a snapshot).

    gpudispatch's settings come, each overriding the one before, from the top level of
    the spec (deprecated: W&B's validator refuses them), the settings file
    (``settings_file``, else ``NAME.gpudispatch.yaml`` beside the spec when it exists),
    and ``settings`` (the command line's flags).
    """
    spec, spec_file = load_spec(source)
    notes: list[str] = []
    ours = [k for k in spec if k in OUR_KEYS]
    sibling = settings_file_for(spec_file)
    if ours:
        where = sibling.name if sibling else "a settings file"
        notes.append(f"{', '.join(ours)} at the top level of the sweep file make W&B's "
                     f"validator refuse it; move them to {where} (see README)")
    if settings_file is None and sibling is not None and sibling.is_file():
        settings_file = sibling
    if settings_file is not None:
        spec.update(load_settings(Path(settings_file)))
    seed_given = "seed" in spec or bool(settings and settings.get("seed") is not None)
    spec.update({k: v for k, v in (settings or {}).items() if v is not None})
    notes += check_spec(spec, ignore_unsupported)
    notes += wandb_refusals(spec.get("parameters"))
    headers = text_lines("headers", spec.get("headers"))
    footers = text_lines("footers", spec.get("footers"))
    directives = directive_lines(spec.get("directives"))
    program = resolve_program(spec.get("program", ""), spec_file)
    if relocate and program:  # a snapshot's copy of the program, when it holds one
        program = relocate(program)
    command = parse_command(spec, program)
    prefix = sweep_prefix(spec, spec_file)
    if program:  # as the dispatcher reads it back (a driven sweep's definition)
        spec["program"] = program
    method = spec.get("method", "grid")
    seed = None
    if method in ("random", "bayes"):
        seed = spec["seed"] if spec.get("seed") is not None else derived_seed(spec, prefix)
    if method == "bayes":  # asked one by one (gpudispatch.adaptive): none made here
        parse_parameters(spec.get("parameters"))
        runs: Sequence[dict[str, Any]] = LazySequence(run_cap(spec) or 0, lambda: iter(()))
    else:
        runs = sweep_params(spec, seed)
    if not len(runs):
        raise SweepError("the sweep has no runs (is a 'values' list empty?)")
    # Once for the whole sweep: a passwd lookup per script was half the cost of making it.
    user = current_user() if user is None else user
    date = date or datetime.now()

    def job(name: str, params: dict[str, Any]) -> SweepJob:
        return SweepJob(name, script_text(params, command, headers=headers, footers=footers,
                                          directives=directives, user=user, date=date),
                        params)

    def more_runs(count: int, seed: int | None = seed) -> Sequence[dict[str, Any]]:
        return sweep_params(spec, seed, count)

    return Sweep(prefix, method, SweepJobs(job_names(prefix, len(runs)), runs, job),
                 spec.get("metric"), spec.get("description"), spec, seed, seed_given,
                 tuple(notes), more_runs, job,
                 grid_size(spec) if method == "grid" else None)


def bayes_width(spec: Mapping[str, Any]) -> int:
    """The digits of a bayes sweep's job numbers (as :func:`job_names` for its run_cap)."""
    return max(4, len(str(run_cap(spec) or 0)))


# --- queueing ----------------------------------------------------------------------------


def queue_sweep(jobs: Sequence[SweepJob], queue: FolderQueue, sweep_name: str,
                metric: Mapping[str, Any] | None = None, seed: int | None = None) -> list[str]:
    """Queue every job, or none when a name is taken (checked for all before the first);
    the names queued, in order."""
    return list(iter_queue_sweep(jobs, queue, sweep_name, metric, seed))


def iter_queue_sweep(jobs: Sequence[SweepJob], queue: FolderQueue, sweep_name: str,
                     metric: Mapping[str, Any] | None = None,
                     seed: int | None = None, more: Mapping[str, Any] | None = None,
                     transform: Callable[[str], str] | None = None) -> Iterator[str]:
    """:func:`queue_sweep` one job at a time: every name is checked now, and each job is
    queued as the iterator is consumed (its name then yielded), so memory does not grow
    with the sweep. ``metric`` (the spec's) goes into each record with the sweep's name,
    so that ``results`` can rank the runs best first without the spec file, and ``seed``
    (a random sweep's), so that ``--extend`` continues the same stream. ``more``: further
    record entries shared by every job (the capsule); ``transform``: applied to each
    script (the snapshot's ``cd``)."""
    check_names(jobs, queue)
    extra: dict[str, Any] = {"sweep": sweep_name}
    if metric:
        extra["sweep_metric"] = {"name": metric["name"],
                                 "goal": metric.get("goal", "minimize")}
    if seed is not None:
        extra["sweep_seed"] = seed
    if more:
        extra.update(more)
    return (queue.enqueue_text(job.name, transform(job.text) if transform else job.text,
                               params=job.params, extra=extra)
            for job in jobs)


def check_names(jobs: Sequence[SweepJob], queue: FolderQueue) -> None:
    """Raise :class:`SweepError` when any job's name cannot be queued: not a usable name,
    given twice, or already in the queue's folders (all-or-nothing: before the first).

    One pass, in memory bounded by the queue's folders, not by the sweep: names already
    there are listed once, and repeats are looked for only when the names are not in
    strictly rising order (a sweep's own names always are).
    """
    names = jobs.names if isinstance(jobs, SweepJobs) else [job.name for job in jobs]
    existing = {name for state in STATE_DIRS for name in queue.names(state)}
    taken: list[str] = []
    clashes = 0
    rising, previous = True, ""
    for name in names:
        problem = name_problem(name)
        if problem:
            raise SweepError(f"job {printable(name)} {problem}; nothing was queued "
                             "(set a shorter prefix: --prefix NAME)")
        if name in existing:
            clashes += 1
            if len(taken) < 3:
                taken.append(name)
        rising, previous = rising and name > previous, name
    if not rising:
        counts = Counter(names)
        repeated = sorted(n for n, c in counts.items() if c > 1)
        if repeated:
            taken, clashes = repeated[:3], len(repeated)
    if taken:
        more = f" and {clashes - 3} more" if clashes > 3 else ""
        raise SweepError(
            f"job names already in use: {', '.join(taken)}{more}; nothing was queued "
            "(--resume or --extend N adds to the sweep, --prefix NAME starts a new one)"
        )


# --- queueing a sweep again: resume and extend ---------------------------------------------


@dataclass
class Existing:
    """A sweep's jobs already in a queue: {index: (name, state)} from ``PREFIX-NNNN.sh``."""

    jobs: dict[int, tuple[str, str]]
    width: int = 4

    def describe(self) -> str:
        states = Counter(state for _, state in self.jobs.values())
        names = [name for _, (name, _) in sorted(self.jobs.items())]
        span = names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]}"
        counts = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
        return f"{len(names)} jobs ({span}: {counts})"


def existing_jobs(queue: FolderQueue | None, prefix: str) -> Existing:
    """The jobs named ``PREFIX-<digits>.sh`` in any state folder of ``queue``."""
    found: dict[int, tuple[str, str]] = {}
    width = 4
    if queue is None:
        return Existing(found)
    pattern = re.compile(re.escape(prefix) + r"-(\d+)\.sh")
    for state in STATE_DIRS:
        for name in queue.names(state):
            match = pattern.fullmatch(name)
            if match:
                found[int(match.group(1))] = (name, state.value)
                width = len(match.group(1))
    return Existing(found, width)


def _canonical(params: Any) -> str:
    return json.dumps(params, sort_keys=True, default=str)


@dataclass
class Plan:
    """What queueing a sweep again adds: ``jobs`` (lazy), and how many were there."""

    jobs: Sequence[SweepJob]
    existing: Existing
    seed: int | None
    message: str = ""


def _counting(sweep: Sweep, limit: int, have: set[str],
              extend: int | None) -> Iterator[None]:
    """One ``None`` per grid point :func:`plan_more` would queue (a first, counting pass)."""
    assert sweep.runs is not None
    found = 0
    for params in sweep.runs(limit):
        if extend is not None and found >= extend:
            return
        if _canonical(params) not in have:
            found += 1
            yield None


def plan_more(sweep: Sweep, queue: FolderQueue, existing: Existing, *,
              extend: int | None) -> Plan:
    """The runs of ``sweep`` not in ``queue`` yet (``--resume``), or ``extend`` more.

    grid: its points (up to ``run_cap``, or all with ``extend``) whose params no job of
    the sweep has, matched by value, each named by its place in the grid when free;
    random: the runs of numbers not taken, up to ``run_cap``, or ``extend`` after the
    last, drawn from the same stream (the seed recorded with the sweep's jobs) so that
    run ``i`` has the same values however often the sweep is resumed.
    """
    assert sweep.runs is not None and sweep.make_job is not None
    records = {i: queue.read_record(name) for i, (name, _) in existing.jobs.items()}
    seed = sweep.seed
    recorded = {r.extra.get("sweep_seed") for r in records.values()} - {None}
    if sweep.method == "random" and recorded:
        if sweep.seed_given and recorded != {sweep.seed}:
            raise SweepError(f"sweep {sweep.name} was queued with seed "
                             f"{', '.join(map(str, sorted(recorded)))}, not {sweep.seed}; "
                             "nothing was queued (drop the seed to continue its stream, "
                             "or --prefix NAME for a new sweep)")
        seed = min(recorded)
    top = max(existing.jobs, default=0)
    width = existing.width
    make = sweep.make_job
    if sweep.method == "grid":
        have = {_canonical(r.params) for r in records.values()}
        limit = (sweep.grid_size or 0) if extend is not None else len(sweep.jobs)
        past_grid = max(top, limit)  # numbers past any grid point's own

        def pick() -> Iterator[SweepJob]:
            spare, found = past_grid, 0
            for index, params in enumerate(sweep.runs(limit), start=1):
                if extend is not None and found >= extend:
                    return
                if _canonical(params) in have:
                    continue
                found += 1
                if index in existing.jobs:  # its number holds other params: a new one
                    spare += 1
                    index = spare
                yield make(job_name(sweep.name, index, width), params)

        count = sum(1 for _ in _counting(sweep, limit, have, extend))
        jobs: Sequence[SweepJob] = LazySequence(count, pick)
    else:
        count = top + extend if extend is not None else len(sweep.jobs)
        first = top + 1 if extend is not None else 1
        taken = sum(1 for i in existing.jobs if first <= i <= count)

        def drawn() -> Iterator[SweepJob]:
            runs = sweep.runs(count, seed)
            for i, params in enumerate(runs, start=1):
                if i >= first and i not in existing.jobs:
                    yield make(job_name(sweep.name, i, width), params)

        jobs = LazySequence(max(0, count - first + 1 - taken), drawn)
    return Plan(jobs, existing, seed)


def format_params(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in params.items())


def write_dry_run(sweep: Sweep, out: TextIO, jobs: Sequence[SweepJob] | None = None) -> None:
    """What ``gpudispatch sweep --dry-run`` prints: every script, nothing queued; written
    one job at a time (a huge sweep streams, ``| head`` stops it). ``jobs``: those a
    ``--resume``/``--extend`` would queue, when not the whole sweep."""
    jobs = sweep.jobs if jobs is None else jobs
    seed = f", seed {sweep.seed}" if sweep.seed is not None else ""
    out.write(f"# sweep {sweep.name} ({sweep.method}{seed}): {len(jobs)} jobs, dry run, "
              "nothing queued\n")
    for job in jobs:
        out.write(f"\n==> {job.name} <== {format_params(job.params)}\n{job.text}")


def dry_run_text(sweep: Sweep) -> str:
    """:func:`write_dry_run` as one string (for a sweep small enough to hold)."""
    out = io.StringIO()
    write_dry_run(sweep, out)
    return out.getvalue()


def summary_lines(sweep: Sweep, names: Iterable[str], seed: int | None = None,
                  already: int = 0) -> list[str]:
    """What ``gpudispatch sweep`` prints after queueing (``names`` read once, not kept)."""
    count, first, last = 0, None, None
    for name in names:
        count += 1
        first, last = first or name, name
    seed = sweep.seed if seed is None else seed
    how = sweep.method + (f", seed {seed}" if seed is not None else "")
    before = f" ({already} were there already)" if already else ""
    lines = [f"queued {count} jobs for sweep {sweep.name} ({how}){before}"]
    if first:
        lines.append(f"  {first} .. {last}")
    if sweep.metric:
        desc = " --desc" if sweep.metric.get("goal") == "maximize" else ""
        lines.append(f"  results: gpudispatch results --sweep {sweep.name} "
                     f"--sort {sweep.metric['name']}{desc}")
    return lines
