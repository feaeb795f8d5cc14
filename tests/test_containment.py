"""What a job leaves behind ends with it: children in its process group that it put in
the background, or that ignore SIGTERM, and daemons that left its group and session, are
gone once its end is recorded, before its slot takes another job."""

from __future__ import annotations

import shutil
import signal
import sys

import pytest
from conftest import (
    cli,
    gate_wait,
    job_text,
    logfile_text,
    open_gate,
    pid_alive,
    q,
    record,
    snapshot,
    wait_record,
    wait_state,
    wait_until,
    where,
    write_script,
)

from gpudispatch.cgroups import detect
from gpudispatch.procs import monitor_inline

pytestmark = pytest.mark.slow


def _child(pid_file, trap_term: bool) -> str:
    """A background child that writes its pid and sleeps (ignoring SIGTERM if asked)."""
    trap = 'trap "" TERM; ' if trap_term else ""
    return (f"sh -c '{trap}echo $$ > {q(pid_file)}.tmp && mv {q(pid_file)}.tmp "
            f"{q(pid_file)}; exec sleep 300' &\n"
            f"while [ ! -s {q(pid_file)} ]; do sleep 0.01; done\n")


def test_background_children_end_with_the_job(tmp_path, root, launch):
    pid_file = tmp_path / "child.pid"
    write_script(root / "queue" / "a.sh", job_text(_child(pid_file, False) + "exit 0"))
    proc = launch.run(root, "--slots", "1", "--drain")
    assert proc.wait(timeout=30) == 0
    assert where(root, "a.sh") == "completed"
    child = int(pid_file.read_text())
    wait_until(lambda: not pid_alive(child), timeout=5, message="the job's child to end")


def test_a_child_ignoring_sigterm_ends_after_a_timeout(tmp_path, root, launch):
    """--kill-grace 60: the job's shell ends at the SIGTERM; its child, which ignores it,
    must not outlive the job (nor wait for the grace period)."""
    pid_file = tmp_path / "child.pid"
    body = _child(pid_file, True) + "sleep 300\n"
    write_script(root / "queue" / "slow.sh",
                 job_text(body, header="#GPUDISPATCH --timeout 1\n"))
    proc = launch.run(root, "--slots", "1", "--drain", "--kill-grace", "60")
    assert proc.wait(timeout=30) == 1
    assert record(root, "slow.sh")["reason"].startswith("timeout")
    child = int(pid_file.read_text())
    wait_until(lambda: not pid_alive(child), timeout=5, message="the child to end")


def _report_state(pid_file, seen) -> str:
    """Shell lines, builtins only (no fork: as soon as the job starts): write 'gone' or
    'alive (STATE)' for the process in ``pid_file``."""
    return (f"read -r pid < {q(pid_file)}; state=\n"
            'read -r stat 2>/dev/null < /proc/$pid/stat && set -- $stat && state=$3\n'
            f'case "$state" in ""|Z|X) echo gone;; *) echo "alive ($state)";; esac'
            f" > {q(seen)}\n")


@pytest.mark.parametrize("gap", ["handed over", "started by the dispatcher"])
def test_the_next_job_on_the_slot_starts_after_the_last_ones_children_are_gone(
        tmp_path, root, launch, gap):
    """a leaves a child in its group; b, on the same slot, finds it gone as it starts,
    whether the keeper started b the moment a ended (a hand-over) or the dispatcher did."""
    pid_file, seen, gate = tmp_path / "child.pid", tmp_path / "seen", tmp_path / "gate"
    write_script(root / "queue" / "a.sh", job_text(_child(pid_file, True) + gate_wait(gate)))
    proc = launch.run(root, "--slots", "1")
    wait_until(pid_file.exists, timeout=10, message="a's child to start")
    if gap == "handed over":
        write_script(root / "queue" / "b.sh", job_text(_report_state(pid_file, seen)))
        wait_until(lambda: "b.sh" in logfile_text(root), timeout=10,
                   message="b to be seen")
        open_gate(gate)
    else:
        open_gate(gate)
        wait_state(root, "a.sh", "completed")
        write_script(root / "queue" / "b.sh", job_text(_report_state(pid_file, seen)))
    wait_state(root, "b.sh", "completed")
    assert seen.read_text().strip() == "gone"
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


