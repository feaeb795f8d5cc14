"""GPU facts behind one small interface, so the dispatcher runs the same code everywhere.

Three probes answer the same two questions (which GPUs exist, how full each one is):

- ``NvmlProbe``: NVML through ``pynvml`` (package ``nvidia-ml-py``); fast, no subprocess.
- ``NvidiaSmiProbe``: parses ``nvidia-smi``, for hosts where the NVML bindings fail.
- ``FakeProbe``: GPUs described in JSON, so tests and CI (no GPU) drive multi-GPU
  dispatchers through the very code paths a GPU server uses.

Fake GPU file (env var ``GPUDISPATCH_FAKE_GPUS`` names it), a JSON list, bytes throughout::

    [
      {"index": 0, "memory_total": 85899345920, "memory_used": 0},
      {"index": 1, "memory_total": 85899345920, "memory_used": 4294967296,
       "name": "Fake H100", "uuid": "GPU-fake-1", "utilization": 97,
       "processes": [{"pid": 4242, "used_bytes": 4294967296,
                      "user": "alice", "command": "python train.py"}]}
    ]

``name``, ``uuid`` (default ``GPU-fake-<index>``), ``utilization`` and ``processes`` are
optional; in a process only ``pid`` is required. The file is re-read on every snapshot,
so a test may rewrite it (atomically: ``write_fake_gpus``) while a dispatcher runs to
simulate a foreign job appearing on a GPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gpudispatch.safeio import write_atomic

FAKE_ENV = "GPUDISPATCH_FAKE_GPUS"
MIB = 1024**2
GIB = 1024**3

#: A GPU counts as busy when processes that are not ours hold at least this much memory.
#: A flat 1 GiB, not a share of the card: a bare CUDA context (a monitoring tool, a
#: notebook that merely imported torch, nvtop) costs ~300-600 MiB whatever the card's
#: size, while any real training or inference job holds well over 1 GiB. A percentage
#: would be 4 GiB on an 80 GiB H100 and would miss a modest foreign job.
DEFAULT_BUSY_THRESHOLD = GIB

_SMI_TIMEOUT_S = 15.0


class GpuProbeError(RuntimeError):
    """A probe could not read GPU facts (driver missing, tool failed, bad fake file)."""


class NoGpusError(ValueError):
    """``--gpus all`` was asked for, but no GPU could be found on this host."""


@dataclass
class GpuProcess:
    """A process holding memory on a GPU; ``used_bytes`` is None where the driver hides it."""

    pid: int
    used_bytes: int | None = None
    user: str | None = None
    command: str | None = None


@dataclass
class GpuInfo:
    """One GPU at one instant. Memory in bytes; utilization in percent, None if unknown."""

    index: int
    name: str
    uuid: str
    memory_total: int
    memory_used: int
    utilization: int | None = None
    processes: list[GpuProcess] = field(default_factory=list)

    @property
    def memory_free(self) -> int:
        return max(0, self.memory_total - self.memory_used)


class GpuProbe(Protocol):
    """What the dispatcher needs to know about GPUs, whatever answers it."""

    def indices(self) -> list[int]: ...

    def snapshot(self) -> list[GpuInfo]: ...


# --------------------------------------------------------------------------- /proc


def _proc_owner(pid: int) -> tuple[str | None, str | None]:
    """(user, command line) of a pid from /proc; Nones if it is gone or hidden."""
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None, None
    try:
        user: str | None = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    command: str | None = None
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        command = raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace") or None
        if command is None:
            command = Path(f"/proc/{pid}/comm").read_text().strip() or None
    except OSError:
        pass
    return user, command


def descendant_pids(roots: Iterable[int]) -> set[int]:
    """``roots`` and every live descendant, from /proc; what a caller passes as own_pids.

    A job's GPU memory is usually held by a grandchild (sh -> python -> dataloader), so
    the dispatcher must count the whole tree as its own, not just the pids it spawned.
    """
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ..." where comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 2:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid in found:
            continue
        found.add(pid)
        stack.extend(children.get(pid, ()))
    return found


# --------------------------------------------------------------------------- NVML


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class NvmlProbe:
    """GPU facts from NVML. Construction initialises NVML once; failure -> GpuProbeError."""

    def __init__(self) -> None:
        try:
            import pynvml
        except ImportError as exc:  # the dependency is declared, but be clear if absent
            raise GpuProbeError(f"pynvml (nvidia-ml-py) is not importable: {exc}") from exc
        self._nvml = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise GpuProbeError(f"NVML did not initialise: {exc}") from exc
        self._closed = False

    def close(self) -> None:
        """Release NVML (its init is reference-counted, so one close per probe)."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlShutdown()

    def indices(self) -> list[int]:
        try:
            return list(range(self._nvml.nvmlDeviceGetCount()))
        except self._nvml.NVMLError as exc:
            raise GpuProbeError(f"NVML device count failed: {exc}") from exc

    def snapshot(self) -> list[GpuInfo]:
        nv = self._nvml
        out = []
        try:
            for i in range(nv.nvmlDeviceGetCount()):
                h = nv.nvmlDeviceGetHandleByIndex(i)
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                try:
                    util: int | None = int(nv.nvmlDeviceGetUtilizationRates(h).gpu)
                except nv.NVMLError:  # not supported on MIG and some boards
                    util = None
                out.append(
                    GpuInfo(
                        index=i,
                        name=_text(nv.nvmlDeviceGetName(h)),
                        uuid=_text(nv.nvmlDeviceGetUUID(h)),
                        memory_total=int(mem.total),
                        memory_used=int(mem.used),
                        utilization=util,
                        processes=self._processes(h),
                    )
                )
        except nv.NVMLError as exc:
            raise GpuProbeError(f"NVML query failed: {exc}") from exc
        return out

    def _processes(self, handle: Any) -> list[GpuProcess]:
        nv = self._nvml
        by_pid: dict[int, GpuProcess] = {}
        for query in (nv.nvmlDeviceGetComputeRunningProcesses,
                      nv.nvmlDeviceGetGraphicsRunningProcesses):
            try:
                procs = query(handle)
            except nv.NVMLError:
                continue
            for p in procs:
                used = p.usedGpuMemory  # None when the driver will not tell (containers)
                if p.pid in by_pid:  # a process in both lists: keep the larger known figure
                    old = by_pid[p.pid].used_bytes
                    if used is not None and (old is None or used > old):
                        by_pid[p.pid].used_bytes = int(used)
                    continue
                user, command = _proc_owner(p.pid)
                by_pid[p.pid] = GpuProcess(
                    int(p.pid), None if used is None else int(used), user, command
                )
        return list(by_pid.values())


