"""``gpudispatch VERB ...``: one thin function per verb; parsing and formatting only.

Each verb imports what only it uses inside its function: a shell loop of ``submit`` calls
pays the interpreter's start and little more (tests/test_cli_imports.py keeps it so).
"""

from __future__ import annotations

import argparse
import os
import sys

from gpudispatch import argcheck, safeio
from gpudispatch.argcheck import OptionError
from gpudispatch.backends import BACKENDS
from gpudispatch.job import DirectiveError, JobState, parse_directive_args, safe_iso
from gpudispatch.layout import ROOT_ENV, default_root_str, is_job_name, name_problem, printable
from gpudispatch.store import FolderQueue, JobView, QueueError

# argparse passes each of its messages through gettext, and gettext looks for a catalogue
# of them in a dozen places per message, every start (5 ms of a one-job submit). Python
# ships none for argparse: its messages are English, as ours are.
argparse._ = str  # type: ignore[attr-defined]

EXIT_USAGE = 2
MAX_SLOTS = 4096  # CPU-only slots; more is a typo, and each one is a list entry


class CliError(Exception):
    """A message for the user; the command exits non-zero."""


def _root(args) -> str:
    """ROOT from ``--dir`` or the default; a path that exists must be a folder. A string:
    ``submit`` and ``status`` do not import pathlib."""
    root = args.dir if args.dir else default_root_str()
    if os.path.exists(root) and not os.path.isdir(root):
        raise CliError(f"{root} is not a folder")
    return root


def _queue(args, create: bool = False) -> FolderQueue:
    root = _root(args)
    try:
        return FolderQueue(root, create=create)
    except QueueError as exc:
        raise CliError(f"{exc}; start one with: gpudispatch run --dir {root}") from None
    except OSError as exc:  # e.g. ROOT/completed is a file: its folder cannot be made
        where = exc.filename or root
        if isinstance(exc, (FileExistsError, NotADirectoryError)):
            raise CliError(f"cannot use {root}: {where} is not a folder") from None
        raise CliError(f"cannot use {root}: {where}: {exc.strerror or exc}") from None


def check_run_options(args) -> None:
    """Every numeric option of ``run`` in range, before anything starts (OptionError)."""
    argcheck.seconds(args.wait, "--wait")
    argcheck.seconds(args.kill_grace, "--kill-grace", zero_ok=True)
    argcheck.seconds(args.reserve_after, "--reserve-after", zero_ok=True)
    argcheck.seconds(args.gpu_poll, "--gpu-poll")
    argcheck.seconds(args.heartbeat, "--heartbeat")
    if args.slots is not None:
        argcheck.count(args.slots, "--slots", maximum=MAX_SLOTS)


def _check_gpus_exist(slots: list[int | None], probe) -> None:
    """Refuse GPU indices the probe does not list (jobs would see a GPU that is not there);
    without a probe, or when it cannot answer, the list is taken as given."""
    from gpudispatch.gpus import GpuProbeError

    wanted = [s for s in slots if s is not None]
    if probe is None or not wanted:
        return
    try:
        present = set(probe.indices())
    except GpuProbeError:
        return
    missing = [g for g in wanted if g not in present]
    if missing:
        listed = ",".join(map(str, sorted(present))) or "none"
        raise CliError(f"--gpus: no GPU {','.join(map(str, missing))} on this host "
                       f"(GPUs here: {listed})")


# ---------------------------------------------------------------------- run
def cmd_run(args) -> int:
    check_run_options(args)
    root = _root(args)
    if args.backend == "slurm":
        from gpudispatch.backends.slurm import run_slurm

        return run_slurm(root, args.partition, args.sbatch_arg, args.wait, args.drain,
                         args.allow_other_users)
    from gpudispatch.gpus import NoGpusError, default_probe, resolve_gpus
    from gpudispatch.job import parse_size

    slots: list[int | None] = []
    gpus_spec = args.gpus if args.gpus is not None else (None if args.slots else "all")
    if gpus_spec is not None:
        try:
            slots.extend(resolve_gpus(gpus_spec))
        except NoGpusError as exc:
            raise CliError(str(exc)) from None
        except ValueError as exc:
            raise CliError(f"--gpus: {exc}") from None
    slots.extend([None] * (args.slots or 0))
    if not slots:
        raise CliError("no slots: pass --gpus LIST and/or --slots K")
    try:
        threshold = parse_size(args.foreign_threshold)
    except ValueError as exc:
        raise CliError(f"--foreign-threshold: {exc}") from None
    probe = default_probe() if any(s is not None for s in slots) else None
    _check_gpus_exist(slots, probe)
    queue = _queue(args, create=True)
    from gpudispatch.cgroups import detect
    from gpudispatch.dispatcher import Dispatcher, DispatcherOptions

    containment = detect(args.containment)
    if args.containment == "cgroup" and containment.base is None:
        raise CliError(f"--containment cgroup: {containment.why_not}")
    if not args.quiet:  # (not in logfile.txt, whose first lines are the seed's)
        print(f"gpudispatch: jobs are contained {containment.describe()}", file=sys.stderr)

    options = DispatcherOptions(
        probe=probe,
        respect_foreign=args.respect_foreign,
        foreign_threshold=threshold,
        gpu_poll=args.gpu_poll,
        heartbeat=args.heartbeat,
        slots=slots,
        wait=args.wait,
        drain=args.drain,
        kill_grace=args.kill_grace,
        reserve_after=args.reserve_after,
        on_finish=args.on_finish,
        console=not args.quiet,
        allow_other_users=args.allow_other_users,
        containment=containment,
    )
    return Dispatcher(queue, options).run()


# ---------------------------------------------------------------------- status
def _when(text: str | None) -> str:
    moment = safe_iso(text)
    return moment.astimezone().strftime("%m-%d %H:%M:%S") if moment else ""


def _duration(view: JobView) -> str:
    start = safe_iso(view.record.started_at)
    if start is None or view.state is JobState.QUEUED:
        return ""
    from datetime import datetime

    end = safe_iso(view.record.ended_at) if view.state.is_final else None
    seconds = ((end or datetime.now(start.tzinfo)) - start).total_seconds()
    return format_seconds(seconds)


