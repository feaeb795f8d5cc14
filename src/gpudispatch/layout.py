"""The folder convention of a queue root: the only place paths are built.

A root holds one folder per job state plus ``logs/`` and the seed's ``logfile.txt``;
dispatcher bookkeeping that users never touch lives in the hidden ``.gpudispatch/``.
"""

from __future__ import annotations

import os
import unicodedata

from gpudispatch.job import JobState
from gpudispatch.track import METRICS_ENV  # defined where jobs import it cheaply

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start)
if TYPE_CHECKING:
    from pathlib import Path

ROOT_ENV = "GPUDISPATCH_ROOT"
# What a job finds in its environment (and the on-finish hook, in HOOK_*).
JOB_ENV = "GPUDISPATCH_JOB"
ATTEMPT_ENV = "GPUDISPATCH_ATTEMPT"
LOG_ENV = "GPUDISPATCH_LOG"
EXIT_FILE_ENV = "GPUDISPATCH_EXIT_FILE"  # the journal the monitor appends to; finds it too
RUN_ENV = "GPUDISPATCH_RUN"  # this run's identity in the journal: script inode and attempt
CGROUP_ENV = "GPUDISPATCH_CGROUP"  # the run's own cgroup, which its shell joins (if any)
# Slurm only: where a GPU job's first line notes ``$SLURM_JOB_GPUS`` (see sbatch.note_gpus).
SLURM_GPUS_ENV = "GPUDISPATCH_SLURM_GPUS_FILE"
# Every backend gives a job these (Slurm too); the local monitor's own bookkeeping
# (EXIT_FILE, RUN, CGROUP) means nothing on a Slurm node and is local only.
PUBLIC_JOB_VARS = (JOB_ENV, ROOT_ENV, ATTEMPT_ENV, LOG_ENV, METRICS_ENV)
LOCAL_ONLY_VARS = (EXIT_FILE_ENV, RUN_ENV, CGROUP_ENV)
HOOK_STATE_ENV = "GPUDISPATCH_STATE"
HOOK_EXIT_CODE_ENV = "GPUDISPATCH_EXIT_CODE"
HOOK_REASON_ENV = "GPUDISPATCH_REASON"
DEFAULT_ROOT = "~/gpudispatch"

STATE_DIRS: dict[JobState, str] = {
    JobState.QUEUED: "queue",
    JobState.RUNNING: "running",
    JobState.COMPLETED: "completed",
    JobState.FAILED: "failed",
}



def default_root() -> Path:
    """ROOT when ``--dir`` is not given: ``$GPUDISPATCH_ROOT``, else ``~/gpudispatch``."""
    from pathlib import Path

    return Path(default_root_str())


