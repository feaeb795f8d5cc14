"""The keeper and the per-job monitor on their own: starts, ends, exit files that outlive
every gpudispatch process, hand-overs in run order, and the job lock."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import gate_wait, pid_alive, wait_until

from gpudispatch import procs
from gpudispatch.job import JobState
from gpudispatch.keeper import (
    CHAINED,
    Exited,
    Handover,
    HandoverReturned,
    Keeper,
    SpawnRequest,
    Started,
)
from gpudispatch.monitor import monitor_argv
from gpudispatch.store import FolderQueue


@pytest.fixture
def setup(tmp_path):
    queue = FolderQueue(tmp_path / "root")
    keeper = Keeper(str(queue.layout.root), dict(os.environ))
    keeper.start()
    yield queue, keeper
    keeper.close()


def write(queue: FolderQueue, state: JobState, name: str, body: str) -> str:
    path = queue.layout.script(state, name)
    with open(path, "w") as fh:
        fh.write(f"#!/bin/sh\n{body}\n")
    os.chmod(path, 0o755)
    return queue.layout.script(JobState.RUNNING, name)


def request(queue: FolderQueue, name: str, attempt: int = 1,
            inline: bool = False) -> SpawnRequest:
    path = queue.layout.script(JobState.RUNNING, name)
    log = queue.layout.job_log(name, attempt)
    inode = os.lstat(queue.layout.script(queue.locate(name), name)).st_ino
    return SpawnRequest(name, monitor_argv(["/bin/sh", path], True, inline=inline),
                        {**queue.layout.job_env(name, attempt, [], log, inode), "X": "1"}, log)


def status(queue: FolderQueue, name: str):
    """What the monitor wrote for the job's current script (None until it has)."""
    return queue.exit_status(name)


def messages_until(keeper: Keeper, predicate, timeout=10.0) -> list:
    seen: list = []

    def check():
        seen.extend(keeper.messages())
        return predicate(seen)

    wait_until(check, timeout, message=lambda: f"keeper messages: {seen}")
    return seen


def monitor_ready(pid: int) -> bool:
    """Its trap is set (a SIGTERM sooner kills the monitor itself: the job is then
    interrupted, as the dispatcher's tests of cancel-at-start show)."""
    with open(f"/proc/{pid}/status") as fh:
        caught = next(line for line in fh if line.startswith("SigCgt:")).split()[1]
    return bool(int(caught, 16) & (1 << (signal.SIGTERM - 1)))


def started(seen: list, name: str) -> Started:
    return next(m for m in seen if isinstance(m, Started) and m.name == name)


def test_reports_start_and_exit_and_the_monitor_writes_the_status(setup):
    queue, keeper = setup
    write(queue, JobState.RUNNING, "a.sh", 'echo "out $X $0"; exit 3')
    first = keeper.spawn(request(queue, "a.sh"), None)
    assert isinstance(first, Started) and first.name == "a.sh"
    seen = messages_until(keeper, lambda m: any(isinstance(x, Exited) for x in m))
    exited = next(m for m in seen if isinstance(m, Exited))
    assert (exited.name, exited.pid, exited.code) == ("a.sh", first.pid, 3)
    log = Path(queue.layout.job_log("a.sh", 1)).read_text()
    assert log == f"out 1 {queue.layout.script(JobState.RUNNING, 'a.sh')}\n"
    written = status(queue, "a.sh")
    assert (written.attempt, written.code) == (1, 3)
    # Another job under the same name (another script) does not see that line as its own.
    os.rename(queue.layout.script(JobState.RUNNING, "a.sh"),
              queue.layout.script(JobState.COMPLETED, "a.sh"))
    write(queue, JobState.RUNNING, "a.sh", "true")
    assert status(queue, "a.sh") is None