def _cell(text: object) -> str:
    """A value from the folder as a table cell: non-printable characters escaped, and
    rich markup (``[red]``, ``[/x]``) shown as typed, never interpreted."""
    from rich.markup import escape

    return escape(printable(str(text)))


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _recent_finished(queue: FolderQueue, limit: int | None
                     ) -> tuple[list[JobView], dict[JobState, int]]:
    """Finished jobs, newest first (only the newest ``limit`` records are read), and how
    many there are in each finished state: the folders are listed once, for both."""
    entries = []
    counts = dict.fromkeys((JobState.COMPLETED, JobState.FAILED), 0)
    for state in counts:
        try:
            found = [e for e in os.scandir(queue.layout.state_folder(state))
                     if is_job_name(e.name)]
        except OSError:  # gone, or not a folder: nothing finished there to show
            continue
        counts[state] = len(found)
        for entry in found:
            try:
                entries.append((entry.stat(follow_symlinks=False).st_ctime, entry.name, state))
            except OSError:
                continue
    entries.sort(reverse=True)
    if limit is not None:
        entries = entries[:limit]
    return [JobView(name, state, queue.read_record(name)) for _, name, state in entries], counts


ORDER_READ_LIMIT = 2000  # queued scripts whose headers status reads to show run order


def _queued_in_order(queue: FolderQueue, names: list[str], limit: int | None) -> list[str]:
    """The first ``limit`` of the queued ``names`` in run order (priority, then name).
    Priorities live in the scripts' headers: they are read for up to ORDER_READ_LIMIT
    jobs; on a larger queue the order shown is by name (``status`` says so)."""
    if len(names) > ORDER_READ_LIMIT:
        if limit is None:
            return sorted(names)
        import heapq

        return heapq.nsmallest(limit, names)  # not a sort of 100,000 names for 20
    from gpudispatch.job import parse_directives
    from gpudispatch.scriptcheck import read_head

    def key(name: str) -> tuple[int, str]:
        path = queue.layout.script(JobState.QUEUED, name)
        try:
            head = read_head(path, os.lstat(path)).decode(errors="replace")
            return (-parse_directives(head).priority, name)
        except (OSError, DirectiveError):
            return (0, name)

    ordered = sorted(names, key=key)
    return ordered if limit is None else ordered[:limit]


def status_views(queue: FolderQueue, finished_limit: int | None,
                 queued_limit: int | None = None
                 ) -> tuple[list[JobView], dict[JobState, int]]:
    """Running jobs, the next ``queued_limit`` queued ones in run order, and the newest
    ``finished_limit`` finished ones: records read stay bounded on a queue of 100,000.
    And how many jobs are in each state: every state folder is listed once."""
    running_names = queue.names(JobState.RUNNING)
    queued_names = queue.names(JobState.QUEUED, ordered=False)
    running = [JobView(n, JobState.RUNNING, queue.read_record(n)) for n in running_names]
    queued = [JobView(n, JobState.QUEUED, queue.read_record(n))
              for n in _queued_in_order(queue, queued_names, queued_limit)]
    finished, counts = _recent_finished(queue, finished_limit)
    return running + queued + finished, {JobState.QUEUED: len(queued_names),
                                         JobState.RUNNING: len(running_names), **counts}


def _plain(text: object) -> str:
    """A value from the folder as a status cell: non-printable characters escaped (the
    status tables interpret no markup, so ``[red]`` shows as typed)."""
    return printable(str(text))


def _reason(view: JobView) -> str:
    """The reason, and for Slurm jobs their id, node and pending reason."""
    rec = view.record
    if rec.backend != "slurm" or not rec.backend_id:
        return _plain(rec.reason or "")
    slurm = f"slurm {rec.backend_id} {rec.extra.get('slurm_state', '')}".strip()
    if rec.extra.get("slurm_reason"):
        slurm += f" ({rec.extra['slurm_reason']})"
    elif rec.host and view.state is not JobState.QUEUED:
        slurm += f" on {rec.host}"
    return _plain(f"{slurm}: {rec.reason}" if rec.reason else slurm)


CONTAINMENT_SHOWN = {"cgroup": "a cgroup v2 per job",
                     "process group": "process group + tracked daemons"}


def _containment(views: list[JobView]) -> str:
    """How the running jobs' processes are held (``run --containment``)."""
    modes = {v.record.extra.get("containment") for v in views if v.state is JobState.RUNNING}
    shown = sorted(CONTAINMENT_SHOWN[m] for m in modes if m in CONTAINMENT_SHOWN)
    return f"\ncontained by {' and '.join(shown)}" if shown else ""


STATE_STYLES = {"running": "cyan", "queued": "", "completed": "green", "failed": "red"}


def status_table(queue: FolderQueue, views: list[JobView], counts: dict[JobState, int],
                 title: str | None = None):
    from gpudispatch.plaintable import Table

    summary = "  ".join(f"{state.value} {counts[state]}" for state in JobState)
    shown = sum(v.state is JobState.QUEUED for v in views)
    if shown < counts[JobState.QUEUED]:
        by = ""
        if counts[JobState.QUEUED] > ORDER_READ_LIMIT:
            by = f" (by name: over {ORDER_READ_LIMIT} queued, priorities are not read)"
        summary += (f"\nnext {shown} of {counts[JobState.QUEUED]} queued shown{by}; "
                    "status --all lists every job")
    caption = [(summary, "")]
    if queue.is_paused():
        caption.append(("  PAUSED", "bold yellow"))
    caption.append((_containment(views), ""))
    table = Table(title=title or _plain(queue.layout.where("root")), caption=caption)
    table.add_column("name", keep=True)  # whole, on one line, where the width allows
    for column in ("state", "gpus", "attempts", "exit", "started", "time", "reason"):
        table.add_column(column)
    for view in views:
        rec = view.record
        table.add_row(
            _plain(view.name),
            (view.state.value, STATE_STYLES[view.state.value]),
            ",".join(map(str, rec.gpus)) if rec.gpus else ("cpu" if rec.started_at else ""),
            str(rec.attempts or ""),
            "" if rec.exit_code is None else str(rec.exit_code),
            _when(rec.started_at),
            _duration(view),
            _reason(view),
        )
    return table


def gpu_table(gpus: list[dict]):
    from gpudispatch.gpus import format_bytes
    from gpudispatch.plaintable import Table

    table = Table(title="GPUs")
    for column in ("gpu", "memory", "util", "jobs (declared memory)", "others"):
        table.add_column(column)
    for gpu in gpus:
        jobs = _plain(", ".join(
            f"{j['name']} ({format_bytes(j['gpu_mem'])})" if j["gpu_mem"] else j["name"]
            for j in gpu["jobs"]
        ))
        others = _plain("; ".join(
            f"{p['user'] or '?'} pid {p['pid']} {p['command'] or ''} {format_bytes(p['used'])}"
            for p in gpu["processes"] if p["foreign"]
        ))
        others_cell = (others, "")
        if gpu["blocked"]:
            others_cell = (f"busy: {_plain(gpu['blocked'])}" + (f" ({others})" if others
                                                                 else ""), "bold red")
        table.add_row(
            _plain(f"{gpu['index']} {gpu['name']}"),
            f"{format_bytes(gpu['memory_used'])} / {format_bytes(gpu['memory_total'])}",
            "" if gpu["utilization"] is None else f"{gpu['utilization']}%",
            jobs,
            others_cell,
        )
    return table


