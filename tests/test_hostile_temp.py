"""Temporary files: unguessable names, created exclusively, never through a planted symlink.

Before this, ``enqueue_text`` (behind ``submit``, ``sweep`` and the Python API) wrote each
script to ``.gpudispatch/tmp/HOST.PID.N.sh`` with ``O_TRUNC`` and no ``O_NOFOLLOW``, and
``write_fake_gpus`` to ``.NAME.PID.tmp``: a symlink planted at one of those names made
the write land on the file it points to. Here symlinks are planted at every such name
(this process's pid is known) and at the files' final names, and the files outside
ROOT they point to must come out untouched.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from conftest import names_in

from gpudispatch.control import submit_file
from gpudispatch.gpus import FakeProbe, GpuInfo, write_fake_gpus
from gpudispatch.job import JobState
from gpudispatch.store import FolderQueue
from gpudispatch.sweep import build_sweep, queue_sweep

HOST = socket.gethostname()
PLANTED = 1000  # more than the old counter reaches in one test process


def outside_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A precious file outside ROOT, and a path there that must not come to exist."""
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = outside / "precious"
    precious.write_text("precious\n")
    return outside, precious, outside / "created"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_symlinks_at_old_temp_names_and_final_names_are_not_followed(tmp_path: Path) -> None:
    outside, precious, created = outside_files(tmp_path)
    queue = FolderQueue(tmp_path / "root")
    layout = queue.layout
    pid = os.getpid()
    for n in range(PLANTED):  # the old names, half to a file, half dangling
        target = precious if n % 2 else created
        os.symlink(target, f"{layout.tmp}/{HOST}.{pid}.{n}.sh")
    planted = set(os.listdir(layout.tmp))
    # At final names too: a record and the pause flag (renamed over, never written into).
    os.symlink(precious, layout.record("direct.sh"))
    os.symlink(created, layout.paused_flag)
    before = snapshot(outside)

    assert queue.enqueue_text("direct.sh", "#!/bin/sh\necho direct\n") == "direct.sh"
    script = tmp_path / "mine.sh"
    script.write_text("#!/bin/sh\necho mine\n")
    submit_file(queue, script)
    sweep = build_sweep({"program": "train.py", "prefix": "sw",
                         "parameters": {"lr": {"values": [1, 2, 3]}}})
    queue_sweep(sweep.jobs, queue, sweep.name)
    queue.write_record(queue.read_record("mine.sh"))
    queue.set_paused(True)

    assert snapshot(outside) == before  # nothing outside ROOT written or created
    assert names_in(layout.root, "queue") == ["direct.sh", "mine.sh", "sw-0001.sh",
                                              "sw-0002.sh", "sw-0003.sh"]
    for name in names_in(layout.root, "queue"):
        path = Path(layout.script(JobState.QUEUED, name))
        assert not path.is_symlink() and path.read_text().startswith("#!/bin/sh\n")
        assert path.stat().st_mode & 0o100  # still executable
        assert not Path(layout.record(name)).is_symlink()
    assert not layout.paused_flag.is_symlink() and queue.is_paused()
    assert set(os.listdir(layout.tmp)) == planted  # every temporary of ours is gone


def test_fake_gpu_file_ignores_a_symlink_at_the_old_temp_name(tmp_path: Path) -> None:
    outside, precious, created = outside_files(tmp_path)
    path = tmp_path / "gpus.json"
    os.symlink(precious, tmp_path / f".gpus.json.{os.getpid()}.tmp")
    before = snapshot(outside)
    gpu = GpuInfo(index=0, name="Fake", uuid="GPU-0", memory_total=100, memory_used=0,
                  utilization=0)
    write_fake_gpus(path, [gpu])
    assert snapshot(outside) == before
    assert [g.index for g in FakeProbe(path=path).snapshot()] == [0]
