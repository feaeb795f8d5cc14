"""A job's capsule: what it takes to tell, later, what a run ran and where.

Kept once per submit as ``ROOT/capsules/HASH.json``; the record's ``extra["capsule"]``
(a plain dict, so ``JobRecord`` is unchanged) names that file and repeats the commit,
dirty flag, diff and snapshot. A capsule holds the git commit, branch and dirty flag of
the work tree it was submitted from, the uncommitted diff (a file under
``ROOT/capsules/diffs/``, named by its hash), the Python environment and its package
list (``ROOT/capsules/packages/``, once per environment), the host, the GPU driver and
CUDA versions where there is an NVIDIA driver, the command line, the names (never the
values) of the environment variables, and the snapshot when one was taken.

One capsule is made per ``submit``/``sweep`` and shared by every job it queues. What
is costly is cached under ``.gpudispatch/capsule-cache/``: the package list per
environment (keyed by its prefix and its site-packages folders' mtimes: installing or
removing a package changes them) and the CUDA version per host and driver. What is
left per submit is one ``git diff`` (the commit and branch are read from the git
folder); with a snapshot, the ``git status`` it needs is used.
Nothing here fails a submit for want of git, NVML or ``nvidia-smi``.
"""

from __future__ import annotations

import json
import os
import re
import sys

from gpudispatch import safeio
from gpudispatch.layout import Layout
from gpudispatch.snapshot import (
    GitState,
    Quiet,
    Snapshot,
    SnapshotError,
    find_top,
    git_dir,
    git_finish,
    git_start,
    git_state,
    read_head,
    uncommitted_diff,
)
from gpudispatch.store import HOST

CAPSULE_VERSION = 1
UNTRACKED_LISTED = 50  # names of untracked files kept in the record (all are counted)
CACHE_MAX_BYTES = 1 << 20
# A capsule never holds a submit up long: git stuck on a slow filesystem is noted, not
# waited out (a snapshot waits longer: it cannot do without git).
CAPSULE_GIT_TIMEOUT = 15.0
NVIDIA_VERSION_FILE = "/proc/driver/nvidia/version"


def collect(layout: Layout, cwd: str, argv: list[str], state: GitState | None | bool = True,
            snapshot: Snapshot | None = None) -> dict:
    """The capsule of jobs submitted now from ``cwd`` by ``argv``. ``state``: the git
    state when already read (None outside git), True to read it here."""
    capsule: dict = {"version": CAPSULE_VERSION, "host": HOST, "cwd": cwd,
                     "argv": list(argv), "env_names": sorted(os.environ)}
    pending: _QuickGit | dict | None = None
    if state is True:
        try:
            pending = _QuickGit.start(layout, cwd)  # git works while this process does
        except SnapshotError as exc:  # git missing or broken: said, never a failure
            pending = {"error": str(exc)}
    elif state is not None:
        capsule["git"] = git_part(layout, state)
    capsule["python"] = python_part(layout)
    capsule["gpu"] = gpu_part(layout)
    if isinstance(pending, _QuickGit):
        try:
            pending = pending.finish()
        except SnapshotError as exc:
            pending = {"error": str(exc)}
    if pending is not None:
        capsule["git"] = pending
    if snapshot is not None:
        capsule["snapshot"] = snapshot.to_dict()
    return capsule


def keep(layout: Layout, capsule: dict) -> dict:
    """Write the capsule once, as ``ROOT/capsules/HASH.json``, and return what a record
    holds: that file and the few fields worth seeing without opening it (a record is
    read by ``status`` and ``results``; the whole capsule, environment names and all, is
    a few KiB that 100,000 records of a sweep would each repeat)."""
    data = json.dumps(capsule, indent=1, sort_keys=True, default=str).encode()
    path = layout.capsule_file(safeio.sha256(data).hexdigest()[:20])
    _keep(layout, path, data)
    gitp = capsule.get("git") if isinstance(capsule.get("git"), dict) else {}
    snap = capsule.get("snapshot") if isinstance(capsule.get("snapshot"), dict) else {}
    return {"file": path, "commit": gitp.get("commit"), "dirty": gitp.get("dirty"),
            "diff": gitp.get("diff"), "snapshot": snap.get("id"),
            "workdir": snap.get("workdir")}


