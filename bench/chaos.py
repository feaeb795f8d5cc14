"""Chaos: ``kill -9`` parts of gpudispatch at random over a queue of jobs, then check
that every job ended exactly as it should.

    python bench/chaos.py                       # 10 rounds, random seeds
    python bench/chaos.py --rounds 1 --seed 42  # replay one round's job mix and kill plan
    python bench/chaos.py --jobs 60 --chaos-seconds 20 --keep

One round: a fresh ROOT gets N jobs (about 60% ``exit 0``, 20% ``exit 3`` with no
retries, 20% ``#GPUDISPATCH --retries 1`` that fail with 3 on their first run and
succeed on the next). ``gpudispatch run --gpus 0,1,2`` serves them (three slots, each
job sees its slot in ``CUDA_VISIBLE_DEVICES``; no GPU is needed). A loop driven by
``random.Random(seed)`` kills, with SIGKILL and at random moments, one of:

- ``dispatcher``: the dispatcher (then a new one is started on the same ROOT);
- ``keeper``: the dispatcher's child Python process;
- ``monitor``: one job monitor (a session leader whose command line holds
  ``gpudispatch-monitor``; skipped where there are none);
- ``dispatcher+keeper``: both at once (stopped first, so neither sees the other die);
- ``tree``: every gpudispatch process of ROOT (dispatcher, keepers, monitors), never a
  job's own processes;
- ``early``: the dispatcher and the monitor of the next run to begin, within a few ms of
  its start (before its start record names its pid; skipped if none begins in a second).

Killing stops when every job has ended or after ``--chaos-seconds``; the last dispatcher
then drains the queue. Each job appends ``START`` / ``END`` lines (slot, pids, attempt,
which run it is, times) to its own file outside ROOT, so the check does not trust
gpudispatch's word:

- every job is in exactly one of ``completed/`` and ``failed/`` (else **lost**);
- its record's ``exit_code`` and its folder match its kind, and every run that nothing
  interrupted reached ``END`` (else **wrong**);
- it ran to ``END`` exactly as often as it should: once, or twice for a retried job;
  exactly one run settled it (exit 0, or 3 for a failing job; none: **lost**), and no run
  started after that one (**doubled**); no two of its runs overlap, and no two jobs ran
  on one slot at once (**doubled**).

A job whose monitor was killed may be interrupted and run again (not a failure): runs
whose monitor (their ``$$`` or ``$PPID``) was killed are left out of the counts, except
that such a run, if it reached ``END`` with the settling code, may be the one that
settled the job (its monitor may have died just after writing). They are not left out
of the overlap checks: the job's processes outlive its monitor, and are waited for.

``--rounds R`` runs R rounds with seeds ``SEED, SEED+1, ...``, prints the lost / doubled /
wrong totals and exits 1 if any is not zero. The seed and a per-job diagnostic are
printed for a failing round.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("dispatcher", "keeper", "monitor", "dispatcher+keeper", "tree", "early")
STATES = ("queue", "running", "completed", "failed")
MONITOR_MARK = b"gpudispatch-monitor"
SLOTS = ("0", "1", "2")
FAIL_CODE = 3
EXPECTED = {"ok": ("completed", 0), "fail": ("failed", FAIL_CODE), "retry": ("completed", 0)}


# ------------------------------------------------------------------------- processes
@dataclass(frozen=True)
class Proc:
    """What ``/proc/PID`` says about one process."""

    pid: int
    ppid: int
    sid: int
    state: str
    argv: tuple[str, ...]
    env: dict[str, str]

    @property
    def is_python(self) -> bool:
        return bool(self.argv) and os.path.basename(self.argv[0]).startswith("python")


def read_proc(pid: int) -> Proc | None:
    """The process ``pid``, or None if it is gone, a zombie or not readable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
        with open(f"/proc/{pid}/environ", "rb") as fh:
            environ = fh.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()
    state = fields[0].decode()
    if state in ("Z", "X"):
        return None
    argv = tuple(a.decode(errors="replace") for a in cmdline.split(b"\0")[:-1])
    env = {}
    for item in environ.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return Proc(pid, int(fields[1]), int(fields[3]), state, argv, env)