def status_view(queue: FolderQueue, limit: int | None,
                queued_limit: int | None = None) -> list:
    """The job table, under the GPU table when a dispatcher has reported its GPUs (else
    under a table of what runs where)."""
    from gpudispatch.report import read_gpu_report

    views, counts = status_views(queue, limit, queued_limit)
    jobs = status_table(queue, views, counts)
    gpus = read_gpu_report(queue.layout)
    if gpus:
        try:
            return [gpu_table(gpus), jobs]
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
            pass  # a report of another shape (edited, or another version): jobs only
    running = [v for v in views if v.state is JobState.RUNNING]
    return [running_table(running), jobs] if running else [jobs]


def running_table(running: list[JobView]):
    """What runs where, and for how long (when no GPU report is available)."""
    from gpudispatch.plaintable import Table

    table = Table(title="running")
    for column in ("gpu", "job", "for"):
        table.add_column(column)
    for view in sorted(running, key=lambda v: (v.record.gpus or [-1], v.name)):
        gpus = ",".join(map(str, view.record.gpus)) or "cpu"
        table.add_row(gpus, _plain(view.name), _duration(view))
    return table


def render_status(queue: FolderQueue, limit: int | None, queued_limit: int | None = None,
                  stream=None) -> str:
    """The status tables as text for ``stream`` (its width; colours on a terminal)."""
    from gpudispatch.plaintable import terminal_width, use_color

    width, color = terminal_width(stream), use_color(stream)
    return "".join(table.render(width, color) for table in status_view(queue, limit,
                                                                     queued_limit))


def cmd_status(args) -> int:
    argcheck.seconds(args.interval, "--interval", minimum=0.1)
    argcheck.count(args.recent, "--recent", minimum=0)
    argcheck.count(args.queued, "--queued", minimum=0)
    queue = _queue(args)
    if args.json:  # streamed, one job at a time: constant memory on any queue
        from gpudispatch.joblist import job_texts

        separator = "\n"
        sys.stdout.write("[")
        for text in job_texts(queue):
            sys.stdout.write(separator + text)
            separator = ",\n"
        sys.stdout.write("]\n" if separator == "\n" else "\n]\n")
        return 0
    limit = None if args.all else args.recent
    queued_limit = None if args.all else args.queued
    if not args.watch:
        sys.stdout.write(render_status(queue, limit, queued_limit))
        return 0
    import time

    if not sys.stdout.isatty():  # a pipe or file: one table per refresh, not a live view
        try:
            while True:
                sys.stdout.write(render_status(queue, limit, queued_limit))
                sys.stdout.flush()
                time.sleep(args.interval)
        except KeyboardInterrupt:
            return 0
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    with Live(console=Console(), auto_refresh=False, screen=False) as live:
        try:
            while True:
                live.update(Text.from_ansi(render_status(queue, limit, queued_limit)), refresh=True)
                time.sleep(args.interval)
        except KeyboardInterrupt:
            pass
    return 0


# ---------------------------------------------------------------------- submit & co
def _directive_options(args) -> list[str]:
    options: list[str] = []
    for flag in ("gpus", "timeout", "retries", "priority", "gpu_mem", "oom_retries"):
        value = getattr(args, flag)
        if value is not None:
            options += [f"--{flag.replace('_', '-')}", str(value)]
    if args.after:
        options += ["--after", *args.after]
    if not options:  # nothing to check; the directive parser is not even built
        return options
    try:
        parse_directive_args(options)
    except (DirectiveError, ValueError) as exc:
        raise CliError(f"bad option: {exc}") from None
    return options


def _check_name(name: str) -> str:
    """A job name the queue can handle (see :func:`layout.name_problem`), else QueueError."""
    problem = name_problem(name)
    if problem:
        raise QueueError(f"{printable(name)} cannot be queued: it {problem}")
    return name


def read_command_lines(source: str) -> list[str]:
    """The lines of ``source`` (a file, or ``-`` for standard input) that are neither blank
    nor ``#`` comments, each a shell command; CliError (one line) for input that cannot
    be a list of commands."""
    shown = "standard input" if source == "-" else printable(source)
    try:
        if source == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(source, "rb") as fh:
                data = fh.read()
    except OSError as exc:
        raise CliError(f"--each-line: cannot read {shown}: {exc.strerror or exc}") from None
    if b"\0" in data:
        line = data[: data.index(b"\0")].count(b"\n") + 1
        raise CliError(f"--each-line: {shown} is binary (a NUL byte on line {line}); "
                       "give one shell command per line")
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CliError(f"--each-line: {shown} is not UTF-8 text (line {line})") from None
    # "\n" only: a command may hold other characters that str.splitlines() would split on.
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    commands = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not commands:
        raise CliError(f"--each-line: {shown} holds no command (every line is blank or a "
                       "# comment)")
    return commands


def _submit_each_line(args, options: list[str]) -> int:
    """One job per line, each line run as ``sh -c LINE`` would, queued in line order.

    The names are printed once every line is queued (a reader that goes away early must
    not stop the queueing); when a line cannot be queued, those before it are printed
    and the error says how many went in."""
    from gpudispatch import control

    if args.command or args.scripts:
        raise CliError("--each-line takes the commands from its file: give no SCRIPT or "
                       "-- COMMAND with it")
    if args.name:
        raise CliError("--each-line names each job itself (STAMP-LINE-PROGRAM.sh); "
                       "--name is for one command")
    lines = read_command_lines(args.each_line)
    queue = _queue(args, create=True)  # after the input is known good: nothing made for none
    extra, snap = _reproducible(queue, args)
    cwd = snap.workdir if snap else os.getcwd()
    env_file = _kept_env(queue, args)
    from gpudispatch.cmdparams import line_params

    queued: list[str] = []
    try:
        for name, line in zip(control.each_line_names(lines), lines, strict=True):
            text = control.with_directives(control.line_script(line, cwd, env_file),
                                           options)
            queued.append(queue.enqueue_text(_check_name(name), text, rename=True,
                                             params=line_params(line), extra=extra,
                                             record_in_header=True))
    except (QueueError, OSError) as exc:
        if queued:
            print("\n".join(printable(name) for name in queued), flush=True)
        problem = exc if isinstance(exc, QueueError) else (exc.strerror or exc)
        raise QueueError(f"command {len(queued) + 1} of {len(lines)} not queued: "
                         f"{problem}; the {len(queued)} before it were") from None
    print("\n".join(printable(name) for name in queued))
    return 0


