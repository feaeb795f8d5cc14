"""Sweeps that learn, driven by the dispatcher: ``method: bayes`` (Optuna's TPE) and
``early_terminate: hyperband`` (W&B's bands), over plain scripts in the queue folder.

``gpudispatch sweep FILE`` records such a sweep under ``ROOT/.gpudispatch/sweeps/NAME/``
(``sweep.json``: the checked spec with gpudispatch's settings and the program's absolute
path, and what each record gets); for ``bayes`` it also makes the Optuna study there
(``study.journal``: Optuna's ``JournalStorage`` on a file, so it outlives any process)
and queues the first trials. The dispatcher's ``advance_sweeps`` step
(:class:`SweepDriver`) then, at most every :data:`ADVANCE_SECONDS` and at once when one
of its jobs ends:

- **bayes** (under the sweep's ``lock``, an ``flock``: one dispatcher at a time, on any
  host): tells the study each trial whose job has ended (``completed/``: the last value
  of ``metric.name`` it reported; no such value, or ``failed/``: ``FAIL``; stopped early:
  ``PRUNED``, after its reported values), then asks new trials while fewer of the
  sweep's jobs wait in ``queue/`` than the dispatcher has free slots, until ``run_cap``
  trials were asked. The sweep is then marked ``done``.
- **hyperband** (any method): compares the metric series of the sweep's jobs at W&B's
  bands (:func:`hyperband_bands`, :func:`band_thresholds`, :func:`hyperband_cut`, the
  arithmetic of ``sweeps.hyperband_stopping``) and asks its own running jobs that fall
  below a band's cut to stop, through the cancel request the dispatcher already acts on
  (:meth:`FolderQueue.request_early_stop`): SIGTERM, SIGKILL after the grace. Such a
  job ends in ``completed/`` with the reason ``stopped early by hyperband ...``.

Crash safety (kill -9 at any instant). Trial ``k`` (Optuna's number, from 0) is always
job ``PREFIX-{k+1}.sh``, so a trial is queued at most once under one name. A trial is
asked (journal line), then queued (``enqueue_text``: record, then the script linked;
refused when the name exists), then marked queued in the study (``job`` user attribute).
After a crash, a running trial not marked queued is queued now unless its script is in
some folder (then only marked): nothing asked is lost, nothing is queued twice. A trial
is told only while the study still has it running, so a tell is never repeated; the
study's journal is the record that it was told. A marked trial whose script is in no
folder (removed by hand) is told ``FAIL`` after :data:`MISSING_CHECKS` looks.

Optuna is imported only here, and only when a bayes sweep is handled.
"""

from __future__ import annotations

import fcntl
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from gpudispatch.job import JobState
from gpudispatch.store import EARLY_STOP, FolderQueue

ADVANCE_SECONDS = 0.2  # how often the step looks, when no job of ours has ended
LIST_SECONDS = 1.0  # how often new sweep folders are looked for
FIRST_AHEAD = 2  # trials `gpudispatch sweep` queues before any dispatcher runs
MISSING_CHECKS = 3
RELIST_SECONDS = 2.0  # a state folder whose mtime did not change is listed again after this
QUANTILE_EDGE = 1e-9  # normal/log_normal are asked as a quantile in [e, 1 - e]


class DrivenSweepError(ValueError):
    """A driven sweep that cannot go on as written."""


# --- hyperband: W&B's arithmetic (sweeps.hyperband_stopping), pure ---------------------


def hyperband_bands(et: Mapping[str, Any]) -> list[int]:
    """The steps (counts of reported values) at which runs are compared, as W&B has them:
    ``max_iter`` divided by ``eta`` up to ``s`` times (those of 1 or more, ascending), or
    ``min_iter`` times ``eta`` to the 0..99th power."""
    eta = et.get("eta", 3)
    bands: list[int] = []
    if "max_iter" in et:
        band = float(et["max_iter"])
        for _ in range(int(et["s"])):
            band /= eta
            if band < 1:
                break
            bands.append(int(band))
        return sorted(bands)
    band = et["min_iter"]
    for _ in range(100):
        bands.append(int(band))
        band *= eta
    return bands


def band_thresholds(bands: Sequence[int], histories: Iterable[Sequence[float]],
                    eta: float) -> list[float]:
    """Per band, the value a run must not be above (lower is better): the
    ``int(len / eta)``-th smallest of the values every run had at that band (W&B keeps
    the top 1/eta), infinity where no run reached it."""
    histories = list(histories)
    r = 1.0 / eta
    out = []
    for band in bands:
        values = sorted(h[band - 1] for h in histories if len(h) >= band)
        out.append(values[int(r * len(values))] if values else math.inf)
    return out


