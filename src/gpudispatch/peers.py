"""Which dispatchers serve a queue: registration, heartbeats, and who is still alive.

Each dispatcher keeps a file ``.gpudispatch/dispatchers/HOST.PID`` fresh. A dispatcher on
this host is alive while its pid is; one on another host (a shared filesystem) while its
file was touched within three heartbeats. Whether a *job* still has an owner is not read
from heartbeats but from its lock (``store.lock_job``), which a frozen or slow peer keeps.
"""

from __future__ import annotations

import os
import time

from gpudispatch import procs
from gpudispatch.job import now_iso
from gpudispatch.layout import Layout
from gpudispatch.store import HOST, write_atomic

HEARTBEAT_SECONDS = 15.0


def owner_id() -> str:
    return f"{HOST}.{os.getpid()}"


def heartbeat(layout: Layout, owner: str) -> None:
    write_atomic(layout.dispatcher_file(owner), now_iso().encode(), layout.tmp)


def unregister(layout: Layout, owner: str) -> None:
    try:
        os.unlink(layout.dispatcher_file(owner))
    except FileNotFoundError:
        pass


def owner_alive(layout: Layout, owner: str | None, every: float = HEARTBEAT_SECONDS) -> bool:
    """Alive: its pid, on this host; elsewhere, a heartbeat within three periods."""
    if not owner:
        return False
    host, _, pid = owner.rpartition(".")
    if host == HOST:
        return pid.isdigit() and procs.pid_alive(int(pid))
    try:
        beat = os.stat(layout.dispatcher_file(owner)).st_mtime
    except FileNotFoundError:
        return False
    return time.time() - beat < 3 * every
