"""The keeper on its own: start, report, keep codes until recorded, outlive its dispatcher."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import wait_until

from gpudispatch.job import JobState
from gpudispatch.keeper import Exited, Handover, Keeper, SpawnRequest
from gpudispatch.runner import read_exit_file
from gpudispatch.store import FolderQueue


@pytest.fixture
def setup(tmp_path):
    queue = FolderQueue(tmp_path / "root")
    keeper = Keeper(queue, dict(os.environ), "testhost.1", 15.0)
    keeper.start()
    yield queue, keeper
    keeper.close()


def request(queue: FolderQueue, name: str, body: str) -> SpawnRequest:
    script = tmp_script(queue, name, body)
    return SpawnRequest(name, [script], {"X": "1"}, queue.layout.job_log(name, 1),
                        queue.layout.exit_file(name))


def tmp_script(queue: FolderQueue, name: str, body: str) -> str:
    path = queue.layout.script(JobState.RUNNING, name)
    with open(path, "w") as fh:
        fh.write(f"#!/bin/sh\n{body}\n")
    os.chmod(path, 0o755)
    return path


def messages_until(keeper: Keeper, predicate, timeout=10.0) -> list:
    seen: list = []

    def check():
        seen.extend(keeper.messages())
        return predicate(seen)

    wait_until(check, timeout, message=lambda: f"keeper messages: {seen}")
    return seen


def test_reports_start_and_exit_and_keeps_codes_until_forgotten(setup):
    queue, keeper = setup
    keeper.spawn(request(queue, "a.sh", 'echo "out $X"; exit 3'))
    seen = messages_until(keeper, lambda m: any(isinstance(x, Exited) for x in m))
    started = [m for m in seen if not isinstance(m, Exited)]
    assert started[0][:2] == ("started", "a.sh")
    exited = next(m for m in seen if isinstance(m, Exited))
    assert exited.pid == started[0][2] and exited.code == 3
    assert Path(queue.layout.job_log("a.sh", 1)).read_text() == "out 1\n"
    # Reported, not yet recorded: nothing on disk while the dispatcher lives.
    assert read_exit_file(queue.layout.exit_file("a.sh")) is None


def test_codes_reported_but_not_recorded_are_written_when_the_dispatcher_goes(setup):
    queue, keeper = setup
    keeper.spawn(request(queue, "a.sh", "exit 4"))
    keeper.spawn(request(queue, "b.sh", "exit 5"))
    messages_until(keeper, lambda m: sum(isinstance(x, Exited) for x in m) == 2)
    keeper.forget(queue.layout.exit_file("a.sh"))  # a.sh was recorded; b.sh was not
    keeper.close()  # the dispatcher dies
    wait_until(lambda: read_exit_file(queue.layout.exit_file("b.sh")) == 5)
    assert read_exit_file(queue.layout.exit_file("a.sh")) is None


def test_a_job_still_running_when_the_dispatcher_goes_gets_its_code_on_disk(setup, tmp_path):
    queue, keeper = setup
    gate = tmp_path / "gate"
    keeper.spawn(request(queue, "a.sh", f"while [ ! -e {gate} ]; do sleep 0.02; done; exit 7"))
    messages_until(keeper, lambda m: any(x[0] == "started" for x in m
                                          if not isinstance(x, Exited)))
    keeper.close()
    gate.touch()
    wait_until(lambda: read_exit_file(queue.layout.exit_file("a.sh")) == 7)


def test_handover_claims_and_starts_the_next_job_when_the_first_ends(setup, tmp_path):
    queue, keeper = setup
    gate = tmp_path / "gate"
    keeper.spawn(request(queue, "a.sh", f"while [ ! -e {gate} ]; do sleep 0.02; done"))
    seen = messages_until(keeper, lambda m: m and m[0][0] == "started")
    first_pid = seen[0][2]
    queue.enqueue_text("b.sh", "#!/bin/sh\necho b\n")
    st = os.lstat(queue.layout.script(JobState.QUEUED, "b.sh"))
    follow = SpawnRequest("b.sh", [queue.layout.script(JobState.RUNNING, "b.sh")], {},
                          queue.layout.job_log("b.sh", 1), queue.layout.exit_file("b.sh"))
    keeper.hand_over(Handover(follow, first_pid, (st.st_ino, st.st_size, st.st_mtime_ns)))
    assert queue.locate("b.sh") is JobState.QUEUED  # not claimed while a.sh runs
    gate.touch()
    seen = messages_until(keeper, lambda m: any(not isinstance(x, Exited) and x[1] == "b.sh"
                                                for x in m))
    kinds = [("exited", m.pid) if isinstance(m, Exited) else m[:2] for m in seen]
    assert kinds.index(("exited", first_pid)) < kinds.index(("started", "b.sh"))
    assert queue.locate("b.sh") is JobState.RUNNING


def test_handover_of_a_job_taken_meanwhile_is_not_claimed(setup, tmp_path):
    queue, keeper = setup
    keeper.spawn(request(queue, "a.sh", "true"))
    seen = messages_until(keeper, lambda m: any(isinstance(x, Exited) for x in m))
    pid = next(m for m in seen if isinstance(m, Exited)).pid
    queue.enqueue_text("b.sh", "#!/bin/sh\n")
    assert queue.claim("b.sh")  # someone else took it
    follow = SpawnRequest("b.sh", ["/bin/true"], {}, queue.layout.job_log("b.sh", 1),
                          queue.layout.exit_file("b.sh"))
    keeper.hand_over(Handover(follow, pid, (0, 0, 0)))
    seen = messages_until(keeper, lambda m: bool(m))
    assert seen == [("not-claimed", "b.sh", None)]
