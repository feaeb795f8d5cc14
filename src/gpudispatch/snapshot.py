"""Snapshots: the code as it was at submit, kept under ROOT, so that a job queued now runs
the same code however long it waits.

In a git work tree a snapshot is the commit's tree (written by ``git checkout-index``
from a private index: exactly what was committed, filters applied as in a checkout)
with every file that differs from it (modified, added, untracked but not ignored) read
from the working tree and laid over it, and the files deleted there left out. Its name
is the commit plus a hash of what was laid over (``COMMIT12`` when the tree is clean,
``COMMIT12-DIFF12`` otherwise), so the 1,000 jobs of a sweep, and every later submit
from the same tree, share one copy. Outside git the working directory is copied whole,
up to a size limit, and named by a hash of its content (``nogit-HASH``).

What is read from the working tree is hashed as it is copied, so a snapshot's name says
what it holds even when a file changes meanwhile; a file that vanishes between the
listing and the copy, a file that is not a file (a FIFO), or more bytes than the limit
refuse the snapshot with one line (:class:`SnapshotError`), and nothing is queued.

A snapshot is built in ``snapshots/.new-XXXX`` and renamed into place whole, its
``snapshot.json`` written last; one that is not a real folder with a readable marker
naming it (a symlink planted there, a folder made unreadable, a half-built one) is
set aside (``ID.bad-...``, kept for a person to look at) and built anew.
"""

from __future__ import annotations

import json
import os
import re
import stat

from gpudispatch import safeio
from gpudispatch.layout import Layout, printable
from gpudispatch.store import QueueError

SNAPSHOT_ENV = "GPUDISPATCH_SNAPSHOT"  # "1": submit and sweep take --snapshot by default
SNAPSHOT_MAX_ENV = "GPUDISPATCH_SNAPSHOT_MAX"  # the most bytes a snapshot reads from disk
DEFAULT_MAX_BYTES = 256 << 20
PLAIN_MAX_FILES = 20_000  # outside git: a home folder or a dataset is not code
GIT_TIMEOUT = 120.0
MARKER_MAX_BYTES = 1 << 20
_CHUNK = 1 << 20


class SnapshotError(QueueError):
    """A snapshot (or the git state of a capsule) that cannot be taken; one line."""


def wanted(flag: bool | None) -> bool:
    """``--snapshot``/``--no-snapshot`` when given, else ``$GPUDISPATCH_SNAPSHOT``."""
    if flag is not None:
        return flag
    return os.environ.get(SNAPSHOT_ENV, "").strip().lower() in ("1", "yes", "true", "on")


def max_bytes() -> int:
    """``$GPUDISPATCH_SNAPSHOT_MAX`` (``512M``, ``2G``), else 256 MiB."""
    text = os.environ.get(SNAPSHOT_MAX_ENV)
    if not text:
        return DEFAULT_MAX_BYTES
    from gpudispatch.job import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise SnapshotError(f"${SNAPSHOT_MAX_ENV}: {exc}") from None