def all_procs() -> Iterator[Proc]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            proc = read_proc(int(entry.name))
            if proc is not None:
                yield proc


def pid_alive(pid: int) -> bool:
    return read_proc(pid) is not None


def is_gpudispatch_python(proc: Proc, root: Path) -> bool:
    """A dispatcher or keeper of ``root``: Python running gpudispatch with ROOT in argv."""
    return (proc.is_python and str(root) in proc.argv
            and any("gpudispatch" in arg for arg in proc.argv[1:]))


def _in_root(proc: Proc, root: Path) -> bool:
    prefix = f"{root}/"
    return (proc.env.get("GPUDISPATCH_ROOT") == str(root)
            or proc.env.get("GPUDISPATCH_EXIT_FILE", "").startswith(prefix)
            or any(arg.startswith(prefix) for arg in proc.argv[3:4]))


def monitors(root: Path, procs: Sequence[Proc] | None = None) -> list[Proc]:
    """The job monitors of ``root``: ``/bin/sh -c ': gpudispatch-monitor; ...'`` processes
    that lead their session or are a keeper's children. A plain ``/bin/sh`` job runs in
    a subshell of its monitor (same command line, not a session leader): that is the job,
    never listed here."""
    procs = list(all_procs()) if procs is None else procs
    keepers = {p.pid for p in procs if is_gpudispatch_python(p, root)}
    return [p for p in procs
            if len(p.argv) > 2 and MONITOR_MARK.decode() in p.argv[2] and _in_root(p, root)
            and (p.sid == p.pid or p.ppid in keepers)]


def keepers_of(dispatcher_pid: int) -> list[int]:
    """The dispatcher's keeper(s): its child Python processes, but a monitor it is
    spawning (before its exec the child still shows the dispatcher's command line; a kill
    a moment later may find it a monitor, its job begun)."""
    procs = list(all_procs())
    own = next((p.argv for p in procs if p.pid == dispatcher_pid), None)
    return [p.pid for p in procs
            if p.ppid == dispatcher_pid and p.is_python and p.argv != own]


def gpudispatch_tree(root: Path) -> list[Proc]:
    """Every gpudispatch process of ``root``: dispatchers, keepers (orphans too), monitors."""
    procs = list(all_procs())
    return [p for p in procs if is_gpudispatch_python(p, root)] + monitors(root, procs)


def job_processes(root: Path) -> list[Proc]:
    """Processes of ``root``'s jobs (their environment names ROOT), monitors excluded."""
    procs = list(all_procs())
    mons = {p.pid for p in monitors(root, procs)}
    return [p for p in procs if p.env.get("GPUDISPATCH_ROOT") == str(root)
            and p.pid not in mons and not is_gpudispatch_python(p, root)]


def kill9(pids: Iterable[int]) -> list[int]:
    """SIGKILL ``pids`` at once: all are stopped first, so none reacts to another's death.
    Returns those that were there to kill."""
    pids = list(dict.fromkeys(pids))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            pass
    killed = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return killed


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


# ------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class JobSpec:
    name: str
    kind: str  # "ok", "fail" or "retry"
    duration: float


def make_jobs(rng: random.Random, n: int, longest: float = 0.4) -> list[JobSpec]:
    """``n`` jobs: 20% fail, 20% fail once with ``--retries 1``, the rest succeed."""
    n_fail = n_retry = round(n * 0.2)
    kinds = ["fail"] * n_fail + ["retry"] * n_retry + ["ok"] * (n - n_fail - n_retry)
    rng.shuffle(kinds)
    return [JobSpec(f"job{i:03d}-{kind}.sh", kind, round(rng.uniform(0.05, longest), 2))
            for i, kind in enumerate(kinds)]


