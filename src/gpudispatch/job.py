"""A job's record, its state, and the ``#GPUDISPATCH`` directives in its header (pure).

The state of a job is where its script lies (``queue/``, ``running/``...); the record
(JSON beside its log) holds what happened to it.
"""

from __future__ import annotations

import enum
import json
import re
import shlex
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (CLI start)
if TYPE_CHECKING:
    from datetime import datetime
    from typing import Any

DIRECTIVE_PREFIX = "#GPUDISPATCH"
# Directives are read from the header: the lines before the first command.
HEADER_MAX_BYTES = 16384
EARLIER_RUNS_KEPT = 20  # outcomes of a name's earlier submissions kept in its record


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED)


def now_iso() -> str:
    """Now, local time with its UTC offset, to the millisecond: what
    ``datetime.now(timezone.utc).astimezone().isoformat(timespec="milliseconds")`` gives,
    made with :mod:`time` so that ``submit`` need not import :mod:`datetime`. The text of
    each second is made once (a drain stamps two a job)."""
    global _second_text
    seconds, ns = divmod(time.time_ns(), 1_000_000_000)
    made = _second_text  # one read: another thread may make the next second's meanwhile
    if made[0] != (seconds, time.tzname):
        local = time.localtime(seconds)
        offset = local.tm_gmtoff or 0
        hours, rest = divmod(abs(offset), 3600)
        minutes, secs = divmod(rest, 60)
        zone = f"{'-' if offset < 0 else '+'}{hours:02d}:{minutes:02d}" + (
            f":{secs:02d}" if secs else "")
        made = _second_text = ((seconds, time.tzname),
                               time.strftime("%Y-%m-%dT%H:%M:%S", local), zone)
    return f"{made[1]}.{ns // 1_000_000:03d}{made[2]}"


# The second (and time zone: ``time.tzset``) now_iso made text of last, its text, its zone.
_second_text: tuple = (None, "", "")


def _fromisoformat():
    """``datetime.fromisoformat``, imported on first use (``submit`` needs no datetime)."""
    global _FROMISO
    if _FROMISO is None:
        from datetime import datetime

        _FROMISO = datetime.fromisoformat
    return _FROMISO


_FROMISO = None


def parse_iso(text: str | None) -> datetime | None:
    """A record's time, always timezone-aware (a naive time is taken as local), so two
    times from records can be subtracted; ValueError for anything that is not one."""
    if not text:
        return None
    if not isinstance(text, str):
        raise ValueError(f"not a time: {text!r}")
    from datetime import datetime

    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.astimezone()


def safe_iso(text: object) -> datetime | None:
    """:func:`parse_iso` for display code: None instead of an error, so one odd record
    never stops ``status`` or ``results``."""
    try:
        return parse_iso(text)  # type: ignore[arg-type]
    except (ValueError, TypeError, OverflowError):
        return None