# ---------------------------------------------------------------------- daemons
# Each case runs under both kinds of containment: the cgroup (CI runs as root) and the
# process group with the dispatcher as the daemons' subreaper.
CAN_MAKE_CGROUPS = detect("cgroup").base is not None
MODES = [pytest.param("cgroup", marks=pytest.mark.skipif(
    not CAN_MAKE_CGROUPS, reason="no cgroup can be made here (not root?)")),
    "process-group"]


def _daemon(pid_file, how: str) -> str:
    """Start a daemon that leaves the job's process group and session, write its pid,
    and wait until it has. ``setsid`` alone: reparented when the job's shell ends; a
    double fork: at once; ``cleared environment``: a double fork with ``env -i``, so that
    nothing in it names the job."""
    tmp = q(f"{pid_file}.tmp")
    inner = f"setsid sh -c 'echo $$ > {tmp} && mv {tmp} {q(pid_file)}; exec sleep 300'"
    if how == "cleared environment":
        inner = (f"env -i {shutil.which('setsid')} /bin/sh -c 'echo $$ > {tmp} && "
                 f"{shutil.which('mv')} {tmp} {q(pid_file)}; exec {shutil.which('sleep')} 300'")
    start = f"{inner} &" if how == "setsid" else f"( {inner} & )"
    return f"{start}\nwhile [ ! -s {q(pid_file)} ]; do sleep 0.01; done\n"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("how", ["setsid", "double fork", "cleared environment"])
def test_daemons_end_with_their_job(tmp_path, root, launch, mode, how):
    pid_file = tmp_path / "daemon.pid"
    write_script(root / "queue" / "a.sh", job_text(_daemon(pid_file, how)))
    proc = launch.run(root, "--slots", "1", "--drain", "--containment", mode)
    assert proc.wait(timeout=30) == 0
    assert where(root, "a.sh") == "completed"
    assert record(root, "a.sh")["extra"]["containment"] == mode.replace("-", " ")
    daemon = int(pid_file.read_text())
    wait_until(lambda: not pid_alive(daemon), timeout=5, message="the daemon to end")


def test_a_daemon_naming_no_job_lives_while_a_job_that_may_have_started_it_runs(
        tmp_path, root, launch):
    """A daemon with a cleared environment names no job: it is killed only once every job
    running when it started has ended. b ends while a (its parent) runs: it lives on."""
    pid_file, gate = tmp_path / "daemon.pid", tmp_path / "gate"
    write_script(root / "queue" / "a.sh",
                 job_text(_daemon(pid_file, "cleared environment") + gate_wait(gate)))
    proc = launch.run(root, "--slots", "2", "--containment", "process-group")
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=10,
               message="a's daemon to start")
    daemon = int(pid_file.read_text())
    write_script(root / "queue" / "b.sh", job_text("exit 0"))
    wait_state(root, "b.sh", "completed", proc=proc)
    assert pid_alive(daemon), "a still runs: its daemon must not be killed"
    open_gate(gate)
    wait_state(root, "a.sh", "completed", proc=proc)
    wait_until(lambda: not pid_alive(daemon), timeout=5, message="a's daemon to end")


@pytest.mark.skipif(not CAN_MAKE_CGROUPS, reason="no cgroup can be made here (not root?)")
def test_the_next_job_starts_once_the_last_ones_daemons_are_gone(tmp_path, root, launch):
    """One slot: b looks for a's daemon as it starts; it must find none (a zombie not
    yet reaped by init is gone: it holds no memory, no GPU, no file). a runs a second, so
    it is in its cgroup when it ends, and its monitor waits for the cgroup to empty.
    (Without one, a daemon that left the job's session dies at the dispatcher's next step
    after the end, which may come just after b started: see the README's limits.)"""
    mode = "cgroup"
    pid_file = tmp_path / "daemon.pid"
    seen = tmp_path / "seen"
    write_script(root / "queue" / "a.sh", job_text(_daemon(pid_file, "setsid") + "sleep 1"))
    write_script(root / "queue" / "b.sh", job_text(
        _report_state(pid_file, seen)))
    proc = launch.run(root, "--slots", "1", "--drain", "--containment", mode)
    assert proc.wait(timeout=30) == 0
    assert seen.read_text().strip() == "gone"