def format_bytes(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"  # unreachable


# --------------------------------------------------------------------------- git state
class GitState:
    """What ``git status`` says of a work tree (paths relative to ``top``). A plain
    class, not a dataclass: every ``submit`` makes one, and ``dataclasses`` imports
    ``inspect``, which costs a submit more than the rest of its imports."""

    def __init__(self, top: str, commit: str | None, branch: str | None,
                 touched: list[str] | None = None, untracked: list[str] | None = None,
                 nested: list[str] | None = None) -> None:
        self.top = top
        self.commit = commit  # None in a repository without a commit yet
        self.branch = branch  # None when detached
        self.touched = touched or []  # tracked, differing from HEAD
        self.untracked = untracked or []  # not ignored
        self.nested = nested or []  # submodules, nested repositories

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GitState) and vars(self) == vars(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"GitState({vars(self)!r})"

    @property
    def dirty(self) -> bool:
        return bool(self.touched or self.untracked)


def find_top(cwd: str) -> str | None:
    """The work tree holding ``cwd`` (the nearest folder with a ``.git``), or None."""
    path = os.path.realpath(cwd)
    while True:
        if os.path.lexists(os.path.join(path, ".git")):
            return path
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


class Quiet:
    """A program started by :func:`start_quiet`: its pid and the read ends of its
    output and error output."""

    def __init__(self, argv: list[str], pid: int, out_r: int, err_r: int) -> None:
        self.argv, self.pid, self.out_r, self.err_r = argv, pid, out_r, err_r


def start_quiet(argv: list[str], env: dict | None) -> Quiet:
    """Start ``argv`` (found on PATH) with stdin from /dev/null and its output to two
    pipes; :func:`finish_quiet` reads them. A ``posix_spawn``: importing ``subprocess``
    would cost every ``submit`` in a git tree more than the spawn. FileNotFoundError when
    the program is not found."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        pid = os.posix_spawnp(argv[0], argv, os.environ if env is None else env,
                              file_actions=[(os.POSIX_SPAWN_OPEN, 0, "/dev/null",
                                             os.O_RDONLY, 0),
                                            (os.POSIX_SPAWN_DUP2, out_w, 1),
                                            (os.POSIX_SPAWN_DUP2, err_w, 2)])
    except BaseException:
        for fd in (out_r, err_r):
            os.close(fd)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    return Quiet(argv, pid, out_r, err_r)


def finish_quiet(run: Quiet, timeout: float) -> tuple[int, bytes, bytes]:
    """Its exit status, output and error output; TimeoutError (it is killed) past
    ``timeout`` seconds."""
    import select
    import time

    chunks: dict[int, list[bytes]] = {run.out_r: [], run.err_r: []}
    open_fds = [run.out_r, run.err_r]
    deadline = time.monotonic() + timeout
    try:
        while open_fds:
            left = deadline - time.monotonic()
            ready = select.select(open_fds, [], [], max(left, 0))[0] if left > 0 else []
            if not ready:
                os.kill(run.pid, 9)
                raise TimeoutError(f"{run.argv[0]} took over {timeout:g}s")
            for fd in ready:
                data = os.read(fd, 1 << 16)
                if data:
                    chunks[fd].append(data)
                else:
                    open_fds.remove(fd)
    finally:
        os.close(run.out_r)
        os.close(run.err_r)
        status = os.waitpid(run.pid, 0)[1]
    return (os.waitstatus_to_exitcode(status), b"".join(chunks[run.out_r]),
            b"".join(chunks[run.err_r]))


def run_quiet(argv: list[str], env: dict | None, timeout: float) -> tuple[int, bytes, bytes]:
    """:func:`start_quiet` and :func:`finish_quiet`."""
    return finish_quiet(start_quiet(argv, env), timeout)


def git_start(top: str, *args: str, env: dict | None = None) -> Quiet:
    """Start ``git -C top ARGS`` (:func:`git_finish` waits for it); SnapshotError when
    git is not installed."""
    try:
        # --no-optional-locks: never take index.lock (a user's git may be running)
        return start_quiet(["git", "--no-optional-locks", "-C", top, *args], env)
    except FileNotFoundError:
        raise SnapshotError("git is not installed (needed in a git work tree)") from None


def git_finish(run: Quiet, timeout: float = GIT_TIMEOUT) -> bytes:
    """Its output; SnapshotError (one line) when it fails or takes too long."""
    top, verb = run.argv[3], run.argv[4]
    try:
        code, out, err = finish_quiet(run, timeout)
    except TimeoutError:
        raise SnapshotError(f"git {verb} took over {timeout:g}s in {top}") from None
    if code != 0:
        lines = err.decode(errors="replace").strip().splitlines() or ["failed"]
        raise SnapshotError(f"git {verb} in {printable(top)}: {lines[-1]}")
    return out


def git(top: str, *args: str, env: dict | None = None, timeout: float = GIT_TIMEOUT) -> bytes:
    """``git -C top ARGS``'s output; SnapshotError (one line) when it fails."""
    return git_finish(git_start(top, *args, env=env), timeout)


def parse_status(top: str, data: bytes) -> GitState:
    """``git status --porcelain=v2 --branch -z --untracked-files=all --no-renames``
    output as a :class:`GitState` (pure)."""
    state = GitState(top=top, commit=None, branch=None)
    for entry in data.split(b"\0"):
        if not entry:
            continue
        kind = entry[:2]
        if entry.startswith(b"# branch.oid "):
            oid = entry[len(b"# branch.oid "):].decode()
            state.commit = None if oid == "(initial)" else oid
        elif entry.startswith(b"# branch.head "):
            head = entry[len(b"# branch.head "):].decode(errors="surrogateescape")
            state.branch = None if head == "(detached)" else head
        elif kind in (b"1 ", b"u "):
            parts = entry.split(b" ", 8 if kind == b"1 " else 10)
            path = os.fsdecode(parts[-1])
            (state.nested if parts[2].startswith(b"S") else state.touched).append(path)
        elif kind == b"? ":
            path = os.fsdecode(entry[2:])
            (state.nested if path.endswith("/") else state.untracked).append(path)
    return state


def git_state(cwd: str) -> GitState | None:
    """The git state of the work tree holding ``cwd``; None outside one. One ``git``."""
    top = find_top(cwd)
    if top is None:
        return None
    out = git(top, "status", "--porcelain=v2", "--branch", "-z", "--untracked-files=all",
              "--no-renames")
    return parse_status(top, out)


def _read_small(path: str, limit: int = 1 << 16) -> str | None:
    try:
        return safeio.read_regular(path, limit).decode().strip()
    except (OSError, UnicodeDecodeError):
        return None


def git_dir(top: str) -> str | None:
    """The git folder of the work tree ``top`` (a worktree's ``.git`` file followed)."""
    gitdir = os.path.join(top, ".git")
    if os.path.isfile(gitdir):
        text = _read_small(gitdir) or ""
        if not text.startswith("gitdir:"):
            return None
        gitdir = os.path.normpath(os.path.join(top, text[len("gitdir:"):].strip()))
    return gitdir


_SHA = r"[0-9a-f]{40}|[0-9a-f]{64}"  # a pattern: re compiles it on first use


def read_head(gitdir: str) -> tuple[str, str | None] | None:
    """The commit and branch checked out, read from the git folder without starting git
    (loose and packed refs, a worktree's ``commondir``); None when that cannot be told
    so (no commit yet, a layout not known here: ask git)."""
    common = gitdir
    pointer = _read_small(os.path.join(gitdir, "commondir"))
    if pointer:
        common = os.path.normpath(os.path.join(gitdir, pointer))
    head = _read_small(os.path.join(gitdir, "HEAD"))
    if not head:
        return None
    if not head.startswith("ref: "):
        return (head, None) if re.fullmatch(_SHA, head) else None
    ref = head[len("ref: "):]
    if ".." in ref.split("/"):
        return None
    commit = _read_small(os.path.join(common, ref))
    if commit is None:
        packed = _read_small(os.path.join(common, "packed-refs"), 64 << 20) or ""
        for line in packed.splitlines():
            sha, _, name = line.partition(" ")
            if name == ref:
                commit = sha
                break
    if commit is None or not re.fullmatch(_SHA, commit):
        return None
    return commit, ref.removeprefix("refs/heads/")


def uncommitted_diff(state: GitState) -> bytes:
    """``git diff --binary HEAD``: the tracked changes (untracked files are listed apart,
    and are in a snapshot)."""
    if not state.touched or state.commit is None:
        return b""
    return git(state.top, "diff", "--binary", "--no-color", "--no-ext-diff", "HEAD", "--")


# --------------------------------------------------------------------------- snapshots
class Snapshot:
    """A stored snapshot, as one submit uses it (a plain class: see :class:`GitState`)."""

    def __init__(self, id: str, tree: str, workdir: str, source: str, reused: bool,
                 notes: list[str] | None = None) -> None:
        self.id = id
        self.tree = tree  # the files
        self.workdir = workdir  # where a job submitted from ``cwd`` starts
        self.source = source  # the folder it was taken of (the work tree's top, or the cwd)
        self.reused = reused
        self.notes = notes or []  # things set aside, for stderr

    def __repr__(self) -> str:
        return f"Snapshot({vars(self)!r})"

    def relocate(self, path: str) -> str:
        """An absolute path inside the source as the same path inside the snapshot;
        other paths unchanged."""
        if not os.path.isabs(path):
            return path
        rel = os.path.relpath(os.path.realpath(path), self.source)
        if rel == "." or rel.startswith(".." + os.sep) or rel == "..":
            return self.tree if rel == "." else path
        return os.path.join(self.tree, rel)

    def to_dict(self) -> dict:
        return {"id": self.id, "tree": self.tree, "workdir": self.workdir,
                "source": self.source}


def _store(layout: Layout) -> str:
    """``ROOT/snapshots``, made if missing; refused when it is not a real folder."""
    path = layout.where("snapshots")
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    except OSError as exc:
        raise SnapshotError(f"cannot make {printable(path)}: {exc.strerror}") from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise SnapshotError(f"{printable(path)} is {safeio.kind(st.st_mode)}, not a folder: "
                            "snapshots are kept only in a real folder under ROOT")
    return path


def usable(layout: Layout, snapshot_id: str) -> str | None:
    """None when snapshot ``snapshot_id`` is complete and readable, else why not."""
    path = layout.snapshot_dir(snapshot_id)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "is missing"
    except OSError as exc:
        return f"cannot be looked at ({exc.strerror})"
    if not stat.S_ISDIR(st.st_mode):
        return f"is {safeio.kind(st.st_mode)}, not a snapshot folder"
    try:
        marker = json.loads(safeio.read_regular(layout.snapshot_marker(snapshot_id),
                                                MARKER_MAX_BYTES))
        tree = os.lstat(layout.snapshot_tree(snapshot_id))
        os.listdir(layout.snapshot_tree(snapshot_id))
    except FileNotFoundError:
        return "is incomplete (no snapshot.json or tree/)"
    except OSError as exc:
        return f"cannot be read ({safeio.refusal(exc)})"
    except ValueError:
        return "has a snapshot.json that is not JSON"
    if not isinstance(marker, dict) or marker.get("id") != snapshot_id:
        return "has a snapshot.json naming another snapshot"
    if not stat.S_ISDIR(tree.st_mode):
        return "has a tree/ that is not a folder"
    return None


def _copy_in(src: str, dst: str, shown: str, budget: list[int], digest) -> None:
    """Copy one file or symlink ``src`` to ``dst`` (new), hashing what was copied into
    ``digest``; ``budget[0]``: bytes still allowed. SnapshotError when it vanished, is
    not a file, or is over the budget."""
    try:
        st = os.lstat(src)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(src)
            os.symlink(target, dst)
            digest.update(b"L\0" + os.fsencode(shown) + b"\0" + os.fsencode(target) + b"\0")
            return
        if not stat.S_ISREG(st.st_mode):
            raise SnapshotError(f"{printable(shown)} is {safeio.kind(st.st_mode)}: a "
                                "snapshot copies only files and symlinks; nothing was queued")
        if st.st_size > budget[0]:
            raise SnapshotError(
                f"{printable(shown)} is {format_bytes(st.st_size)}: a snapshot copies at most "
                f"{format_bytes(max_bytes())} of files not committed (${SNAPSHOT_MAX_ENV}); "
                "commit it, add it to .gitignore or raise the limit; nothing was queued")
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SnapshotError(f"{printable(shown)} vanished while the snapshot was taken; "
                            "nothing was queued (submit again)") from None
    except SnapshotError:
        raise
    except OSError as exc:
        raise SnapshotError(f"{printable(shown)} cannot be read for the snapshot "
                            f"({exc.strerror}); nothing was queued") from None
    exe = bool(st.st_mode & 0o111)
    out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                  0o755 if exe else 0o644)
    content = safeio.sha256()
    try:
        while True:
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                break
            budget[0] -= len(chunk)
            if budget[0] < 0:
                raise SnapshotError(
                    f"{printable(shown)} grew past the snapshot limit of "
                    f"{format_bytes(max_bytes())} while copied; nothing was queued")
            content.update(chunk)
            safeio.write_all(out, chunk)
    finally:
        os.close(fd)
        os.close(out)
    digest.update(b"F\0" + os.fsencode(shown) + (b"\0x\0" if exe else b"\0-\0")
                  + content.digest())