def _kept_env(queue: FolderQueue, args) -> str | None:
    """The file holding this shell's environment for the jobs of ``submit --`` and
    ``--each-line`` (None with ``--no-env``: they get the dispatcher's)."""
    if args.no_env:
        return None
    from gpudispatch.control import env_text

    try:
        return queue.keep_env(env_text(dict(os.environ)))
    except OSError as exc:
        raise CliError(f"cannot keep this shell's environment for the job "
                       f"({exc.strerror or exc}); --no-env queues it without") from None
def _reproducible(queue: FolderQueue, args):
    """The capsule every job of this submit shares (``extra`` for its records), and the
    snapshot when ``--snapshot`` (or ``$GPUDISPATCH_SNAPSHOT``) asks for one."""
    from gpudispatch import capsule, snapshot

    cwd = os.getcwd()
    state: object = True
    snap = None
    if snapshot.wanted(args.snapshot):
        state = snapshot.git_state(cwd)
        snap = snapshot.take(queue.layout, cwd, state)
        for note in snap.notes:
            print(f"gpudispatch {args.verb}: {printable(note)}", file=sys.stderr)
    whole = capsule.collect(queue.layout, cwd, sys.argv, state, snap)
    return {"capsule": capsule.keep(queue.layout, whole)}, snap


def cmd_submit(args) -> int:
    from gpudispatch import control

    if args.each_line is not None:
        return _submit_each_line(args, _directive_options(args))
    if not args.command and not args.scripts:
        raise CliError("nothing to submit: give SCRIPT... or -- COMMAND ARGS...")
    options = _directive_options(args)
    queue = _queue(args, create=True)
    extra, snap = _reproducible(queue, args)
    names = []
    if args.command:
        words = [snap.relocate(w) for w in args.command] if snap else args.command
        script = control.command_script(words, snap.workdir if snap else os.getcwd(),
                                        _kept_env(queue, args))
        text = control.with_directives(script, options)
        name = _check_name(args.name or control.command_name(args.command))
        from gpudispatch.cmdparams import command_params

        names.append(queue.enqueue_text(name, text, rename=args.rename or not args.name,
                                        params=command_params(args.command), extra=extra))
    else:
        from pathlib import Path

        for path in args.scripts:
            names.append(control.submit_file(queue, Path(path), options, rename=args.rename,
                                             extra=extra, workdir=snap and snap.workdir))
    for name in names:
        print(printable(name))
    return 0


def _job_arg(queue: FolderQueue, name: str) -> JobState:
    """Where the job a user named lies; CliError for a path or a job that is not there."""
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise CliError(f"{printable(name)!r} is not a job name")
    state = queue.locate(name)
    if state is None:
        raise CliError(f"no job named {printable(name)!r} in {queue.layout.root}")
    return state


def _open_log(queue: FolderQueue, name: str, state: JobState) -> int:
    """A descriptor of the job's log, refused (CliError, one line) unless it is a regular
    file inside ROOT: the path comes from a record anyone who can write ``logs/`` may
    have edited, and this command may run as a user who can read more than they can."""
    record = queue.read_record(name)
    log = record.log
    shown = printable(name)
    if state is JobState.RUNNING and not record.tells_current_run:
        # Its record still tells the run before (a run's is written 50 ms after its
        # start), or its end: this run's log is the next one, if there is one.
        current = queue.layout.job_log(name, record.attempts + 1)
        log = current if os.path.lexists(current) else log
    if not log or not os.path.lexists(log):
        raise CliError(f"{shown} has no output yet (state: {state.value})")
    if not safeio.inside(queue.layout.root, log):
        raise CliError(f"{shown}: its log {printable(log)} is outside {queue.layout.root}; "
                       "not read")
    try:
        return safeio.open_regular(log)
    except FileNotFoundError:
        raise CliError(f"{shown} has no output yet (state: {state.value})") from None
    except OSError as exc:
        raise CliError(f"{shown}: its log {printable(log)} {safeio.refusal(exc)}; "
                       "not read") from None


def cmd_logs(args) -> int:
    import time

    queue = _queue(args)
    state = _job_arg(queue, args.name)
    with os.fdopen(_open_log(queue, args.name, state), "rb") as fh:
        while True:
            chunk = fh.read(65536)
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
                continue
            if not args.follow or queue.locate(args.name) is not JobState.RUNNING:
                if args.follow:  # drain what was written after the last read
                    sys.stdout.buffer.write(fh.read())
                return 0
            time.sleep(0.2)


def cmd_cancel(args) -> int:
    from gpudispatch import control

    argcheck.seconds(args.grace, "--grace", zero_ok=True)
    queue = _queue(args)
    status = 0
    for name in args.names:
        try:
            _job_arg(queue, name)
            print(printable(control.cancel(queue, name, grace=args.grace)))
        except (QueueError, CliError) as exc:
            print(f"gpudispatch cancel: {printable(str(exc))}", file=sys.stderr)
            status = 1
    return status


def cmd_retry(args) -> int:
    from gpudispatch import control

    queue = _queue(args)
    status = 0
    for name in args.names:
        try:
            _job_arg(queue, name)
            print(printable(control.retry(queue, name)))
        except (QueueError, CliError) as exc:
            print(f"gpudispatch retry: {printable(str(exc))}", file=sys.stderr)
            status = 1
    return status


def cmd_show(args) -> int:
    import json

    from gpudispatch.capsule import load, show_lines

    queue = _queue(args)
    state = _job_arg(queue, args.name)
    record = queue.read_record(args.name)
    summary = record.extra.get("capsule")
    whole, problem = load(queue.layout, summary) if summary is not None else (None, None)
    if args.json:
        print(json.dumps({"name": args.name, "state": state.value,
                          "rerun_of": record.extra.get("rerun_of"),
                          "capsule": whole, **({"problem": problem} if problem else {})},
                         indent=1, default=str))
        return 0
    rows = [("name", args.name), ("state", state.value),
            ("submitted at", record.submitted_at or "")]
    if record.extra.get("rerun_of"):
        rows.append(("re-run of", str(record.extra["rerun_of"])))
    if whole is not None:
        rows.append(("capsule", summary["file"]))
        rows += show_lines(whole)
    elif summary is None:
        rows.append(("capsule", "none (queued before capsules, or dropped into queue/ "
                     "by hand)"))
    else:
        rows.append(("capsule", f"unreadable: {problem}"))
    width = max(len(label) for label, _ in rows)
    for label, text in rows:
        print(f"{label:<{width}}  {printable(str(text))}")
    return 0


def cmd_rerun(args) -> int:
    from gpudispatch import control

    queue = _queue(args)
    _job_arg(queue, args.name)
    new, warning = control.rerun(queue, args.name)
    if warning:
        print(f"gpudispatch rerun: {printable(warning)}", file=sys.stderr)
    print(printable(new))
    return 0