def test_the_exit_status_survives_the_death_of_keeper_and_dispatcher(setup, tmp_path):
    queue, keeper = setup
    gate = tmp_path / "gate"
    write(queue, JobState.RUNNING, "a.sh", f"while [ ! -e {gate} ]; do sleep 0.02; done; exit 7")
    pid = keeper.spawn(request(queue, "a.sh", attempt=2), None).pid
    os.kill(keeper.pid, signal.SIGKILL)  # every gpudispatch process of this job is gone
    wait_until(lambda: os.waitpid(keeper.pid, os.WNOHANG)[0] or not pid_alive(keeper.pid))
    assert procs.pid_alive(pid)
    gate.touch()
    written = wait_until(lambda: status(queue, "a.sh"))
    assert (written.attempt, written.code) == (2, 7)


def test_a_sigterm_to_the_monitor_alone_does_not_stop_the_job(setup, tmp_path):
    queue, keeper = setup
    gate = tmp_path / "gate"
    write(queue, JobState.RUNNING, "a.sh", f"while [ ! -e {gate} ]; do sleep 0.02; done")
    pid = keeper.spawn(request(queue, "a.sh"), None).pid
    wait_until(lambda: monitor_ready(pid))
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        os.kill(pid, sig)
    gate.touch()
    seen = messages_until(keeper, lambda m: any(isinstance(x, Exited) for x in m))
    assert next(m for m in seen if isinstance(m, Exited)).code == 0


def test_sigkill_ends_the_job_but_not_its_monitor(setup):
    queue, keeper = setup
    write(queue, JobState.RUNNING, "a.sh", "trap '' TERM; sleep 30 & wait")
    pid = keeper.spawn(request(queue, "a.sh"), None).pid
    wait_until(lambda: monitor_ready(pid) and len(procs._members(pid)) >= 3)  # sleep too
    procs.signal_job(pid, signal.SIGTERM)  # ignored by the job
    procs.signal_job(pid, signal.SIGKILL)
    seen = messages_until(keeper, lambda m: any(isinstance(x, Exited) for x in m))
    assert next(m for m in seen if isinstance(m, Exited)).code == 128 + signal.SIGKILL
    assert status(queue, "a.sh").code == 128 + signal.SIGKILL


def test_the_lock_is_held_while_the_monitor_lives_and_freed_when_it_ends(setup, tmp_path):
    queue, keeper = setup
    gate = tmp_path / "gate"
    write(queue, JobState.QUEUED, "a.sh", f"while [ ! -e {gate} ]; do sleep 0.02; done")
    fd = queue.lock_job("a.sh", JobState.QUEUED)
    assert fd is not None and queue.lock_job("a.sh", JobState.QUEUED) is None
    assert queue.claim("a.sh")
    assert isinstance(keeper.spawn(request(queue, "a.sh"), fd), Started)
    os.close(fd)  # the dispatcher dies: the monitor still holds the job
    assert queue.lock_job("a.sh", JobState.RUNNING) is None
    gate.touch()
    messages_until(keeper, lambda m: any(isinstance(x, Exited) for x in m))
    again = queue.lock_job("a.sh", JobState.RUNNING)
    assert again is not None  # no owner left: one process may conclude it
    os.close(again)


def test_handover_claims_and_starts_the_next_job_when_the_first_ends(setup, tmp_path):
    queue, keeper = setup
    gate = tmp_path / "gate"
    write(queue, JobState.RUNNING, "a.sh", f"while [ ! -e {gate} ]; do sleep 0.02; done")
    first = keeper.spawn(request(queue, "a.sh"), None).pid
    write(queue, JobState.QUEUED, "b.sh", "echo b")
    st = os.lstat(queue.layout.script(JobState.QUEUED, "b.sh"))
    keeper.hand_over(Handover("b.sh", {first: request(queue, "b.sh")},
                              (st.st_ino, st.st_size, st.st_mtime_ns)))
    assert queue.locate("b.sh") is JobState.QUEUED  # not claimed while a.sh runs
    probe = queue.lock_job("b.sh", JobState.QUEUED)
    assert probe is not None  # nor locked: another dispatcher may still take it
    os.close(probe)
    gate.touch()
    seen = messages_until(keeper, lambda m: any(isinstance(x, Started) and x.name == "b.sh"
                                                for x in m))
    follow = started(seen, "b.sh")
    assert follow.after == first and follow.lock_fd is not None  # the lock comes with it
    os.close(follow.lock_fd)
    assert queue.locate("b.sh") is JobState.RUNNING


