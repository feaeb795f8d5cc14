"""A sweep spec (W&B's sweep configuration format) -> one script per run, in a queue.

A spec is a YAML file or a dict. Supported W&B keys: ``program``, ``method`` (``grid`` or
``random``; default ``grid``), ``parameters``, ``run_cap``, ``name`` (the default job-name
prefix), ``description`` and ``metric`` (kept on the :class:`Sweep`, e.g. to sort
results), and ``command`` (a word list with the macros ``${env}``, ``${interpreter}``,
``${program}`` and ``${args}``). ``early_terminate``, ``project`` and ``entity`` only
mean something to W&B's servers: they are accepted and ignored (no run is stopped early).
Our own keys: ``interpreter`` (default ``python``), ``interpreter_options`` (default
``-u``), ``headers``, ``footers``, ``directives`` (``#GPUDISPATCH`` lines, a dict or a
list of option strings), ``prefix`` and ``seed`` (for ``random``).

Everything is checked before anything is queued: an unknown key, a bad distribution or
directive, or a job name already in the queue raises :class:`SweepError` naming it.

Runs are made lazily: a sweep's size is counted arithmetically (the product of the grid's
axis lengths, or ``run_cap``) and each run's params and script are made only when it is
printed or queued, so a spec of 10**9 grid points costs no memory to read or to refuse
(``gpudispatch sweep`` asks for ``--yes`` above :data:`CONFIRM_ABOVE` runs).

A relative ``program`` is taken relative to the spec file's folder and written as an
absolute path, because the job runs later, from wherever the dispatcher runs it.
"""

from __future__ import annotations

import io
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
    choice,
    constant,
    int_uniform,
    iter_random_search,
    log_uniform,
    q_uniform,
    uniform,
)
from gpudispatch.scripts import create_shell_script, current_user
from gpudispatch.store import FolderQueue

WANDB_KEYS = frozenset(
    {"program", "method", "parameters", "run_cap", "name", "description", "metric", "command"}
)
WANDB_IGNORED_KEYS = frozenset({"early_terminate", "project", "entity"})
OUR_KEYS = frozenset(
    {"interpreter", "interpreter_options", "headers", "footers", "directives", "prefix", "seed"}
)
SPEC_KEYS = WANDB_KEYS | WANDB_IGNORED_KEYS | OUR_KEYS
METHODS = ("grid", "random")

# Which keys each distribution takes (besides ``distribution`` itself).
DISTRIBUTION_KEYS: dict[str, frozenset[str]] = {
    "constant": frozenset({"value"}),
    "categorical": frozenset({"values", "probabilities"}),
    "uniform": frozenset({"min", "max"}),
    "int_uniform": frozenset({"min", "max"}),
    "log_uniform_values": frozenset({"min", "max"}),
    "log_uniform": frozenset({"min", "max"}),  # W&B: min/max are natural-log exponents
    "q_uniform": frozenset({"min", "max", "q"}),
}
COMMAND_MACROS = {"${env}", "${interpreter}", "${program}", "${args}"}
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
    """A checked spec turned into jobs, plus what W&B's keys said about it."""

    name: str
    method: str
    jobs: Sequence[SweepJob]  # made one at a time when iterated (a LazySequence)
    metric: dict[str, Any] | None = None
    description: str | None = None
    spec: dict[str, Any] = field(default_factory=dict, repr=False)


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