def cmd_pause(args) -> int:
    _queue(args).set_paused(True)
    print("paused: running jobs go on; no new job starts until 'gpudispatch resume'")
    return 0


def cmd_resume(args) -> int:
    _queue(args).set_paused(False)
    print("resumed")
    return 0


# ---------------------------------------------------------------------- sweeps
def _notes(notes: list[str]) -> None:
    """A sweep's notes (keys accepted, not acted on), on stderr, once the sweep is found
    fit to run: a refusal stays one line."""
    for note in notes:
        print(f"note: {printable(note)}", file=sys.stderr)


def _sweep_status(args) -> int:
    """``sweep --status FILE|NAME``: the sweep's jobs in the queue, counted by state."""
    from gpudispatch.sweep import SweepError, build_sweep, existing_jobs

    name = str(args.spec)
    if args.spec.is_file():
        try:
            name = build_sweep(args.spec, settings={"prefix": args.prefix},
                               settings_file=args.settings, ignore_unsupported=True).name
        except SweepError as exc:
            raise CliError(str(exc)) from None
    queue = _queue(args)
    existing = existing_jobs(queue, name)
    if not existing.jobs:
        raise CliError(f"no sweep named {printable(name)} in {_root(args)}")
    line = f"sweep {name}: {existing.describe()}"
    definition = queue.read_sweep(name) if name in queue.sweep_names() else None
    spec = (definition or {}).get("spec") or {}
    if spec.get("method") == "bayes":  # the study says how far it is
        line += (f"; bayes, {len(existing.jobs)} of {spec.get('run_cap')} runs asked"
                 + (", done" if queue.sweep_done(name) else ""))
    if spec.get("early_terminate"):
        stopped = sum(1 for n, _ in existing.jobs.values()
                      if (queue.read_record(n).reason or "").startswith("stopped early"))
        line += f"; {stopped} stopped early by hyperband"
    print(printable(line))
    return 0


def cmd_sweep(args) -> int:
    from gpudispatch.sweep import (
        CONFIRM_ABOVE,
        SweepError,
        build_sweep,
        existing_jobs,
        iter_queue_sweep,
        plan_more,
        summary_lines,
        write_dry_run,
    )

    if args.status:
        return _sweep_status(args)
    if args.extend is not None and args.extend < 1:
        raise CliError(f"--extend: a number of runs above 0, not {args.extend}")
    if args.resume and args.extend is not None:
        raise CliError("--resume queues what is missing, --extend N adds N runs: give one")
    settings = {"seed": args.seed, "prefix": args.prefix, "arg_style": args.arg_style}
    try:
        sweep = build_sweep(args.spec, settings=settings, settings_file=args.settings,
                            ignore_unsupported=args.ignore_unsupported)
    except SweepError as exc:
        raise CliError(str(exc)) from None
    queue = None  # nothing is created before the sweep is found fit to queue
    if os.path.isdir(_root(args)):
        try:
            queue = _queue(args)
        except CliError:  # not a queue yet: made when queueing (and refused then)
            queue = None
    existing = existing_jobs(queue, sweep.name)
    if sweep.method == "bayes":
        return _sweep_bayes(args, sweep, queue, existing, settings)
    jobs, seed = sweep.jobs, sweep.seed
    if existing.jobs:  # queued again: only its runs not there yet (as --resume)
        try:
            plan = plan_more(sweep, queue, existing, extend=args.extend)
        except SweepError as exc:
            raise CliError(str(exc)) from None
        jobs, seed = plan.jobs, plan.seed
        if not len(jobs):
            _notes(sweep.notes)
            print(f"sweep {sweep.name}: nothing to queue, {existing.describe()}"
                  + ("" if args.extend is not None else "; --extend N adds runs"))
            return 0
    elif args.extend is not None:
        raise CliError(f"--extend: sweep {sweep.name} has no jobs in {_root(args)} yet; "
                       "nothing was queued (queue it first, without --extend)")
    if args.dry_run:
        _notes(sweep.notes)
        if seed != sweep.seed:
            import dataclasses

            sweep = dataclasses.replace(sweep, seed=seed)
        write_dry_run(sweep, sys.stdout, jobs)
        return 0
    if len(jobs) > CONFIRM_ABOVE and not args.yes:
        raise CliError(f"sweep {sweep.name} has {len(jobs):,} runs, more than "
                       f"{CONFIRM_ABOVE:,}; nothing was queued (pass --yes to queue them all)")
    if queue is None:
        queue = _queue(args, create=True)
    extra, snap = _reproducible(queue, args)
    transform = None
    if snap is not None:  # the program of the snapshot, started in the snapshot
        import functools

        from gpudispatch import control

        try:
            sweep = build_sweep(args.spec, settings=settings, settings_file=args.settings,
                                ignore_unsupported=args.ignore_unsupported,
                                relocate=snap.relocate)
            jobs = (plan_more(sweep, queue, existing, extend=args.extend).jobs
                    if existing.jobs else sweep.jobs)
        except SweepError as exc:
            raise CliError(str(exc)) from None
        transform = functools.partial(control.with_workdir, workdir=snap.workdir)
    try:
        names = iter_queue_sweep(jobs, queue, sweep.name, sweep.metric, seed, extra,
                                 transform)
    except SweepError as exc:
        raise CliError(str(exc)) from None
    if "early_terminate" in sweep.spec:  # the dispatcher stops runs early: it reads this
        queue.write_sweep(sweep.name, {"spec": sweep.spec, "prefix": sweep.name})
    _notes(sweep.notes)
    lines = summary_lines(sweep, names, seed, len(existing.jobs))
    print("\n".join(printable(line) for line in lines))
    return 0