def hyperband_cut(history: Sequence[float], bands: Sequence[int],
                  thresholds: Sequence[float], strict: bool = True) -> tuple[int, float] | None:
    """``(band, value)`` when a run with this ``history`` (lower is better) is to stop:
    at the last band it reached, its value there (``strict``, W&B's default; else its
    best so far) is above that band's threshold. None: it goes on."""
    closest, threshold = -1, 0.0
    for band, limit in zip(bands, thresholds, strict=False):
        if band > len(history):
            break
        closest, threshold = band, limit
    if closest == -1:
        return None
    value = history[closest - 1] if strict else min(history)
    return (closest, value) if value > threshold else None


def is_value(x: Any) -> bool:
    """W&B's ``is_number``: a finite int or float, not a bool."""
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def metric_series(entries: Iterable[Mapping[str, Any]], metric: str,
                  maximize: bool) -> tuple[list[float], list[Any]]:
    """The values of ``metric`` in a job's metric lines, in order (lower is better: a
    maximised metric is negated, as W&B does), and the ``step`` each line gave."""
    values, steps = [], []
    for entry in entries:
        value = entry.get(metric)
        if is_value(value):
            values.append(-value if maximize else value)
            steps.append(entry.get("step", len(values)))
    return values, steps


def early_stop_reason(metric: str, step: Any, value: float) -> str:
    return f"{EARLY_STOP} by hyperband at step {step} ({metric}={value:.6g})"


# --- bayes: W&B's distributions asked of an Optuna trial --------------------------------


class _TrialSource:
    """Stands for ``random.Random`` in a distribution's ``sample``: each draw is asked of
    the Optuna trial under the parameter's name, so a bayes sweep has every distribution
    a random sweep has (a ``q_`` one quantised after, a log one asked on a log scale, a
    normal one as its quantile)."""

    def __init__(self, trial: Any, name: str) -> None:
        self.trial, self.name = trial, name

    def uniform(self, a: float, b: float) -> float:
        return self.trial.suggest_float(self.name, min(a, b), max(a, b))

    def randint(self, a: int, b: int) -> int:
        return self.trial.suggest_int(self.name, a, b)

    def choice(self, values: Sequence[Any]) -> Any:
        values = list(values)
        plain = all(v is None or isinstance(v, bool | int | float | str) for v in values)
        if plain and len({(type(v), v) for v in values}) == len(values):
            return self.trial.suggest_categorical(self.name, values)
        return values[self.trial.suggest_categorical(self.name, list(range(len(values))))]

    def choices(self, values: Sequence[Any], weights: Any = None) -> list[Any]:
        return [self.choice(values)]  # bayes: the probabilities do not apply

    def _quantile(self) -> float:
        return self.trial.suggest_float(self.name, QUANTILE_EDGE, 1 - QUANTILE_EDGE)

    def normalvariate(self, mu: float, sigma: float) -> float:
        from statistics import NormalDist  # here: the dispatcher imports this module

        return NormalDist(mu, sigma).inv_cdf(self._quantile())

    def lognormvariate(self, mu: float, sigma: float) -> float:
        return math.exp(self.normalvariate(mu, sigma))

    def betavariate(self, a: float, b: float) -> float:
        raise DrivenSweepError(f"parameter {self.name}: distribution beta is not supported "
                               "with method bayes")


def trial_params(spec: Mapping[str, Any], trial: Any) -> dict[str, Any]:
    """One run's params (nested as a random sweep's), each asked of ``trial``."""
    from gpudispatch.sweep import nest, parse_parameters

    flat = {path: definition.sample(_TrialSource(trial, ".".join(path)))
            for path, definition in parse_parameters(spec.get("parameters")).items()}
    return nest(flat)