# --------------------------------------------------------------------------- nvidia-smi

_SMI_LIST_RE = re.compile(r"^GPU (\d+): (.*?) \(UUID: ([^)]+)\)\s*$")


def parse_smi_list(text: str) -> list[tuple[int, str, str]]:
    """``nvidia-smi -L`` -> [(index, name, uuid)]; indented MIG lines are skipped."""
    return [
        (int(m.group(1)), m.group(2), m.group(3))
        for m in map(_SMI_LIST_RE.match, text.splitlines())
        if m
    ]


def _smi_int(value: str) -> int | None:
    """``"1234"`` -> 1234; ``"[N/A]"``, ``"[Not Supported]"`` and the like -> None."""
    try:
        return int(float(value.strip()))
    except ValueError:
        return None


def parse_smi_gpus(text: str) -> list[GpuInfo]:
    """Parse ``--query-gpu=index,name,uuid,memory.total,memory.used,utilization.gpu``
    (``csv,noheader,nounits``, memory in MiB) into GpuInfo without processes."""
    gpus = []
    for line in text.splitlines():
        cols = [c.strip() for c in line.split(",")]
        if len(cols) < 6:
            continue
        # A name could hold a comma; index/uuid lead and the three numbers trail.
        index, total, used, util = (_smi_int(cols[0]), _smi_int(cols[-3]),
                                    _smi_int(cols[-2]), _smi_int(cols[-1]))
        if index is None or total is None:
            continue
        gpus.append(GpuInfo(
            index=index,
            name=", ".join(cols[1:-4]),
            uuid=cols[-4],
            memory_total=total * MIB,
            memory_used=(used or 0) * MIB,
            utilization=util,
        ))
    return gpus


