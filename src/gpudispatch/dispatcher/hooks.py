"""The ``--on-finish`` hook: a shell command run once per concluded job."""

from __future__ import annotations

import logging
import os
import signal

from gpudispatch.job import JobRecord, JobState
from gpudispatch.layout import (
    HOOK_EXIT_CODE_ENV,
    HOOK_REASON_ENV,
    HOOK_STATE_ENV,
    JOB_ENV,
    LOG_ENV,
    ROOT_ENV,
)


class Hooks:
    def __init__(self, command: str | None, base_env: dict[str, str], root: str,
                 log: logging.Logger) -> None:
        self.command = command
        self._base_env = base_env
        self._root = root
        self._log = log
        self._running: dict[int, str] = {}  # pid -> job name

    def fire(self, name: str, record: JobRecord, state: JobState) -> None:
        if not self.command:
            return
        env = {
            **self._base_env,
            JOB_ENV: name,
            HOOK_STATE_ENV: state.value,
            HOOK_EXIT_CODE_ENV: "" if record.exit_code is None else str(record.exit_code),
            LOG_ENV: record.log or "",
            HOOK_REASON_ENV: record.reason or "",
            ROOT_ENV: self._root,
        }
        try:
            pid = os.posix_spawn(
                "/bin/sh", ["/bin/sh", "-c", self.command], env, setsid=True,
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),  # ignored by Python, not by hooks
            )
        except OSError as exc:
            self._log.warning("on-finish hook for %s could not start: %s", name, exc)
            return
        self._running[pid] = name

    def own_pids(self) -> set[int]:
        return set(self._running)

    def reap(self) -> None:
        for pid in list(self._running):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                name = self._running.pop(pid)
                code = os.waitstatus_to_exitcode(status)
                if code != 0:
                    self._log.warning("on-finish hook for %s returned %s", name, code)