@pytest.mark.parametrize("mode", MODES)
def test_a_cancelled_jobs_daemon_ends(tmp_path, root, launch, mode):
    pid_file = tmp_path / "daemon.pid"
    write_script(root / "queue" / "a.sh", job_text(_daemon(pid_file, "double fork")
                                                   + "sleep 300\n"))
    proc = launch.run(root, "--slots", "1", "--containment", mode)
    wait_until(pid_file.exists, timeout=10, message="the daemon to start")
    daemon = int(pid_file.read_text())
    cli("cancel", "--dir", str(root), "a.sh", check=True)
    wait_until(lambda: where(root, "a.sh") == "failed", timeout=15,
               message=lambda: snapshot(root))
    wait_until(lambda: not pid_alive(daemon), timeout=5, message="the daemon to end")
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


@pytest.mark.skipif(not CAN_MAKE_CGROUPS, reason="no cgroup can be made here (not root?)")
def test_with_no_dispatcher_alive_the_monitor_ends_the_daemons(tmp_path, root, launch):
    """A job that has run a moment is moved into its cgroup, its daemon with it (found by
    its environment: it left the job's group and session). The dispatcher is killed; the
    job ends later: its monitor kills its cgroup itself, and the next dispatcher records
    the job completed."""
    pid_file, gate = tmp_path / "daemon.pid", tmp_path / "gate"
    write_script(root / "queue" / "a.sh", job_text(_daemon(pid_file, "setsid"), gate=None)
                 .replace("exit 0", gate_wait(gate) + "exit 0"))
    proc = launch.run(root, "--slots", "1", "--containment", "cgroup")
    wait_until(pid_file.exists, timeout=10, message="the daemon to start")
    daemon = int(pid_file.read_text())
    cgroup = wait_record(root, "a.sh", lambda r: "cgroup" in r["extra"])["extra"]["cgroup"]

    def enclosed() -> bool:
        try:
            return str(daemon) in open(f"{cgroup}/cgroup.procs").read().split()
        except OSError:
            return False

    wait_until(enclosed, timeout=10, message="the daemon to be moved into the cgroup")
    proc.kill9()
    open_gate(gate)
    wait_until(lambda: not pid_alive(daemon), timeout=10, message="the daemon to end")
    assert launch.run(root, "--slots", "1", "--drain").wait(timeout=30) == 0
    assert where(root, "a.sh") == "completed"


@pytest.mark.parametrize("mode", MODES)
def test_status_says_how_jobs_are_contained(tmp_path, root, launch, mode):
    gate = tmp_path / "gate"
    write_script(root / "queue" / "a.sh", job_text(gate=gate))
    proc = launch.run(root, "--slots", "1", "--containment", mode)
    wait_record(root, "a.sh", lambda r: r.get("pid") is not None)
    shown = cli("status", "--dir", str(root), check=True).stdout
    expected = "a cgroup v2 per job" if mode == "cgroup" else "process group + tracked daemons"
    assert f"contained by {expected}" in " ".join(shown.split())
    open_gate(gate)
    wait_state(root, "a.sh", "completed")
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


def test_containment_cgroup_is_refused_where_none_can_be_made(root):
    """Asked for explicitly, a cgroup that cannot be made is one clear line."""
    if CAN_MAKE_CGROUPS:
        result = cli("run", "--dir", str(root), "--slots", "1", "--drain",
                     "--containment", "cgroup")
        assert result.returncode == 0, result.stderr
    else:
        result = cli("run", "--dir", str(root), "--slots", "1", "--containment", "cgroup")
        assert result.returncode != 0
        assert "--containment cgroup:" in result.stderr
        assert "Traceback" not in result.stderr


# ------------------------------------------------------------------- inline monitors
# A plain /bin/sh job that cannot take the shell from its monitor is sourced by the monitor
# itself (``monitor.INLINE_MONITOR_SCRIPT``): in a cgroup the monitor is moved in with it,
# so that what it starts later is born inside; a SIGKILL spares it, to write the end.
def _inline_child(pid_file) -> str:
    """Inline-safe (no exec, trap, function...): a background child writes its pid."""
    tmp = q(f"{pid_file}.tmp")
    return (f"sh -c 'echo $$ > {tmp} && mv {tmp} {q(pid_file)}; sleep 300' &\n"
            f"while [ ! -s {q(pid_file)} ]; do sleep 0.01; done\n")


def _cgroup_procs(cgroup: str) -> list[int]:
    try:
        with open(f"{cgroup}/cgroup.procs") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