def load_spec(source: str | Path | Mapping[str, Any]) -> tuple[dict[str, Any], Path | None]:
    """The spec as a dict, and the file it came from (None for a dict)."""
    if isinstance(source, Mapping):
        return dict(source), None
    path = Path(source)
    try:
        data = yaml.load(path.read_text(), Loader=_Yaml12Loader)
    except OSError as exc:
        raise SweepError(f"cannot read sweep spec {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SweepError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, Mapping):
        raise SweepError(f"{path}: a sweep spec must be a mapping of keys, not {_kind(data)}")
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
    """The distribution a parameter uses, named or inferred as W&B infers it."""
    if "distribution" in spec:
        name = spec["distribution"]
        if name not in DISTRIBUTION_KEYS:
            raise SweepError(
                f"{where}: distribution {name!r} is not supported "
                f"(use one of {', '.join(DISTRIBUTION_KEYS)})"
            )
        return name
    if "value" in spec and "values" in spec:
        raise SweepError(f"{where}: give 'value' or 'values', not both")
    if "value" in spec:
        return "constant"
    if "values" in spec:
        return "categorical"
    if "min" in spec and "max" in spec:
        both_ints = _is_int(spec["min"]) and _is_int(spec["max"])
        return "int_uniform" if both_ints else "uniform"
    raise SweepError(f"{where}: needs 'value', 'values', or 'min' and 'max'")


def parse_parameter(where: str, spec: Any) -> Distribution:
    """A parameter's spec -> a :class:`~gpudispatch.params.Distribution`."""
    if not isinstance(spec, Mapping):
        raise SweepError(f"{where}: must be a mapping such as {{values: [...]}}, not {spec!r}")
    if "parameters" in spec:
        raise SweepError(f"{where}: nested 'parameters' are not supported")
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


def _build_distribution(where: str, name: str, spec: Mapping[str, Any]) -> Distribution:
    if name == "constant":
        if "value" not in spec:
            raise SweepError(f"{where}: needs 'value'")
        return constant(spec["value"])
    if name == "categorical":
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
    lo, hi = _number(where, spec, "min"), _number(where, spec, "max")
    if name == "uniform":
        return uniform(lo, hi)
    if name == "int_uniform":
        if not (_is_int(lo) and _is_int(hi)):
            raise SweepError(f"{where}: int_uniform needs integer 'min' and 'max'")
        return int_uniform(lo, hi)
    if name == "log_uniform_values":
        return log_uniform(lo, hi)
    if name == "log_uniform":
        return log_uniform(math.exp(lo), math.exp(hi))
    return q_uniform(lo, hi, _number(where, spec, "q", default=1))


def grid_axis(where: str, definition: Distribution) -> Sequence[Any]:
    """The values a grid steps through for one parameter; continuous ones cannot be."""
    if isinstance(definition, constant):
        return [definition.value]
    if isinstance(definition, choice):
        return definition.values  # probabilities mean nothing to a grid
    if isinstance(definition, int_uniform):
        return range(definition.lo, definition.hi + 1)  # not a list: it may be 10**9 long
    raise SweepError(
        f"{where}: method 'grid' needs 'value', 'values' or int_uniform, "
        f"not a {type(definition).__name__} distribution"
    )


def parse_parameters(parameters: Any) -> dict[str, Distribution]:
    """``parameters`` -> {name: definition}, in spec order."""
    if not isinstance(parameters, Mapping) or not parameters:
        raise SweepError("'parameters' must be a non-empty mapping of parameter names")
    parsed = {}
    for key, spec in parameters.items():
        if not isinstance(key, str) or not key or key.startswith("-"):
            raise SweepError(f"parameter name {key!r} must be a non-empty string not starting '-'")
        parsed[key] = parse_parameter(f"parameters.{key}", spec)
    return parsed


def sweep_params(spec: Mapping[str, Any]) -> Sequence[dict[str, Any]]:
    """The params of every run, in sweep order (a spec already checked by
    :func:`check_spec`), made one at a time: ``len`` costs nothing."""
    definitions = parse_parameters(spec.get("parameters"))
    method = spec.get("method", "grid")
    cap = run_cap(spec)
    if method == "grid":
        grid = Grid({k: grid_axis(f"parameters.{k}", d) for k, d in definitions.items()})
        runs = LazySequence(grid.size if cap is None else min(cap, grid.size),
                            lambda: iter(grid))
    else:
        assert cap is not None  # check_spec requires it for random
        seed = spec.get("seed")
        runs = LazySequence(cap, lambda: iter_random_search(definitions, cap, seed=seed))
    if runs.count > sys.maxsize:  # len() could not even say how many
        raise SweepError(f"the sweep has {runs.count:,} runs, too many to queue")
    return runs


def run_cap(spec: Mapping[str, Any]) -> int | None:
    """``run_cap`` as an int: ``1e8`` (a float to YAML) is accepted when it is whole."""
    cap = spec.get("run_cap")
    if isinstance(cap, float) and cap.is_integer():
        return int(cap)
    return cap


# --- the rest of the spec ----------------------------------------------------------------


def check_spec(spec: Mapping[str, Any]) -> None:
    """Raise :class:`SweepError` for the first problem with the top-level keys."""
    for key in spec:
        if key not in SPEC_KEYS:
            raise SweepError(
                f"unknown key {key!r} in sweep spec (known: {', '.join(sorted(SPEC_KEYS))})"
            )
    method = spec.get("method", "grid")
    if method not in METHODS:
        raise SweepError(f"'method': {method!r} is not supported (use grid or random)")
    cap = run_cap(spec)
    if cap is not None and (not _is_int(cap) or cap < 1):
        raise SweepError(f"'run_cap' must be a positive integer, not {spec['run_cap']!r}")
    if method == "random" and cap is None:
        raise SweepError("'run_cap' is required with method 'random' (it would never end)")
    seed = spec.get("seed")
    if seed is not None and not _is_int(seed):
        raise SweepError(f"'seed' must be an integer, not {seed!r}")
    for key in ("program", "interpreter", "interpreter_options", "name", "description",
                "prefix"):
        if key in spec and not isinstance(spec[key], str):
            raise SweepError(f"{key!r} must be a string, not {spec[key]!r}")
    if "command" not in spec and not spec.get("program"):
        raise SweepError("'program' is required (the script each run starts)")
    metric = spec.get("metric")
    if metric is not None and not (isinstance(metric, Mapping) and isinstance(
            metric.get("name"), str)):
        raise SweepError("'metric' must be a mapping with a 'name'")
    if metric is not None and metric.get("goal", "minimize") not in ("minimize", "maximize"):
        raise SweepError(f"'metric.goal' must be minimize or maximize, not {metric['goal']!r}")


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


def command_parts(spec: Mapping[str, Any], program: str) -> tuple[str, str | None]:
    """The command before the params, and the text after them (``end``).

    Without ``command`` it is ``interpreter interpreter_options program``, the seed's look.
    W&B's ``command`` list is exec'd word by word, so literal words are quoted here.
    """
    interpreter = " ".join(
        p for p in (spec.get("interpreter", "python"), spec.get("interpreter_options", "-u")) if p
    )
    if "command" not in spec:
        return f"{interpreter} {shlex.quote(program)}", None
    words = spec["command"]
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise SweepError(f"'command' must be a list of strings, not {words!r}")
    for word in words:
        if word.startswith("${") and word not in COMMAND_MACROS:
            raise SweepError(f"'command': macro {word!r} is not supported "
                             f"(use {', '.join(sorted(COMMAND_MACROS))})")
    if words.count("${args}") != 1:
        raise SweepError("'command' must contain '${args}' exactly once")
    if "${program}" in words and not program:
        raise SweepError("'program' is required when 'command' uses '${program}'")
    split = words.index("${args}")
    head, tail = words[:split], words[split + 1:]
    if any(w in COMMAND_MACROS for w in tail):
        raise SweepError("'command': macros must come before '${args}'")
    expand = {"${env}": "/usr/bin/env", "${interpreter}": interpreter,
              "${program}": shlex.quote(program)}
    head_text = " ".join(expand.get(w, shlex.quote(w)) for w in head)
    return head_text, " ".join(shlex.quote(w) for w in tail) or None


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


def job_names(prefix: str, count: int) -> Sequence[str]:
    """``prefix-0001.sh``...: zero-padded so alphanumeric (run) order is sweep order."""
    width = max(4, len(str(count)))
    return LazySequence(count, lambda: (f"{prefix}-{i:0{width}d}.sh"
                                        for i in range(1, count + 1)))


def build_sweep(
    source: str | Path | Mapping[str, Any],
    *,
    user: str | None = None,
    date: datetime | None = None,
    relocate: Callable[[str], str] | None = None,
) -> Sweep:
    """Check a spec; its jobs' scripts are made as ``jobs`` is iterated. Nothing touches
    a queue yet. ``relocate``: maps the program's absolute path (into a snapshot)."""
    spec, spec_file = load_spec(source)
    check_spec(spec)
    runs = sweep_params(spec)
    if not len(runs):
        raise SweepError("the sweep has no runs (is a 'values' list empty?)")
    headers = text_lines("headers", spec.get("headers"))
    footers = text_lines("footers", spec.get("footers"))
    directives = directive_lines(spec.get("directives"))
    program = resolve_program(spec.get("program", ""), spec_file)
    if relocate and program:  # a snapshot's copy of the program, when it holds one
        program = relocate(program)
    command, end = command_parts(spec, program)
    prefix = sweep_prefix(spec, spec_file)
    # Once for the whole sweep: a passwd lookup per script was half the cost of making it.
    user = current_user() if user is None else user
    date = date or datetime.now()

    def job(name: str, params: dict[str, Any]) -> SweepJob:
        return SweepJob(name, create_shell_script(
            params, app=command, opts="", target="", end=end, headers=headers,
            footers=footers, directives=directives, user=user, date=date), params)

    return Sweep(prefix, spec.get("method", "grid"),
                 SweepJobs(job_names(prefix, len(runs)), runs, job),
                 spec.get("metric"), spec.get("description"), spec)


# --- queueing ----------------------------------------------------------------------------


def queue_sweep(jobs: Sequence[SweepJob], queue: FolderQueue, sweep_name: str,
                metric: Mapping[str, Any] | None = None) -> list[str]:
    """Queue every job, or none when a name is taken (checked for all before the first);
    the names queued, in order."""
    return list(iter_queue_sweep(jobs, queue, sweep_name, metric))


def iter_queue_sweep(jobs: Sequence[SweepJob], queue: FolderQueue, sweep_name: str,
                     metric: Mapping[str, Any] | None = None,
                     more: Mapping[str, Any] | None = None,
                     transform: Callable[[str], str] | None = None) -> Iterator[str]:
    """:func:`queue_sweep` one job at a time: every name is checked now, and each job is
    queued as the iterator is consumed (its name then yielded), so memory does not grow
    with the sweep. ``metric`` (the spec's) goes into each record with the sweep's name,
    so that ``results`` can rank the runs best first without the spec file. ``more``:
    further record entries shared by every job (the capsule); ``transform``: applied to
    each script (the snapshot's ``cd``)."""
    check_names(jobs, queue)
    extra: dict[str, Any] = {"sweep": sweep_name}
    if metric:
        extra["sweep_metric"] = {"name": metric["name"],
                                 "goal": metric.get("goal", "minimize")}
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
                             "(set a shorter 'prefix' in the spec)")
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
            "(set 'prefix' in the spec to queue the sweep again)"
        )