def _place(layout: Layout, staging: str, snapshot_id: str, marker: dict,
           notes: list[str]) -> bool:
    """Rename a built snapshot into place; False when an equal one got there first."""
    safeio.write_atomic(os.path.join(staging, "snapshot.json"),
                        json.dumps(marker, indent=1).encode(), layout.where("tmp"))
    final = layout.snapshot_dir(snapshot_id)
    try:
        safeio.rename_noreplace(staging, final)
    except FileExistsError:
        problem = usable(layout, snapshot_id)
        if problem is None:
            return False
        aside = safeio.set_aside(final)
        notes.append(f"snapshot {snapshot_id} {problem}; "
                     f"{'set aside as ' + os.path.basename(aside) if aside else 'left'}")
        safeio.rename_noreplace(staging, final)
    return True


def _reuse(layout: Layout, snapshot_id: str, notes: list[str]) -> bool:
    """Whether a usable snapshot ``snapshot_id`` is there; a broken one is set aside."""
    if not os.path.lexists(layout.snapshot_dir(snapshot_id)):
        return False
    problem = usable(layout, snapshot_id)
    if problem is None:
        return True
    aside = safeio.set_aside(layout.snapshot_dir(snapshot_id))
    if aside is None:
        raise SnapshotError(f"snapshot {layout.snapshot_dir(snapshot_id)} {problem}, and "
                            "cannot be set aside; nothing was queued")
    notes.append(f"snapshot {snapshot_id} {problem}: set aside as {os.path.basename(aside)}, "
                 "made anew")
    return False