def test_a_handover_ends_what_the_job_it_follows_left_in_its_group(setup, tmp_path):
    """The keeper starts the next job the moment the first ends, maybe before the
    dispatcher hears of that end: it kills the first one's leftovers itself first."""
    queue, keeper = setup
    gate, child = tmp_path / "gate", tmp_path / "child.pid"
    write(queue, JobState.RUNNING, "a.sh",
          f"sh -c 'trap \"\" TERM; echo $$ > {child}; exec sleep 300' &\n"
          f"while [ ! -e {gate} ]; do sleep 0.02; done")
    first = keeper.spawn(request(queue, "a.sh"), None).pid
    write(queue, JobState.QUEUED, "b.sh", "echo b")
    st = os.lstat(queue.layout.script(JobState.QUEUED, "b.sh"))
    keeper.hand_over(Handover("b.sh", {first: request(queue, "b.sh")},
                              (st.st_ino, st.st_size, st.st_mtime_ns)))
    wait_until(lambda: child.exists() and child.read_text().strip(), 10)
    pid = int(child.read_text())
    gate.touch()
    seen = messages_until(keeper, lambda m: any(isinstance(x, Started) and x.name == "b.sh"
                                                for x in m))
    os.close(started(seen, "b.sh").lock_fd)
    wait_until(lambda: not pid_alive(pid), 5, message="a's child to be killed")


def test_a_job_that_may_follow_either_of_two_starts_after_the_first_to_end(setup, tmp_path):
    queue, keeper = setup
    gates = {n: tmp_path / f"gate-{n}" for n in ("a", "b")}
    pids = {}
    for n in ("a", "b"):
        write(queue, JobState.RUNNING, f"{n}.sh",
              f"while [ ! -e {gates[n]} ]; do sleep 0.02; done")
        pids[n] = keeper.spawn(request(queue, f"{n}.sh"), None).pid
    for n in ("c", "d"):
        write(queue, JobState.QUEUED, f"{n}.sh", "true")
    st = {n: os.lstat(queue.layout.script(JobState.QUEUED, f"{n}.sh")) for n in ("c", "d")}
    # c may follow either; d was handed over after it, and may only follow a.sh.
    keeper.hand_over(Handover("c.sh", {pids["a"]: request(queue, "c.sh"),
                                       pids["b"]: request(queue, "c.sh")},
                              (st["c"].st_ino, st["c"].st_size, st["c"].st_mtime_ns)))
    keeper.hand_over(Handover("d.sh", {pids["a"]: request(queue, "d.sh")},
                              (st["d"].st_ino, st["d"].st_size, st["d"].st_mtime_ns)))
    gates["a"].touch()  # a.sh ends first: c.sh, the earlier, takes its place, not d.sh
    seen = messages_until(keeper, lambda m: any(isinstance(x, Started) for x in m))
    assert [m.name for m in seen if isinstance(m, Started)] == ["c.sh"]
    assert started(seen, "c.sh").after == pids["a"]
    assert queue.locate("d.sh") is JobState.QUEUED
    gates["b"].touch()


def identity(queue: FolderQueue, name: str) -> tuple[int, int, int]:
    st = os.lstat(queue.layout.script(JobState.QUEUED, name))
    return st.st_ino, st.st_size, st.st_mtime_ns


def chain(queue: FolderQueue, keeper: Keeper, first: int, names: list[str]) -> None:
    """Hand ``names`` over: the first after the process ``first``, each next after it."""
    keeper.hand_over(Handover(names[0], {first: request(queue, names[0])},
                              identity(queue, names[0])))
    for ahead, name in zip(names, names[1:], strict=False):
        keeper.hand_over(Handover(name, {CHAINED: request(queue, name)},
                                  identity(queue, name), after_job=ahead))