def job_script(spec: JobSpec, side: Path) -> str:
    """The job: count its runs, log START, sleep, log END with its code, exit with it.

    ``START id slot pid ppid attempt n`` (``id``: start time in ns; ``n``: which run of
    this job, from a counter outside ROOT) and ``END id code end_ns``.
    """
    runs = shlex.quote(str(side / "runs" / spec.name))
    count = shlex.quote(str(side / "count" / spec.name))
    header = "#GPUDISPATCH --retries 1\n" if spec.kind == "retry" else ""
    code = {"ok": "0", "fail": str(FAIL_CODE),
            "retry": f"$(if [ $n -eq 1 ]; then echo {FAIL_CODE}; else echo 0; fi)"}[spec.kind]
    return (
        f"#!/bin/sh\n{header}"
        f"n=$(( $(cat {count} 2>/dev/null || echo 0) + 1 )); echo $n > {count}\n"
        "t=$(date +%s%N)\n"
        f'echo "START $t ${{CUDA_VISIBLE_DEVICES:--}} $$ $PPID ${{GPUDISPATCH_ATTEMPT:--}} $n"'
        f" >> {runs}\n"
        f"sleep {spec.duration}\n"
        f"code={code}\n"
        f'echo "END $t $code $(date +%s%N)" >> {runs}\n'
        "exit $code\n"
    )


@dataclass
class Run:
    """One run of a job, as the job itself logged it."""

    run_id: int
    slot: str
    pid: int
    ppid: int
    attempt: str
    n: int
    start: int
    end: int | None = None
    code: int | None = None
    tainted: bool = False  # its monitor was killed: it may be interrupted

    def overlaps(self, other: Run) -> bool:
        assert self.end is not None and other.end is not None
        return self.start < other.end and other.start < self.end


def parse_runs(path: Path) -> list[Run]:
    runs: dict[int, Run] = {}
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        parts = line.split()
        if parts[:1] == ["START"] and len(parts) == 7:
            rid = int(parts[1])
            runs[rid] = Run(rid, parts[2], int(parts[3]), int(parts[4]), parts[5],
                            int(parts[6]), rid)
        elif parts[:1] == ["END"] and len(parts) == 4 and int(parts[1]) in runs:
            run = runs[int(parts[1])]
            run.code, run.end = int(parts[2]), int(parts[3])
    return sorted(runs.values(), key=lambda r: r.start)


# ------------------------------------------------------------------------- a round
@dataclass
class RoundResult:
    seed: int
    workdir: Path
    jobs: list[JobSpec]
    kills: Counter = field(default_factory=Counter)
    events: list[str] = field(default_factory=list)
    problems: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)
    elapsed: float = 0.0

    def count(self, category: str) -> int:
        """Jobs with at least one problem of ``category``."""
        return sum(any(c == category for c, _ in p) for p in self.problems.values())

    @property
    def lost(self) -> int:
        return self.count("lost")

    @property
    def doubled(self) -> int:
        return self.count("doubled")

    @property
    def wrong(self) -> int:
        return self.count("wrong")

    @property
    def ok(self) -> bool:
        return not any(self.problems.values())

    def summary(self) -> str:
        kills = ", ".join(f"{k} {self.kills[k]}" for k in (*KINDS, "skipped", "self-exit")
                          if self.kills[k])
        return (f"seed {self.seed}: {len(self.jobs)} jobs, {self.elapsed:.1f}s, kills: "
                f"{kills or 'none'}; lost {self.lost}, doubled {self.doubled}, "
                f"wrong {self.wrong}")

    def report(self) -> str:
        """The summary, then, if anything failed, every failing job and the kill log."""
        text = [self.summary()]
        if self.ok:
            return text[0]
        text.append(f"reproduce: python bench/chaos.py --rounds 1 --seed {self.seed} "
                    f"(workdir {self.workdir})")
        for name, problems in sorted(self.problems.items()):
            if problems:
                text.append(f"--- {name}")
                text += [f"  {cat}: {msg}" for cat, msg in problems]
                text.append(self.details.get(name, ""))
        text.append("--- events")
        text += self.events
        return "\n".join(text)