def format_params(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in params.items())


def write_dry_run(sweep: Sweep, out: TextIO) -> None:
    """What ``gpudispatch sweep --dry-run`` prints: every script, nothing queued; written
    one job at a time (a huge sweep streams, ``| head`` stops it)."""
    out.write(f"# sweep {sweep.name} ({sweep.method}): {len(sweep.jobs)} jobs, dry run, "
              "nothing queued\n")
    for job in sweep.jobs:
        out.write(f"\n==> {job.name} <== {format_params(job.params)}\n{job.text}")


def dry_run_text(sweep: Sweep) -> str:
    """:func:`write_dry_run` as one string (for a sweep small enough to hold)."""
    out = io.StringIO()
    write_dry_run(sweep, out)
    return out.getvalue()


def summary_lines(sweep: Sweep, names: Iterable[str]) -> list[str]:
    """What ``gpudispatch sweep`` prints after queueing (``names`` read once, not kept)."""
    count, first, last = 0, None, None
    for name in names:
        count += 1
        first, last = first or name, name
    lines = [f"queued {count} jobs for sweep {sweep.name} ({sweep.method})"]
    if first:
        lines.append(f"  {first} .. {last}")
    if sweep.metric:
        desc = " --desc" if sweep.metric.get("goal") == "maximize" else ""
        lines.append(f"  results: gpudispatch results --sweep {sweep.name} "
                     f"--sort {sweep.metric['name']}{desc}")
    return lines
