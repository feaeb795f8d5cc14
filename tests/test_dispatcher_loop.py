"""The dispatcher driven by ``tick(now)`` with a fake launcher: no process is started, no
clock is waited on. Start -> exit -> record, retries, timeouts, cold stop, cancel
requests and hand-overs (order, withdrawal), as plain steps. A keeper's death is
in ``test_chaos.py``, with real processes."""

from __future__ import annotations

import itertools
import os
import signal

import pytest
from conftest import wait_until

from gpudispatch.dispatcher import Dispatcher, DispatcherOptions
from gpudispatch.dispatcher.loop import CHAIN_LENGTH
from gpudispatch.job import JobState
from gpudispatch.keeper import (
    Exited,
    Handover,
    HandoverReturned,
    KeeperGone,
    SpawnRequest,
    Started,
)
from gpudispatch.store import FolderQueue


class FakeLauncher:
    """Starts nothing: records requests; the test says when each job ends."""

    def __init__(self) -> None:
        self.spawned: list[SpawnRequest] = []
        self.handovers: list[Handover] = []
        self.signals: list[tuple[str, int]] = []
        self.pids: dict[str, int] = {}
        self._pid = itertools.count(1000)
        self._out: list = []
        self._r, self._w = os.pipe()
        self.gone = False

    def start(self) -> None:
        pass

    def fileno(self) -> int:
        return self._r

    def spawn(self, request: SpawnRequest, lock_fd: int | None) -> None:
        self._check()
        self.spawned.append(request)
        self.pids[request.name] = pid = next(self._pid)
        self._out.append(Started(request.name, pid, 1))

    def hand_over(self, handover: Handover) -> None:
        self._check()
        self.handovers.append(handover)

    def withdraw(self, name: str) -> None:
        for handover in list(self.handovers):
            if handover.name == name:
                self.handovers.remove(handover)
                self.handovers = [h.succeeding(handover) if h.after_job == name else h
                                  for h in self.handovers]
                self._out.append(HandoverReturned(name, "withdrawn"))

    def signal(self, monitor_pid: int, sig: int) -> None:
        name = next(n for n, p in self.pids.items() if p == monitor_pid)
        self.signals.append((name, sig))

    def exit(self, queue: FolderQueue, name: str, code: int) -> None:
        """The job ends; like the keeper, start the first hand-over that may follow it."""
        pid = self.pids[name]
        self._out.append(Exited(name, pid, code))
        follower = next((h for h in self.handovers if pid in h.variants), None)
        if follower is not None:
            self.handovers.remove(follower)
            assert queue.claim(follower.name)
            self.spawned.append(follower.variants[pid])
            self.pids[follower.name] = new = next(self._pid)
            self._out.append(Started(follower.name, new, 1, after=pid))
            self.handovers = [h.following(new) if h.after_job == follower.name else h
                              for h in self.handovers]

    def owns(self, pid: int) -> bool:
        return False  # as the keeper process: its jobs are watched if it dies

    def messages(self) -> list:
        out, self._out = self._out, []
        return out

    def close(self) -> None:
        pass

    def _check(self) -> None:
        if self.gone:
            raise KeeperGone("fake keeper is gone")


@pytest.fixture
def world(tmp_path):
    queue = FolderQueue(tmp_path / "root")
    launcher = FakeLauncher()
    made = []

    def make(**options) -> Dispatcher:
        d = Dispatcher(queue, DispatcherOptions(console=False, **{"slots": [0], **options}),
                       launcher=launcher)
        made.append(d)
        return d

    yield queue, launcher, make
    for d in made:
        d.close()


def drop(queue: FolderQueue, name: str, header: str = "") -> None:
    path = queue.layout.script(JobState.QUEUED, name)
    with open(path, "w") as fh:
        fh.write(f"#!/bin/sh\n{header}true\n")
    os.chmod(path, 0o755)


def settle(d: Dispatcher, now: float) -> None:
    """Tick until the writer thread has written every ended job (bounded)."""
    d.tick(now)
    wait_until(lambda: (d.tick(now), not d.writer.busy)[1], 5)


def test_start_exit_record(world):
    queue, fake, make = world
    drop(queue, "a.sh")
    d = make(slots=[0, 1])
    d.tick(100.0)
    assert [r.name for r in fake.spawned] == ["a.sh"]
    env = fake.spawned[0].env
    assert env["CUDA_VISIBLE_DEVICES"] == "0" and env["GPUDISPATCH_ATTEMPT"] == "1"
    assert env["GPUDISPATCH_EXIT_FILE"] == queue.layout.exit_journal()
    inode = os.lstat(queue.layout.script(JobState.RUNNING, "a.sh")).st_ino
    assert env["GPUDISPATCH_RUN"] == f"{inode}.1"  # its line in the journal
    assert fake.spawned[0].argv[:2] == ["/bin/sh", "-c"]  # through its monitor
    assert queue.locate("a.sh") is JobState.RUNNING
    d.tick(100.1)
    fake.exit(queue, "a.sh", 0)
    settle(d, 100.2)
    assert queue.locate("a.sh") is JobState.COMPLETED
    record = queue.read_record("a.sh")
    assert (record.exit_code, record.attempts, record.reason, record.gpus) == (0, 1, None, [0])


