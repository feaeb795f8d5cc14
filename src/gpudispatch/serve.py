"""``gpudispatch serve``: the report's page, live, from the standard library's server.

``GET /`` is the page :mod:`htmlreport` renders, without data; it polls ``GET
/api/state`` (the :func:`htmlreport.snapshot` as JSON, with an ETag, so an unchanged
queue costs a 304) each second, and ``GET /api/log?name=NAME`` for a job's output.
``POST /api/cancel|retry|pause|resume`` act through :mod:`control` and the store.

Who may do what:

- bound to a loopback address (the default, 127.0.0.1), anyone on this machine may look;
  on any other address every request needs the token printed at start (``?token=`` in
  the page's address, then the ``X-Gpudispatch-Token`` header);
- actions need the token, or come from this machine with the ``X-Gpudispatch`` header
  (a page of another site cannot send it without a CORS preflight, which is never
  granted); without the token the ``Host`` header must name a loopback address, so a
  site that rebinds its name to 127.0.0.1 cannot read or act.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from gpudispatch import control, htmlreport
from gpudispatch.job import JobState
from gpudispatch.layout import printable
from gpudispatch.store import FolderQueue, QueueError

DEFAULT_PORT = 8765
POLL_MS = 1000  # the page asks for the state this often: a change shows within 2 s
FRESH_FOR = 5.0  # seconds a snapshot is reused while no folder changed (metrics, bars)
REBUILD_AFTER = 0.5  # at least this long between builds (a busy queue changes constantly)
LOG_TAIL_BYTES = 64 << 10
BODY_MAX = 64 << 10
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host of a ``Host`` header: ``[::1]:8765`` -> ``::1``, ``a:80`` -> ``a``."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class StateCache:
    """The last snapshot, rebuilt when a state folder (or ``logs/``, or
    ``.gpudispatch/``) changed, or after FRESH_FOR seconds (metrics appended in place,
    running bars growing); one build at a time."""

    def __init__(self, queue: FolderQueue) -> None:
        self.queue = queue
        self.lock = threading.Lock()
        self.key: tuple | None = None
        self.built = 0.0
        self.body = b""
        self.etag = ""

    def _fingerprint(self) -> tuple:
        layout = self.queue.layout
        marks = []
        for path in (*(layout.state_dir(s) for s in JobState), layout.logs, layout.state):
            try:
                st = os.stat(path)
                marks.append((st.st_mtime_ns, st.st_ino))
            except OSError:
                marks.append(None)
        return tuple(marks)

    def get(self) -> tuple[bytes, str]:
        with self.lock:
            key, age = self._fingerprint(), time.monotonic() - self.built
            if (key != self.key and age >= REBUILD_AFTER) or age > FRESH_FOR:
                data = htmlreport.snapshot(self.queue)
                self.body = json.dumps(data, separators=(",", ":"), default=str).encode()
                self.etag = '"' + hashlib.blake2b(self.body, digest_size=12).hexdigest() + '"'
                self.key, self.built = key, time.monotonic()
            return self.body, self.etag


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], queue: FolderQueue, token: str) -> None:
        self.queue = queue
        self.token = token
        self.cache = StateCache(queue)
        self.open_to_all = not is_loopback(address[0])
        if ":" in address[0]:
            import socket

            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)


class Handler(BaseHTTPRequestHandler):
    server: Server
    server_version = "gpudispatch"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per error
        pass

    # --- who is asking -----------------------------------------------------------------
    def _token_ok(self) -> bool:
        given = self.headers.get("X-Gpudispatch-Token") or \
            parse_qs(urlsplit(self.path).query).get("token", [""])[0]
        return bool(given) and hmac.compare_digest(given.encode(), self.server.token.encode())

    def _local(self) -> bool:
        """From this machine, to a loopback name (no DNS rebinding)."""
        return is_loopback(self.client_address[0]) and \
            is_loopback(host_name(self.headers.get("Host") or ""))

    def _may_look(self) -> bool:
        return self._token_ok() or (not self.server.open_to_all and self._local())

    def _may_act(self) -> bool:
        return self._token_ok() or (not self.server.open_to_all and self._local()
                                    and self.headers.get("X-Gpudispatch") == "1")

    # --- replies -----------------------------------------------------------------------
    def _send(self, status: int, body: bytes, kind: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def do_GET(self) -> None:
        if not self._may_look():
            self._json(403, {"error": "this server needs its token (?token=... printed at "
                                      "start)"})
            return
        url = urlsplit(self.path)
        if url.path == "/":
            live = {"state": "api/state", "interval": POLL_MS, "actions": self._may_act_page()}
            page = htmlreport.render(None, live).encode()
            self._send(200, page, "text/html; charset=utf-8",
                       {"Content-Security-Policy": "default-src 'none'; script-src "
                        "'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
                        "img-src data:; frame-ancestors 'none'"})
        elif url.path == "/api/state":
            body, etag = self.server.cache.get()
            if self.headers.get("If-None-Match") == etag:
                self._send(304, b"", "application/json", {"ETag": etag})
            else:
                self._send(200, body, "application/json", {"ETag": etag})
        elif url.path == "/api/log":
            name = parse_qs(url.query).get("name", [""])[0]
            self._log(name)
        else:
            self._json(404, {"error": "not found"})

    do_HEAD = do_GET

    def _may_act_page(self) -> bool:
        """Whether the page shows action buttons: the token, or a local viewer (whose
        page sends the ``X-Gpudispatch`` header)."""
        return self._token_ok() or (not self.server.open_to_all and self._local())

    def _log(self, name: str) -> None:
        queue = self.server.queue
        if not name or "/" in name or "\0" in name or queue.locate(name) is None:
            self._json(404, {"error": f"no job named {printable(name)!r}"})
            return
        record = queue.read_record(name)
        text = htmlreport.log_tail(queue, record.log, LOG_TAIL_BYTES, None)
        self._send(200, (text or "(no output yet)").encode(), "text/plain; charset=utf-8")

    def do_POST(self) -> None:
        if not self._may_act():
            self._json(403, {"error": "actions need the token, or a request from this "
                                      "machine"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= BODY_MAX:
            self._json(400, {"error": "bad request body"})
            return
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self._json(400, {"error": "the body must be a JSON object"})
            return
        action = urlsplit(self.path).path.removeprefix("/api/")
        queue = self.server.queue
        name = body.get("name")
        try:
            if action == "pause":
                queue.set_paused(True)
                said = "paused"
            elif action == "resume":
                queue.set_paused(False)
                said = "resumed"
            elif action in ("cancel", "retry"):
                if not isinstance(name, str) or not name or "/" in name or "\0" in name:
                    self._json(400, {"error": "name a job"})
                    return
                if queue.locate(name) is None:
                    self._json(404, {"error": f"no job named {printable(name)!r}"})
                    return
                said = (control.cancel(queue, name) if action == "cancel"
                        else control.retry(queue, name))
            else:
                self._json(404, {"error": "no such action"})
                return
        except (QueueError, OSError) as exc:
            self._json(409, {"error": printable(str(exc))})
            return
        self._json(200, {"ok": printable(said)})


def serve(queue: FolderQueue, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          token: str | None = None, out=None) -> None:
    """Serve until interrupted; say where (and the token) on ``out``."""
    out = out or sys.stdout
    token = token or secrets.token_urlsafe(18)
    server = Server((host, port), queue, token)
    shown = f"[{host}]" if ":" in host else host
    bound = server.server_address[1]
    print(f"gpudispatch serve: {queue.layout.root} at http://{shown}:{bound}/", file=out)
    if server.open_to_all:
        print(f"listening on {host}, not only this machine: every request needs the token; "
              f"open http://{shown}:{bound}/?token={token}", file=out)
    else:
        print(f"token (for actions from elsewhere, e.g. through a proxy): {token}", file=out)
    out.flush()
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