@pytest.mark.parametrize("mode", MODES)
def test_an_inline_jobs_later_children_are_contained_and_end_with_it(
        tmp_path, root, launch, mode):
    pid_file, moved, gate = tmp_path / "child.pid", tmp_path / "moved", tmp_path / "gate"
    write_script(root / "queue" / "a.sh", job_text(
        gate_wait(moved) + _inline_child(pid_file) + gate_wait(gate)))
    proc = launch.run(root, "--slots", "1", "--containment", mode)
    rec = wait_record(root, "a.sh", lambda r: r.get("pid"))
    assert monitor_inline(rec["pid"])
    if mode == "cgroup":
        cgroup = wait_record(root, "a.sh", lambda r: "cgroup" in r["extra"])["extra"]["cgroup"]
        wait_until(lambda: rec["pid"] in _cgroup_procs(cgroup), timeout=10,
                   message="the monitor, the job's shell, to be moved into its cgroup")
    open_gate(moved)
    wait_until(pid_file.exists, timeout=10, message="the child to start")
    child = int(pid_file.read_text())
    if mode == "cgroup":
        assert child in _cgroup_procs(cgroup)  # born inside, not moved later
    open_gate(gate)
    wait_state(root, "a.sh", "completed")
    assert record(root, "a.sh")["exit_code"] == 0
    wait_until(lambda: not pid_alive(child), timeout=5, message="the child to end")
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


@pytest.mark.parametrize("mode", MODES)
def test_an_inline_job_whose_command_ignores_sigterm_is_killed_after_the_grace(
        tmp_path, root, launch, mode):
    """Its shell waits for the command, as a shell does; the SIGKILL after the grace ends
    the command, and the monitor, spared and told, writes the end: 143 for the SIGTERM it
    had waiting (as a subshell would have ended at it), or 137."""
    pid_file = tmp_path / "cmd.pid"
    ignore = ("import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(300)")
    write_script(root / "queue" / "slow.sh", job_text(
        f'{q(sys.executable)} -c "{ignore}"\necho not reached',
        header="#GPUDISPATCH --timeout 1\n"))
    proc = launch.run(root, "--slots", "1", "--drain", "--kill-grace", "1",
                      "--containment", mode)
    assert proc.wait(timeout=30) == 1
    rec = record(root, "slow.sh")
    assert rec["reason"].startswith("timeout"), rec
    assert rec["exit_code"] in (128 + signal.SIGTERM, 128 + signal.SIGKILL), rec
    assert "not reached" not in (root / "logs" / "slow.sh.log").read_text()
    wait_until(lambda: not pid_alive(int(pid_file.read_text())), timeout=5,
               message="the command to end")


@pytest.mark.skipif(not CAN_MAKE_CGROUPS, reason="no cgroup can be made here (not root?)")
def test_with_no_dispatcher_alive_an_inline_monitor_ends_the_daemons(tmp_path, root, launch):
    """In its cgroup with its job, it writes the end, then kills the rest of the cgroup
    (with the shell's own settings: the script's IFS would split the pids it reads)."""
    pid_file, gate = tmp_path / "daemon.pid", tmp_path / "gate"
    tmp = q(f"{pid_file}.tmp")
    write_script(root / "queue" / "a.sh", job_text(
        f"setsid sh -c 'echo $$ > {tmp} && mv {tmp} {q(pid_file)}; sleep 300' &\n"
        f"while [ ! -s {q(pid_file)} ]; do sleep 0.01; done\n" + gate_wait(gate)
        + "IFS=0123456789\n"))
    proc = launch.run(root, "--slots", "1", "--containment", "cgroup")
    wait_until(pid_file.exists, timeout=10, message="the daemon to start")
    daemon = int(pid_file.read_text())
    rec = wait_record(root, "a.sh", lambda r: "cgroup" in r["extra"])
    cgroup = rec["extra"]["cgroup"]
    wait_until(lambda: {daemon, rec["pid"]} <= set(_cgroup_procs(cgroup)), timeout=10,
               message="the daemon and the monitor to be moved into the cgroup")
    proc.kill9()
    open_gate(gate)
    wait_until(lambda: not pid_alive(daemon), timeout=10, message="the daemon to end")
    assert launch.run(root, "--slots", "1", "--drain").wait(timeout=30) == 0
    assert where(root, "a.sh") == "completed"
    assert record(root, "a.sh")["exit_code"] == 0