def test_failure_with_a_retry_runs_again_then_fails_for_good(world):
    queue, fake, make = world
    drop(queue, "a.sh", "#GPUDISPATCH --retries 1\n")
    d = make()
    d.tick(1.0)
    fake.exit(queue, "a.sh", 3)
    settle(d, 2.0)
    d.tick(2.1)  # taken up again at once
    assert [r.env["GPUDISPATCH_ATTEMPT"] for r in fake.spawned] == ["1", "2"]
    fake.exit(queue, "a.sh", 3)
    settle(d, 3.0)
    assert queue.locate("a.sh") is JobState.FAILED
    assert queue.read_record("a.sh").reason == "exit code 3"
    assert d.failures == 1


def test_timeout_sends_sigterm_then_sigkill_after_the_grace(world):
    queue, fake, make = world
    drop(queue, "a.sh", "#GPUDISPATCH --timeout 5\n")
    d = make(kill_grace=2.0)
    d.tick(10.0)
    d.tick(10.1)  # started: its limit counts from here
    d.tick(15.0)
    assert fake.signals == []
    d.tick(15.2)
    assert fake.signals == [("a.sh", signal.SIGTERM)]
    d.tick(17.3)
    assert fake.signals[-1] == ("a.sh", signal.SIGKILL)
    fake.exit(queue, "a.sh", 137)
    settle(d, 17.4)
    assert queue.locate("a.sh") is JobState.FAILED
    assert queue.read_record("a.sh").reason == "timeout after 5s"


def test_cold_stop_requeues_as_interrupted(world):
    queue, fake, make = world
    drop(queue, "a.sh")
    d = make()
    d.tick(1.0)
    d.request_stop()
    d.tick(1.1)
    assert fake.signals == []  # a warm stop lets it finish
    d.request_stop()
    d.tick(1.2)
    assert fake.signals == [("a.sh", signal.SIGTERM)]
    fake.exit(queue, "a.sh", 143)
    settle(d, 1.3)
    assert d.finished
    assert queue.locate("a.sh") is JobState.QUEUED
    record = queue.read_record("a.sh")
    assert record.reason.startswith("interrupted: cold stop")
    assert record.extra["interruptions"] == 1


def test_cancel_request_from_anywhere_stops_the_job(world):
    queue, fake, make = world
    drop(queue, "a.sh")
    d = make()
    d.tick(1.0)
    d.tick(1.1)
    with open(queue.layout.cancel_request("a.sh"), "w") as fh:
        fh.write("from another host")
    d.tick(1.2)  # within CANCEL_CHECK_SECONDS of the last look
    d.tick(2.0)
    assert fake.signals == [("a.sh", signal.SIGTERM)]
    fake.exit(queue, "a.sh", 143)
    settle(d, 2.1)
    assert queue.locate("a.sh") is JobState.FAILED
    assert queue.read_record("a.sh").reason == "cancelled"
    assert not os.path.exists(queue.layout.cancel_request("a.sh"))


def test_handover_follows_the_running_job_and_keeps_run_order(world):
    queue, fake, make = world
    for name in ("a.sh", "b.sh", "c.sh", "d.sh"):
        drop(queue, name)
    d = make(slots=[0, 1])
    d.tick(1.0)
    d.tick(1.1)  # a and b run; c is handed over to follow either, d to nobody yet
    assert [r.name for r in fake.spawned] == ["a.sh", "b.sh"]
    assert [h.name for h in fake.handovers] == ["c.sh"]
    assert set(fake.handovers[0].variants) == {fake.pids["a.sh"], fake.pids["b.sh"]}
    assert queue.locate("c.sh") is JobState.QUEUED  # claimed only when it starts
    fake.exit(queue, "b.sh", 0)  # b ends first: c, not d, takes its slot
    d.tick(1.2)
    assert [r.name for r in fake.spawned] == ["a.sh", "b.sh", "c.sh"]
    assert fake.spawned[-1].env["CUDA_VISIBLE_DEVICES"] == "1"
    settle(d, 1.3)
    assert [h.name for h in fake.handovers] == ["d.sh"]  # next in order, handed over now