def load(layout: Layout, summary: object) -> tuple[dict | None, str | None]:
    """The whole capsule a record's summary points to, or (None, why not). The path
    comes from a record that anyone who can write ``logs/`` may edit: only a regular
    file under ``ROOT/capsules`` is read, without following a symlink."""
    path = summary.get("file") if isinstance(summary, dict) else None
    if not isinstance(path, str) or not path:
        return None, "the record names no capsule file"
    if not safeio.inside(layout.where("capsules"), path):
        return None, f"its capsule file {path} is not under {layout.where('capsules')}; not read"
    try:
        data = json.loads(safeio.read_regular(path, CACHE_MAX_BYTES))
    except OSError as exc:
        return None, f"its capsule file {path} {safeio.refusal(exc)}"
    except ValueError:
        return None, f"its capsule file {path} is not JSON"
    if not isinstance(data, dict):
        return None, f"its capsule file {path} is not a JSON object"
    return data, None


def _keep(layout: Layout, path: str, data: bytes) -> None:
    """Write a content-addressed file unless it is there already."""
    if os.path.lexists(path):
        return
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    os.makedirs(layout.where("tmp"), mode=0o700, exist_ok=True)
    safeio.write_atomic(path, data, layout.where("tmp"))


def git_part(layout: Layout, state: GitState, diff: bytes | None = None) -> dict:
    """``dirty``: a tracked file differs from the commit (the diff is not empty);
    untracked files are listed when a snapshot was taken (it keeps them)."""
    part: dict = {"top": state.top, "commit": state.commit, "branch": state.branch,
                  "dirty": bool(state.touched), "diff": None}
    if state.untracked:
        part["untracked"] = state.untracked[:UNTRACKED_LISTED]
        part["untracked_count"] = len(state.untracked)
    if diff is None:
        try:
            diff = uncommitted_diff(state)
        except SnapshotError as exc:
            part["diff_error"] = str(exc)
            diff = b""
    if diff:
        path = layout.diff_file(safeio.sha256(diff).hexdigest()[:20])
        _keep(layout, path, diff)
        part["diff"] = path
        part["diff_bytes"] = len(diff)
    if state.nested:
        part["not_snapshotted"] = state.nested[:UNTRACKED_LISTED]
    return part


class _QuickGit:
    """The git part of a capsule without a snapshot, for one git process: commit and
    branch are read from the git folder, and ``git diff --binary HEAD`` says whether a
    tracked file differs (``dirty``) and how (the diff file). It is started first and
    waited for last, so the rest of the capsule is made while git runs (the diff is most
    of a capsule's cost in a large tree). Untracked files are listed only with a
    snapshot (the ``git status`` it needs finds them, and it keeps them). (Caching the
    diff behind an ``lstat`` of every tracked file was tried: on this project's machine
    1,000 ``lstat`` calls from Python cost as much as the ``git diff`` they would save.)"""

    def __init__(self, layout: Layout, top: str, head: tuple[str, str | None],
                 diff: Quiet) -> None:
        self.layout, self.top, self.head, self.diff = layout, top, head, diff

    @classmethod
    def start(cls, layout: Layout, cwd: str) -> _QuickGit | dict | None:
        """Started; or the part itself where there is nothing to wait for (None outside
        git; no commit yet, or a git folder of another shape: git is asked in full)."""
        top = find_top(cwd)
        if top is None:
            return None
        gitdir = git_dir(top)
        head = read_head(gitdir) if gitdir else None
        if head is None:
            return git_part(layout, git_state(cwd))
        return cls(layout, top, head, git_start(top, "diff", "--binary", "--no-color",
                                                "--no-ext-diff", "HEAD", "--"))

    def finish(self) -> dict:
        diff = git_finish(self.diff, timeout=CAPSULE_GIT_TIMEOUT)
        state = GitState(top=self.top, commit=self.head[0], branch=self.head[1],
                         touched=["(in the diff)"] if diff else [])
        return git_part(self.layout, state, diff)


# --------------------------------------------------------------------------- python
def environment_prefix() -> str:
    """The Python environment jobs use: the active virtualenv or conda environment, else
    the one gpudispatch runs in."""
    return os.environ.get("VIRTUAL_ENV") or os.environ.get("CONDA_PREFIX") or sys.prefix