class Round:
    """One chaos round on a fresh ROOT under ``workdir`` (see the module docstring)."""

    def __init__(self, seed: int, workdir: Path, n_jobs: int = 60,
                 chaos_seconds: float = 20.0, drain_timeout: float = 30.0,
                 command: Sequence[str] | None = None, kinds: Sequence[str] = KINDS,
                 containment: str = "auto", longest: float = 0.4) -> None:
        self.rng = random.Random(seed)
        self.kinds = tuple(kinds)
        self.containment = containment
        self.workdir = workdir.resolve()
        self.root = self.workdir / "root"
        self.side = self.workdir / "side"
        self.chaos_seconds = chaos_seconds
        self.drain_timeout = drain_timeout
        self.command = list(command or [sys.executable, "-m", "gpudispatch"])
        self.result = RoundResult(seed, self.workdir, make_jobs(self.rng, n_jobs, longest))
        self.dispatcher: subprocess.Popen | None = None
        self.started: list[subprocess.Popen] = []
        self.killed_monitors: dict[int, str] = {}  # pid -> job name
        self.t0 = time.time_ns()

    # -- setup and dispatchers
    def setup(self) -> None:
        for folder in (self.root / "queue", self.side / "runs", self.side / "count",
                       self.side / "staging"):
            folder.mkdir(parents=True, exist_ok=True)
        for spec in self.result.jobs:
            path = self.side / "staging" / spec.name
            path.write_text(job_script(spec, self.side))
            os.chmod(path, 0o755)
        for spec in self.result.jobs:
            os.rename(self.side / "staging" / spec.name, self.root / "queue" / spec.name)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("GPUDISPATCH_") and k != "CUDA_VISIBLE_DEVICES"}
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start_dispatcher(self) -> None:
        n = len(self.started) + 1
        argv = [*self.command, "run", "-q", "--dir", str(self.root), "--gpus",
                ",".join(SLOTS), "--no-respect-foreign", "--containment", self.containment]
        with open(self.workdir / f"dispatcher-{n}.out", "wb") as out:
            self.dispatcher = subprocess.Popen(
                argv, cwd=self.workdir, env=self.env(), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        self.started.append(self.dispatcher)
        self.event(f"started dispatcher {n} (pid {self.dispatcher.pid})")

    def event(self, text: str) -> None:
        self.result.events.append(f"{(time.time_ns() - self.t0) / 1e9:7.3f}s {text}")

    def reap(self) -> None:
        for proc in self.started:
            proc.poll()

    # -- the chaos
    def finished(self) -> bool:
        """Every job in completed/ or failed/, none in queue/ or running/."""
        seen = {state: set(_listdir(self.root / state)) for state in STATES}
        done = seen["completed"] | seen["failed"]
        return all(spec.name in done and spec.name not in seen["queue"]
                   and spec.name not in seen["running"] for spec in self.result.jobs)

    def kill(self, kind: str) -> bool:
        """Do one kill of ``kind``; True if the dispatcher died and must be restarted."""
        disp = self.dispatcher
        assert disp is not None
        if kind == "monitor":
            found = monitors(self.root)
            if not found:
                self.result.kills["skipped"] += 1
                self.event("kill monitor: none running, skipped")
                return False
            victim = self.rng.choice(found)
            self.killed_monitors[victim.pid] = victim.env.get("GPUDISPATCH_JOB", "?")
            kill9([victim.pid])
            self.event(f"kill monitor {victim.pid} of {self.killed_monitors[victim.pid]}")
        elif kind == "keeper":
            keepers = keepers_of(disp.pid)
            if not keepers:
                self.result.kills["skipped"] += 1
                self.event("kill keeper: none found, skipped")
                return False
            kill9(keepers)
            self.event(f"kill keeper {keepers} of dispatcher {disp.pid}")
        elif kind == "dispatcher":
            kill9([disp.pid])
            self.event(f"kill dispatcher {disp.pid}")
        elif kind == "dispatcher+keeper":
            keepers = keepers_of(disp.pid)
            kill9([disp.pid, *keepers])
            self.event(f"kill dispatcher {disp.pid} and keeper {keepers}")
        elif kind == "early":
            begun = self._next_start()
            if begun is None:
                self.result.kills["skipped"] += 1
                self.event("kill early: no run began within a second, skipped")
                return False
            name, monitor = begun
            self.killed_monitors[monitor] = name
            kill9([disp.pid, monitor])
            self.event(f"kill dispatcher {disp.pid} and monitor {monitor} of {name}, "
                       "just begun")
        else:  # tree
            tree = gpudispatch_tree(self.root)
            mons = monitors(self.root, tree)
            for mon in mons:
                self.killed_monitors[mon.pid] = mon.env.get("GPUDISPATCH_JOB", "?")
            # A monitor being spawned (the vfork child, before its exec) still shows its
            # parent's command line: it may be a monitor, and its job begun, by the time
            # the SIGKILL lands; a run whose $$ it is was interrupted, not run twice.
            parents = {p.pid: p for p in tree}
            spawning = [p.pid for p in tree
                        if p.ppid in parents and p.argv == parents[p.ppid].argv]
            for pid in spawning:
                self.killed_monitors[pid] = "(being spawned)"
            kill9([disp.pid, *(p.pid for p in tree)])
            self.event(f"kill tree: {sorted(p.pid for p in tree)} "
                       f"(monitors of {sorted(self.killed_monitors[m.pid] for m in mons)}"
                       f"{f'; being spawned: {spawning}' if spawning else ''})")
        self.result.kills[kind] += 1
        if kind in ("dispatcher", "dispatcher+keeper", "tree", "early"):
            disp.wait(10)
            return True
        return False

    def _next_start(self, within: float = 1.0) -> tuple[str, int] | None:
        """The job and monitor of the next run to begin (its START line), seen within a
        few ms of its start: long before its start record (50 ms in) names its pid."""
        runs = self.side / "runs"
        sizes = {e.name: e.stat().st_size for e in os.scandir(runs)}
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for entry in os.scandir(runs):
                size = entry.stat().st_size
                if size > sizes.get(entry.name, 0):
                    with open(entry.path, "rb") as fh:
                        fh.seek(sizes.get(entry.name, 0))
                        new = fh.read().decode(errors="replace").split()
                    sizes[entry.name] = size
                    if new[:1] == ["START"] and len(new) >= 4 and new[3].isdigit():
                        return entry.name, int(new[3])
            time.sleep(0.001)
        return None

    def chaos(self) -> None:
        deadline = time.monotonic() + self.chaos_seconds
        while time.monotonic() < deadline and not self.finished():
            time.sleep(self.rng.uniform(0.15, 0.8))
            assert self.dispatcher is not None
            if self.dispatcher.poll() is not None:
                self.result.kills["self-exit"] += 1
                self.event(f"dispatcher {self.dispatcher.pid} exited by itself "
                           f"(status {self.dispatcher.returncode}); restarting")
                self.start_dispatcher()
                continue
            if self.finished():
                break
            if not self.kinds:
                continue
            kind = self.rng.choice(self.kinds)
            if self.kill(kind):
                # (after an early kill at once: the next dispatcher finds the run still going)
                time.sleep(self.rng.uniform(0.0, 0.4) if kind != "early" else 0.0)
                self.start_dispatcher()
            self.reap()

    def drain(self) -> None:
        """Let the last dispatcher (restarted if it exits) finish the queue, then stop it."""
        deadline = time.monotonic() + self.drain_timeout
        while not self.finished() and time.monotonic() < deadline:
            assert self.dispatcher is not None
            if self.dispatcher.poll() is not None:
                self.result.kills["self-exit"] += 1
                self.event(f"dispatcher {self.dispatcher.pid} exited by itself while "
                           f"draining (status {self.dispatcher.returncode}); restarting")
                self.start_dispatcher()
            time.sleep(0.05)
        if not self.finished():
            self.event(f"queue not drained within {self.drain_timeout}s")
        assert self.dispatcher is not None
        if self.dispatcher.poll() is None:
            self.dispatcher.send_signal(signal.SIGTERM)  # warm stop: records are written
            try:
                self.dispatcher.wait(10)
            except subprocess.TimeoutExpired:
                self.event("last dispatcher ignored SIGTERM for 10s; killed")
        self.event("drained; dispatcher stopped")

    def cleanup(self) -> None:
        """Wait (bounded) for the jobs' processes to end, then kill whatever is left."""
        deadline = time.monotonic() + 5
        while job_processes(self.root) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = job_processes(self.root)
        if left:
            self.event("job processes still alive after the drain, killed: "
                       + ", ".join(f"{p.pid} ({p.env.get('GPUDISPATCH_JOB')})" for p in left))
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
        kill9([p.pid for p in gpudispatch_tree(self.root)] + [p.pid for p in left])
        for proc in self.started:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def run(self) -> RoundResult:
        start = time.monotonic()
        try:
            self.setup()
            self.start_dispatcher()
            self.chaos()
            self.event(f"chaos over ({sum(self.result.kills[k] for k in KINDS)} kills)")
            self.drain()
        finally:
            self.cleanup()
        self.result.elapsed = time.monotonic() - start
        check(self.root, self.side, self.result, set(self.killed_monitors), self.t0)
        return self.result


# ------------------------------------------------------------------------- the check
def _record(root: Path, name: str) -> dict | None:
    try:
        with open(root / "logs" / f"{name}.json") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _describe(root: Path, spec: JobSpec, runs: list[Run], rec: dict | None, t0: int) -> str:
    where = [s for s in STATES if os.path.lexists(root / s / spec.name)]
    lines = [f"  kind {spec.kind}, sleeps {spec.duration}s, in {where or 'no folder'}"]
    if rec is None:
        lines.append("  record: none")
    else:
        lines.append("  record: " + ", ".join(
            f"{k}={rec.get(k)!r}" for k in ("exit_code", "attempts", "reason", "pid", "gpus")))
    for run in runs:
        end = f"END {(run.end - t0) / 1e9:.3f}s code {run.code}" if run.end else "no END"
        lines.append(f"  run n={run.n} attempt={run.attempt} slot={run.slot} pid={run.pid} "
                     f"ppid={run.ppid}: START {(run.start - t0) / 1e9:.3f}s, {end}"
                     + (" (monitor killed)" if run.tainted else ""))
    try:
        log = (root / "logfile.txt").read_text(errors="replace").splitlines()
    except FileNotFoundError:
        log = []
    lines += [f"  log: {line}" for line in log
              if spec.name in line and "new jobs added" not in line][-12:]
    return "\n".join(lines)


def check(root: Path, side: Path, result: RoundResult, killed_monitors: set[int],
          t0: int) -> None:
    """Fill ``result.problems``: every job's folder, record, runs; every slot's overlaps."""
    all_runs: list[tuple[str, Run]] = []
    for spec in result.jobs:
        problems: list[tuple[str, str]] = []
        runs = parse_runs(side / "runs" / spec.name)
        for run in runs:
            run.tainted = run.pid in killed_monitors or run.ppid in killed_monitors
        folder, code = EXPECTED[spec.kind]
        where = [s for s in STATES if os.path.lexists(root / s / spec.name)]
        ended_in = [s for s in where if s in ("completed", "failed")]
        rec = _record(root, spec.name)
        if not ended_in:
            problems.append(("lost", f"not finished: in {where or 'no folder'}"))
        elif len(where) > 1:
            problems.append(("doubled", f"in several folders: {where}"))
        elif ended_in != [folder]:
            problems.append(("wrong", f"in {ended_in[0]}/, expected {folder}/"))
        if ended_in and (rec is None or rec.get("exit_code") != code):
            got = None if rec is None else rec.get("exit_code")
            problems.append(("wrong", f"record exit_code {got!r}, expected {code}"))
        clean = [r for r in runs if not r.tainted]
        for run in clean:
            if run.end is None:
                problems.append(("wrong", f"run n={run.n} never reached END, though its "
                                          "monitor was not killed"))
        done = [r for r in clean if r.end is not None]
        # The run that settles the job: exit 0 (ok, retry) or exit 3 (fail). Exactly one,
        # started last; a run whose monitor was killed may be the one whose code was
        # recorded, or may have been interrupted and run again.
        final = [r for r in done if r.code == code]
        settled_by_tainted = any(r.tainted and r.end is not None and r.code == code
                                 for r in runs)
        if not final and not settled_by_tainted:
            problems.append(("lost", f"no complete run with exit {code}"))
        if len(final) > 1:
            problems.append(("doubled", f"{len(final)} complete runs with exit {code}"))
        elif final and runs[-1] is not final[0]:
            problems.append(("doubled", f"ran again after its run n={final[0].n} "
                                        f"with exit {code}"))
        if spec.kind != "retry" and len(done) > len(final):
            problems.append(("wrong", f"a run ended with a code other than {code}"))
        # Every run that reached END, its monitor killed or not: a run whose monitor was
        # killed went on, and is waited for before its job runs again or its slot is used.
        ended = [r for r in runs if r.end is not None]
        for i, a in enumerate(ended):
            for b in ended[i + 1:]:
                if a.overlaps(b):
                    problems.append(("doubled", f"runs n={a.n} and n={b.n} at once"))
        if any(r.slot == "-" for r in clean):
            problems.append(("wrong", "a run saw no CUDA_VISIBLE_DEVICES"))
        all_runs += [(spec.name, r) for r in ended]
        result.problems[spec.name] = problems
        result.details[spec.name] = _describe(root, spec, runs, rec, t0)
    by_slot: dict[str, list[tuple[str, Run]]] = {}
    for name, run in all_runs:
        for slot in run.slot.split(","):
            by_slot.setdefault(slot, []).append((name, run))
    for slot, entries in by_slot.items():
        entries.sort(key=lambda e: e[1].start)
        for i, (name, run) in enumerate(entries):
            assert run.end is not None
            for other, later in entries[i + 1:]:
                if later.start >= run.end:
                    break
                result.problems[name].append(
                    ("doubled", f"ran on slot {slot} at the same time as {other}"))
                result.problems[other].append(
                    ("doubled", f"ran on slot {slot} at the same time as {name}"))


# ------------------------------------------------------------------------- entry point
def run_round(seed: int, workdir: Path | None = None, keep: bool = False,
              **options) -> RoundResult:
    """One round in ``workdir`` (a new temp folder if None; removed unless ``keep`` or the
    round failed)."""
    made = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix=f"chaos-{seed}-")) if workdir is None else workdir
    workdir.mkdir(parents=True, exist_ok=True)
    result = Round(seed, workdir, **options).run()
    if made and result.ok and not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, help="seed of the first round (default: random)")
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--chaos-seconds", type=float, default=20.0,
                        help="stop killing after this long (default 20)")
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help="comma-separated kinds of kill (default: all; '' for none)")
    parser.add_argument("--keep", action="store_true", help="keep every round's folder")
    parser.add_argument("--longest", type=float, default=0.4,
                        help="jobs sleep 0.05 s to this long (longer than 0.5 s: some are "
                        "moved into their cgroups)")
    parser.add_argument("--containment", choices=("auto", "process-group", "cgroup"),
                        default="auto", help="passed to `gpudispatch run`")
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    if set(kinds) - set(KINDS):
        parser.error(f"--kinds: choose from {', '.join(KINDS)}")
    first = args.seed if args.seed is not None else random.randrange(2**32)
    totals = Counter()
    for i in range(args.rounds):
        result = run_round(first + i, keep=args.keep, n_jobs=args.jobs,
                           chaos_seconds=args.chaos_seconds, drain_timeout=args.drain_timeout,
                           kinds=kinds, containment=args.containment, longest=args.longest)
        print(f"round {i + 1}/{args.rounds} " + result.report(), flush=True)
        totals.update(lost=result.lost, doubled=result.doubled, wrong=result.wrong,
                      jobs=len(result.jobs), failed_rounds=int(not result.ok))
        totals.update({k: v for k, v in result.kills.items()})
    print(f"\n{args.rounds} rounds, {totals['jobs']} jobs, seeds {first}..{first + args.rounds - 1}"
          f"; kills: " + ", ".join(f"{k} {totals[k]}" for k in (*KINDS, "skipped")))
    print(f"lost {totals['lost']} / doubled {totals['doubled']} / wrong {totals['wrong']}"
          f" ({totals['failed_rounds']} failing rounds)")
    return 1 if totals["lost"] or totals["doubled"] or totals["wrong"] else 0


if __name__ == "__main__":
    sys.exit(main())
