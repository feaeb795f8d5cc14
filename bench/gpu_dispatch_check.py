"""End-to-end check of `gpudispatch run` on real NVIDIA GPUs with PyTorch jobs.

    python bench/gpu_dispatch_check.py      # or .venv/bin/python; exit 0 when all pass

Needs >= 1 NVIDIA GPU (NVML) and PyTorch with CUDA importable by this interpreter; jobs
run `sys.executable -c ...`. Without either it exits 2 at once, saying which is missing.
bench/gpu_check.py checks the NVML probe itself; this one checks what the dispatcher
does with it, using real `gpudispatch run` processes on temporary queue folders:

1. visibility: `run --gpus <idle GPUs, up to 4> --drain`; one job per GPU, held on a
   gate file so they all run at once; each must see exactly one CUDA device, run a
   matmul, and the devices must be distinct and match (by uuid) the record's `gpus`.
   A uuid mismatch means CUDA's device order differs from NVML's (set
   CUDA_DEVICE_ORDER=PCI_BUS_ID).
2. packing: two `#GPUDISPATCH --gpu-mem 3G` jobs holding 2 GiB each must run at once
   on one GPU, then both complete.
3. foreign process: a python outside the queue holding 3 GiB makes the GPU busy: a
   queued job waits (>= 3 s), `status` says who holds the GPU ('held by'), and the job
   starts and completes once the foreign process ends.
4. real OOM: a job allocating more than the GPU's memory with `--oom-retries 1` ends
   failed with reason "oom" after 2 attempts.

The GPU used by checks 2-4 is the first one with < 1 GiB in use. Prints PASS/FAIL per
check; every wait is bounded and the whole run stops itself after 170 s. Every process
it starts (dispatchers, jobs, the foreign process) is killed on the way out.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from gpudispatch.gpus import GIB, GpuInfo, GpuProbeError, NvmlProbe  # noqa: E402

PY = sys.executable
TOTAL_LIMIT_S = 170
POLL_S = 0.2

results: list[tuple[str, bool, str]] = []
procs: list[subprocess.Popen] = []  # everything we started, for the final cleanup
roots: list[Path] = []
gates: list[Path] = []


class OverallTimeout(Exception):
    pass


def check(name: str, ok: bool, detail: str = "") -> bool:
    results.append((name, ok, detail))
    print(f"[{'PASS' if ok else 'FAIL'}] {name}{': ' + detail if detail else ''}", flush=True)
    return ok


def wait_for(cond, timeout: float, interval: float = POLL_S):
    """Poll ``cond()`` until truthy (returned) or ``timeout`` seconds pass (returns the
    last falsy value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# --------------------------------------------------------------------------- gpudispatch


def cli_prefix() -> tuple[list[str], dict[str, str]]:
    """How to run the CLI: the one next to this interpreter, else the repo's venv, else
    ``python -m gpudispatch`` on the checkout."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("GPUDISPATCH_FAKE_GPUS", "GPUDISPATCH_ROOT", "CUDA_VISIBLE_DEVICES",
                        "CUDA_DEVICE_ORDER")}
    env["COLUMNS"] = "400"  # status tables unwrapped, so their text can be searched
    for cand in (Path(PY).parent / "gpudispatch", REPO / ".venv" / "bin" / "gpudispatch"):
        if cand.is_file() and os.access(cand, os.X_OK):
            return [str(cand)], env
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"),
                                                      env.get("PYTHONPATH")]))
    return [PY, "-m", "gpudispatch"], env


GD, GD_ENV = cli_prefix()


def gd(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*GD, *args], env=GD_ENV, capture_output=True, text=True,
                          timeout=timeout)


def new_root(tag: str) -> tuple[Path, Path]:
    """A fresh queue ROOT and a scratch folder (scripts, markers, gates) beside it."""
    base = Path(tempfile.mkdtemp(prefix=f"gd-gpucheck-{tag}-"))
    root, work = base / "root", base / "work"
    work.mkdir()
    roots.append(root)
    return root, work


def start_dispatcher(root: Path, *args: str) -> subprocess.Popen:
    p = subprocess.Popen([*GD, "run", "--dir", str(root), "-q", *args], env=GD_ENV,
                         cwd=root.parent, start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    procs.append(p)
    return p


def signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop(p: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM (warm stop), then a second SIGTERM (cold stop), then SIGKILL the group."""
    for sig, wait_s in ((signal.SIGTERM, grace), (signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        if p.poll() is not None:
            break
        signal_group(p, sig)
        try:
            p.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            pass
    signal_group(p, signal.SIGKILL)  # a keeper or helper left in the group


def dispatcher_output(p: subprocess.Popen) -> str:
    if p.poll() is None or p.stdout is None:
        return ""
    try:
        return p.stdout.read()[-2000:]
    except (OSError, ValueError):
        return ""


def write_job(work: Path, name: str, code: str, args: list[str], header: str = "") -> Path:
    path = work / name
    lines = ["#!/bin/sh"] + ([header] if header else []) + [
        f"exec {shlex.quote(PY)} -c {shlex.quote(code)} "
        + " ".join(shlex.quote(a) for a in args)]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return path


def submit(root: Path, *scripts: Path) -> bool:
    r = gd("submit", "--dir", str(root), *map(str, scripts))
    if r.returncode != 0:
        check(f"submit {' '.join(s.name for s in scripts)}", False, r.stderr.strip())
    return r.returncode == 0


def state_of(root: Path, name: str) -> str | None:
    for state in ("queue", "running", "completed", "failed"):
        if (root / state / name).exists():
            return state
    return None


def record(root: Path, name: str) -> dict:
    try:
        return json.loads((root / "logs" / f"{name}.json").read_text())
    except (OSError, ValueError):
        return {}


def status_json(root: Path) -> dict[str, dict]:
    r = gd("status", "--dir", str(root), "--json")
    try:
        return {j["name"]: j for j in json.loads(r.stdout)}
    except (ValueError, KeyError, TypeError):
        return {}


def log_result(root: Path, name: str) -> dict | None:
    """The JSON a job printed after 'RESULT ' in its (first run's) log."""
    try:
        text = (root / "logs" / f"{name}.log").read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("RESULT "):
            try:
                return json.loads(line[len("RESULT "):])
            except ValueError:
                return None
    return None


def log_tail(root: Path, name: str, n: int = 600) -> str:
    try:
        return (root / "logs" / f"{name}.log").read_text(errors="replace")[-n:].strip()
    except OSError:
        return "(no log)"


def norm_uuid(u: str) -> str:
    u = str(u).strip().lower()
    return u[4:] if u.startswith("gpu-") else u


# --------------------------------------------------------------------------- job code

# argv: marker gate. Start, note the device, wait on the gate (bounded), report.
VIS_JOB = r"""
import json, os, sys, time, torch
marker, gate = sys.argv[1], sys.argv[2]
n = torch.cuda.device_count()
x = torch.randn(1024, 1024, device="cuda")
s = float((x @ x).sum().item())
torch.cuda.synchronize()
p = torch.cuda.get_device_properties(0)
open(marker, "w").close()
end = time.monotonic() + 90
while not os.path.exists(gate) and time.monotonic() < end:
    time.sleep(0.1)
print("RESULT " + json.dumps({"count": n, "uuid": str(getattr(p, "uuid", "")),
      "name": p.name, "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"),
      "matmul_finite": s == s, "gate": os.path.exists(gate)}), flush=True)
"""

# argv: bytes marker gate. Hold memory, mark, wait on the gate (bounded).
HOLD_JOB = r"""
import os, sys, time, torch
n, marker, gate = int(sys.argv[1]), sys.argv[2], sys.argv[3]
buf = torch.empty(n, dtype=torch.uint8, device="cuda")
buf.fill_(1); torch.cuda.synchronize()
open(marker, "w").close()
end = time.monotonic() + 90
while not os.path.exists(gate) and time.monotonic() < end:
    time.sleep(0.1)
print("RESULT {\"gate\": %s}" % ("true" if os.path.exists(gate) else "false"), flush=True)
"""

# The foreign process: hold memory until our stdin closes (or the harness dies).
FOREIGN = r"""
import sys, torch
buf = torch.empty(int(sys.argv[1]), dtype=torch.uint8, device="cuda")
buf.fill_(1); torch.cuda.synchronize()
print("READY", flush=True)
sys.stdin.read()
"""

OOM_JOB = r"""
import torch
total = torch.cuda.get_device_properties(0).total_memory
print("allocating", total + 2**30, "bytes on a", total, "byte GPU", flush=True)
x = torch.empty(total + 2**30, dtype=torch.uint8, device="cuda")
print("allocation unexpectedly succeeded", flush=True)
"""


# --------------------------------------------------------------------------- checks


def check_visibility(snap: list[GpuInfo], idle: list[int]) -> None:
    gpus = idle[:4]
    root, work = new_root("vis")
    gate = work / "gate"
    gates.append(gate)
    names = [f"vis{i}.sh" for i in range(len(gpus))]
    scripts = [write_job(work, n, VIS_JOB, [str(work / f"{n}.started"), str(gate)])
               for n in names]
    if not submit(root, *scripts):
        return
    d = start_dispatcher(root, "--gpus", ",".join(map(str, gpus)), "--drain")
    started = wait_for(lambda: all((work / f"{n}.started").exists() for n in names), 90)
    check(f"1 visibility: {len(names)} jobs running at once on GPUs {gpus}", started,
          "" if started else "started: " + str([n for n in names
                                               if (work / f"{n}.started").exists()]))
    gate.touch()
    try:
        rc = d.wait(timeout=60)
    except subprocess.TimeoutExpired:
        rc = None
    check("1 visibility: drain dispatcher exits 0", rc == 0,
          f"rc={rc} {dispatcher_output(d)}".strip())
    by_index = {g.index: g for g in snap}
    seen: dict[str, str] = {}
    for n in names:
        res, rec = log_result(root, n), record(root, n)
        ok = res is not None and state_of(root, n) == "completed"
        if not check(f"1 visibility: {n} completed and reported", ok,
                     "" if ok else f"state={state_of(root, n)} log: {log_tail(root, n)}"):
            continue
        rgpus = rec.get("gpus")
        check(f"1 visibility: {n} sees exactly 1 device, record gpus has 1",
              res["count"] == 1 and isinstance(rgpus, list) and len(rgpus) == 1,
              f"device_count={res['count']} record gpus={rgpus} "
              f"CUDA_VISIBLE_DEVICES={res['cvd']}")
        check(f"1 visibility: {n} matmul ran", bool(res.get("matmul_finite")))
        ident = res["uuid"] or f"{res['name']}#{res['cvd']}"
        seen[n] = ident
        if res["uuid"] and isinstance(rgpus, list) and len(rgpus) == 1 \
                and rgpus[0] in by_index:
            want = by_index[rgpus[0]].uuid
            check(f"1 visibility: {n} device uuid == NVML uuid of GPU {rgpus[0]}",
                  norm_uuid(res["uuid"]) == norm_uuid(want),
                  f"torch {res['uuid']} vs NVML {want}"
                  + ("" if norm_uuid(res["uuid"]) == norm_uuid(want)
                     else " (CUDA device order != NVML order?)"))
    if len(seen) == len(names):
        check("1 visibility: concurrent jobs saw distinct GPUs",
              len(set(seen.values())) == len(names), str(seen))


def check_packing(gpu: int) -> None:
    root, work = new_root("pack")
    gate = work / "gate"
    gates.append(gate)
    names = ["packA.sh", "packB.sh"]
    scripts = [write_job(work, n, HOLD_JOB, [str(2 * GIB), str(work / f"{n}.started"),
                                             str(gate)],
                         header="#GPUDISPATCH --gpu-mem 3G") for n in names]
    d = start_dispatcher(root, "--gpus", str(gpu), "--gpu-poll", "0.5")
    try:
        if not submit(root, *scripts):
            return
        both = wait_for(lambda: all((work / f"{n}.started").exists() for n in names), 60)
        states = {n: state_of(root, n) for n in names}
        st = status_json(root)
        on_gpu = {n: (st.get(n) or {}).get("gpus") for n in names}
        check("2 packing: both 3G jobs hold 2 GiB at once on one GPU",
              bool(both) and all(s == "running" for s in states.values())
              and all(g == [gpu] for g in on_gpu.values()),
              f"states={states} gpus={on_gpu}"
              + ("" if both else f" logs: {[log_tail(root, n, 300) for n in names]}"))
        gate.touch()
        done = wait_for(lambda: all(state_of(root, n) in ("completed", "failed")
                                    for n in names), 60)
        states = {n: state_of(root, n) for n in names}
        check("2 packing: both complete after the gate opens",
              bool(done) and all(s == "completed" for s in states.values()),
              f"states={states}")
    finally:
        gate.touch()
        stop(d)


def check_foreign(probe: NvmlProbe, gpu: int, uuid: str) -> None:
    root, work = new_root("foreign")
    hold = 3 * GIB
    before = next(g for g in probe.snapshot() if g.index == gpu).memory_used
    env = {**GD_ENV, "CUDA_VISIBLE_DEVICES": uuid}
    foreign = subprocess.Popen([PY, "-c", FOREIGN, str(hold)], env=env,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    procs.append(foreign)
    d = None
    try:
        def visible() -> bool:
            g = next(g for g in probe.snapshot() if g.index == gpu)
            return (any(p.pid == foreign.pid for p in g.processes)
                    or g.memory_used - before >= hold) or foreign.poll() is not None
        wait_for(visible, 60, 0.25)
        g = next(g for g in probe.snapshot() if g.index == gpu)
        if not check("3 foreign: NVML shows the foreign process's memory",
                     foreign.poll() is None and g.memory_used - before >= hold - GIB // 4,
                     f"used grew by {(g.memory_used - before) / GIB:.2f} GiB; pid listed: "
                     f"{any(p.pid == foreign.pid for p in g.processes)}; "
                     f"rc={foreign.poll()}"):
            return
        d = start_dispatcher(root, "--gpus", str(gpu), "--gpu-poll", "0.5")
        report = root / ".gpudispatch" / "gpus.json"
        if not check("3 foreign: dispatcher wrote its GPU report",
                     bool(wait_for(report.exists, 30)), dispatcher_output(d)):
            return
        job = write_job(work, "trivial.sh", "print('RESULT {}')", [])
        if not submit(root, job):
            return
        t0 = time.monotonic()
        left = wait_for(lambda: state_of(root, "trivial.sh") != "queue", 3.0)
        waited = time.monotonic() - t0
        check("3 foreign: job stays queued >= 3 s while the GPU is held",
              not left, f"state={state_of(root, 'trivial.sh')} after {waited:.1f} s")
        text = gd("status", "--dir", str(root)).stdout
        check("3 foreign: status says who holds the GPU ('held by')", "held by" in text,
              "" if "held by" in text else text[-800:])
        assert foreign.stdin is not None
        foreign.stdin.close()
        try:
            foreign.wait(timeout=20)
        except subprocess.TimeoutExpired:
            signal_group(foreign, signal.SIGKILL)
        t0 = time.monotonic()
        wait_for(lambda: state_of(root, "trivial.sh") in ("completed", "failed"), 15)
        check("3 foreign: job completes within 15 s of the foreign process ending",
              state_of(root, "trivial.sh") == "completed",
              f"state={state_of(root, 'trivial.sh')} after {time.monotonic() - t0:.1f} s")
    finally:
        if foreign.poll() is None:
            signal_group(foreign, signal.SIGKILL)
            foreign.wait(timeout=10)
        if d is not None:
            stop(d)


def check_oom(gpu: int) -> None:
    root, work = new_root("oom")
    job = write_job(work, "oom.sh", OOM_JOB, [], header="#GPUDISPATCH --oom-retries 1")
    if not submit(root, job):
        return
    d = start_dispatcher(root, "--gpus", str(gpu), "--drain")
    try:
        rc = d.wait(timeout=90)
    except subprocess.TimeoutExpired:
        rc = None
    rec = record(root, "oom.sh")
    state = (status_json(root).get("oom.sh") or {}).get("state") or state_of(root, "oom.sh")
    check("4 oom: drain dispatcher exits 1 (a job failed)", rc == 1, f"rc={rc}")
    check("4 oom: reason oom, attempts 2, state failed",
          rec.get("reason") == "oom" and rec.get("attempts") == 2 and state == "failed",
          f"reason={rec.get('reason')!r} attempts={rec.get('attempts')} state={state}"
          + ("" if rec.get("reason") == "oom" else f" log: {log_tail(root, 'oom.sh', 400)}"))


# --------------------------------------------------------------------------- main


def kill_leftover_jobs() -> None:
    """SIGKILL any job process still running with one of our ROOTs (jobs run in their
    own sessions, so stopping a dispatcher's group does not reach them)."""
    marks = [f"GPUDISPATCH_ROOT={r}".encode() for r in roots]
    marks += [f"GPUDISPATCH_ROOT={r.resolve()}".encode() for r in roots]
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = Path(entry.path, "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(m in env for m in marks):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                pass


def cleanup() -> None:
    for g in gates:
        try:
            g.touch()
        except OSError:
            pass
    for p in procs:
        if p.poll() is None:
            stop(p, grace=3)
    kill_leftover_jobs()
    for r in roots:
        shutil.rmtree(r.parent, ignore_errors=True)


def on_alarm(signum, frame):
    raise OverallTimeout(f"overall limit of {TOTAL_LIMIT_S} s reached")


def main() -> int:
    try:
        probe = NvmlProbe()
        snap = probe.snapshot()
    except GpuProbeError as exc:
        print(f"SKIP: no GPU: NVML unavailable ({exc}); run this on a machine with an "
              "NVIDIA GPU", file=sys.stderr)
        return 2
    if not snap:
        print("SKIP: no GPU: NVML sees no NVIDIA GPU", file=sys.stderr)
        return 2
    torch_check = subprocess.run(
        [PY, "-c", "import torch; print(torch.__version__, torch.cuda.device_count())"],
        capture_output=True, text=True, timeout=120)
    parts = torch_check.stdout.split()
    if torch_check.returncode != 0 or len(parts) != 2 or parts[1] == "0":
        print(f"SKIP: no torch with CUDA for {PY}: "
              f"{(torch_check.stderr.strip().splitlines() or [torch_check.stdout])[-1]}",
              file=sys.stderr)
        return 2
    print(f"torch {parts[0]}, {parts[1]} CUDA device(s); gpudispatch: {' '.join(GD)}")
    for g in snap:
        print(f"  GPU {g.index} {g.name} {g.uuid} used {g.memory_used / GIB:.1f} / "
              f"{g.memory_total / GIB:.1f} GiB, {len(g.processes)} process(es)")
    idle = [g.index for g in snap if g.memory_used < GIB]
    if not idle:
        print("SKIP: no idle GPU (every GPU has >= 1 GiB in use)", file=sys.stderr)
        return 2
    target = next(g for g in snap if g.index == idle[0])

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TOTAL_LIMIT_S)
    try:
        for step in (lambda: check_visibility(snap, idle),
                     lambda: check_packing(target.index),
                     lambda: check_foreign(probe, target.index, target.uuid),
                     lambda: check_oom(target.index)):
            try:
                step()
            except OverallTimeout:
                raise
            except Exception as exc:  # one broken check must not hide the others
                check("unexpected error", False, f"{type(exc).__name__}: {exc}")
    except OverallTimeout as exc:
        check("finished in time", False, str(exc))
    finally:
        signal.alarm(0)
        cleanup()
        probe.close()

    failed = [n for n, ok, _ in results if not ok]
    print(f"\n{len(results) - len(failed)}/{len(results)} checks passed"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