def _matching(folder: str, prefix: str, suffix: str) -> list[str]:
    """Names in ``folder`` that start and end so (``glob`` costs every submit its import
    and a pattern's compile, for one listing)."""
    try:
        return sorted(n for n in os.listdir(folder) if n.startswith(prefix)
                      and n.endswith(suffix))
    except OSError:
        return []


def _package_dirs(prefix: str) -> list[str]:
    lib = os.path.join(prefix, "lib")
    found = [os.path.join(lib, n, "site-packages") for n in _matching(lib, "python", "")
             if os.path.isdir(os.path.join(lib, n, "site-packages"))]
    conda = os.path.join(prefix, "conda-meta")
    return sorted(found) + ([conda] if os.path.isdir(conda) else [])


def package_lines(dirs: list[str]) -> list[str]:
    """``name==version`` of every installed distribution, as ``pip freeze`` lists them,
    read from the ``*.dist-info``/``*.egg-info`` names (and conda's ``conda-meta``)
    without starting pip."""
    lines = set()
    for folder in dirs:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        conda = os.path.basename(folder) == "conda-meta"
        for name in names:
            if conda and name.endswith(".json"):
                parts = name[:-5].rsplit("-", 2)
                if len(parts) == 3:
                    lines.add(f"{parts[0]}=={parts[1]} (conda {parts[2]})")
            elif name.endswith((".dist-info", ".egg-info")):
                stem = name.rsplit(".", 1)[0]
                dist, _, version = stem.partition("-")
                version = version.split("-py", 1)[0]
                if dist and version:
                    lines.add(f"{dist.replace('_', '-').lower()}=={version}")
    return sorted(lines)


def _python_version(prefix: str) -> str | None:
    if os.path.realpath(prefix) == os.path.realpath(sys.prefix):
        return sys.version.split()[0]
    try:
        cfg = safeio.read_regular(os.path.join(prefix, "pyvenv.cfg"), 65536).decode()
    except (OSError, UnicodeDecodeError):
        cfg = ""
    match = re.search(r"^version(?:_info)?\s*=\s*(\S+)", cfg, re.M)
    if match:
        return match.group(1)
    found = _matching(os.path.join(prefix, "conda-meta"), "python-3", ".json")
    return found[0].split("-")[1] if found else None


def python_part(layout: Layout) -> dict:
    """The environment's prefix, Python version and package list (a file)."""
    prefix = environment_prefix()
    dirs = _package_dirs(prefix)
    mtimes = []
    for folder in dirs:
        try:
            mtimes.append(os.stat(folder).st_mtime_ns)
        except OSError:
            mtimes.append(0)
    key = safeio.sha256(repr((prefix, dirs, mtimes)).encode()).hexdigest()[:20]
    cache = os.path.join(layout.where("capsule_cache"), f"env-{key}.json")
    cached = _read_cache(cache)
    if (cached and isinstance(cached.get("packages"), str)
            and os.path.lexists(cached["packages"])):
        return cached
    lines = package_lines(dirs)
    data = "".join(line + "\n" for line in lines).encode()
    path = layout.packages_file(safeio.sha256(data).hexdigest()[:20])
    part = {"prefix": prefix, "version": _python_version(prefix), "packages": path,
            "package_count": len(lines)}
    try:
        _keep(layout, path, data)
        _write_cache(layout, cache, part)
    except OSError:
        part["packages"] = None
    return part


def _read_cache(path: str) -> dict | None:
    try:
        data = json.loads(safeio.read_regular(path, CACHE_MAX_BYTES))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_cache(layout: Layout, path: str, data: dict) -> None:
    os.makedirs(layout.where("capsule_cache"), mode=0o700, exist_ok=True)
    os.makedirs(layout.where("tmp"), mode=0o700, exist_ok=True)
    safeio.write_atomic(path, json.dumps(data).encode(), layout.where("tmp"))


# --------------------------------------------------------------------------- GPU
def driver_version(text: str) -> str | None:
    """The driver version in ``/proc/driver/nvidia/version`` (pure)."""
    match = re.search(r"Kernel Module(?: for [\w-]+)?\s+([0-9][0-9.]*)", text)
    return match.group(1) if match else None


