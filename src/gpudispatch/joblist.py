"""``status --json``: every job as JSON, streamed, with a cache of what each record says.

Reading 100,000 records (open, read, parse, check each field) costs seconds here, and
most of them are of finished jobs that never change again. So each listing also writes
a cache: per job whose record it read, the record file's identity (inode, size, mtime,
ctime) and the job's JSON text. The next listing ``lstat``s each record and passes the
cached text on when the file is still the same one; only new or rewritten records are
read (a record is always rewritten as a new file: ``write_atomic`` renames).

The cache is only a cache. The folders say which jobs exist and in which state, the
records what they hold; a cache that is missing, not ours, not a regular file or of
another format is ignored (and replaced). Memory stays constant: the cache is read in
step with the sorted listing, line by line, and the new one written as the old is read.
"""

from __future__ import annotations

import json
import os

from gpudispatch import safeio
from gpudispatch.job import JobState
from gpudispatch.layout import STATE_DIRS
from gpudispatch.store import FolderQueue, JobView

TYPE_CHECKING = False  # typing's own import costs a CLI start a few ms
if TYPE_CHECKING:
    from collections.abc import Iterator

CACHE_FORMAT = b"gpudispatch job-list cache 1\n"
_STATE_ORDER = {state.value: i for i, state in enumerate(STATE_DIRS)}
_UNCACHEABLE = ("\t", "\n", "\r")  # in a name: it would break the cache's line


def job_texts(queue: FolderQueue) -> Iterator[str]:
    """Each job's JSON object, as :meth:`JobView.to_dict` gives it, in state then run
    order. When something changed, the cache is replaced once the listing is complete:
    its lines up to the first change are copied from the old one, the rest written."""
    layout = queue.layout
    cache_path = layout.where("joblist_cache")
    old = _CacheReader(cache_path)
    new = _CacheWriter(layout.where("tmp"))
    if not old.usable:
        new.start(old)
    done = False
    try:
        for state in STATE_DIRS:
            prefix = f'{{"state": "{state.value}", '
            order = _STATE_ORDER[state.value]
            for name in queue.names(state):
                path = layout.record(name)
                try:
                    st = os.lstat(path)
                    key = f"{st.st_ino}.{st.st_size}.{st.st_mtime_ns}.{st.st_ctime_ns}"
                except OSError:  # no record yet (a queued job): nothing to cache
                    key = None
                cached = old.find(order, name)
                if old.skipped:  # lines of jobs gone: the cache changes
                    new.start(old)
                if key is not None and cached is not None and cached[0] == key:
                    rest = cached[1]
                    old.used()
                else:
                    rest, cacheable = _rest_of(queue, name, state)
                    if not cacheable or any(c in name for c in _UNCACHEABLE):
                        key = None
                    if key is not None or cached is not None:  # a line new, or gone
                        new.start(old)
                yield prefix + rest
                if new.started and key is not None:
                    new.add(state.value, name, key, rest)
        if old.left_over():  # jobs gone since: the cache must lose their lines
            new.start(old)
        done = True
    finally:
        new.finish(cache_path if done else None)
        old.close()