def _sweep_bayes(args, sweep, queue, existing, settings) -> int:
    """``gpudispatch sweep`` for method bayes: the sweep's definition and study under ROOT,
    its first trials queued; the dispatcher asks the rest as results come in."""
    from gpudispatch import adaptive
    from gpudispatch.sweep import SweepError, bayes_width, build_sweep, run_cap

    if args.resume or args.extend is not None:
        raise CliError(f"sweep {sweep.name} is bayes: the dispatcher asks its runs one by "
                       "one until run_cap; --resume and --extend do not apply")
    try:
        adaptive.check_bayes(sweep.spec)
    except (SweepError, adaptive.DrivenSweepError) as exc:
        raise CliError(str(exc)) from None
    except ImportError:
        raise CliError("method bayes needs Optuna: pip install 'gpudispatch[bayes]'; "
                       "nothing was queued") from None
    cap = run_cap(sweep.spec)
    if args.dry_run:
        _notes(sweep.notes)
        print(f"# sweep {sweep.name} (bayes, seed {sweep.seed}): up to {cap} runs, each "
              "asked of Optuna's TPE when a slot is free, from the results before it; "
              "dry run, nothing queued")
        return 0
    if queue is not None and (existing.jobs or sweep.name in queue.sweep_names()):
        what = existing.describe() if existing.jobs else "its study"
        raise CliError(f"sweep {sweep.name} is already in {_root(args)}: {what}; nothing was "
                       "queued (--prefix NAME starts a new sweep)")
    if queue is None:
        queue = _queue(args, create=True)
    extra, snap = _reproducible(queue, args)
    spec = sweep.spec
    if snap is not None:
        try:
            spec = build_sweep(args.spec, settings=settings, settings_file=args.settings,
                               ignore_unsupported=args.ignore_unsupported,
                               relocate=snap.relocate).spec
        except SweepError as exc:
            raise CliError(str(exc)) from None
    extra.update({"sweep": sweep.name, "sweep_seed": sweep.seed,
                  "sweep_metric": {"name": sweep.metric["name"],
                                   "goal": sweep.metric.get("goal", "minimize")}})
    definition = {"spec": {**spec, "prefix": sweep.name}, "prefix": sweep.name,
                  "seed": sweep.seed, "width": bayes_width(spec), "extra": extra,
                  "workdir": snap.workdir if snap is not None else None}
    try:
        names = adaptive.start_bayes(queue, sweep.name, definition)
    except (SweepError, adaptive.DrivenSweepError) as exc:
        raise CliError(str(exc)) from None
    _notes(sweep.notes)
    lines = [f"queued {len(names)} jobs for sweep {sweep.name} (bayes, seed {sweep.seed}); "
             f"`gpudispatch run` asks the rest, up to {cap}, as results come in"]
    if names:
        lines.append(f"  {names[0]} .. {names[-1]}")
    desc = " --desc" if sweep.metric.get("goal") == "maximize" else ""
    lines.append(f"  results: gpudispatch results --sweep {sweep.name} "
                 f"--sort {sweep.metric['name']}{desc}")
    print("\n".join(printable(line) for line in lines))
    return 0


def _print_history(queue: FolderQueue, args) -> int:
    """``results --history NAME``: the series a job logged, one row per line it wrote."""
    import json

    from gpudispatch.results import history_columns, metric_history, rows_to_csv, table_text

    name = args.history
    if queue.locate(name) is None:
        raise CliError(f"no job named {name} in {queue.layout.root}")
    history = metric_history(queue.layout.metrics(name))
    cols = history_columns(history)
    if not history and not (args.json or args.csv):
        print(f"{printable(name)} has reported no metrics "
              f"({printable(queue.layout.metrics(name))})")
        return 0
    if args.json:
        print(json.dumps(history, indent=1, default=str))
        return 0
    if args.csv:
        sys.stdout.write(rows_to_csv(history, cols) if cols else "")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=_cell(f"{name}: {len(history)} entries"))
    for col in cols:
        table.add_column(_cell(col), justify="right")
    for entry in history:
        table.add_row(*(_cell(table_text(entry.get(c))) for c in cols))
    Console().print(table)
    return 0


def _known(things: list[str] | set[str] | dict[str, object]) -> str:
    return ", ".join(printable(t) for t in sorted(things)) or "none"


def cmd_results(args) -> int:
    import json

    from gpudispatch.results import collect, columns, rows_to_csv, sort_rows

    if args.history is not None:
        if args.sweep or args.sort or args.top is not None:
            raise CliError("--history NAME shows one job: it takes no --sweep, --sort or --top")
        return _print_history(_queue(args), args)
    top = None if args.top is None else argcheck.count(args.top, "--top")
    found = collect(_queue(args), sweep=args.sweep)
    if args.sweep is not None and args.sweep not in found.sweeps:
        raise CliError(f"no sweep named {args.sweep}; known sweeps: {_known(found.sweeps)}")
    rows, cols = found.rows, columns(found.rows)
    ranking = found.ranking()
    if args.sort:
        # The sweep's metric is known before any run reports it (`sweep` suggests it).
        known = list(dict.fromkeys([*cols, *(metric for metric, _ in found.goals)]))
        if args.sort not in known:
            raise CliError(f"no column {args.sort} to sort by; known columns: "
                           f"{', '.join(printable(c) for c in known)}")
        ranking = (args.sort, args.desc)
    if ranking:
        rows = sort_rows(rows, *ranking)
    total = len(rows)
    rows = rows[:top]
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
        return 0
    if args.csv:
        sys.stdout.write(rows_to_csv(rows, cols))
        return 0
    notes = [f"sweep {args.sweep}"] if args.sweep else []
    if ranking and not args.sort:
        notes.append(f"best first by {ranking[0]} "
                     f"({'maximize' if ranking[1] else 'minimize'})")
    elif ranking:
        notes.append(f"by {ranking[0]}{', largest first' if ranking[1] else ''}")
    if top is not None and top < total:
        notes.append(f"top {top} of {total}")
    _print_results_table(rows, cols, ranking[0] if ranking else None, "; ".join(notes))
    return 0


def _print_results_table(rows: list[dict], cols: list[str], key: str | None,
                         title: str) -> None:
    """The results table, as wide as the terminal: every job's whole name, always (a run
    that cannot be named cannot be found); other columns are narrowed, then left out (the
    sort key last), and a caption says which. Wider than the terminal only when one name
    is."""
    from rich.cells import cell_len
    from rich.console import Console
    from rich.table import Table

    from gpudispatch.results import BASE_COLUMNS, fit_widths, table_text

    cells = [{c: printable(table_text(row.get(c))) for c in cols} for row in rows]
    widest = {c: max([0, *(cell_len(r[c]) for r in cells)]) for c in cols}
    natural = {c: max(cell_len(printable(c)), widest[c]) for c in cols}
    # A number or a state cut short would mislead: such a column is shown whole or not
    # at all (only its heading may be cut); long text (a param) may be cut to 6 cells.
    whole = {c for c in cols if c == "state" or all(
        row.get(c) is None or isinstance(row.get(c), (int, float)) for row in rows)}
    least = {c: max(widest[c], min(natural[c], 6)) if c in whole else min(natural[c], 6)
             for c in cols}
    rest = [c for c in cols if c not in BASE_COLUMNS]
    priority = [c for c in dict.fromkeys([key, "state", *rest, "duration_s", "gpus"])
                if c in natural and c != "name"]
    console = Console()
    widths = fit_widths(natural, least, "name", priority, console.width)
    needed = sum(widths.values()) + 3 * len(widths) + 1
    if needed > console.width:  # the name alone is wider: let the terminal wrap the line
        console = Console(width=needed)
    hidden = [c for c in cols if c not in widths]
    caption = (f"{len(hidden)} more column(s) not shown: {', '.join(map(printable, hidden))}"
               " (a wider terminal, --csv or --json show them)")
    table = Table(title=_cell(title) if title else None,
                  caption=_cell(caption) if hidden else None)
    shown = [c for c in cols if c in widths]
    for col in shown:
        table.add_column(_cell(col), justify="left" if col in ("name", "state") else "right",
                         width=widths[col], no_wrap=True, overflow="ellipsis")
    for row in cells:
        table.add_row(*(_cell(row[c]) for c in shown))
    console.print(table)


