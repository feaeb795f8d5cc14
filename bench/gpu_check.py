"""Check gpudispatch.gpus against a real NVIDIA GPU (run on a lent GPU machine).

    .venv/bin/python bench/gpu_check.py        # exit 0 when every check passes

1. NvmlProbe and NvidiaSmiProbe both read the host; they must agree on index, uuid and
   total memory (the code paths CI can only test through the fake probe).
2. A foreign process (a child python holding ~2 GiB, with torch if importable, else the
   CUDA driver API via ctypes) must show up in foreign_used_bytes and is_busy_by_foreign
   when it is not among own_pids, and vanish once descendant_pids counts it as ours.
   If this fails with the process simply absent, the host hides other PID namespaces
   (containers) and the scheduler must lean on memory_used instead.
Finishes in well under 2 minutes: every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from gpudispatch.gpus import (  # noqa: E402
    GIB,
    MIB,
    GpuInfo,
    GpuProbe,
    GpuProbeError,
    NvidiaSmiProbe,
    NvmlProbe,
    default_probe,
    descendant_pids,
    foreign_used_bytes,
    format_bytes,
    is_busy_by_foreign,
    resolve_gpus,
)

ALLOC = 2 * GIB
CHILD = r"""
import ctypes, sys
n = int(sys.argv[1])
try:
    import torch
    buf = torch.empty(n, dtype=torch.uint8, device="cuda")
    buf.fill_(1); torch.cuda.synchronize(); how = "torch"
except Exception:  # no torch, or a torch without CUDA: use the driver API
    cu = ctypes.CDLL("libcuda.so.1")
    def ck(r, what):
        if r:
            sys.exit(f"{what} failed with CUresult {r}")
    dev, ctx, ptr = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
    ck(cu.cuInit(0), "cuInit")
    ck(cu.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
    ck(cu.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev), "cuCtxCreate")
    ck(cu.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(n)), "cuMemAlloc")
    ck(cu.cuMemsetD8_v2(ptr, 1, ctypes.c_size_t(n)), "cuMemsetD8")
    how = "libcuda"
print("READY", how, flush=True)
sys.stdin.read()  # hold the memory until the parent closes our stdin (or dies)
"""

results: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "") -> bool:
    results.append((name, ok, detail))
    print(f"[{'PASS' if ok else 'FAIL'}] {name}{': ' + detail if detail else ''}", flush=True)
    return ok


def show(label: str, snap: list[GpuInfo]) -> None:
    print(f"--- {label}")
    for g in snap:
        print(f"  {g.index} {g.name} {g.uuid} used {format_bytes(g.memory_used)} / "
              f"{format_bytes(g.memory_total)} util {g.utilization}%")
        for p in g.processes:
            print(f"      pid {p.pid} {format_bytes(p.used_bytes)} {p.user} {p.command!r:.60}")


def on_gpu(probe: GpuProbe, uuid: str) -> GpuInfo:
    return next(g for g in probe.snapshot() if g.uuid == uuid)


def main() -> int:
    signal.alarm(110)  # a hung driver call must not outlive the 2-minute budget
    try:
        nvml = NvmlProbe()
    except GpuProbeError as exc:
        check("NVML initialises", False, str(exc))
        return 1
    snap = nvml.snapshot()
    show("NVML", snap)
    check("NVML sees >= 1 GPU", bool(snap), f"{len(snap)} GPU(s)")
    if not snap:
        return 1
    check("default_probe() is NVML", isinstance(default_probe(), NvmlProbe))
    check("resolve_gpus('all') == NVML indices", resolve_gpus("all") == nvml.indices())

    smi = NvidiaSmiProbe() if shutil.which("nvidia-smi") else None
    if smi is None:
        check("nvidia-smi on PATH", False)
    else:
        ssnap = smi.snapshot()
        show("nvidia-smi", ssnap)
        check("nvidia-smi -L indices == NVML", smi.indices() == nvml.indices())
        if not check("same GPU count", len(ssnap) == len(snap)):
            return 1
        check("index/uuid agree", [(g.index, g.uuid) for g in ssnap]
              == [(g.index, g.uuid) for g in snap])
        pairs = list(zip(snap, ssnap, strict=True))
        check("total memory agrees within 1 MiB",
              all(abs(a.memory_total - b.memory_total) < MIB for a, b in pairs),
              ", ".join(f"{a.memory_total} vs {b.memory_total}" for a, b in pairs))

    target = snap[0]
    mine = {os.getpid()}
    before = foreign_used_bytes(target, mine)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": target.uuid}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(ALLOC)], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 75
        line = ""
        while time.monotonic() < deadline and child.poll() is None and not line:
            line = child.stdout.readline().strip()
        if not check("foreign process allocated", line.startswith("READY"), line or "no READY"):
            return 1
        # NVML may lag a moment behind the allocation; poll, bounded.
        seen = None
        for _ in range(40):
            info = on_gpu(nvml, target.uuid)
            if any(p.pid == child.pid for p in info.processes):
                seen = info
                break
            time.sleep(0.25)
        info = seen or on_gpu(nvml, target.uuid)
        show("NVML with foreign process", [info])
        check("NVML lists the foreign pid", seen is not None,
              "absent: PID namespace hides it?" if seen is None else "")
        grown = foreign_used_bytes(info, mine) - before
        check("foreign_used_bytes sees >= 2 GiB more", grown >= ALLOC, format_bytes(grown))
        check("is_busy_by_foreign", is_busy_by_foreign(info, mine))
        ours = descendant_pids(mine)
        check("descendant_pids owns the child", child.pid in ours)
        check("own tree not foreign", foreign_used_bytes(info, ours) <= before,
              format_bytes(foreign_used_bytes(info, ours)))
        if smi is not None:
            sinfo = on_gpu(smi, target.uuid)
            check("nvidia-smi probe sees it too",
                  foreign_used_bytes(sinfo, mine) - before >= ALLOC
                  and is_busy_by_foreign(sinfo, mine),
                  format_bytes(foreign_used_bytes(sinfo, mine)))
    finally:
        if child.stdin:
            child.stdin.close()
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        nvml.close()

    failed = [n for n, ok, _ in results if not ok]
    print(f"\n{len(results) - len(failed)}/{len(results)} checks passed"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
