"""FolderQueue: the only code that moves job files and writes records.

Every state change is one ``rename`` inside the root, and every file is written under a
temporary name first, so a crash at any instant leaves each job in exactly one folder.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import stat
from collections.abc import Iterator

from gpudispatch import safeio
from gpudispatch.job import (
    HEADER_MAX_BYTES,
    JobRecord,
    JobState,
    RecordError,
    now_iso,
    submission_in,
    with_submission,
)
from gpudispatch.layout import STATE_DIRS, Layout, is_job_name, job_names, printable
from gpudispatch.safeio import write_atomic  # re-exported: writers import it from here

EARLY_STOP = "stopped early"  # how an early stop's cancel request (and reason) begins

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (CLI start)
if TYPE_CHECKING:
    from pathlib import Path

    from gpudispatch.monitor import ExitStatus

HOST = os.uname().nodename  # socket.gethostname(), without importing socket (CLI start)
RECORD_MAX_BYTES = 1 << 20  # a record is a few hundred bytes; params of a sweep, a few KiB


def _warn(message: str, *args: object) -> None:
    """A warning on the ``gpudispatch.store`` logger; logging is imported only when one is
    given (``submit`` and ``status`` start faster without it)."""
    import logging

    logging.getLogger("gpudispatch.store").warning(message, *args)


class QueueError(Exception):
    """A request the queue refuses (unknown job, name taken, no such root)."""


class JobView:
    """A job as ``status`` shows it: where its script lies, and its record.

    A plain class, not a dataclass: ``dataclasses`` imports ``inspect`` and costs the
    command line more than the rest of ``status``."""

    __slots__ = ("name", "record", "state")

    def __init__(self, name: str, state: JobState, record: JobRecord) -> None:
        self.name = name
        self.state = state
        self.record = record

    def __repr__(self) -> str:
        return f"JobView(name={self.name!r}, state={self.state!r}, record={self.record!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JobView):
            return NotImplemented
        return (self.name, self.state, self.record) == (other.name, other.state, other.record)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it was

    def to_dict(self) -> dict:
        """The job for ``status --json``: its name and state, then every record field."""
        return {"name": self.name, "state": self.state.value,
                **{k: v for k, v in vars(self.record).items() if k != "name"}}


class FolderQueue:
    def __init__(self, root: Path | str | Layout, create: bool = True) -> None:
        self.layout = root if isinstance(root, Layout) else Layout(root)
        if not create and not self.layout.exists():
            raise QueueError(f"{self.layout.root} is not a gpudispatch queue (no queue/ folder)")
        try:  # an existing root may lack folders (made by hand, or by the seed tool)
            self.layout.create()
        except PermissionError:
            if create:
                raise

    # --- records -----------------------------------------------------------------------
    def read_record(self, name: str) -> JobRecord:
        return self.read_record_bytes(name)[0]

    def read_record_bytes(self, name: str,
                          head: bytes | None = None) -> tuple[JobRecord, bytes | None]:
        """The record of ``name`` (:meth:`read_record`), and the file's bytes when the
        record is exactly what they say, for callers that pass records on as JSON without
        encoding them again (None: no file, one set aside, one naming another job).

        A job queued in bulk has no record file until it runs: its record is then the
        one its script's header holds (``job.submission_in``; ``head``, when the caller
        has read the header). The record is a fresh one when there is none, it cannot be
        read, or it is not a record. Never raises for what is in the file.

        ``logs/`` is writable by people and their scripts: the record is opened without
        following a symlink or blocking on a FIFO, must be a regular file of at most
        RECORD_MAX_BYTES, and must have the right shape. A bad one is renamed aside
        (``NAME.json.bad-...``, kept for a person to look at) with a warning on the
        ``gpudispatch.store`` logger, and the job goes on with a fresh record.
        """
        path = self.layout.record(name)
        st = None
        try:
            fd, st = safeio.open_regular_stat(path)
        except FileNotFoundError:
            if head is None:
                head = self._script_head(name)
            return submission_in(name, head) or JobRecord(name=name), None
        except safeio.FileRefused as exc:
            problem = safeio.refusal(exc)
        except (OSError, ValueError) as exc:  # EACCES, ENAMETOOLONG, a NUL: leave it be
            _warn("record of %s %s; using a fresh one", printable(name),
                         safeio.refusal(exc) if isinstance(exc, OSError) else exc)
            return JobRecord(name=name), None
        else:
            try:
                data = safeio.read_limited(fd, st.st_size, RECORD_MAX_BYTES)
            except OSError as exc:  # EIO and the like: nothing to set aside
                _warn("record of %s %s; using a fresh one", printable(name),
                             safeio.refusal(exc))
                return JobRecord(name=name), None
            finally:
                os.close(fd)
            if data is None:
                problem = f"is larger than {RECORD_MAX_BYTES} bytes"
            else:
                try:
                    record = JobRecord.from_json(data)
                except RecordError as exc:
                    problem = str(exc)
                else:
                    if record.name == name:
                        return record, data
                    record.name = name  # the file decides: a record naming another job
                    return record, None  # must not make the next write land on that one
        aside = safeio.set_aside(path, st)
        where = f"set aside as {os.path.basename(aside)}" if aside else "left in place"
        _warn("record of %s %s; %s, using a fresh one", printable(name), problem, where)
        return JobRecord(name=name), None

    def _script_head(self, name: str) -> bytes:
        """The header of a job's script while it waits or runs (nothing when it is
        neither, or is not a regular file)."""
        for state in (JobState.QUEUED, JobState.RUNNING):
            try:
                fd = safeio.open_regular(self.layout.script(state, name))
            except FileNotFoundError:
                continue
            except (OSError, ValueError):
                return b""
            try:
                return os.read(fd, HEADER_MAX_BYTES)
            except OSError:
                return b""
            finally:
                os.close(fd)
        return b""

    def write_record(self, record: JobRecord) -> None:
        write_atomic(self.layout.record(record.name), record.to_json().encode(),
                     self.layout.where("tmp"))

    # --- where jobs are ----------------------------------------------------------------
    def names(self, state: JobState, ordered: bool = True) -> list[str]:
        """Job names in one state folder, in run order (alphanumeric); with ``ordered``
        False in the folder's order (a count, or a caller that picks a few itself)."""
        try:  # listdir, not scandir: nothing but the names is wanted (a third faster)
            found = job_names(os.listdir(self.layout.state_folder(state)))
        except FileNotFoundError:
            return []
        if ordered:
            found.sort()
        return found

    def locate(self, name: str) -> JobState | None:
        for state in STATE_DIRS:
            if os.path.lexists(self.layout.script(state, name)):
                return state
        return None

    def jobs(self, states: tuple[JobState, ...] = tuple(STATE_DIRS)) -> Iterator[JobView]:
        for state in states:
            for name in self.names(state):
                yield JobView(name, state, self.read_record(name))

    # --- moves -------------------------------------------------------------------------
    def move(self, name: str, src: JobState, dst: JobState) -> bool:
        """Rename one job between state folders; False when it was not in ``src``, or
        when ``queue/`` or ``running/`` already holds that name: a job there is never
        replaced (a name dropped again while it runs waits for it). A job that ends
        replaces its name's earlier script in ``completed/`` or ``failed/`` and removes it
        from the other, so a name is in one place (its earlier logs and record stay)."""
        old, new = self.layout.script(src, name), self.layout.script(dst, name)
        try:
            if dst.is_final:
                os.rename(old, new)
            else:
                safeio.rename_noreplace(old, new)
        except (FileNotFoundError, FileExistsError):
            return False
        if dst.is_final:
            self._drop_finished(name, keep=dst)
        return True

    def claim(self, name: str) -> bool:
        """Take a queued job; exactly one of several racing dispatchers gets True, and
        none while a job of that name is in ``running/``. A name that had ended leaves
        ``completed/``/``failed/`` now: this run is its next attempt."""
        if not self.move(name, JobState.QUEUED, JobState.RUNNING):
            return False
        self._drop_finished(name)
        return True

    def _drop_finished(self, name: str, keep: JobState | None = None) -> None:
        for state in (JobState.COMPLETED, JobState.FAILED):
            if state is not keep:
                try:
                    os.unlink(self.layout.script(state, name))
                except OSError:  # none there (the common case), or not a file to remove
                    pass

    def keep_env(self, text: str) -> str:
        """Store a submitting shell's environment (:func:`control.env_text`) where only
        its owner may read it (it may hold secrets); its path. Named by its content's
        hash, so the jobs of one shell share one file; a file of that name holding
        anything else (planted there) is passed over, never used."""
        data = text.encode(errors="surrogateescape")
        stem = safeio.sha256(data).hexdigest()[:32]
        for n in range(1, 100):
            path = self.layout.env_file(stem if n == 1 else f"{stem}-{n}")
            try:
                if safeio.read_regular(path, len(data)) == data:
                    return path
            except FileNotFoundError:
                write_atomic(path, data, self.layout.where("tmp"), mode=0o600)
                return path
            except OSError:  # a symlink, a FIFO, a larger file: not ours
                continue
        raise OSError(f"no free name for an environment file in {self.layout.where('envs')}")

    def enqueue_text(
        self,
        name: str,
        text: str | bytes,
        params: dict | None = None,
        rename: bool = False,
        extra: dict | None = None,
        record_in_header: bool = False,
    ) -> str:
        """Put a new script in the queue atomically and return the name it got.

        A name already queued, running or done is refused unless ``rename`` picks a free
        one (``name-2.sh``, ``name-3.sh``...). The record (with ``params``) is written
        before the script appears, so a dispatcher never sees a job without it; with
        ``record_in_header`` (bulk submission) it is a line of the script's header instead
        (``job.with_submission``): one file created per job, not two.
        """
        if not is_job_name(name) or "/" in name:
            raise QueueError(f"{name!r} is not a job name (a visible file name ending in .sh)")
        data = text.encode() if isinstance(text, str) else text
        name = self._free_name(name, rename)
        record = JobRecord(name=name, submitted_at=now_iso(), params=dict(params or {}),
                           extra=dict(extra or {}))
        if record_in_header:
            data = with_submission(data, record)
        else:
            self.write_record(record)
        tmp = safeio.write_temp(self.layout.where("tmp"), data, 0o755, ".sh")
        # link() fails if the name was taken meanwhile, where rename() would overwrite.
        try:
            os.link(tmp, self.layout.script(JobState.QUEUED, name))
        except FileExistsError:
            raise QueueError(f"{name} is already queued") from None
        finally:
            safeio.discard(tmp)
        return name

    def _free_name(self, name: str, rename: bool) -> str:
        if self.locate(name) is None:
            return name
        if not rename:
            raise QueueError(
                f"{name} is already {self.locate(name).value}; pass --rename to queue it "
                "under a new name"
            )
        stem = name[: -len(".sh")]
        for n in itertools.count(2):
            candidate = f"{stem}-{n}.sh"
            if self.locate(candidate) is None:
                return candidate
        raise AssertionError("unreachable")

    # --- owning and settling a job -----------------------------------------------------
    def lock_job(self, name: str, state: JobState) -> int | None:
        """A descriptor holding an exclusive ``flock`` on a job's script, or None when
        another process holds it (or the script is gone, or is not a regular file).

        The lock lives on the script's inode, so it follows the job from ``queue/`` to
        ``running/``. The dispatcher takes it before the claim and hands it to the job's
        monitor: it stays held while either lives, so a job in ``running/`` whose lock can
        be taken has no owner left, and exactly one process can conclude it.
        """
        try:
            fd = os.open(self.layout.script(state, name),
                         os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise BlockingIOError
        except OSError:
            os.close(fd)
            return None
        return fd

    def unlockable(self, name: str, state: JobState) -> bool:
        """A file that is there but cannot carry a lock (a symlink, FIFO, folder...): it
        is claimed by the rename alone, and only ever to be failed with a reason."""
        try:
            return not stat.S_ISREG(os.lstat(self.layout.script(state, name)).st_mode)
        except OSError:
            return False

    def holds(self, fd: int, name: str, state: JobState) -> bool:
        """Whether the script locked through ``fd`` is still the one at ``state/name``."""
        try:
            return os.lstat(self.layout.script(state, name)).st_ino == os.fstat(fd).st_ino
        except OSError:
            return False

    def fresh_record(self, name: str, head: bytes | None = None) -> JobRecord:
        """The record a new run continues: a requeued job keeps its attempts; a name
        dropped again after it ended continues too, as its next run (history is never
        overwritten: its log is ``NAME.N.log``), with the earlier outcome kept."""
        record = self.read_record_bytes(name, head)[0]
        if record.ended_at and not record.extra.get("requeued"):
            record = record.dropped_again()
        record.extra.pop("requeued", None)
        return record

    def conclude(self, name: str, record: JobRecord, state: JobState,
                 src: JobState = JobState.RUNNING) -> bool:
        """Record a job's end and move it to ``state`` (the caller holds its lock)."""
        self.write_record(record)
        return self.move(name, src, state)

    def requeue(self, name: str, record: JobRecord,
                src: JobState = JobState.RUNNING) -> JobState | None:
        """Put a job back in the queue; its record says why and keeps its attempts. Where
        it went: QUEUED; FAILED when a new script of its name was dropped meanwhile (that
        one is the next run; this one is not run again); None when it was not in ``src``."""
        record.extra["requeued"] = True
        self.write_record(record)
        if self.move(name, src, JobState.QUEUED):
            return JobState.QUEUED
        if not os.path.lexists(self.layout.script(src, name)):
            return None
        del record.extra["requeued"]
        why = (record.reason or "interrupted").removesuffix("; retrying").removesuffix(
            "; requeued")
        record.reason = f"{why}; not run again: {name} was dropped again and runs next"
        record.ended_at = record.ended_at or now_iso()
        return JobState.FAILED if self.conclude(name, record, JobState.FAILED, src) else None

    def exit_status(self, name: str,
                    journal: dict[tuple[str, int], ExitStatus] | None = None
                    ) -> ExitStatus | None:
        """The status a monitor wrote for this job's script (the caller compares its
        attempt with the record's); ``journal``: read once for many jobs."""
        try:
            inode = os.lstat(self.layout.script(JobState.RUNNING, name)).st_ino
        except OSError:
            return None
        if journal is None:
            from gpudispatch.monitor import read_exit_journals

            journal = read_exit_journals(str(self.layout.exits))
        return journal.get((name, inode))

    def cancel_requested(self, name: str) -> bool:
        return os.path.lexists(self.layout.cancel_request(name))

    def request_early_stop(self, name: str, reason: str) -> None:
        """A cancel request that says the job was stopped early (hyperband): the
        dispatcher stops it as a cancel, and it ends in ``completed/`` with ``reason``."""
        if not reason.startswith(EARLY_STOP):
            raise ValueError(f"an early stop's reason starts with {EARLY_STOP!r}")
        write_atomic(self.layout.cancel_request(name), reason.encode(), self.layout.tmp)

    def early_stop_reason(self, name: str) -> str | None:
        """The reason of an early stop requested for ``name``; None for none (or for a
        plain cancel, whose request holds its time)."""
        try:
            text = safeio.read_regular(self.layout.cancel_request(name), 4096).decode(
                errors="replace")
        except OSError:
            return None
        return text if text.startswith(EARLY_STOP) else None

    def drop_cancel_request(self, name: str) -> None:
        try:
            os.unlink(self.layout.cancel_request(name))
        except FileNotFoundError:
            pass

    # --- sweeps the dispatcher drives (bayes, hyperband) -----------------------------------
    def sweep_names(self) -> list[str]:
        try:
            return sorted(os.listdir(self.layout.where("sweeps")))
        except FileNotFoundError:
            return []

    def write_sweep(self, name: str, definition: dict) -> None:
        """A driven sweep's definition, once (``gpudispatch sweep``); its folder is made."""
        import json

        folder = self.layout.sweep_dir(name)
        os.makedirs(self.layout.where("sweeps"), 0o700, exist_ok=True)
        os.makedirs(folder, 0o700, exist_ok=True)
        write_atomic(f"{folder}/sweep.json", json.dumps(definition, indent=1, default=str).encode(),
                     self.layout.tmp)

    def read_sweep(self, name: str) -> dict | None:
        import json

        try:
            data = safeio.read_regular(f"{self.layout.sweep_dir(name)}/sweep.json", 16 << 20)
            definition = json.loads(data)
        except (OSError, ValueError):
            return None
        return definition if isinstance(definition, dict) else None

    def mark_sweep_done(self, name: str) -> None:
        write_atomic(f"{self.layout.sweep_dir(name)}/done", now_iso().encode(), self.layout.tmp)

    def sweep_done(self, name: str) -> bool:
        return os.path.exists(f"{self.layout.sweep_dir(name)}/done")

    # --- flags -------------------------------------------------------------------------
    def is_paused(self) -> bool:
        return os.path.exists(self.layout.where("paused_flag"))

    def set_paused(self, paused: bool) -> None:
        if paused:
            write_atomic(self.layout.paused_flag, now_iso().encode(), self.layout.tmp)
        else:
            try:
                os.unlink(self.layout.paused_flag)
            except FileNotFoundError:
                pass