def test_a_chain_of_handovers_runs_one_after_another_in_the_slot(setup, tmp_path):
    """The keeper starts each job of a chain when the one before it ends, with no word
    from the dispatcher in between; each start says which process it followed."""
    queue, keeper = setup
    gate, runs = tmp_path / "gate", tmp_path / "runs"
    write(queue, JobState.RUNNING, "a.sh", f"while [ ! -e {gate} ]; do sleep 0.02; done")
    first = keeper.spawn(request(queue, "a.sh"), None).pid
    for n in ("b", "c", "d"):
        write(queue, JobState.QUEUED, f"{n}.sh", f"echo {n} >> {runs}")
    chain(queue, keeper, first, ["b.sh", "c.sh", "d.sh"])
    assert [queue.locate(n) for n in ("b.sh", "c.sh", "d.sh")] == [JobState.QUEUED] * 3
    gate.touch()
    seen = messages_until(keeper, lambda m: sum(isinstance(x, Exited) for x in m) == 4)
    starts = [m for m in seen if isinstance(m, Started)]
    for m in starts:
        os.close(m.lock_fd)
    assert [m.name for m in starts] == ["b.sh", "c.sh", "d.sh"]
    assert [m.after for m in starts] == [first, starts[0].pid, starts[1].pid]
    assert runs.read_text().split() == ["b", "c", "d"]  # one after another, in order


@pytest.mark.parametrize("how", ["taken", "withdrawn"])
def test_a_chained_job_takes_the_place_of_one_that_will_not_start(setup, tmp_path, how):
    """b.sh, handed over after a.sh, is taken by someone else (or withdrawn) before a.sh
    ends: c.sh, chained to it, follows a.sh instead, in the same slot."""
    queue, keeper = setup
    gate = tmp_path / "gate"
    write(queue, JobState.RUNNING, "a.sh", f"while [ ! -e {gate} ]; do sleep 0.02; done")
    first = keeper.spawn(request(queue, "a.sh"), None).pid
    for n in ("b", "c"):
        write(queue, JobState.QUEUED, f"{n}.sh", "true")
    chain(queue, keeper, first, ["b.sh", "c.sh"])
    if how == "taken":
        assert queue.claim("b.sh")  # another dispatcher's
    else:
        keeper.withdraw("b.sh")
        assert messages_until(keeper, bool) == [HandoverReturned("b.sh", "withdrawn")]
    gate.touch()
    seen = messages_until(keeper, lambda m: any(isinstance(x, Started) for x in m))
    if how == "taken":
        assert HandoverReturned("b.sh", "taken") in seen
        assert seen.index(HandoverReturned("b.sh", "taken")) < seen.index(
            started(seen, "c.sh"))  # in that order: the dispatcher moves the slot on
    follow = started(seen, "c.sh")
    os.close(follow.lock_fd)
    assert follow.after == first


def test_a_job_chained_to_one_that_ended_already_is_returned(setup):
    """Whether the slot is free by then is the dispatcher's to say."""
    queue, keeper = setup
    write(queue, JobState.RUNNING, "a.sh", "true")
    keeper.spawn(request(queue, "a.sh"), None)
    messages_until(keeper, lambda m: any(isinstance(x, Exited) for x in m))
    write(queue, JobState.QUEUED, "c.sh", "true")
    keeper.hand_over(Handover("c.sh", {CHAINED: request(queue, "c.sh")},
                              identity(queue, "c.sh"), after_job="b.sh"))
    assert messages_until(keeper, bool) == [HandoverReturned("c.sh", "withdrawn")]
    assert queue.locate("c.sh") is JobState.QUEUED