class JobRecord:
    """What gpudispatch knows of one job; written atomically as ``logs/NAME.json``.

    Written out by hand rather than as a dataclass: ``dataclasses`` imports ``inspect``,
    which costs ``gpudispatch submit`` more than the rest of the command. It behaves as
    the dataclass did (same fields in the same order, ``==``, ``repr``, unhashable);
    ``gpus``, ``params`` and ``extra`` given as None become a new empty list or dict.
    """

    FIELDS = ("name", "gpus", "host", "pid", "dispatcher", "submitted_at", "started_at",
              "ended_at", "exit_code", "attempts", "reason", "log", "params", "backend",
              "backend_id", "extra")

    def __init__(
        self,
        name: str,
        gpus: list[int] | None = None,
        host: str | None = None,
        pid: int | None = None,
        dispatcher: str | None = None,
        submitted_at: str | None = None,
        started_at: str | None = None,
        ended_at: str | None = None,
        exit_code: int | None = None,
        attempts: int = 0,
        reason: str | None = None,
        log: str | None = None,
        params: dict[str, Any] | None = None,
        backend: str = "local",
        backend_id: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.gpus: list[int] = [] if gpus is None else gpus
        self.host = host
        self.pid = pid
        self.dispatcher = dispatcher
        self.submitted_at = submitted_at
        self.started_at = started_at
        self.ended_at = ended_at
        self.exit_code = exit_code
        self.attempts = attempts
        self.reason = reason
        self.log = log
        self.params: dict[str, Any] = {} if params is None else params
        self.backend = backend
        self.backend_id = backend_id
        self.extra: dict[str, Any] = {} if extra is None else extra

    def __repr__(self) -> str:
        inner = ", ".join(f"{key}={getattr(self, key)!r}" for key in self.FIELDS)
        return f"JobRecord({inner})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self.FIELDS)

    __hash__ = None  # type: ignore[assignment]  # mutable: as the dataclass was

    def to_json(self) -> str:
        # vars() not asdict(): no deep copy, and every field is already plain JSON.
        return json.dumps(vars(self), default=str)

    @property
    def tells_current_run(self) -> bool:
        """Whether this is the record of the run now going (its start record, written
        50 ms after the start, and kept until its end): until then a retry's is the failed
        run's (``requeued``), a name dropped again has its last run's, a new job none."""
        return bool(self.pid) and self.ended_at is None and not self.extra.get("requeued")

    @property
    def own_attempts(self) -> int:
        """Attempts since its script was dropped in: what ``--retries`` counts. A name
        dropped again after it ended keeps numbering its runs (``attempts``) but counts
        its retries anew; ``retry`` by hand continues the count."""
        earlier = self.extra.get("earlier_attempts", 0)
        return self.attempts - (earlier if _is_int(earlier) and 0 <= earlier <= self.attempts
                                else 0)

    @property
    def interruptions(self) -> int:
        """Runs ended by no fault of the job (its machine, or Slurm, lost it)."""
        count = self.extra.get("interruptions", 0)
        return count if _is_int(count) and count >= 0 else 0

    def interrupted(self) -> None:
        """Count one more interruption: the next run is another attempt, not a retry.
        Never more than the attempts recorded: a run whose start record was never written
        (its dispatcher died at once) runs again under the same attempt number, and must
        not count as an interruption too (it would give the next failure a free retry)."""
        self.extra["interruptions"] = min(self.interruptions + 1, self.attempts)

    @property
    def failed_attempts(self) -> int:
        """What ``--retries`` is measured against: own attempts, less interruptions."""
        return self.own_attempts - self.interruptions

    def dropped_again(self) -> JobRecord:
        """The record of the next run of a name dropped again after it ended: its runs go
        on from ``attempts`` (run N+1 writes ``NAME.N+1.log``; earlier logs stay), and how
        the earlier runs ended is kept in ``extra["earlier_runs"]`` (the last few)."""
        earlier = self.extra.get("earlier_runs")
        runs = [r for r in earlier if isinstance(r, dict)] if isinstance(earlier, list) else []
        runs.append({"attempts": self.attempts, "started_at": self.started_at,
                     "ended_at": self.ended_at, "exit_code": self.exit_code,
                     "reason": self.reason, "log": self.log})
        return JobRecord(name=self.name, attempts=self.attempts, params=self.params,
                         extra={"earlier_attempts": self.attempts,
                                "earlier_runs": runs[-EARLIER_RUNS_KEPT:]})

    @classmethod
    def from_dict(cls, data: Any) -> JobRecord:
        """A record from parsed JSON; :class:`RecordError` when it is not an object or a
        known field has the wrong type (unknown fields are ignored, for newer versions).

        Records live in a folder anyone may write to: a field of the wrong type would
        otherwise surface later as a traceback far from its cause. Checked field by field
        with a plain type test first (``status --json`` reads 100,000 of them).
        """
        if not isinstance(data, dict):
            raise RecordError(f"record is {_kind(data)}, not a JSON object")
        fromiso = _fromisoformat()
        values = {}
        for key, value in data.items():
            plain = _PLAIN_TYPES.get(key)
            if plain is None:
                continue  # a field of a newer version
            ok = value.__class__ in plain
            if ok and value is not None:  # the checks beyond the type, inline (no calls)
                more = _MORE.get(key)
                if more is None:
                    pass
                elif more == "time":
                    try:
                        if fromiso(value).tzinfo is None:
                            fromiso(value).astimezone()
                    except (ValueError, OverflowError):
                        ok = False
                elif more == "positive":
                    ok = value > 0
                elif more == "count":
                    ok = value >= 0
                elif more == "text":
                    ok = bool(value)
                elif more == "path":
                    ok = bool(value) and "\0" not in value
                else:  # gpus
                    ok = all(g.__class__ is int and g >= 0 for g in value)
            if not ok:
                problem = _FIELD_CHECKS[key](value) if key in _FIELD_CHECKS else (
                    _PLAIN_WANTED[key])
                raise RecordError(f"record field {key!r} {problem}, not {_short(value)}")
            values[key] = value
        if "name" not in values:
            raise RecordError("record has no name")
        return cls(**values)

    @classmethod
    def from_json(cls, text: str | bytes) -> JobRecord:
        """A record from its file's bytes; :class:`RecordError` for anything else."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise RecordError(f"record is not JSON ({_short(str(exc))})") from None
        return cls.from_dict(data)


# A job queued in bulk (``submit --each-line``) carries what its record would say at
# submission on one line of its header, not in a record file of its own: creating a file
# costs more than a trivial job on the disks this runs on (0.2-1 ms). Its first record
# file is written when it runs, from this line (``FolderQueue.read_record``).
SUBMISSION_PREFIX = "# gpudispatch-submission: "
_SUBMISSION_FIELDS = ("submitted_at", "params", "extra")


def with_submission(text: bytes, record: JobRecord) -> bytes:
    """``text`` with the submission line of ``record`` after its ``#!`` line (pure)."""
    fields = {key: getattr(record, key) for key in _SUBMISSION_FIELDS}
    line = (SUBMISSION_PREFIX + json.dumps(fields, separators=(",", ":"), default=str)
            ).encode() + b"\n"
    if not text.startswith(b"#!"):
        return line + text
    end = text.find(b"\n") + 1 or len(text)
    return text[:end] + (b"" if text[end - 1:end] == b"\n" else b"\n") + line + text[end:]


def submission_in(name: str, head: bytes) -> JobRecord | None:
    """The record a script's submission line holds, when its header (the comments
    before its first command) has one that is a record; else None. The line is the
    script owner's to write, as a record file would be theirs: it is checked as one."""
    prefix = SUBMISSION_PREFIX.encode()
    for line in head.split(b"\n")[:-1]:  # (the last may be cut by the header's limit)
        if line.startswith(prefix):
            try:
                data = json.loads(line[len(prefix):])
            except (ValueError, RecursionError):
                return None
            if not isinstance(data, dict):
                return None
            fields = {k: data[k] for k in _SUBMISSION_FIELDS if k in data}
            try:
                return JobRecord.from_dict({**fields, "name": name})
            except RecordError:
                return None
        if line.strip() and not line.lstrip().startswith(b"#"):
            return None
    return None


class RecordError(ValueError):
    """A record file that is not a record: not JSON, not an object, or a field of the wrong
    type. The message says which field and what was found."""


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    return {type(None): "null", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional(check, wanted: str):
    return lambda v: None if v is None or check(v) else f"should be {wanted} or null"


def _check_time(value: Any) -> str | None:
    if value is None:
        return None
    try:
        parse_iso(value)
    except (ValueError, OverflowError, TypeError):
        return "should be an ISO 8601 time or null"
    return None


def _check_gpus(value: Any) -> str | None:
    if isinstance(value, list) and all(_is_int(g) and g >= 0 for g in value):
        return None
    return "should be a list of GPU indices"


_NONE = type(None)
# Fields whose plain JSON type says all: the types they may have, and what is wanted.
_PLAIN_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "gpus": (list,), "host": (str, _NONE), "pid": (int, _NONE),
    "dispatcher": (str, _NONE), "submitted_at": (str, _NONE), "started_at": (str, _NONE),
    "ended_at": (str, _NONE), "exit_code": (int, _NONE), "attempts": (int,),
    "reason": (str, _NONE), "log": (str, _NONE), "params": (dict,), "backend": (str,),
    "backend_id": (str, _NONE), "extra": (dict,),
}
_PLAIN_WANTED = {
    "host": "should be a string or null", "dispatcher": "should be a string or null",
    "exit_code": "should be an integer or null", "reason": "should be a string or null",
    "params": "should be an object", "backend": "should be a string",
    "backend_id": "should be a string or null", "extra": "should be an object",
}
# Fields that need more than their type (when not null): what more, then the check that
# says what is wrong with a value that fails.
_MORE = {"name": "text", "gpus": "gpus", "pid": "positive", "submitted_at": "time",
         "started_at": "time", "ended_at": "time", "attempts": "count", "log": "path"}
_FIELD_CHECKS: dict[str, Any] = {
    "name": lambda v: None if isinstance(v, str) and v else "should be a job name",
    "gpus": _check_gpus,
    "pid": _optional(lambda v: _is_int(v) and v > 0, "a process id"),
    "submitted_at": _check_time,
    "started_at": _check_time,
    "ended_at": _check_time,
    "attempts": lambda v: None if _is_int(v) and v >= 0 else "should be a count (0 or more)",
    "log": _optional(lambda v: isinstance(v, str) and v and "\0" not in v, "a file path"),
}


# --- directives -------------------------------------------------------------------------


class DirectiveError(ValueError):
    """A malformed ``#GPUDISPATCH`` line; the message quotes it."""


# Patterns, not compiled ones: re compiles (and caches) them on first use, so importing
# this module (every CLI verb does) compiles nothing.
_DURATION_PART = r"(\d+(?:\.\d+)?)([dhms])"
_DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_SIZE = r"^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$"
_SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``45s``, ``2h30m``, ``1d``, or Slurm's ``[D-]HH:MM:SS`` / ``MM:SS``."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    if re.fullmatch(r"(\d+-)?\d+(:\d+){1,2}", text):
        days, _, clock = text.rpartition("-")
        parts = [int(p) for p in clock.split(":")]
        if len(parts) == 2:
            parts.insert(0, 0)
        hours, minutes, seconds = parts
        return (int(days or 0) * 24 + hours) * 3600 + minutes * 60 + seconds
    pos, total = 0, 0.0
    for match in re.finditer(_DURATION_PART, text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90, 45s, 2h30m, 1d, 01:30:00)")
    return total


def parse_size(text: str) -> int:
    """Bytes in ``10G``, ``512M``, ``1.5GiB``, ``2048`` (plain numbers are bytes)."""
    match = re.match(_SIZE, text.strip(), re.IGNORECASE)
    if not match:
        raise ValueError(f"not a size: {text!r} (use e.g. 10G, 512M)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


class Directives:
    """How a job asks to be run; every field has the default a plain script gets.

    Immutable and hashable, like the frozen dataclass it was; written by hand so that
    the command line does not import ``dataclasses`` (see :class:`JobRecord`).
    """

    # field -> default; gpus None: one slot of any kind; 0: a CPU slot; K: K GPUs
    DEFAULTS: dict[str, Any] = {"gpus": None, "timeout": None, "retries": 0, "priority": 0,
                                "after": (), "gpu_mem": None, "oom_retries": 0}
    __slots__ = tuple(DEFAULTS)

    gpus: int | None
    timeout: float | None
    retries: int
    priority: int
    after: tuple[str, ...]
    gpu_mem: int | None
    oom_retries: int

    def __init__(
        self,
        gpus: int | None = None,
        timeout: float | None = None,
        retries: int = 0,
        priority: int = 0,
        after: tuple[str, ...] = (),
        gpu_mem: int | None = None,
        oom_retries: int = 0,
    ) -> None:
        for key, value in zip(self.__slots__, (gpus, timeout, retries, priority, after,
                                               gpu_mem, oom_retries), strict=True):
            object.__setattr__(self, key, value)

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {key!r} (Directives are immutable)")

    def __delattr__(self, key: str) -> None:
        raise AttributeError(f"cannot delete field {key!r} (Directives are immutable)")

    def _values(self) -> tuple:
        return tuple(getattr(self, key) for key in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._values())

    def __reduce__(self) -> tuple:  # pickle and copy: through __init__, not setattr
        return (Directives, self._values())

    def __repr__(self) -> str:
        inner = ", ".join(f"{key}={getattr(self, key)!r}" for key in self.__slots__)
        return f"Directives({inner})"

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key, default in self.DEFAULTS.items()
                if getattr(self, key) != default}


def _directive_parser():  # built lazily: argparse is only needed when a header has directives
    import argparse

    class _Raising(argparse.ArgumentParser):
        def error(self, message: str):  # argparse would print and exit
            raise DirectiveError(message)

    # A fixed width: its help is never printed, and argparse's default formatter imports
    # shutil (with bz2 and lzma) to ask the terminal, on every submit.
    parser = _Raising(prog=DIRECTIVE_PREFIX, add_help=False, allow_abbrev=False,
                      formatter_class=lambda prog: argparse.HelpFormatter(prog, width=80))
    parser.add_argument("--gpus", type=int)
    parser.add_argument("--timeout", type=parse_duration)
    parser.add_argument("--retries", type=int, default=0)
    parser.add_argument("--priority", type=int, default=0)
    parser.add_argument("--after", nargs="+", default=[], action="extend")
    parser.add_argument("--gpu-mem", dest="gpu_mem", type=parse_size)
    parser.add_argument("--oom-retries", dest="oom_retries", type=int, default=0)
    return parser


_PARSER = None


def parse_directive_args(args: list[str]) -> Directives:
    """Directives from option words, as the CLI's ``submit`` also takes them."""
    global _PARSER
    if _PARSER is None:
        _PARSER = _directive_parser()
    ns = _PARSER.parse_args(args)
    if ns.gpus is not None and ns.gpus < 0:
        raise DirectiveError("--gpus must be 0 or more")
    if ns.retries < 0 or ns.oom_retries < 0:
        raise DirectiveError("--retries must be 0 or more")
    if ns.timeout is not None and ns.timeout <= 0:
        raise DirectiveError("--timeout must be positive")
    return Directives(
        gpus=ns.gpus,
        timeout=ns.timeout,
        retries=ns.retries,
        priority=ns.priority,
        after=tuple(ns.after),
        gpu_mem=ns.gpu_mem,
        oom_retries=ns.oom_retries,
    )


def directive_lines(header: str) -> list[str]:
    """The ``#GPUDISPATCH`` lines of a script's header (comments and blanks before code)."""
    found = []
    for line in header.splitlines():
        stripped = line.strip()
        if stripped.startswith(DIRECTIVE_PREFIX):
            found.append(stripped)
        elif stripped and not stripped.startswith("#"):
            break
    return found


def parse_directives(header: str) -> Directives:
    """Directives from a script's text; a bad line raises :class:`DirectiveError` quoting it."""
    words: list[str] = []
    for line in directive_lines(header):
        rest = line[len(DIRECTIVE_PREFIX):]
        if rest and not rest[0].isspace():
            raise DirectiveError(f"malformed directive line {line!r}")
        try:
            line_words = shlex.split(rest, comments=True)
            parse_directive_args(line_words)  # validate each line alone to quote it
        except (ValueError, DirectiveError) as exc:
            raise DirectiveError(f"malformed directive line {line!r}: {exc}") from None
        words.extend(line_words)
    return parse_directive_args(words) if words else Directives()