def default_root_str() -> str:
    """:func:`default_root` as a string, without importing pathlib (CLI start)."""
    return os.path.expanduser(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


def is_job_name(name: str) -> bool:
    """Whether a file name in ``queue/`` is a job: ``*.sh``, not hidden, not an editor's
    lock file (``#a.sh#``, ``.#a.sh``). Editors' temporaries (``a.sh~``, ``.a.sh.swp``,
    ``a.sh.tmp``) do not end in ``.sh``, so the suffix alone leaves them out."""
    return name.endswith(".sh") and not name.startswith((".", "#"))


def job_names(names: list[str]) -> list[str]:
    """The names of ``names`` that :func:`is_job_name` takes, its test written out in
    the loop: a call per name is half the time of listing a folder of 100,000."""
    return [n for n in names if n.endswith(".sh") and not n.startswith((".", "#"))]


NAME_MAX_BYTES = 255  # the longest file name Linux filesystems take (ext4, xfs, tmpfs, NFS)
# The longest suffix ever added to a job's name: ".json.bad-YYYYmmdd-HHMMSS-XXXX" (30 bytes,
# a record set aside) is longer than ".metrics.json" and ".999.log"; kept with room to spare.
DERIVED_SUFFIX_BYTES = 40
JOB_NAME_MAX_BYTES = NAME_MAX_BYTES - DERIVED_SUFFIX_BYTES
# Characters that end or break a line of a log (str.splitlines splits on all of these).
_LINE_BREAKERS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")


def name_problem(name: str) -> str | None:
    """Why a job named ``name`` cannot be handled, or None when it can (pure).

    Names come from ``os.scandir`` (surrogate-escaped where not UTF-8) or from a user.
    :func:`is_job_name` still decides what is a job; this says which of those must fail
    at once, with this reason, instead of breaking something later: every file derived
    from the name (``NAME.N.log``, ``NAME.json``, ``NAME.metrics.json``, a set-aside
    record) must fit in one file name, and the name must be printable on one log line.
    """
    if not name:
        return "has an empty name"
    if "/" in name or "\0" in name:
        return "has a name with '/' or a NUL byte"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return f"has a name that is not valid UTF-8 ({printable(name)})"
    if size > JOB_NAME_MAX_BYTES:
        return (f"has a name of {size} bytes; at most {JOB_NAME_MAX_BYTES} leave room for "
                "its log and record files")
    for ch in name:
        if ch in _LINE_BREAKERS or unicodedata.category(ch) == "Cc":
            return f"has a control character in its name ({printable(name)})"
    return None


def printable(name: str) -> str:
    """``name`` with every character that is not printable escaped (``\\n``, ``\\x1b``,
    ``\\u202e``; a byte that is not UTF-8 as ``\\xff``), for logs and terminals: a newline
    in a file name must not forge a log line, and a lone surrogate must not crash a
    print. Printable names come back unchanged (the common case costs one check)."""
    if name.isprintable():
        return name
    out = []
    for ch in name:
        code = ord(ch)
        if ch.isprintable() or ch == " ":
            out.append(ch)
        elif 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's surrogateescape of a byte >= 0x80
            out.append(f"\\x{code - 0xDC00:02x}")
        else:
            out.append(ascii(ch)[1:-1])
    return "".join(out)


# Layout's folders and fixed files, relative to the root
_PLACES = {
    "root": "",
    "queue": "queue",
    "running": "running",
    "completed": "completed",
    "failed": "failed",
    "logs": "logs",
    "logfile": "logfile.txt",
    "state": ".gpudispatch",
    "exits": ".gpudispatch/exit",  # exit statuses written by each job's monitor
    "cancels": ".gpudispatch/cancel",
    "dispatchers": ".gpudispatch/dispatchers",
    "paused_flag": ".gpudispatch/paused",
    "gpu_report": ".gpudispatch/gpus.json",  # the dispatcher's last GPU reading
    "joblist_cache": ".gpudispatch/joblist.cache",  # status --json's cache of records' JSON
    "tmp": ".gpudispatch/tmp",  # written here, then renamed (same filesystem)
    "envs": ".gpudispatch/env",  # submitting shells' environments, kept for their jobs
    # Reproducible runs (made when first used, not by create()): the code as it was at
    # submit, content-addressed, shared by every job of a sweep; and the parts of a job's
    # capsule kept as files (the uncommitted diff, the package list).
    "snapshots": "snapshots",
    "capsules": "capsules",
    "capsule_cache": ".gpudispatch/capsule-cache",  # what is costly to learn again
    # Sweeps the dispatcher drives (method bayes, early_terminate): one folder each, made
    # by `gpudispatch sweep` (its definition, Optuna's study journal, a lock).
    "sweeps": ".gpudispatch/sweeps",
}
_FOLDERS = ("queue", "running", "completed", "failed", "logs", "exits", "cancels",
            "dispatchers", "tmp", "envs")


class Layout:
    """Every path under one queue root.

    Folders (``layout.queue``, ``layout.tmp``...) are ``Path`` objects, made on first use:
    ``submit`` and ``status`` use the same places as strings (:meth:`where`) and never
    import pathlib. Per-job files are plain ``str`` paths, because the dispatcher builds
    several per job and ``pathlib`` costs more than the syscalls.
    """

    root: Path
    queue: Path
    running: Path
    completed: Path
    failed: Path
    logs: Path
    logfile: Path
    state: Path
    exits: Path
    cancels: Path
    dispatchers: Path
    paused_flag: Path
    gpu_report: Path
    joblist_cache: Path
    tmp: Path
    envs: Path
    snapshots: Path
    capsules: Path
    capsule_cache: Path
    sweeps: Path

    def __init__(self, root: Path | str) -> None:
        # Resolved: the same queue reached through a symlink must compare equal, or a
        # restarted dispatcher would not recognise its own running jobs.
        self._root = os.path.realpath(os.path.expanduser(root))
        self._places = {name: f"{self._root}/{rel}" if rel else self._root
                        for name, rel in _PLACES.items()}
        self._state_dirs = {state: f"{self._root}/{folder}/"
                            for state, folder in STATE_DIRS.items()}
        self._logs = f"{self._places['logs']}/"

    def __getattr__(self, name: str) -> Path:
        """A folder or fixed file as a ``Path``, made (and kept) on first use."""
        places = self.__dict__.get("_places")
        if places is None or name not in places:
            raise AttributeError(f"'Layout' object has no attribute {name!r}")
        from pathlib import Path

        path = Path(places[name])
        setattr(self, name, path)
        return path

    def where(self, name: str) -> str:
        """A folder or fixed file (``"tmp"``, ``"paused_flag"``...) as a string."""
        return self._places[name]

    def __repr__(self) -> str:
        return f"Layout({self._root!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layout) and other._root == self._root

    def __hash__(self) -> int:
        return hash(self._root)

    def state_dir(self, state: JobState) -> Path:
        return getattr(self, STATE_DIRS[state])  # the folder's name is the attribute's

    def state_folder(self, state: JobState) -> str:
        """:meth:`state_dir` as a string (no pathlib)."""
        return self._state_dirs[state][:-1]

    def script(self, state: JobState, name: str) -> str:
        return self._state_dirs[state] + name

    def record(self, name: str) -> str:
        return f"{self._logs}{name}.json"

    def env_file(self, digest: str) -> str:
        """A submitting shell's environment, named by its content (a sweep shares one)."""
        return f"{self._places['envs']}/{digest}.env"

    def job_log(self, name: str, attempt: int) -> str:
        """One output file per run: ``NAME.log`` for the first, ``NAME.N.log`` after."""
        return f"{self._logs}{name}.log" if attempt <= 1 else f"{self._logs}{name}.{attempt}.log"

    def metrics(self, name: str) -> str:
        return f"{self._logs}{name}.metrics.json"

    def slurm_gpus(self, name: str, attempt: int) -> str:
        """Where a Slurm run notes the GPUs it was given (read and removed at its end)."""
        return f"{self._logs}{name}.{attempt}.gpus"

    def snapshot_dir(self, snapshot_id: str) -> str:
        """One snapshot: ``tree/`` (the files) and ``snapshot.json`` (what it is)."""
        return f"{self._places['snapshots']}/{snapshot_id}"

    def snapshot_tree(self, snapshot_id: str) -> str:
        return f"{self._places['snapshots']}/{snapshot_id}/tree"

    def snapshot_marker(self, snapshot_id: str) -> str:
        """Written last: a snapshot without it is incomplete and never used."""
        return f"{self._places['snapshots']}/{snapshot_id}/snapshot.json"

    def capsule_file(self, digest: str) -> str:
        """A whole capsule, named by its content's hash: one per submit, however many
        jobs it queued (records hold a summary and this path)."""
        return f"{self._places['capsules']}/{digest}.json"

    def diff_file(self, digest: str) -> str:
        """An uncommitted diff, named by its content's hash (kept once, however many
        jobs were submitted from that tree)."""
        return f"{self._places['capsules']}/diffs/{digest}.diff"

    def packages_file(self, digest: str) -> str:
        """A package list (``name==version`` lines), named by its content's hash."""
        return f"{self._places['capsules']}/packages/{digest}.txt"

    def public_job_env(self, name: str, attempt: int, log: str) -> dict[str, str]:
        """The :data:`PUBLIC_JOB_VARS` of one run: built here alone, so that a job sees
        the same names and values whichever backend runs it."""
        return {
            JOB_ENV: name,
            ROOT_ENV: self._root,
            ATTEMPT_ENV: str(attempt),
            LOG_ENV: log,
            METRICS_ENV: self.metrics(name),
        }

    def job_env(self, name: str, attempt: int, gpus: list[int], log: str,
                inode: int = 0) -> dict[str, str]:
        """What a local job's environment adds to the dispatcher's (``inode``: its
        script's): the public variables plus the local monitor's bookkeeping."""
        return {
            "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus),
            **self.public_job_env(name, attempt, log),
            EXIT_FILE_ENV: self.exit_journal(),
            RUN_ENV: f"{inode}.{attempt}",
        }

    def exit_journal(self, host: str | None = None) -> str:
        """Where this host's monitors append exit statuses (one line per run, no file
        created per job: a file creation costs more than a trivial job here)."""
        return f"{self._places['exits']}/{host or os.uname().nodename}.log"

    def cancel_request(self, name: str) -> str:
        return f"{self._places['cancels']}/{name}"

    def sweep_dir(self, name: str) -> str:
        """A driven sweep's folder: ``sweep.json``, ``study.journal``, ``lock``, ``done``."""
        return f"{self._places['sweeps']}/{name}"

    def dispatcher_file(self, owner: str) -> str:
        return f"{self._places['dispatchers']}/{owner}"

    def all_dirs(self) -> tuple[Path, ...]:
        return (
            self.queue,
            self.running,
            self.completed,
            self.failed,
            self.logs,
            self.exits,
            self.cancels,
            self.dispatchers,
            self.tmp,
        )

    def create(self) -> Layout:
        """Make the folders that are missing. Bookkeeping (``.gpudispatch/``: exit
        statuses, temporaries, cancel requests) is for the owner alone, so that no one
        else can plant or forge what the dispatcher reads there; ``logs/`` (records,
        outputs) is writable by the owner only, whatever the umask allows."""
        state = self._places["state"]
        for name in _FOLDERS:
            path = self._places[name]
            if path.startswith(f"{state}/"):
                _mkdir(state, 0o700, parents=True)
                _mkdir(path, 0o700)
            else:
                _mkdir(path, 0o755 if name == "logs" else 0o777, parents=True)
        return self

    def writable_by_others(self) -> bool:
        """Whether users other than its owner may drop scripts into ``queue/``."""
        try:
            return bool(os.stat(self._places["queue"]).st_mode & 0o022)
        except OSError:
            return False

    def exists(self) -> bool:
        return os.path.isdir(self._places["queue"])


def _mkdir(path: str, mode: int, parents: bool = False) -> None:
    """``Path(path).mkdir(mode, parents=parents, exist_ok=True)`` on a string: a folder
    that exists is fine, anything else there raises FileExistsError as pathlib does."""
    try:
        if parents:
            os.makedirs(path, mode)
        else:
            os.mkdir(path, mode)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