def test_a_handover_whose_log_the_disk_refuses_stays_queued_untouched(setup, tmp_path):
    """Its log is created before its claim: with ``logs/`` refusing new files (immutable,
    refused even to root), the job goes back unclaimed, with the reason for the disk
    watch, and never sits in ``running/`` for a moment."""
    queue, keeper = setup
    gate = tmp_path / "gate"
    write(queue, JobState.RUNNING, "a.sh", f"while [ ! -e {gate} ]; do sleep 0.02; done")
    first = keeper.spawn(request(queue, "a.sh"), None).pid
    write(queue, JobState.QUEUED, "b.sh", "true")
    logs = queue.layout.job_log("b.sh", 1).rsplit("/", 1)[0]
    if subprocess.run(["chattr", "+i", logs], capture_output=True).returncode != 0:
        pytest.skip("this filesystem has no immutable flag (chattr +i)")
    try:
        keeper.hand_over(Handover("b.sh", {first: request(queue, "b.sh")},
                                  identity(queue, "b.sh")))
        gate.touch()
        seen = messages_until(keeper, lambda m: any(isinstance(x, HandoverReturned)
                                                    for x in m))
    finally:
        subprocess.run(["chattr", "-i", logs], check=True)
    assert HandoverReturned("b.sh", "withdrawn", errno.EPERM) in seen
    assert not any(isinstance(m, Started) and m.name == "b.sh" for m in seen)
    assert queue.locate("b.sh") is JobState.QUEUED
    probe = queue.lock_job("b.sh", JobState.QUEUED)
    assert probe is not None  # its lock let go
    os.close(probe)


def test_handover_of_a_job_taken_meanwhile_is_returned(setup):
    queue, keeper = setup
    write(queue, JobState.RUNNING, "a.sh", "true")
    keeper.spawn(request(queue, "a.sh"), None)
    seen = messages_until(keeper, lambda m: any(isinstance(x, Exited) for x in m))
    pid = next(m for m in seen if isinstance(m, Exited)).pid
    write(queue, JobState.QUEUED, "b.sh", "true")
    assert queue.claim("b.sh")  # someone else took it
    keeper.hand_over(Handover("b.sh", {pid: request(queue, "b.sh")}, (0, 0, 0)))
    assert messages_until(keeper, lambda m: bool(m)) == [HandoverReturned("b.sh", "taken")]


def test_withdrawn_handover_stays_queued(setup, tmp_path):
    queue, keeper = setup
    gate = tmp_path / "gate"
    write(queue, JobState.RUNNING, "a.sh", f"while [ ! -e {gate} ]; do sleep 0.02; done")
    pid = keeper.spawn(request(queue, "a.sh"), None).pid
    write(queue, JobState.QUEUED, "b.sh", "true")
    keeper.hand_over(Handover("b.sh", {pid: request(queue, "b.sh")}, (0, 0, 0)))
    keeper.withdraw("b.sh")
    assert messages_until(keeper, lambda m: bool(m)) == [HandoverReturned("b.sh", "withdrawn")]
    gate.touch()
    messages_until(keeper, lambda m: any(isinstance(x, Exited) for x in m))
    assert queue.locate("b.sh") is JobState.QUEUED


def test_the_job_inherits_no_descriptor_but_its_output(tmp_path):
    """Not its lock (else a monitor killed under a live job would leave the job owned,
    and never settled), nor the keeper's socket or what the dispatcher's caller had open."""
    queue = FolderQueue(tmp_path / "root")
    r, w = os.pipe()
    os.set_inheritable(w, True)  # as a caller might leave one
    keeper = Keeper(str(queue.layout.root), dict(os.environ))
    keeper.start()
    write(queue, JobState.QUEUED, "a.sh", "ls -l /proc/self/fd")
    fd = queue.lock_job("a.sh", JobState.QUEUED)
    assert queue.claim("a.sh")
    keeper.spawn(request(queue, "a.sh"), fd)
    os.close(fd)
    messages_until(keeper, lambda m: any(isinstance(x, Exited) for x in m))
    listing = Path(queue.layout.job_log("a.sh", 1)).read_text()
    keeper.close()
    os.close(r)
    os.close(w)
    fds = {line.split()[-3] for line in listing.splitlines()[1:]}
    assert fds == {"0", "1", "2", "3"}, listing  # 3: ls's own look at /proc/self/fd