# ---------------------------------------------------------------------- pictures
def cmd_report(args) -> int:
    import time

    from gpudispatch.htmlreport import write_report

    queue = _queue(args)
    started = time.monotonic()
    try:
        size = write_report(queue, args.output)
    except OSError as exc:  # a folder that is not there, a full disk, no permission
        raise CliError(f"cannot write {printable(args.output)}: "
                       f"{exc.strerror or exc}") from None
    if args.output != "-":
        print(f"{printable(args.output)}: {size:,} bytes, "
              f"{time.monotonic() - started:.2f} s; open it in a browser")
    return 0


def cmd_serve(args) -> int:
    from gpudispatch.serve import serve

    argcheck.count(args.port, "--port", minimum=0, maximum=65535)
    try:
        serve(_queue(args), args.host, args.port)
    except OSError as exc:  # address in use, not an address of this machine
        raise CliError(f"cannot listen on {args.host}:{args.port}: "
                       f"{exc.strerror or exc}") from None
    return 0


# ---------------------------------------------------------------------- parser
def _snapshot_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--snapshot", action=argparse.BooleanOptionalAction, default=None,
                   help="run the jobs from a copy of the code as it is now (the git work "
                   "tree's tracked and untracked-but-not-ignored files, else this folder), "
                   "kept under ROOT/snapshots (default: $GPUDISPATCH_SNAPSHOT=1 turns it on)")