def check_bayes(spec: Mapping[str, Any]) -> None:
    """Raise :class:`DrivenSweepError` when a trial cannot be asked (one in memory)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial_params(spec, study.ask())


# --- the driver: one per dispatcher, one entry per driven sweep -------------------------


class FolderNames:
    """The names in each state folder, listed again only when the folder's mtime changed
    (or every :data:`RELIST_SECONDS`, for a change within one timestamp tick): a queue of
    100,000 ended jobs is not listed five times a second."""

    def __init__(self, queue: FolderQueue, clock: Callable[[], float]) -> None:
        self.queue, self.clock = queue, clock
        self._cache: dict[JobState, tuple[int, float, list[str]]] = {}

    def __call__(self, state: JobState) -> list[str]:
        try:
            mtime = os.stat(self.queue.layout.state_folder(state)).st_mtime_ns
        except OSError:
            return []
        now = self.clock()
        cached = self._cache.get(state)
        if cached and cached[0] == mtime and now - cached[1] < RELIST_SECONDS:
            return cached[2]
        names = self.queue.names(state)
        self._cache[state] = (mtime, now, names)
        return names



def _job_name(prefix: str, number: int, width: int) -> str:
    return f"{prefix}-{number:0{width}d}.sh"


class Driven:
    """One driven sweep, as the dispatcher sees it (rebuilt from its folder at start)."""

    def __init__(self, queue: FolderQueue, name: str, definition: dict[str, Any],
                 log: Any, names: Callable[[JobState], list[str]] | None = None) -> None:
        self.queue, self.name, self.log = queue, name, log
        self.names = names or queue.names
        self.definition = definition
        self.spec: dict[str, Any] = definition["spec"]
        self.method = self.spec.get("method", "grid")
        self.prefix = definition.get("prefix", name)
        self.pattern = re.compile(re.escape(self.prefix) + r"-(\d+)\.sh")
        metric = self.spec.get("metric") or {}
        self.metric = metric.get("name")
        self.maximize = metric.get("goal", "minimize") == "maximize"
        self.et = self.spec.get("early_terminate")
        self.bands = hyperband_bands(self.et) if self.et else []
        self.finished: dict[str, tuple[list[float], list[Any]]] = {}  # histories of ended jobs
        self.stopped: set[str] = set()
        self.missing: dict[int, int] = {}
        self.pending = self.method == "bayes"
        self._parsed: dict[str, tuple[tuple[int, int], tuple[list[float], list[Any]]]] = {}
        self._study = None
        self._make = None

    @property
    def folder(self) -> str:
        return self.queue.layout.sweep_dir(self.name)

    # --- jobs of the sweep, by number -----------------------------------------------------
    def jobs(self) -> dict[int, tuple[str, JobState]]:
        """Its jobs in the state folders, listed in the order a job moves through them."""
        found: dict[int, tuple[str, JobState]] = {}
        for state in (JobState.QUEUED, JobState.RUNNING, JobState.COMPLETED, JobState.FAILED):
            for name in self.names(state):
                match = self.pattern.fullmatch(name)
                if match:
                    found[int(match.group(1))] = (name, state)
        return found

    # --- bayes ------------------------------------------------------------------------
    def study(self):
        if self._study is None:
            self._study = open_study(self.queue, self.name, self.spec,
                                     self.definition.get("seed"))
        return self._study

    def _queue_trial(self, trial: Any, params: dict[str, Any]) -> str:
        from gpudispatch.sweep import build_sweep

        if self._make is None:
            sweep = build_sweep(self.spec)
            assert sweep.make_job is not None
            self._make = sweep.make_job
        name = _job_name(self.prefix, trial.number + 1, self.definition["width"])
        job = self._make(name, params)
        text = job.text
        workdir = self.definition.get("workdir")
        if workdir:
            from gpudispatch.control import with_workdir

            text = with_workdir(text, workdir=workdir)
        extra = dict(self.definition.get("extra") or {})
        extra["sweep_trial"] = trial.number
        from gpudispatch.store import QueueError

        if self.queue.locate(name) is None:
            try:
                self.queue.enqueue_text(name, text, params=job.params, extra=extra)
            except QueueError:  # there after all (moving as we looked): queued once
                pass
        return name

    def advance_bayes(self, free: int) -> list[str]:
        """Tell what ended, ask what fits; the names queued. Under the sweep's lock."""
        lock = os.open(f"{self.folder}/lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return []  # another dispatcher advances it now
            return self._advance_locked(free)
        finally:
            os.close(lock)

    def _advance_locked(self, free: int) -> list[str]:
        import optuna
        from optuna.trial import TrialState

        study = self.study()
        cap = int(self.spec["run_cap"])
        trials = study.get_trials(deepcopy=False)
        jobs = self.jobs()
        queued: list[str] = []
        ahead = 0
        for trial in trials:
            if trial.state is not TrialState.RUNNING:
                continue
            number = trial.number + 1
            job = jobs.get(number)
            if "job" not in trial.user_attrs:  # asked; its queueing not known to be done
                if job is None:  # its params: those it has, the rest asked now
                    live = optuna.trial.Trial(study, trial._trial_id)
                    name = self._queue_trial(trial, trial_params(self.spec, live))
                    self.log.info("sweep %s: trial %d was asked but not queued; queued %s",
                                  self.name, trial.number, name)
                    queued.append(name)
                    job = (name, JobState.QUEUED)
                study._storage.set_trial_user_attr(trial._trial_id, "job", job[0])
            if job is not None:
                self.missing.pop(number, None)
            else:
                if self.queue.locate(_job_name(self.prefix, number, self.definition["width"])):
                    continue  # moving between folders as they were listed
                self.missing[number] = self.missing.get(number, 0) + 1
                if self.missing[number] >= MISSING_CHECKS:
                    study.tell(trial.number, state=TrialState.FAIL)
                    self.log.warning("sweep %s: trial %d's job is in no folder; told FAIL",
                                     self.name, trial.number)
                continue
            name, state = job
            if state is JobState.QUEUED:
                ahead += 1
            elif state in (JobState.COMPLETED, JobState.FAILED):
                self._tell(study, trial, name, state)
        count = len(trials)
        while count < cap and ahead < free:
            trial = study.ask()
            name = self._queue_trial(trial, trial_params(self.spec, trial))
            trial.set_user_attr("job", name)
            queued.append(name)
            count += 1
            ahead += 1
        if queued:
            self.log.info("sweep %s: queued %s (%d of %d asked)", self.name,
                          ", ".join(queued), count, cap)
        running = any(t.state is TrialState.RUNNING
                      for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        self.pending = count < cap or running
        if not self.pending:
            self.queue.mark_sweep_done(self.name)
            try:
                job = study.best_trial.user_attrs.get("job")
                best = f"best {self.metric}={study.best_value:.6g} ({job})"
            except ValueError:
                best = "no trial completed"
            self.log.info("sweep %s: done, %d trials; %s", self.name, count, best)
        return queued

    def _tell(self, study: Any, trial: Any, name: str, state: JobState) -> None:
        from optuna.trial import TrialState

        from gpudispatch.results import metric_history

        record = self.queue.read_record(name)
        history = metric_history(self.queue.layout.metrics(name))
        values = [e[self.metric] for e in history if is_value(e.get(self.metric))]
        if state is JobState.COMPLETED and (record.reason or "").startswith(EARLY_STOP):
            import optuna

            live = optuna.trial.Trial(study, trial._trial_id)
            for step, value in enumerate(values):
                live.report(value, step)
            study.tell(trial.number, state=TrialState.PRUNED)
            told = "PRUNED"
        elif state is JobState.COMPLETED and values:
            study.tell(trial.number, values[-1])
            told = f"{self.metric}={values[-1]:.6g}"
        else:
            study.tell(trial.number, state=TrialState.FAIL)
            told = "FAIL" + ("" if state is JobState.FAILED else f" (it reported no {self.metric})")
        self.log.info("sweep %s: trial %d (%s) told %s", self.name, trial.number, name, told)

    # --- hyperband --------------------------------------------------------------------
    def _series(self, name: str) -> tuple[list[float], list[Any]]:
        """A job's metric series, parsed again only when its file changed."""
        from gpudispatch.results import metric_history

        path = self.queue.layout.metrics(name)
        try:
            st = os.stat(path)
        except OSError:
            return [], []
        key = (st.st_size, st.st_mtime_ns)
        cached = self._parsed.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        series = metric_series(metric_history(path), self.metric, self.maximize)
        self._parsed[name] = (key, series)
        return series

    def stop_early(self, stoppable: Iterable[str]) -> list[tuple[str, str]]:
        """Ask the jobs of ``stoppable`` (running here) that fall below a band's cut to
        stop; ``(name, reason)`` for each asked."""
        mine = [n for n in stoppable if self.pattern.fullmatch(n) and n not in self.stopped]
        if not mine or not self.bands or not self.metric:
            return []
        histories: dict[str, tuple[list[float], list[Any]]] = {}
        for state in (JobState.RUNNING, JobState.COMPLETED, JobState.FAILED):
            for name in self.names(state):
                if not self.pattern.fullmatch(name):
                    continue
                if state is not JobState.RUNNING and name in self.finished:
                    histories[name] = self.finished[name]
                    continue
                histories[name] = series = self._series(name)
                if state is not JobState.RUNNING:
                    self.finished[name] = series
        thresholds = band_thresholds(self.bands, (h for h, _ in histories.values()),
                                     self.et.get("eta", 3))
        asked = []
        for name in mine:
            values, steps = histories.get(name, ([], []))
            cut = hyperband_cut(values, self.bands, thresholds, self.et.get("strict", True))
            if cut is None:
                continue
            band, value = cut
            shown = -value if self.maximize else value
            reason = early_stop_reason(self.metric, steps[band - 1], shown)
            self.queue.request_early_stop(name, reason)
            self.stopped.add(name)
            self.log.info("%s: %s (band %d's cut: %.6g)", name, reason, band,
                          thresholds[self.bands.index(band)] * (-1 if self.maximize else 1))
            asked.append((name, reason))
        return asked


def open_study(queue: FolderQueue, name: str, spec: Mapping[str, Any], seed: int | None):
    """The sweep's Optuna study, on its journal file under ROOT (made when missing)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(f"{queue.layout.sweep_dir(name)}/study.journal"))
    goal = (spec.get("metric") or {}).get("goal", "minimize")
    study = optuna.create_study(storage=storage, study_name=name, direction=goal,
                                load_if_exists=True)
    # Each opening draws on from where the study is: the same seed again would ask the
    # very configurations of the first trials again (TPE's first ones are random).
    if seed is not None:
        seed = (seed + 1_000_003 * len(study.get_trials(deepcopy=False))) % 2**32
    study.sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    return study


class SweepDriver:
    """The dispatcher's ``advance_sweeps`` step: every driven sweep under ROOT."""

    def __init__(self, queue: FolderQueue, log: Any) -> None:
        self.queue, self.log = queue, log
        self.sweeps: dict[str, Driven] = {}
        self._next = 0.0
        self._next_list = 0.0
        self._seen_running: Any = None
        self.pending = False  # a bayes sweep has trials to tell or ask (--drain waits)
        self.stops: list[tuple[str, str]] = []  # early stops asked by the last look
        self.names = FolderNames(queue, time.monotonic)
        self.broken: set[str] = set()  # sweeps that raised: logged once, not driven

    def _ended_mtimes(self) -> tuple[int, int]:
        """When ``completed/`` and ``failed/`` last changed: a job that ended and was
        moved there is told (and the next asked) at once, not at the next 0.2 s."""
        out = []
        for state in (JobState.COMPLETED, JobState.FAILED):
            try:
                out.append(os.stat(self.queue.layout.state_folder(state)).st_mtime_ns)
            except OSError:
                out.append(0)
        return out[0], out[1]

    @property
    def next_due(self) -> float:
        return self._next

    def _refresh(self) -> None:
        for name in self.queue.sweep_names():
            if name in self.sweeps or name in self.broken or self.queue.sweep_done(name):
                continue
            definition = self.queue.read_sweep(name)
            if definition is None or not isinstance(definition.get("spec"), dict):
                continue  # being written: seen at the next look
            try:
                self.sweeps[name] = Driven(self.queue, name, definition, self.log,
                                           self.names)
            except (KeyError, TypeError, ValueError) as exc:
                self.log.error("sweep %s: its definition cannot be read (%s); not driven",
                               name, exc)
                self.broken.add(name)

    def advance(self, now: float, free: int, running: int,
                stoppable: Callable[[], Iterable[str]]) -> list[str]:
        """One look (when due): the names queued. ``free``: slots free for new jobs;
        ``running``: how many jobs run here (a change means one ended: look now);
        ``stoppable``: names of the jobs running here that may be stopped early."""
        self.stops = []
        seen = (running, *self._ended_mtimes()) if self.sweeps else running
        if now < self._next and seen == self._seen_running:
            return []
        self._next, self._seen_running = now + ADVANCE_SECONDS, seen
        if now >= self._next_list:
            self._next_list = now + LIST_SECONDS
            self._refresh()
        if not self.sweeps:
            self.pending = False
            return []
        queued: list[str] = []
        names = list(stoppable())
        self.stops = []
        for sweep in list(self.sweeps.values()):
            try:
                if sweep.bands:
                    self.stops += sweep.stop_early(names)
                if sweep.method == "bayes":
                    queued += sweep.advance_bayes(max(0, free - len(queued)))
                    if not sweep.pending:
                        del self.sweeps[sweep.name]
            except Exception as exc:  # a broken sweep must not stop the dispatcher
                self.log.error("sweep %s: %s: %s; it is not driven any more (fix it and "
                               "restart the dispatcher)", sweep.name, type(exc).__name__, exc)
                del self.sweeps[sweep.name]
                self.broken.add(sweep.name)
        self.pending = any(s.pending for s in self.sweeps.values())
        return queued


def start_bayes(queue: FolderQueue, name: str, definition: dict[str, Any],
                ahead: int = FIRST_AHEAD, log: Any = None) -> list[str]:
    """``gpudispatch sweep`` for a bayes sweep: its definition written, its study made,
    its first trials queued (``ahead`` of them, at most ``run_cap``)."""
    import logging

    queue.write_sweep(name, definition)
    driven = Driven(queue, name, definition, log or logging.getLogger("gpudispatch.sweep"))
    return driven.advance_bayes(ahead)