def test_a_child_start_time_without_proc_is_the_one_proc_gives() -> None:
    """The identity a monitor is adopted by: computed from the clock around the spawn
    (no /proc read), it must equal what /proc says, on either path."""
    env = dict(os.environ)
    for i in range(200):
        before = procs.boot_ns()
        if i % 4 == 0:  # a tick passed "during the spawn": /proc is read instead
            before -= 10**9
        pid = os.posix_spawn("/bin/sleep", ["/bin/sleep", "5"], env)
        try:
            started = procs.child_start_time(pid, before)
            assert started is not None and started == procs.start_time(pid), i
        finally:
            os.kill(pid, 9)
            os.waitpid(pid, 0)


# ---------------------------------------------------------------- the inline monitor
def exited(keeper: Keeper) -> Exited:
    seen = messages_until(keeper, lambda m: any(isinstance(x, Exited) for x in m))
    return next(m for m in seen if isinstance(m, Exited))


@pytest.mark.parametrize(("body", "code"), [
    ('echo "out $X $0 $$"; exit 3', 3),  # exit ends the script, and is recorded
    ("false", 1),  # the last command's status
    ("set -e\nfalse\necho no", 1),
    ("if then", 2),  # a syntax error
    ("GPUDISPATCH_RUN=9.9 GPUDISPATCH_JOB=b.sh GPUDISPATCH_EXIT_FILE=/tmp/x; exit 5", 5),
    ("set -x\necho traced\nexit 4", 4),  # its trace stops where the monitor's work begins
])
def test_an_inline_monitor_runs_the_script_itself_and_writes_its_status(setup, body, code):
    queue, keeper = setup
    write(queue, JobState.RUNNING, "a.sh", body)
    pid = keeper.spawn(request(queue, "a.sh", inline=True), None).pid
    assert exited(keeper).code == code
    written = status(queue, "a.sh")
    assert (written.attempt, written.code) == (1, code)  # (its own values, not the script's)
    assert "__gpudispatch" not in Path(queue.layout.job_log("a.sh", 1)).read_text()
    if code == 3:  # no process of its own: $$ is the monitor, as in a subshell
        log = Path(queue.layout.job_log("a.sh", 1)).read_text()
        assert log == f"out 1 {queue.layout.script(JobState.RUNNING, 'a.sh')} {pid}\n"


def test_an_inline_job_signalled_ends_as_a_shell_would_and_its_status_is_written(setup):
    queue, keeper = setup
    write(queue, JobState.RUNNING, "a.sh", "sleep 30\necho not reached")
    pid = keeper.spawn(request(queue, "a.sh", inline=True), None).pid
    wait_until(lambda: monitor_ready(pid) and len(procs._members(pid)) >= 2)  # sleep too
    assert procs.monitor_inline(pid)
    assert len(procs._members(pid)) == 2  # no subshell: the monitor and sleep
    procs.signal_job(pid, signal.SIGTERM)
    assert exited(keeper).code == 128 + signal.SIGTERM
    assert status(queue, "a.sh").code == 128 + signal.SIGTERM
    assert "not reached" not in Path(queue.layout.job_log("a.sh", 1)).read_text()


def test_sigkill_ends_an_inline_job_and_its_monitor_writes_137(setup):
    """It goes to every process of the job but the monitor, which is the job's shell:
    told by SIGUSR2 (while the group is stopped), it runs no further command."""
    queue, keeper = setup
    write(queue, JobState.RUNNING, "a.sh", "sleep 30\necho not reached\nsleep 30")
    pid = keeper.spawn(request(queue, "a.sh", inline=True), None).pid
    wait_until(lambda: monitor_ready(pid) and len(procs._members(pid)) >= 2)
    procs.signal_job(pid, signal.SIGKILL)
    assert exited(keeper).code == 128 + signal.SIGKILL
    assert status(queue, "a.sh").code == 128 + signal.SIGKILL
    assert "not reached" not in Path(queue.layout.job_log("a.sh", 1)).read_text()