def take(layout: Layout, cwd: str, state: GitState | None | bool = True) -> Snapshot:
    """A snapshot of the code a job submitted from ``cwd`` runs (made, or found made).

    ``state``: the work tree's :class:`GitState` when already read (None: not in git);
    True to read it here."""
    import shutil
    import tempfile

    if state is True:
        state = git_state(cwd)
    store = _store(layout)
    os.makedirs(layout.where("tmp"), mode=0o700, exist_ok=True)
    cwd = os.path.realpath(cwd)
    notes: list[str] = []
    staging = tempfile.mkdtemp(prefix=".new-", dir=store)
    try:
        if state is None:
            snap_id, source, marker = _copy_plain(layout, cwd, staging)
        else:
            snap_id, source, marker = _copy_changes(state, staging, layout.where("root"))
        rel = os.path.relpath(cwd, source)
        tree = layout.snapshot_tree(snap_id)
        reused = _reuse(layout, snap_id, notes)
        if not reused:
            if state is not None:
                _build_git_tree(state, staging, marker)
            reused = not _place(layout, staging, snap_id, marker, notes)
    finally:
        if os.path.lexists(staging):
            shutil.rmtree(staging, ignore_errors=True)
    workdir = os.path.normpath(os.path.join(tree, rel))
    if not os.path.isdir(workdir):
        raise SnapshotError(f"the working directory {printable(rel)} holds no file the "
                            f"snapshot keeps (all ignored?); submit from a folder of the "
                            "work tree that does")
    return Snapshot(snap_id, tree, workdir, source, reused, notes)