def test_a_chain_keeps_a_slot_of_short_jobs_in_the_keepers_hands(world):
    """Behind the hand-over that follows a running job, more are chained (CHAIN_LENGTH
    in all), each to follow the one before: the keeper starts them one after another
    while the dispatcher is busy, and the chain grows again at its next tick."""
    queue, fake, make = world
    names = [f"j{i:02d}.sh" for i in range(CHAIN_LENGTH + 4)]
    for name in names:
        drop(queue, name)
    d = make()
    d.tick(1.0)
    d.tick(1.1)
    assert [r.name for r in fake.spawned] == names[:1]
    chained = names[1:CHAIN_LENGTH + 1]
    assert [(h.name, h.after_job) for h in fake.handovers] == list(
        zip(chained, [None, *chained[:-1]], strict=True))
    assert set(fake.handovers[0].variants) == {fake.pids[names[0]]}
    assert all(queue.locate(n) is JobState.QUEUED for n in names[1:])  # none claimed
    fake.exit(queue, names[0], 0)  # the first hand-over starts; the next follows it now
    fake.exit(queue, names[1], 0)  # and starts, with no tick in between
    settle(d, 1.2)
    assert [r.name for r in fake.spawned] == names[:3]
    assert [queue.locate(n) for n in names[:3]] == [JobState.COMPLETED] * 2 + [
        JobState.RUNNING]
    assert d.running[names[2]].slot_ids == [0]
    chained = names[3:CHAIN_LENGTH + 3]  # grown again, behind the one running now
    assert [(h.name, h.after_job) for h in fake.handovers] == list(
        zip(chained, [None, *chained[:-1]], strict=True))
    assert set(fake.handovers[0].variants) == {fake.pids[names[2]]}


def test_a_chained_job_follows_what_a_returned_one_followed(world):
    """b.sh, handed over after a.sh, is taken by another dispatcher: c.sh, chained to
    it, now follows a.sh, and takes a.sh's slot when the keeper starts it there."""
    queue, fake, make = world
    for name in ("a.sh", "b.sh", "c.sh"):
        drop(queue, name)
    d = make()
    d.tick(1.0)
    d.tick(1.1)
    pa = fake.pids["a.sh"]
    assert [(h.name, h.after_job) for h in fake.handovers] == [("b.sh", None),
                                                                ("c.sh", "b.sh")]
    fake.handovers.clear()  # in the keeper's hands: it answers below
    assert queue.claim("b.sh")
    fake._out += [Exited("a.sh", pa, 0), HandoverReturned("b.sh", "taken")]
    d.tick(1.2)
    follower = d.running["c.sh"]
    assert (follower.variants, follower.after_job) == ({pa: [0]}, None)
    assert follower.slot_ids == [0]  # held: the keeper may be starting it there now
    assert queue.claim("c.sh")
    fake._out.append(Started("c.sh", 3000, 1, after=pa))
    d.tick(1.3)
    assert d.running["c.sh"].slot_ids == [0] and d.running["c.sh"].pid == 3000


def test_a_handover_that_follows_two_jobs_that_both_ended_holds_both_slots(world):
    """a and b end before the keeper's word comes (it started c after b): until it does,
    neither slot is free; then c is on b's slot and a's is free (found by chaos: c was
    taken for a CPU job and a second job started on b's slot beside it)."""
    queue, fake, make = world
    for name in ("a.sh", "b.sh", "c.sh"):
        drop(queue, name)
    d = make(slots=[0, 1])
    d.tick(1.0)
    d.tick(1.1)
    pa, pb = fake.pids["a.sh"], fake.pids["b.sh"]
    assert set(fake.handovers[0].variants) == {pa, pb}
    fake.handovers.clear()  # the keeper took it: it answers below, late
    fake._out += [Exited("a.sh", pa, 0), Exited("b.sh", pb, 0)]
    drop(queue, "e.sh")
    d.intake.events.add("e.sh")
    d.tick(1.2)
    assert [r.name for r in fake.spawned] == ["a.sh", "b.sh"]  # no slot is free yet
    assert queue.claim("c.sh")
    fake.pids["c.sh"] = 2000
    fake._out.append(Started("c.sh", 2000, 1, after=pb))
    d.tick(1.3)
    assert d.running["c.sh"].slot_ids == [1]
    assert [r.name for r in fake.spawned] == ["a.sh", "b.sh", "e.sh"]
    assert fake.spawned[-1].env["CUDA_VISIBLE_DEVICES"] == "0"


def test_a_new_earlier_job_takes_back_a_handover(world):
    queue, fake, make = world
    drop(queue, "b.sh")
    drop(queue, "c.sh")
    d = make()
    d.tick(1.0)
    d.tick(1.1)
    assert [h.name for h in fake.handovers] == ["c.sh"]
    drop(queue, "a.sh", "#GPUDISPATCH --priority 5\n")
    d.intake.events.add("a.sh")
    d.tick(1.2)  # withdrawn; a.sh is handed over instead, and c.sh chained after it
    d.tick(1.3)
    assert [(h.name, h.after_job) for h in fake.handovers] == [("a.sh", None),
                                                                ("c.sh", "a.sh")]
    fake.exit(queue, "b.sh", 0)
    d.tick(1.4)
    assert [r.name for r in fake.spawned] == ["b.sh", "a.sh"]