def test_an_inline_monitor_keeps_the_lock_from_its_children(setup, tmp_path):
    queue, keeper = setup
    gate = tmp_path / "gate"
    write(queue, JobState.QUEUED, "a.sh", "sleep 30 &\n" + gate_wait(gate))
    lock = queue.lock_job("a.sh", JobState.QUEUED)
    assert lock is not None and queue.claim("a.sh")
    pid = keeper.spawn(request(queue, "a.sh", inline=True), lock).pid
    os.close(lock)
    wait_until(lambda: len(procs._members(pid)) >= 2)
    assert queue.lock_job("a.sh", JobState.RUNNING) is None  # the monitor holds it
    gate.touch()
    assert exited(keeper).code == 0
    # Its background child lives on (until the dispatcher ends what is left): it does not
    # hold the lock.
    assert any(procs.pid_alive(p) for p in procs._members(pid))
    fd = wait_until(lambda: queue.lock_job("a.sh", JobState.RUNNING))
    os.close(fd)
    procs.end_leftovers(pid)


@pytest.mark.parametrize("inline", [False, True])
def test_a_sourced_script_gets_no_arguments(setup, inline):
    """As ``sh SCRIPT`` runs it: ``$#`` is 0 (the monitor's own ``.`` is not passed on)."""
    queue, keeper = setup
    write(queue, JobState.RUNNING, "a.sh", 'echo "[$#] [$1]"')
    keeper.spawn(request(queue, "a.sh", inline=inline), None)
    assert exited(keeper).code == 0
    assert Path(queue.layout.job_log("a.sh", 1)).read_text() == "[0] []\n"


# ---------------------------------------------------------------- primed monitors
def primed(queue: FolderQueue, name: str) -> procs.FoundMonitor:
    """The monitor started ahead for ``name``, once there is one."""
    return wait_until(lambda: procs.find_monitors(str(queue.layout.exits)).get(name),
                      message=f"a primed monitor for {name}")


def slot_with_next(queue: FolderQueue, keeper: Keeper, tmp_path: Path, body: str,
                   inline: bool = False) -> tuple[int, Path, procs.FoundMonitor]:
    """a.sh runs until the test creates its gate; b.sh (``body``) is handed over after
    it. The pid of a.sh's monitor, the gate, and b.sh's primed monitor."""
    gate = tmp_path / "gate"
    write(queue, JobState.RUNNING, "a.sh", gate_wait(gate))
    first = keeper.spawn(request(queue, "a.sh"), None).pid
    write(queue, JobState.QUEUED, "b.sh", body)
    keeper.hand_over(Handover("b.sh", {first: request(queue, "b.sh", inline=inline)},
                              identity(queue, "b.sh")))
    return first, gate, primed(queue, "b.sh")


@pytest.mark.parametrize("inline", [False, True])
def test_the_next_job_of_a_slot_is_primed_and_runs_only_once_the_slot_frees(
        setup, tmp_path, inline):
    """Its monitor is started while the job before it runs, and waits: the job stays
    queued, unlocked (a cancel or another dispatcher may still take it), and runs nothing
    until the slot frees. Then that monitor runs it, with the lock."""
    queue, keeper = setup
    runs = tmp_path / "runs"
    first, gate, ahead = slot_with_next(queue, keeper, tmp_path, f"echo b >> {runs}",
                                        inline)
    assert queue.locate("b.sh") is JobState.QUEUED
    lock = queue.lock_job("b.sh", JobState.QUEUED)
    assert lock is not None
    os.close(lock)
    assert not runs.exists() and status(queue, "b.sh") is None
    gate.touch()
    seen = messages_until(keeper, lambda m: sum(isinstance(x, Exited) for x in m) == 2)
    start = started(seen, "b.sh")
    assert (start.pid, start.started, start.after) == (ahead.pid, ahead.started, first)
    assert queue.lock_job("b.sh", JobState.RUNNING) is None  # its lock, passed on to us
    os.close(start.lock_fd)
    assert runs.read_text() == "b\n"
    assert (status(queue, "b.sh").attempt, status(queue, "b.sh").code) == (1, 0)