def _copy_changes(state: GitState, staging: str, root: str) -> tuple[str, str, dict]:
    """Copy what differs from the commit into ``staging/changes``; the snapshot's id.
    A queue ROOT inside the work tree (untracked, not ignored) is left out: it holds the
    snapshots themselves."""
    inside = os.path.relpath(root, state.top)
    if inside != ".." and not inside.startswith(".." + os.sep):
        state.untracked = [p for p in state.untracked
                           if p != inside and not p.startswith(inside + "/")]
    changes = os.path.join(staging, "changes")
    os.mkdir(changes)
    digest = safeio.sha256()
    budget = [max_bytes()]
    deleted = []
    for path in sorted(set(state.touched)):
        src = os.path.join(state.top, path)
        if not os.path.lexists(src):
            deleted.append(path)
            digest.update(b"D\0" + os.fsencode(path) + b"\0")
            continue
        dst = os.path.join(changes, path)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        _copy_in(src, dst, path, budget, digest)
    for path in sorted(set(state.untracked) - set(state.touched)):
        dst = os.path.join(changes, path)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        _copy_in(os.path.join(state.top, path), dst, path, budget, digest)
    commit = state.commit or "0" * 40
    dirty = bool(state.touched or state.untracked)
    snap_id = f"{commit[:12]}-{digest.hexdigest()[:12]}" if dirty else commit[:12]
    marker = {"id": snap_id, "commit": state.commit, "branch": state.branch,
              "source": state.top, "dirty": dirty, "deleted": deleted,
              "changed": len(state.touched) - len(deleted) + len(state.untracked),
              "left_out": state.nested}
    return snap_id, state.top, marker