def _columns() -> int:
    """The terminal's width as ``shutil.get_terminal_size`` finds it ($COLUMNS, then the
    terminal, else 80), without importing shutil (and bz2, lzma) on every start."""
    from gpudispatch.plaintable import terminal_width

    return terminal_width(sys.__stdout__)


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, given the width so that it does not import shutil: argparse
    makes one for every parser it builds, also when no help is printed."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _columns() - 2 if width is None else width)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every verb, or with ``only`` of that verb alone: building the
    options of all ten costs a one-job ``submit`` a noticeable share of its time."""
    parser = argparse.ArgumentParser(
        prog="gpudispatch",
        formatter_class=_HelpFormatter,
        description="Drop shell scripts into a folder; each runs on a free GPU.",
        epilog=f"ROOT defaults to ${ROOT_ENV}, else ~/gpudispatch.",
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def want(name: str) -> bool:
        return only is None or name == only

    def verb(name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=_HelpFormatter)
        p.add_argument("--dir", metavar="ROOT", help=f"queue root (default: ${ROOT_ENV} or "
                       "~/gpudispatch)")
        p.set_defaults(func=func)
        return p

    if want("run"):
        p = verb("run", cmd_run, "run the dispatcher on ROOT's queue")
        p.add_argument("--gpus", metavar="LIST|all", help="GPU slots: 0,1,3 or 0-3 or all "
                       "(default: all, unless only --slots is given)")
        p.add_argument("--slots", type=int, metavar="K", help="K CPU-only slots "
                       "(jobs see CUDA_VISIBLE_DEVICES='')")
        p.add_argument("--wait", type=float, default=1.0, metavar="SEC",
                       help="seconds between queue scans when file events are unavailable "
                       "(default 1)")
        p.add_argument("--drain", action="store_true",
                       help="exit once nothing is queued or running (status 1 if a job failed)")
        p.add_argument("--on-finish", metavar="COMMAND",
                       help="shell command run after each job, with GPUDISPATCH_JOB, "
                       "GPUDISPATCH_STATE, GPUDISPATCH_EXIT_CODE, GPUDISPATCH_LOG set")
        p.add_argument("--kill-grace", type=float, default=10.0, metavar="SEC",
                       help="seconds between SIGTERM and SIGKILL when stopping a job (default 10)")
        p.add_argument("--reserve-after", type=float, default=300.0, metavar="SEC",
                       help="a job that does not fit may be passed by smaller ones for this long, "
                       "then holds the line (default 300)")
        p.add_argument("--respect-foreign", action=argparse.BooleanOptionalAction, default=True,
                       help="treat a GPU as busy while processes outside the queue hold at least "
                       "--foreign-threshold of its memory (needs NVML; default on)")
        p.add_argument("--foreign-threshold", default="1G", metavar="SIZE",
                       help="memory held by others that makes a GPU busy (default 1G)")
        p.add_argument("--gpu-poll", type=float, default=5.0, metavar="SEC",
                       help="seconds between GPU readings (NVML) (default 5)")
        p.add_argument("--heartbeat", type=float, default=15.0, metavar="SEC",
                       help="how often a dispatcher says it is alive; dispatchers on other hosts "
                       "sharing ROOT take over its jobs after 3 missed beats (default 15; use "
                       "the same value on every host)")
        p.add_argument("--allow-other-users", action="store_true",
                       help="run scripts in queue/ that other users own (they run as this "
                       "dispatcher's user); without it they fail with a reason naming the owner")
        p.add_argument("--containment", choices=("auto", "cgroup", "process-group"),
                       default="auto",
                       help="how every process of a job is ended with it: a cgroup v2 per job "
                       "(where one can be made: root, or a delegated cgroup), else its process "
                       "group and the daemons the dispatcher finds (default auto: the first "
                       "that works; `status` says which)")
        p.add_argument("--backend", choices=BACKENDS, default="local")
        p.add_argument("--partition", help="Slurm partition (--backend slurm)")
        p.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                       help="extra sbatch option, repeatable (--backend slurm)")
        p.add_argument("-q", "--quiet", action="store_true", help="log to logfile.txt only")

    if want("status"):
        p = verb("status", cmd_status, "jobs by state")
        p.add_argument("--json", action="store_true", help="every job as a JSON array")
        p.add_argument("--watch", action="store_true", help="refresh in place until Ctrl-C")
        p.add_argument("--interval", type=float, default=1.0, help="--watch refresh (seconds)")
        p.add_argument("--recent", type=int, default=20, metavar="N",
                       help="finished jobs to show (default 20)")
        p.add_argument("--queued", type=int, default=20, metavar="N",
                       help="queued jobs to show, next first (default 20)")
        p.add_argument("--all", action="store_true", help="show every queued and finished job")

    if want("submit"):
        p = verb("submit", cmd_submit, "copy scripts (or wrap a command) into the queue")
        p.add_argument("scripts", nargs="*", metavar="SCRIPT")
        p.add_argument("--name", help="job name for a wrapped command (must end in .sh)")
        p.add_argument("--rename", action="store_true",
                       help="pick a free name when the name is taken (NAME-2.sh, ...)")
        p.add_argument("--each-line", metavar="FILE",
                       help="one job per non-blank line of FILE (- for standard input), each "
                       "line a shell command as `sh -c LINE` takes it; they run in "
                       "line order")
        p.add_argument("--no-env", action="store_true",
                       help="with -- or --each-line: run with the dispatcher's environment, "
                       "not this shell's (kept by default)")
        p.add_argument("--gpus", type=int, metavar="K")
        p.add_argument("--timeout", metavar="DURATION")
        p.add_argument("--retries", type=int, metavar="N")
        p.add_argument("--priority", type=int, metavar="P")
        p.add_argument("--after", nargs="+", metavar="NAME")
        p.add_argument("--gpu-mem", metavar="SIZE", help="GPU memory the job needs; such jobs "
                       "share a GPU while their sums fit")
        p.add_argument("--oom-retries", type=int, metavar="N",
                       help="after a CUDA out-of-memory failure, run again alone, up to N times")
        _snapshot_flag(p)

    if want("show"):
        p = verb("show", cmd_show, "a run's capsule: commit, diff, snapshot, environment")
        p.add_argument("name", metavar="NAME")
        p.add_argument("--json", action="store_true", help="the capsule as JSON")

    if want("rerun"):
        p = verb("rerun", cmd_rerun, "queue a run again, from the same snapshot, as NAME-2.sh")
        p.add_argument("name", metavar="NAME")

    if want("logs"):
        p = verb("logs", cmd_logs, "print a job's output")
        p.add_argument("name", metavar="NAME")
        p.add_argument("-f", "--follow", action="store_true", help="follow while it runs")

    if want("cancel"):
        p = verb("cancel", cmd_cancel, "cancel queued or running jobs")
        p.add_argument("names", nargs="+", metavar="NAME")
        p.add_argument("--grace", type=float, default=10.0, metavar="SEC",
                       help="seconds between SIGTERM and SIGKILL (default 10)")

    if want("retry"):
        p = verb("retry", cmd_retry, "put failed jobs back in the queue")
        p.add_argument("names", nargs="+", metavar="NAME")

    if want("sweep"):
        from pathlib import Path

        p = verb("sweep", cmd_sweep, "queue one script per run of a W&B sweep file")
        p.add_argument("spec", type=Path, metavar="SPEC.yaml")
        p.add_argument("--dry-run", action="store_true",
                       help="print the scripts; queue nothing")
        p.add_argument("--yes", action="store_true",
                       help="queue a sweep of more than 100,000 runs (refused without it)")
        p.add_argument("--status", action="store_true",
                       help="how many jobs of the sweep (SPEC.yaml, or its NAME) are in each "
                       "state")
        p.add_argument("--resume", action="store_true",
                       help="queue only the runs of a sweep already queued that are not there "
                       "yet")
        p.add_argument("--extend", type=int, metavar="N",
                       help="add N runs to a sweep already queued (random: the same stream, "
                       "continued; grid: its next points not queued)")
        p.add_argument("--settings", type=Path, metavar="FILE",
                       help="gpudispatch's settings for the sweep (default: "
                       "SPEC.gpudispatch.yaml beside SPEC.yaml, when there is one)")
        p.add_argument("--seed", type=int, help="seed of a random sweep (default: one derived "
                       "from the file, recorded with each run)")
        p.add_argument("--prefix",
                       help="job names PREFIX-0001.sh... (default: the sweep's name)")
        p.add_argument("--arg-style", choices=("wandb", "classic"),
                       help="wandb (default): --lr=0.001 --use_bn=False, as `wandb agent`; "
                       "classic: --lr 0.001 and bare --flag for true, as create_shell_script")
        p.add_argument("--ignore-unsupported", action="store_true",
                       help="run a sweep whose early_terminate or metric.target is not "
                       "supported (every run runs to the end)")
        _snapshot_flag(p)

    if want("results"):
        p = verb("results", cmd_results, "parameters and metrics of every job, one row each")
        p.add_argument("--sweep", metavar="NAME", help="only this sweep's jobs")
        fmt = p.add_mutually_exclusive_group()
        fmt.add_argument("--json", action="store_true", help="rows as a JSON array")
        fmt.add_argument("--csv", action="store_true", help="rows as CSV")
        p.add_argument("--sort", metavar="COLUMN", help="sort by this column (missing last; "
                       "default: by the sweep's metric, best first, where its file names one)")
        p.add_argument("--desc", action="store_true", help="with --sort: largest first")
        p.add_argument("--top", type=int, metavar="N", help="only the first N rows")
        p.add_argument("--history", metavar="NAME",
                       help="the metrics one job logged over time, a row per line it wrote")

    if want("report"):
        p = verb("report", cmd_report, "write a self-contained HTML page: a per-GPU "
                 "timeline, the queue, failures and sweep plots")
        p.add_argument("-o", "--output", default="report.html", metavar="FILE",
                       help="where to write it (default report.html; - for standard output)")

    if want("serve"):
        p = verb("serve", cmd_serve, "the report's views live in a browser, with job logs "
                 "and cancel/retry/pause")
        p.add_argument("--host", default="127.0.0.1", metavar="ADDR",
                       help="address to listen on (default 127.0.0.1; any other needs the "
                       "token printed at start)")
        p.add_argument("--port", type=int, default=8765,
                       help="port (default 8765; 0: any free)")

    if want("pause"):
        verb("pause", cmd_pause, "stop starting new jobs (running ones go on)")
    if want("resume"):
        verb("resume", cmd_resume, "start new jobs again")
    return parser


VERBS = ("run", "status", "submit", "show", "rerun", "logs", "cancel", "retry", "sweep",
         "results", "report", "serve", "pause", "resume")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:  # submit -- COMMAND ARGS...: everything after -- is the command
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1 :]
    # The verb comes first (the top level has no options but -h): build its parser alone.
    args = build_parser(argv[0] if argv and argv[0] in VERBS else None).parse_args(argv)
    args.command = command
    for stream in (sys.stdout, sys.stderr):  # a name that is not UTF-8 must not crash a print
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    try:
        return args.func(args)
    except (CliError, QueueError, OptionError) as exc:
        print(f"gpudispatch {args.verb}: {printable(str(exc))}", file=sys.stderr)
        return 1 if isinstance(exc, QueueError) else EXIT_USAGE
    except BrokenPipeError:
        return 0
    except OSError as exc:
        if args.verb == "run":  # the dispatcher's own failures keep their traceback
            raise
        where = f" ({printable(str(exc.filename))})" if exc.filename else ""
        print(f"gpudispatch {args.verb}: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