@pytest.mark.parametrize("how", ["withdrawn", "taken", "keeper killed"])
def test_a_primed_monitor_sent_away_runs_nothing_and_records_nothing(setup, tmp_path, how):
    queue, keeper = setup
    runs = tmp_path / "runs"
    _, gate, ahead = slot_with_next(queue, keeper, tmp_path, f"echo b >> {runs}")
    if how == "withdrawn":
        keeper.withdraw("b.sh")
        assert messages_until(keeper, bool) == [HandoverReturned("b.sh", "withdrawn")]
    elif how == "taken":
        assert queue.claim("b.sh")  # another dispatcher's (it locked b.sh meanwhile)
        gate.touch()
        assert HandoverReturned("b.sh", "taken") in messages_until(
            keeper, lambda m: any(isinstance(x, HandoverReturned) for x in m))
    else:
        os.kill(keeper.pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(ahead.pid), message="the primed monitor to go")
    gate.touch()
    assert not runs.exists() and status(queue, "b.sh") is None
    assert queue.locate("b.sh") is (JobState.RUNNING if how == "taken" else JobState.QUEUED)


def test_a_job_whose_primed_monitor_was_killed_still_starts_once(setup, tmp_path):
    queue, keeper = setup
    runs = tmp_path / "runs"
    first, gate, ahead = slot_with_next(queue, keeper, tmp_path, f"echo b >> {runs}")
    os.kill(ahead.pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(ahead.pid))
    gate.touch()
    seen = messages_until(keeper, lambda m: sum(isinstance(x, Exited) for x in m) == 2)
    start = started(seen, "b.sh")
    os.close(start.lock_fd)
    assert start.pid != ahead.pid and start.after == first
    assert runs.read_text() == "b\n"


def test_a_script_replaced_while_its_monitor_waits_is_not_run_by_it(setup, tmp_path):
    """The monitor holds the script it was started for; a new one of that name is what
    the claim moves: it goes back to the dispatcher, to be checked ("changed")."""
    queue, keeper = setup
    runs = tmp_path / "runs"
    _, gate, ahead = slot_with_next(queue, keeper, tmp_path, f"echo old >> {runs}")
    os.unlink(queue.layout.script(JobState.QUEUED, "b.sh"))
    write(queue, JobState.QUEUED, "b.sh", f"echo new >> {runs}")
    gate.touch()
    assert HandoverReturned("b.sh", "changed") in messages_until(
        keeper, lambda m: any(isinstance(x, HandoverReturned) for x in m))
    wait_until(lambda: not pid_alive(ahead.pid))
    assert not runs.exists() and status(queue, "b.sh") is None


def test_a_primed_job_keeps_the_cpus_and_inherits_no_descriptor_but_its_output(
        setup, tmp_path):
    """Its monitor was started pinned to the keeper's CPU (see keeper._pin_here), and set
    back before its gate opened; its gate and script are not the job's."""
    queue, keeper = setup
    first, gate, _ = slot_with_next(
        queue, keeper, tmp_path,
        "grep Cpus_allowed_list /proc/self/status; ls -l /proc/self/fd", inline=True)
    gate.touch()
    seen = messages_until(keeper, lambda m: sum(isinstance(x, Exited) for x in m) == 2)
    os.close(started(seen, "b.sh").lock_fd)
    lines = Path(queue.layout.job_log("b.sh", 1)).read_text().splitlines()
    with open("/proc/self/status") as fh:
        ours = next(line for line in fh if line.startswith("Cpus_allowed_list"))
    assert lines[0] == ours.rstrip("\n")
    fds = {line.split()[-3] for line in lines[2:]}
    assert fds == {"0", "1", "2", "3"}, lines  # 3: ls's own look at /proc/self/fd
