"""GPU probes and helpers: parsers on captured nvidia-smi output, the fake probe, packing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gpudispatch.gpus import (
    DEFAULT_BUSY_THRESHOLD,
    FAKE_ENV,
    GIB,
    MIB,
    FakeProbe,
    GpuInfo,
    GpuProbeError,
    GpuProcess,
    NoGpusError,
    NvidiaSmiProbe,
    NvmlProbe,
    default_probe,
    descendant_pids,
    foreign_used_bytes,
    format_bytes,
    is_busy_by_foreign,
    parse_smi_apps,
    parse_smi_gpus,
    parse_smi_list,
    resolve_gpus,
    write_fake_gpus,
)

# --------------------------------------------------------------------------- resolve_gpus


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("0", [0]),
        ("0,1,3", [0, 1, 3]),
        (" 2 , 0 ", [2, 0]),
        ("0-3", [0, 1, 2, 3]),
        ("0-1,4,6-7", [0, 1, 4, 6, 7]),
        ("5-5", [5]),
        ("10,11", [10, 11]),
    ],
)
def test_resolve_gpus_lists(spec: str, expected: list[int]) -> None:
    assert resolve_gpus(spec) == expected


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("a", "'a' is not a GPU index"),
        ("0,,1", "'' is not a GPU index"),
        ("-1", "not a GPU index"),
        ("1.5", "not a GPU index"),
        ("3-1", "runs backwards"),
        ("0,0", "listed twice"),
        ("0-2,1", "listed twice"),
        ("gpu0", "not a GPU index"),
    ],
)
def test_resolve_gpus_rejects_bad_text(spec: str, fragment: str) -> None:
    with pytest.raises(ValueError, match="--gpus") as err:
        resolve_gpus(spec)
    assert fragment in str(err.value)
    assert not isinstance(err.value, NoGpusError)


def test_resolve_all_asks_the_probe() -> None:
    probe = FakeProbe([_gpu(2), _gpu(0), _gpu(1)])
    assert resolve_gpus("all", probe=probe) == [0, 1, 2]
    assert resolve_gpus(" ALL ", probe=probe) == [0, 1, 2]


def test_resolve_all_with_empty_probe_raises() -> None:
    with pytest.raises(NoGpusError, match="--gpus 0,1"):
        resolve_gpus("all", probe=FakeProbe([]))


def _nvml_sees_gpus() -> bool:
    try:
        probe = NvmlProbe()
    except GpuProbeError:
        return False
    try:
        return bool(probe.indices())
    finally:
        probe.close()


def test_resolve_all_on_host_without_gpus_raises_real(monkeypatch, tmp_path) -> None:
    """The real path on a CPU-only host: no fake, NVML fails, nvidia-smi not on PATH."""
    if _nvml_sees_gpus():
        pytest.skip("this host has a GPU that NVML sees")
    monkeypatch.delenv(FAKE_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no nvidia-smi
    assert default_probe() is None
    with pytest.raises(NoGpusError) as err:
        resolve_gpus("all")
    msg = str(err.value)
    assert "--gpus 0,1" in msg and "--slots K" in msg
    assert isinstance(err.value, ValueError)


def test_nvml_probe_fails_cleanly_without_driver() -> None:
    if _nvml_sees_gpus():
        pytest.skip("this host has a GPU that NVML sees")
    with pytest.raises(GpuProbeError, match="NVML"):
        NvmlProbe()


# --------------------------------------------------------------------------- nvidia-smi

SMI_L = """\
GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-8a6b4c2e-1f0d-4e9a-bb3c-0123456789ab)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-19e3d5f7-2a4b-4c6d-8e0f-fedcba987654)
GPU 2: NVIDIA A100-SXM4-40GB (UUID: GPU-00000000-aaaa-bbbb-cccc-dddddddddddd)
  MIG 1g.5gb      Device  0: (UUID: MIG-11111111-2222-3333-4444-555555555555)