def _build_git_tree(state: GitState, staging: str, marker: dict) -> None:
    """``staging/tree``: the commit's files, then the copied changes laid over them."""
    import shutil

    tree = os.path.join(staging, "tree")
    os.mkdir(tree)
    if state.commit is not None:
        env = {**os.environ, "GIT_INDEX_FILE": os.path.join(staging, "index")}
        git(state.top, "read-tree", state.commit, env=env)
        git(state.top, "checkout-index", "--all", "--force", f"--prefix={tree}/", env=env)
        os.unlink(os.path.join(staging, "index"))
    for path in marker["deleted"]:
        _remove(os.path.join(tree, path))
    changes = os.path.join(staging, "changes")
    for folder, dirs, files in os.walk(changes):
        # A symlink to a folder is listed with the folders (and not walked into).
        links = [d for d in dirs if os.path.islink(os.path.join(folder, d))]
        for name in files + links:
            src = os.path.join(folder, name)
            dst = os.path.join(tree, os.path.relpath(src, changes))
            _remove(dst)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.rename(src, dst)
    shutil.rmtree(changes)


def _remove(path: str) -> None:
    import shutil

    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def _copy_plain(layout: Layout, cwd: str, staging: str) -> tuple[str, str, dict]:
    """Outside git: the whole working directory, up to the limit (ROOT left out)."""
    tree = os.path.join(staging, "tree")
    os.mkdir(tree)
    digest = safeio.sha256()
    limit = max_bytes()
    budget = [limit]
    root = layout.where("root")
    count = 0
    for folder, dirs, files in os.walk(cwd):
        links = [d for d in dirs if os.path.islink(os.path.join(folder, d))]
        dirs[:] = sorted(d for d in dirs
                         if d not in links and os.path.join(folder, d) != root)
        rel_folder = os.path.relpath(folder, cwd)
        os.makedirs(os.path.join(tree, rel_folder), exist_ok=True)
        for name in sorted(files + links):
            rel = os.path.normpath(os.path.join(rel_folder, name))
            try:
                _copy_in(os.path.join(folder, name), os.path.join(tree, rel), rel, budget,
                         digest)
            except SnapshotError as exc:
                if budget[0] < 0 or "copies at most" in str(exc):
                    raise SnapshotError(
                        f"{printable(cwd)} is not in a git work tree and holds more than "
                        f"{format_bytes(limit)}: --snapshot copies such a folder whole only "
                        f"below ${SNAPSHOT_MAX_ENV}; make it a git repository (ignored files "
                        "are then left out) or raise the limit; nothing was queued") from None
                raise
            count += 1
            if count > PLAIN_MAX_FILES:
                raise SnapshotError(
                    f"{printable(cwd)} is not in a git work tree and holds more than "
                    f"{PLAIN_MAX_FILES:,} files: --snapshot copies such a folder whole only "
                    "below that; make it a git repository (ignored files are then left "
                    "out); nothing was queued")
    snap_id = f"nogit-{digest.hexdigest()[:16]}"
    marker = {"id": snap_id, "commit": None, "source": cwd, "files": count,
              "bytes": limit - budget[0]}
    return snap_id, cwd, marker
