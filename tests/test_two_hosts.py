"""Two hosts on one shared queue folder: a second dispatcher runs under another host
name (its own UTS namespace, `unshare --uts`), so it cannot see or signal the first's
processes by host, only through the folder and heartbeats."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest
from conftest import (
    job_env,
    job_text,
    open_gate,
    read_lines,
    record,
    wait_record,
    wait_state,
    wait_until,
    where,
    write_script,
)

pytestmark = pytest.mark.slow
BEAT = "0.3"


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--uts", "true"], capture_output=True).returncode == 0


needs_uts = pytest.mark.skipif(not _unshare_works(),
                               reason="needs `unshare --uts` (root or user namespaces)")


class OtherHost:
    """`gpudispatch run` as host "hostb": hostname set in a new UTS namespace."""

    def __init__(self, root, out):
        command = (f"hostname hostb && exec {sys.executable} -m gpudispatch run -q "
                   f"--dir {root} --slots 1 --heartbeat {BEAT}")
        self._out = open(out, "wb")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(["unshare", "--uts", "sh", "-c", command],
                                     env=job_env(), stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def keeper_pid(self) -> int:
        """The dispatcher's keeper process (the monitors are its children too)."""
        def find():
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        with open(f"/proc/{entry}/stat") as fh:
                            ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                        with open(f"/proc/{entry}/cmdline", "rb") as fh:
                            keeper = b"gpudispatch.keeper" in fh.read()
                    except (OSError, ValueError):
                        continue
                    if ppid == self.proc.pid and keeper:
                        return int(entry)
            return None
        return wait_until(find, 10, message="the other host's keeper")

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._out.close()


@pytest.fixture
def hosts(tmp_path, launch):
    root = tmp_path / "shared"
    (root / "queue").mkdir(parents=True)
    started = []

    def other():
        host = OtherHost(root, tmp_path / f"hostb-{len(started)}.out")
        started.append(host)
        return host

    yield root, other
    for host in started:
        host.close()


@needs_uts
def test_two_hosts_share_a_queue_without_running_a_job_twice(hosts, launch, tmp_path):
    root, other = hosts
    runs = tmp_path / "runs.txt"
    names = [f"j{i:03d}.sh" for i in range(60)]
    for name in names:
        write_script(root / "queue" / name, job_text(runs=runs))
    here = launch.run(root, "--slots", "1", "--heartbeat", BEAT)
    other()
    for name in names:
        wait_state(root, name, "completed", timeout=30, proc=here)
    assert sorted(read_lines(runs)) == names  # each exactly once
    hosts_seen = {record(root, n)["host"] for n in names}
    assert "hostb" in hosts_seen and len(hosts_seen) == 2, hosts_seen


@needs_uts
def test_a_dead_hosts_job_is_run_again_by_the_live_host(hosts, launch, tmp_path):
    root, other = hosts
    gate = tmp_path / "gate"
    b = other()
    wait_until(lambda: os.path.exists(root / ".gpudispatch" / "dispatchers")
               and any(n.startswith("hostb.") for n in os.listdir(root / ".gpudispatch"
                                                                    / "dispatchers")))
    write_script(root / "queue" / "x.sh", job_text(gate=gate))
    rec = wait_record(root, "x.sh", lambda r: r.get("host") == "hostb" and r.get("pid"))
    keeper = b.keeper_pid()
    # Host B dies: its dispatcher, its keeper and the job, all at once.
    for pid in (b.proc.pid, keeper):
        os.kill(pid, signal.SIGKILL)
    os.killpg(rec["pid"], signal.SIGKILL)
    b.proc.wait(10)
    here = launch.run(root, "--slots", "1", "--heartbeat", BEAT)
    wait_record(root, "x.sh", lambda r: r.get("attempts") == 2 and r.get("host") != "hostb",
                timeout=20)
    open_gate(gate)
    wait_state(root, "x.sh", "completed", proc=here)


@needs_uts
@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_a_live_job_on_another_host_is_left_alone_whatever_its_dispatcher(hosts, launch,
                                                                         tmp_path, how):
    """Its dispatcher and keeper killed (or frozen): the heartbeat goes stale, but the
    job's monitor still holds its lock, so this host never takes it over."""
    root, other = hosts
    gate = tmp_path / "gate"
    b = other()
    write_script(root / "queue" / "x.sh", job_text(gate=gate, body="exit 0"))
    wait_record(root, "x.sh", lambda r: r.get("host") == "hostb" and r.get("pid"))
    here = launch.run(root, "--slots", "1", "--heartbeat", BEAT)
    keepers = [b.keeper_pid()]
    for pid in [b.proc.pid, *keepers]:
        os.kill(pid, signal.SIGKILL if how == "killed" else signal.SIGSTOP)
    own_beat = root / ".gpudispatch" / "dispatchers" / f"{os.uname().nodename}.{here.pid}"
    beats = []

    def many_beats_here():
        try:
            mtime = own_beat.stat().st_mtime
        except FileNotFoundError:
            return False
        if not beats or beats[-1] != mtime:
            beats.append(mtime)
        return len(beats) >= 8  # well past 3 missed beats of the other host

    wait_until(many_beats_here, 20, message=lambda: f"beats: {beats}")
    assert where(root, "x.sh") == "running"
    assert record(root, "x.sh")["attempts"] == 1  # not taken over, not run again
    open_gate(gate)
    if how == "frozen":
        for pid in [b.proc.pid, *keepers]:
            os.kill(pid, signal.SIGCONT)
    # Its monitor writes the status and lets go of the lock: one host concludes it.
    wait_state(root, "x.sh", "completed", timeout=20, proc=here)
    assert record(root, "x.sh")["attempts"] == 1 and record(root, "x.sh")["exit_code"] == 0