"""

SMI_GPUS = """\
0, NVIDIA H100 80GB HBM3, GPU-8a6b4c2e-1f0d-4e9a-bb3c-0123456789ab, 81559, 45210, 98
1, NVIDIA H100 80GB HBM3, GPU-19e3d5f7-2a4b-4c6d-8e0f-fedcba987654, 81559, 4, 0
2, NVIDIA A100-SXM4-40GB, GPU-00000000-aaaa-bbbb-cccc-dddddddddddd, 40960, 0, [N/A]
"""

SMI_APPS = """\
GPU-8a6b4c2e-1f0d-4e9a-bb3c-0123456789ab, 31337, 44000
GPU-8a6b4c2e-1f0d-4e9a-bb3c-0123456789ab, 31338, [N/A]
GPU-00000000-aaaa-bbbb-cccc-dddddddddddd, 777, 512
"""


def test_parse_smi_list() -> None:
    assert parse_smi_list(SMI_L) == [
        (0, "NVIDIA H100 80GB HBM3", "GPU-8a6b4c2e-1f0d-4e9a-bb3c-0123456789ab"),
        (1, "NVIDIA H100 80GB HBM3", "GPU-19e3d5f7-2a4b-4c6d-8e0f-fedcba987654"),
        (2, "NVIDIA A100-SXM4-40GB", "GPU-00000000-aaaa-bbbb-cccc-dddddddddddd"),
    ]


@pytest.mark.parametrize(
    "text",
    ["", "No devices were found\n",
     "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n"],
)
def test_parse_smi_list_nothing(text: str) -> None:
    assert parse_smi_list(text) == []


def test_parse_smi_gpus() -> None:
    gpus = parse_smi_gpus(SMI_GPUS)
    assert [(g.index, g.name, g.memory_total, g.memory_used, g.utilization) for g in gpus] == [
        (0, "NVIDIA H100 80GB HBM3", 81559 * MIB, 45210 * MIB, 98),
        (1, "NVIDIA H100 80GB HBM3", 81559 * MIB, 4 * MIB, 0),
        (2, "NVIDIA A100-SXM4-40GB", 40960 * MIB, 0, None),
    ]
    assert gpus[2].uuid == "GPU-00000000-aaaa-bbbb-cccc-dddddddddddd"
    assert all(g.processes == [] for g in gpus)


def test_parse_smi_gpus_name_with_comma() -> None:
    [g] = parse_smi_gpus("3, Odd, Board, GPU-x, 1024, 512, [Not Supported]\n")
    assert (g.index, g.name, g.uuid, g.memory_free, g.utilization) == (
        3, "Odd, Board", "GPU-x", 512 * MIB, None)


def test_parse_smi_apps() -> None:
    apps = parse_smi_apps(SMI_APPS)
    assert apps == {
        "GPU-8a6b4c2e-1f0d-4e9a-bb3c-0123456789ab": [
            GpuProcess(31337, 44000 * MIB), GpuProcess(31338, None)],
        "GPU-00000000-aaaa-bbbb-cccc-dddddddddddd": [GpuProcess(777, 512 * MIB)],
    }
    assert parse_smi_apps("") == {}
    assert parse_smi_apps("No running processes found\n") == {}


def _fake_smi(tmp_path, gpus: str, apps: str) -> str:
    """An executable standing in for nvidia-smi, answering with captured output."""
    (tmp_path / "L.txt").write_text(SMI_L)
    (tmp_path / "gpus.txt").write_text(gpus)
    (tmp_path / "apps.txt").write_text(apps)
    exe = tmp_path / "nvidia-smi"
    exe.write_text(
        "#!/bin/sh\n"
        f'd="{tmp_path}"\n'
        'case "$1" in\n'
        '  -L) cat "$d/L.txt";;\n'
        '  --query-gpu=*) cat "$d/gpus.txt";;\n'
        '  --query-compute-apps=*) cat "$d/apps.txt";;\n'
        '  *) echo "bad args: $*" >&2; exit 2;;\n'
        "esac\n"
    )
    exe.chmod(0o755)
    return str(exe)


def test_nvidia_smi_probe_joins_processes_and_proc(tmp_path) -> None:
    me = os.getpid()
    apps = SMI_APPS + f"GPU-19e3d5f7-2a4b-4c6d-8e0f-fedcba987654, {me}, 100\n"
    probe = NvidiaSmiProbe(_fake_smi(tmp_path, SMI_GPUS, apps))
    assert probe.indices() == [0, 1, 2]
    snap = probe.snapshot()
    assert [p.pid for p in snap[0].processes] == [31337, 31338]
    [mine] = snap[1].processes
    assert mine.used_bytes == 100 * MIB
    cmdline = Path(f"/proc/{me}/cmdline").read_bytes().rstrip(b"\0").replace(b"\0", b" ")
    assert mine.command == cmdline.decode()
    assert mine.user is not None


def test_nvidia_smi_probe_errors_become_probe_errors(tmp_path) -> None:
    exe = tmp_path / "nvidia-smi"
    exe.write_text("#!/bin/sh\necho 'driver not loaded' >&2\nexit 9\n")
    exe.chmod(0o755)
    with pytest.raises(GpuProbeError, match="exited 9: driver not loaded"):
        NvidiaSmiProbe(str(exe)).indices()
    with pytest.raises(GpuProbeError, match="failed"):
        NvidiaSmiProbe(str(tmp_path / "missing")).snapshot()


def test_default_probe_falls_back_to_nvidia_smi(monkeypatch, tmp_path) -> None:
    if _nvml_sees_gpus():
        pytest.skip("NVML would win on this host")
    monkeypatch.delenv(FAKE_ENV, raising=False)
    _fake_smi(tmp_path, SMI_GPUS, "")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}/bin{os.pathsep}/usr/bin")
    probe = default_probe()
    assert isinstance(probe, NvidiaSmiProbe)
    assert resolve_gpus("all") == [0, 1, 2]


# --------------------------------------------------------------------------- fake probe


def _gpu(index: int, used: int = 0, procs: list[GpuProcess] | None = None,
         total: int = 80 * GIB) -> GpuInfo:
    return GpuInfo(index, "Fake", f"GPU-fake-{index}", total, used, None, procs or [])


def test_fake_probe_returns_copies() -> None:
    probe = FakeProbe([_gpu(0, procs=[GpuProcess(1, 5)])])
    probe.snapshot()[0].processes[0].used_bytes = 999
    assert probe.snapshot()[0].processes[0].used_bytes == 5
    with pytest.raises(ValueError):
        FakeProbe()


def test_fake_env_round_trip_and_reread(monkeypatch, tmp_path) -> None:
    path = tmp_path / "gpus.json"
    gpus = [_gpu(0), _gpu(1, used=3 * GIB, procs=[GpuProcess(4242, 3 * GIB, "bob", "x")])]
    write_fake_gpus(path, gpus)
    monkeypatch.setenv(FAKE_ENV, str(path))
    probe = default_probe()
    assert isinstance(probe, FakeProbe)
    assert probe.snapshot() == gpus
    assert resolve_gpus("all") == [0, 1]

    # A foreign job appears on GPU 0 while the probe lives: the next snapshot sees it.
    assert not is_busy_by_foreign(probe.snapshot()[0], set())
    gpus[0] = _gpu(0, used=20 * GIB, procs=[GpuProcess(999, 20 * GIB)])
    write_fake_gpus(path, gpus)
    assert is_busy_by_foreign(probe.snapshot()[0], set())
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temp file


def test_fake_file_minimal_shape_defaults(tmp_path) -> None:
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps([
        {"index": 0, "memory_total": 1000, "memory_used": 10},
        {"index": 1, "memory_total": 1000, "memory_used": 10, "utilization": 50,
         "processes": [{"pid": 7}]},
    ]))
    a, b = FakeProbe(path=path).snapshot()
    assert (a.name, a.uuid, a.utilization, a.processes) == ("Fake GPU", "GPU-fake-0", None, [])
    assert b.utilization == 50 and b.processes == [GpuProcess(7, None, None, None)]


@pytest.mark.parametrize(
    "content",
    ["", "{not json", '{"index": 0}', '[{"index": 0}]', '[{"memory_total": 1}]'],
)
def test_fake_file_errors_are_clear(tmp_path, content: str) -> None:
    path = tmp_path / "gpus.json"
    path.write_text(content)
    with pytest.raises(GpuProbeError, match=FAKE_ENV):
        FakeProbe(path=path).snapshot()


def test_fake_from_env_unset_and_missing_file(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv(FAKE_ENV, raising=False)
    with pytest.raises(GpuProbeError, match="not set"):
        FakeProbe.from_env()
    monkeypatch.setenv(FAKE_ENV, str(tmp_path / "nope.json"))
    with pytest.raises(NoGpusError, match="could not list GPUs"):
        resolve_gpus("all")


# --------------------------------------------------------------------------- packing


OWN = {100, 101}


@pytest.mark.parametrize(
    "used, procs, foreign, busy",
    [
        (0, [], 0, False),
        (10 * GIB, [GpuProcess(100, 10 * GIB)], 0, False),  # only our job
        (10 * GIB, [GpuProcess(100, 7 * GIB), GpuProcess(101, 3 * GIB)], 0, False),
        (300 * MIB, [GpuProcess(5, 300 * MIB)], 300 * MIB, False),  # a monitoring context
        (GIB, [GpuProcess(5, GIB)], GIB, True),  # threshold is inclusive
        (12 * GIB, [GpuProcess(100, 2 * GIB), GpuProcess(5, 10 * GIB)], 10 * GIB, True),
        (12 * GIB, [GpuProcess(5, 512 * MIB), GpuProcess(6, 600 * MIB)], 1112 * MIB, True),
        # Hidden per-process memory: the foreign process is charged what is unexplained.
        (9 * GIB, [GpuProcess(100, 4 * GIB), GpuProcess(5, None)], 5 * GIB, True),
        (4 * GIB, [GpuProcess(100, 4 * GIB), GpuProcess(5, None)], 0, False),
        # Our own process hiding its memory is not charged to anyone foreign.
        (9 * GIB, [GpuProcess(100, None)], 0, False),
    ],
)
def test_foreign_detection(used: int, procs: list[GpuProcess], foreign: int,
                           busy: bool) -> None:
    info = _gpu(0, used=used, procs=procs)
    assert foreign_used_bytes(info, OWN) == foreign
    assert is_busy_by_foreign(info, OWN) is busy


def test_threshold_is_overridable_and_default_is_one_gib() -> None:
    assert DEFAULT_BUSY_THRESHOLD == GIB
    info = _gpu(0, used=300 * MIB, procs=[GpuProcess(5, 300 * MIB)])
    assert is_busy_by_foreign(info, set(), threshold_bytes=256 * MIB)
    assert not is_busy_by_foreign(info, {5}, threshold_bytes=0 + 1)


def test_descendant_pids_follows_a_real_process_tree() -> None:
    # sh -> sleep: the grandchild holds the "GPU", so it must count as ours.
    child = subprocess.Popen(["/bin/sh", "-c", "sleep 30 & echo $!; wait"],
                             stdout=subprocess.PIPE, text=True)
    grandchild = -1
    try:
        assert child.stdout is not None
        grandchild = int(child.stdout.readline())
        pids = descendant_pids({os.getpid()})
        assert {os.getpid(), child.pid, grandchild} <= pids
        assert os.getppid() not in pids
        assert descendant_pids({child.pid}) == {child.pid, grandchild}
        info = _gpu(0, used=8 * GIB, procs=[GpuProcess(grandchild, 8 * GIB)])
        assert not is_busy_by_foreign(info, descendant_pids({child.pid}))
        assert is_busy_by_foreign(info, {child.pid})
    finally:
        with contextlib.suppress(ProcessLookupError):
            if grandchild > 0:
                os.kill(grandchild, signal.SIGKILL)
        child.kill()
        child.wait()


@pytest.mark.parametrize(
    "n, text",
    [(None, "?"), (0, "0 B"), (512, "512 B"), (1023, "1023 B"), (1536, "1.5 KiB"),
     (300 * MIB, "300.0 MiB"), (80 * GIB, "80.0 GiB"), (81559 * MIB, "79.6 GiB"),
     (3 * 1024 * GIB, "3.0 TiB"), (5000 * 1024 * GIB, "5000.0 TiB"), (-2 * GIB, "-2.0 GiB")],
)
def test_format_bytes(n: int | None, text: str) -> None:
    assert format_bytes(n) == text


def test_module_imports_without_pynvml_loaded() -> None:
    """pynvml is imported lazily: importing gpudispatch.gpus must not load it."""
    code = "import sys, gpudispatch.gpus; print('pynvml' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