class _CacheWriter:
    """The next cache, begun at the listing's first change (or at once when there is no
    usable cache): a temporary file renamed over the cache when the listing completes."""

    def __init__(self, tmp_dir: str) -> None:
        self._tmp_dir = tmp_dir
        self._file = None
        self._path: str | None = None
        self.started = False

    def start(self, old: _CacheReader) -> None:
        """Begin (once): the old cache's lines the listing used so far, unchanged."""
        if self.started:
            return
        self.started = True
        try:
            fd, self._path = safeio.create_temp(self._tmp_dir, 0o600)
        except OSError:  # a queue we may read but not write: no new cache
            return
        self._file = os.fdopen(fd, "wb", buffering=1 << 16)
        try:
            if old.usable:
                old.copy_used(self._file)
            else:
                self._file.write(CACHE_FORMAT)
        except OSError:
            self._drop()

    def add(self, state: str, name: str, key: str, rest: str) -> None:
        if self._file is not None:
            try:
                self._file.write(f"{state}\t{name}\t{key}\t{rest}\n".encode(
                    errors="surrogateescape"))
            except OSError:  # a full disk: the listing goes on without a new cache
                self._drop()

    def finish(self, cache_path: str | None) -> None:
        """Rename the new cache over ``cache_path`` (None: the listing was cut short)."""
        if self._file is None:
            return
        try:
            self._file.close()
            self._file = None
            if cache_path is not None:
                os.replace(self._path, cache_path)
                self._path = None
        except OSError:
            pass
        self._drop()

    def _drop(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
        if self._path is not None:
            safeio.discard(self._path)
            self._path = None


def _rest_of(queue: FolderQueue, name: str, state: JobState) -> tuple[str, bool]:
    """A job's JSON after its ``{"state": ..., `` prefix, read from its record, and
    whether it may be cached (its record file says exactly this).

    A plain record is passed on as its own bytes, not decoded into a record and encoded
    again; anything unusual (no record, one set aside, one naming another job, a
    ``"state"`` key of its own, line breaks, text that is not UTF-8) is encoded from
    the record as read."""
    record, data = queue.read_record_bytes(name)
    if (data is not None and data[:2] == b'{"' and b'"state"' not in data
            and b"\x00" not in data and b"\n" not in data and b"\r" not in data):
        try:
            return data[1:].decode().strip(), True
        except UnicodeDecodeError:
            pass
    view = JobView(name, state, record).to_dict()
    del view["state"]
    return json.dumps(view)[1:], data is not None


class _CacheReader:
    """The previous listing's cache, read forward in step with the new listing."""

    def __init__(self, path: str) -> None:
        self._file = None
        self._fd = -1
        self._eof = False
        self._offset = self._used_end = self._found_end = 0
        self.skipped = False  # lines passed over: jobs gone, or a cache out of order
        self._line: tuple[int, str, str, str] | None = None
        self.usable = False
        try:
            fd, st = safeio.open_regular_stat(path)
        except (OSError, ValueError):
            return
        if st.st_uid != os.geteuid():  # another user's file: not ours to trust
            os.close(fd)
            return
        self._fd = fd
        self._file = os.fdopen(fd, "rb", buffering=1 << 16)
        if self._file.readline() != CACHE_FORMAT:
            self.close()
            return
        self.usable = True
        self._offset = self._used_end = len(CACHE_FORMAT)
        self._advance()

    def _advance(self) -> None:
        self._line = None
        while self._file is not None and not self._eof:
            raw = self._file.readline()
            if not raw:
                self._eof = True
                return
            self._offset += len(raw)
            parts = raw.rstrip(b"\n").decode(errors="surrogateescape").split("\t", 3)
            order = _STATE_ORDER.get(parts[0]) if len(parts) == 4 else None
            if order is not None:
                self._line = (order, parts[1], parts[2], parts[3])
                return

    def find(self, order: int, name: str) -> tuple[str, str] | None:
        """The cached (identity, text) of this job, skipping lines before it (jobs gone
        or moved); None when the cache has no line for it."""
        while self._line is not None and (self._line[0], self._line[1]) < (order, name):
            self.skipped = True
            self._advance()
        line = self._line
        if line is not None and line[0] == order and line[1] == name:
            self._found_end = self._offset
            self._advance()
            return line[2], line[3]
        return None

    def used(self) -> None:
        """The line :meth:`find` returned is the new cache's too (while nothing changed
        before it, the old cache's bytes up to there are copied, not written again)."""
        self._used_end = self._found_end

    def copy_used(self, out) -> None:
        """Copy the cache's bytes up to the end of the last line marked :meth:`used`:
        the new cache's first lines, when they come before the first change."""
        done = 0
        while done < self._used_end:
            chunk = os.pread(self._fd, min(1 << 20, self._used_end - done), done)
            if not chunk:
                raise OSError("the job-list cache shrank while it was read")
            out.write(chunk)
            done += len(chunk)

    def left_over(self) -> bool:
        """Whether lines remain that no job of the listing used (they are gone)."""
        return self._line is not None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
