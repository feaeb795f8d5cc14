"""`gpudispatch serve` over HTTP, without a browser: who may look, who may act, and the
actions themselves (control.py's). The live page in a browser: test_report_browser.py."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest
from conftest import wait_until

from gpudispatch.job import JobState
from gpudispatch.serve import Server, host_name, is_loopback
from gpudispatch.store import FolderQueue

TOKEN = "t0ken-for-tests"


@pytest.fixture
def queue(tmp_path) -> FolderQueue:
    return FolderQueue(tmp_path / "root")


def _start(queue: FolderQueue, host: str):
    server = Server((host, 0), queue, TOKEN)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    return server


@pytest.fixture
def local(queue):
    server = _start(queue, "127.0.0.1")
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def call(url: str, path: str, body: dict | None = None, headers: dict | None = None):
    """(status, parsed JSON or text, headers)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers=headers or {},
                                     method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            status, raw, got = reply.status, reply.read(), reply.headers
    except urllib.error.HTTPError as exc:
        status, raw, got = exc.code, exc.read(), exc.headers
    kind = got.get("Content-Type", "")
    return status, (json.loads(raw) if "json" in kind and raw else raw.decode()), got


def test_state_page_and_etag(queue, local):
    queue.enqueue_text("a.sh", "#!/bin/sh\ntrue\n")
    status, page, headers = call(local, "/")
    assert status == 200 and "gd-live" in page and "default-src 'none'" in \
        headers["Content-Security-Policy"]
    status, state, headers = call(local, "/api/state")
    assert status == 200 and [j["n"] for j in state["jobs"]] == ["a.sh"]
    status, _, _ = call(local, "/api/state", headers={"If-None-Match": headers["ETag"]})
    assert status == 304
    queue.enqueue_text("b.sh", "#!/bin/sh\ntrue\n")  # a change on disk: a new state soon
    status, state, _ = wait_until(lambda: (reply := call(
        local, "/api/state", headers={"If-None-Match": headers["ETag"]}))[0] == 200 and reply,
        5, message="a new state after a change on disk")
    assert state["counts"]["queued"] == 2


def test_actions_from_this_machine_need_the_header(queue, local):
    queue.enqueue_text("a.sh", "#!/bin/sh\ntrue\n")
    assert call(local, "/api/pause", {})[0] == 403  # a form of another site cannot add it
    assert not queue.is_paused()
    assert call(local, "/api/pause", {}, {"X-Gpudispatch": "1"})[0] == 200
    assert queue.is_paused()
    # A name rebound to 127.0.0.1 (DNS rebinding) may neither look nor act.
    evil = {"Host": "attacker.example:80", "X-Gpudispatch": "1"}
    assert call(local, "/api/resume", {}, evil)[0] == 403
    assert call(local, "/api/state", headers=evil)[0] == 403
    assert queue.is_paused()
    assert call(local, "/api/resume", {}, {"X-Gpudispatch-Token": TOKEN})[0] == 200
    assert not queue.is_paused()
    status, reply, _ = call(local, "/api/cancel", {"name": "a.sh"}, {"X-Gpudispatch": "1"})
    assert status == 200 and "cancelled" in reply["ok"]
    assert queue.locate("a.sh") is JobState.FAILED
    assert queue.read_record("a.sh").reason == "cancelled"
    status, reply, _ = call(local, "/api/retry", {"name": "a.sh"}, {"X-Gpudispatch": "1"})
    assert status == 200 and queue.locate("a.sh") is JobState.QUEUED
    status, reply, _ = call(local, "/api/retry", {"name": "a.sh"}, {"X-Gpudispatch": "1"})
    assert status == 409 and "only failed jobs" in reply["error"]
    assert call(local, "/api/cancel", {"name": "../x"}, {"X-Gpudispatch": "1"})[0] == 400
    assert call(local, "/api/cancel", {"name": "no.sh"}, {"X-Gpudispatch": "1"})[0] == 404


def test_log_tail(queue, local):
    queue.enqueue_text("a.sh", "#!/bin/sh\ntrue\n")
    record = queue.read_record("a.sh")
    record.log = queue.layout.job_log("a.sh", 1)
    queue.write_record(record)
    with open(record.log, "w") as fh:
        fh.write("x" * 100_000 + "\nthe end\n")
    status, text, _ = call(local, "/api/log?name=a.sh")
    assert status == 200 and text.endswith("the end\n") and len(text) <= 64 << 10
    assert call(local, "/api/log?name=nope.sh")[0] == 404


def test_other_addresses_need_the_token(queue):
    server = _start(queue, "0.0.0.0")
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert call(url, "/")[0] == 403
        assert call(url, "/api/state")[0] == 403
        assert call(url, "/api/pause", {}, {"X-Gpudispatch": "1"})[0] == 403
        assert call(url, f"/?token={TOKEN}")[0] == 200
        assert call(url, "/api/state", headers={"X-Gpudispatch-Token": TOKEN})[0] == 200
        assert call(url, "/api/state", headers={"X-Gpudispatch-Token": "wrong"})[0] == 403
        assert call(url, "/api/pause", {}, {"X-Gpudispatch-Token": TOKEN})[0] == 200
        assert queue.is_paused()
    finally:
        server.shutdown()
        server.server_close()


def test_loopback_names():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    assert not is_loopback("attacker.example")
    assert host_name("[::1]:8765") == "::1" and host_name("localhost:80") == "localhost"
    assert host_name("127.0.0.1") == "127.0.0.1"