def gpu_part(layout: Layout) -> dict | None:
    """Driver and CUDA versions and GPU names, where an NVIDIA driver is loaded (None
    elsewhere). The driver comes from ``/proc``; the rest is asked of NVML (else
    ``nvidia-smi``) once per host and driver."""
    try:
        driver = driver_version(safeio.read_regular(NVIDIA_VERSION_FILE, 65536).decode(
            errors="replace"))
    except OSError:
        return None
    cache = os.path.join(layout.where("capsule_cache"), f"gpu-{HOST}.json")
    cached = _read_cache(cache)
    if cached and cached.get("driver") == driver:
        return cached
    part = {"driver": driver, **_ask_gpus()}
    try:
        _write_cache(layout, cache, part)
    except OSError:
        pass
    return part


def _ask_gpus() -> dict:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
            names = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
                names.append(name.decode() if isinstance(name, bytes) else name)
            return {"cuda": f"{cuda // 1000}.{cuda % 1000 // 10}", "gpus": names}
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no NVML, no GPU, an old driver: ask nvidia-smi
        pass
    from gpudispatch.snapshot import run_quiet

    try:
        out = run_quiet(["nvidia-smi"], None, 20)[1].decode(errors="replace")
    except (OSError, TimeoutError):
        return {"cuda": None}
    match = re.search(r"CUDA Version:\s*([0-9.]+)", out)
    return {"cuda": match.group(1) if match else None}


# --------------------------------------------------------------------------- showing
def show_lines(capsule: dict) -> list[tuple[str, str]]:
    """A capsule as (label, text) rows for ``gpudispatch show`` (pure; tolerant of a
    capsule of another shape: it comes from a record anyone with ``logs/`` may edit)."""
    rows: list[tuple[str, str]] = []

    def get(part: object, key: str) -> object:
        return part.get(key) if isinstance(part, dict) else None

    rows.append(("submitted", f"on {capsule.get('host')} from {capsule.get('cwd')}"))
    argv = capsule.get("argv")
    if isinstance(argv, list):
        import shlex

        rows.append(("command", shlex.join(str(a) for a in argv)))
    gitp = capsule.get("git")
    if isinstance(gitp, dict) and "error" in gitp:
        rows.append(("git", f"unknown: {gitp['error']}"))
    elif isinstance(gitp, dict):
        branch = get(gitp, "branch") or "detached"
        rows.append(("git", f"commit {get(gitp, 'commit') or 'none yet'} ({branch}) in "
                     f"{get(gitp, 'top')}"))
        rows.append(("dirty", "yes" if get(gitp, "dirty") else "no"))
        if get(gitp, "diff"):
            rows.append(("diff", f"{get(gitp, 'diff')} ({get(gitp, 'diff_bytes')} bytes)"))
        count = get(gitp, "untracked_count")
        if count:
            names = get(gitp, "untracked") or []
            more = f", +{count - len(names)} more" if count > len(names) else ""
            rows.append(("untracked", f"{count}: {', '.join(map(str, names))}{more}"))
        if get(gitp, "not_snapshotted"):
            rows.append(("left out", ", ".join(map(str, get(gitp, "not_snapshotted")))
                         + " (submodules / nested repositories)"))
    else:
        rows.append(("git", "not a git work tree"))
    snap = capsule.get("snapshot")
    if isinstance(snap, dict):
        rows.append(("snapshot", f"{get(snap, 'id')}: runs in {get(snap, 'workdir')}"))
    else:
        rows.append(("snapshot", "none (runs the code found at run time)"))
    py = capsule.get("python")
    if isinstance(py, dict):
        rows.append(("python", f"{get(py, 'version')} ({get(py, 'prefix')})"))
        rows.append(("packages", f"{get(py, 'packages')} ({get(py, 'package_count')})"))
    gpu = capsule.get("gpu")
    if isinstance(gpu, dict):
        names = ", ".join(map(str, get(gpu, "gpus") or []))
        rows.append(("gpu", f"driver {get(gpu, 'driver')}, CUDA {get(gpu, 'cuda')}"
                     + (f": {names}" if names else "")))
    else:
        rows.append(("gpu", "no NVIDIA driver on the submitting host"))
    env = capsule.get("env_names")
    if isinstance(env, list):
        rows.append(("environment", f"{len(env)} names: {' '.join(map(str, env))}"))
    return rows