def parse_smi_apps(text: str) -> dict[str, list[GpuProcess]]:
    """Parse ``--query-compute-apps=gpu_uuid,pid,used_memory`` -> {uuid: [GpuProcess]}.

    user/command are left None; the probe fills them from /proc."""
    apps: dict[str, list[GpuProcess]] = {}
    for line in text.splitlines():
        cols = [c.strip() for c in line.split(",")]
        if len(cols) != 3 or (pid := _smi_int(cols[1])) is None:
            continue  # blank output, "No running processes found", odd lines
        used = _smi_int(cols[2])
        apps.setdefault(cols[0], []).append(
            GpuProcess(pid, None if used is None else used * MIB)
        )
    return apps


class NvidiaSmiProbe:
    """GPU facts from the ``nvidia-smi`` command, for hosts where NVML bindings fail."""

    def __init__(self, exe: str = "nvidia-smi") -> None:
        self.exe = exe

    def _run(self, *args: str) -> str:
        try:
            res = subprocess.run([self.exe, *args], capture_output=True, text=True,
                                 timeout=_SMI_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise GpuProbeError(f"{self.exe} {' '.join(args)} failed: {exc}") from exc
        if res.returncode != 0:
            msg = (res.stderr or res.stdout).strip()
            raise GpuProbeError(f"{self.exe} {' '.join(args)} exited {res.returncode}: {msg}")
        return res.stdout

    def indices(self) -> list[int]:
        return [i for i, _, _ in parse_smi_list(self._run("-L"))]

    def snapshot(self) -> list[GpuInfo]:
        fmt = "--format=csv,noheader,nounits"
        gpus = parse_smi_gpus(self._run(
            "--query-gpu=index,name,uuid,memory.total,memory.used,utilization.gpu", fmt))
        apps = parse_smi_apps(self._run("--query-compute-apps=gpu_uuid,pid,used_memory", fmt))
        for g in gpus:
            g.processes = apps.get(g.uuid, [])
            for p in g.processes:
                p.user, p.command = _proc_owner(p.pid)
        return gpus


# --------------------------------------------------------------------------- fake


def _gpu_from_json(obj: dict[str, Any]) -> GpuInfo:
    index = int(obj["index"])
    return GpuInfo(
        index=index,
        name=str(obj.get("name", "Fake GPU")),
        uuid=str(obj.get("uuid", f"GPU-fake-{index}")),
        memory_total=int(obj["memory_total"]),
        memory_used=int(obj["memory_used"]),
        utilization=None if obj.get("utilization") is None else int(obj["utilization"]),
        processes=[
            GpuProcess(
                pid=int(p["pid"]),
                used_bytes=None if p.get("used_bytes") is None else int(p["used_bytes"]),
                user=p.get("user"),
                command=p.get("command"),
            )
            for p in obj.get("processes", [])
        ],
    )


def write_fake_gpus(path: str | os.PathLike[str], gpus: Iterable[GpuInfo]) -> None:
    """Write a fake GPU file atomically, so a probe re-reading it never sees half a file."""
    path = Path(path)
    data = json.dumps([asdict(g) for g in gpus], indent=1).encode()
    write_atomic(path, data, path.parent)  # an unguessable temp name, no symlink followed


class FakeProbe:
    """GPUs from a list, or from a JSON file re-read on every snapshot (shape: module doc)."""

    def __init__(self, gpus: list[GpuInfo] | None = None, *,
                 path: str | os.PathLike[str] | None = None) -> None:
        if (gpus is None) == (path is None):
            raise ValueError("FakeProbe needs exactly one of gpus or path")
        self.gpus = gpus
        self.path = None if path is None else Path(path)

    @classmethod
    def from_env(cls) -> FakeProbe:
        """A probe over the file named by $GPUDISPATCH_FAKE_GPUS."""
        path = os.environ.get(FAKE_ENV)
        if not path:
            raise GpuProbeError(f"${FAKE_ENV} is not set")
        return cls(path=path)

    def snapshot(self) -> list[GpuInfo]:
        if self.path is None:
            assert self.gpus is not None
            return [GpuInfo(**{**asdict(g), "processes": [GpuProcess(**asdict(p))
                                                          for p in g.processes]})
                    for g in self.gpus]  # copies: callers may not mutate our state
        try:
            data = json.loads(self.path.read_text())
            if not isinstance(data, list):
                raise TypeError("top level must be a list of GPU objects")
            return [_gpu_from_json(obj) for obj in data]
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise GpuProbeError(f"bad fake GPU file {self.path} (${FAKE_ENV}): {exc!r}") from exc

    def indices(self) -> list[int]:
        return [g.index for g in self.snapshot()]


# --------------------------------------------------------------------------- choosing


def default_probe() -> GpuProbe | None:
    """The probe this host supports: fake if $GPUDISPATCH_FAKE_GPUS is set, else NVML
    if it sees a GPU, else nvidia-smi if it lists one, else None (a CPU-only host)."""
    if os.environ.get(FAKE_ENV):
        return FakeProbe.from_env()
    try:
        nvml = NvmlProbe()
        if nvml.indices():
            return nvml
        nvml.close()
    except GpuProbeError:
        pass
    if shutil.which("nvidia-smi"):
        smi = NvidiaSmiProbe()
        try:
            if smi.indices():
                return smi
        except GpuProbeError:
            pass
    return None


_RANGE_RE = re.compile(r"^(\d+)(?:-(\d+))?$")
# No host has more GPUs; a larger index is a typo, and "0-100000000" must not build a list
# of a hundred million slots before anything can say so.
MAX_GPU_INDEX = 1023


def resolve_gpus(spec: str, *, probe: GpuProbe | None = None) -> list[int]:
    """GPU indices for ``--gpus``: ``"0,1,3"``, ranges such as ``"0-3"``, or ``"all"``.

    ``"all"`` asks ``probe`` (default: ``default_probe()``); with no GPU found it raises
    NoGpusError rather than silently running jobs without a GPU.
    """
    text = spec.strip()
    if text.lower() == "all":
        probe = probe if probe is not None else default_probe()
        try:
            found = probe.indices() if probe is not None else []
        except GpuProbeError as exc:
            raise NoGpusError(f"--gpus all: could not list GPUs ({exc}). Pass --gpus 0,1 "
                              "explicitly, or use --slots K for CPU-only slots.") from exc
        if not found:
            raise NoGpusError(
                "--gpus all: no NVIDIA GPU found (NVML and nvidia-smi see none). "
                "Pass the GPUs explicitly, e.g. --gpus 0,1, or use --slots K to run "
                "K jobs at a time without GPUs."
            )
        return sorted(found)
    if not text:
        raise ValueError("--gpus is empty: give a list like 0,1,3, a range like 0-3, or all")
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        m = _RANGE_RE.match(part)
        if not m:
            raise ValueError(f"--gpus {spec!r}: {part!r} is not a GPU index or range "
                             "(expected e.g. 0,1,3 or 0-3 or all)")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi > MAX_GPU_INDEX:
            raise ValueError(f"--gpus {spec!r}: GPU index {hi} is too large "
                             f"(at most {MAX_GPU_INDEX})")
        if hi < lo:
            raise ValueError(f"--gpus {spec!r}: range {part!r} runs backwards")
        for i in range(lo, hi + 1):
            if i in out:
                raise ValueError(f"--gpus {spec!r}: GPU {i} is listed twice")
            out.append(i)
    return out


# --------------------------------------------------------------------------- packing


def foreign_used_bytes(info: GpuInfo, own_pids: set[int]) -> int:
    """GPU memory held by processes outside ``own_pids`` (pass ``descendant_pids``).

    Where the driver hides per-process memory (used_bytes None, common in containers),
    unknown foreign processes are charged whatever memory the known processes do not
    explain, so a hidden foreign job still counts instead of looking free.
    """
    foreign = [p for p in info.processes if p.pid not in own_pids]
    known = sum(p.used_bytes or 0 for p in info.processes)
    total = sum(p.used_bytes for p in foreign if p.used_bytes is not None)
    if any(p.used_bytes is None for p in foreign):
        total += max(0, info.memory_used - known)
    return total


def is_busy_by_foreign(info: GpuInfo, own_pids: set[int],
                       threshold_bytes: int = DEFAULT_BUSY_THRESHOLD) -> bool:
    """True when foreign processes hold at least ``threshold_bytes`` on this GPU."""
    return foreign_used_bytes(info, own_pids) >= threshold_bytes


def format_bytes(n: int | None) -> str:
    """Human-readable binary size for status tables: 0 B, 512 B, 1.5 KiB, 80.0 GiB."""
    if n is None:
        return "?"
    sign = "-" if n < 0 else ""
    value = float(abs(n))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{sign}{int(value)} B" if unit == "B" else f"{sign}{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
