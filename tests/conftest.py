"""Shared helpers for the end-to-end tests: real dispatcher processes on tmp_path queues.

Nothing here sleeps for a fixed time: tests wait for conditions with :func:`wait_until`,
and jobs that must "run for a while" block on a gate file the test creates.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

PYTHON = sys.executable
BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
STATES = ("queue", "running", "completed", "failed")
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|WARNING|ERROR): (.*)$")


class WaitTimeout(AssertionError):
    pass


@pytest.fixture(autouse=True)
def _not_a_subreaper_after_the_test():
    """A dispatcher run in this process makes it a subreaper (to catch its jobs'
    daemons); afterwards it would adopt every orphan of later tests (a daemon that
    ``slurm-up.sh`` starts, say) and, never reaping them, keep them as zombies that
    ``kill -0`` takes for alive. Each test starts without it."""
    yield
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 0, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def wait_until(
    predicate: Callable[[], object],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str | Callable[[], str] = "",
):
    """Poll ``predicate`` until it returns something truthy (returned), or raise.

    ``message`` (or a callable giving it, evaluated only on failure) explains what was
    awaited and shows the state that was seen instead.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise WaitTimeout(f"timed out after {timeout}s waiting for: {text or predicate}")
        time.sleep(interval)


# ---------------------------------------------------------------------- queue helpers
def write_script(path: Path | str, text: str | bytes, mode: int = 0o755) -> Path:
    """Write a script under a temporary name beside ``path``'s folder, then rename it in,
    so a dispatcher never sees it half written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent.parent / f".incoming-{os.getpid()}-{time.monotonic_ns()}"
    data = text.encode() if isinstance(text, str) else text
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.rename(tmp, path)
    return path


def q(path: Path | str) -> str:
    return shlex.quote(str(path))


def gate_wait(gate: Path) -> str:
    """Shell lines that block until the test creates ``gate`` (the sleep is in the job)."""
    return f"while [ ! -e {q(gate)} ]; do sleep 0.02; done\n"


def job_text(body: str = "", *, runs: Path | None = None, gate: Path | None = None,
             exit_code: int = 0, header: str = "") -> str:
    """A /bin/sh job: optional directive header, append its name to ``runs`` on start,
    wait for ``gate``, run ``body``, exit with ``exit_code``."""
    lines = "#!/bin/sh\n" + header
    if runs is not None:
        lines += f'echo "$GPUDISPATCH_JOB" >> {q(runs)}\n'
    if gate is not None:
        lines += gate_wait(gate)
    lines += body
    if body and not body.endswith("\n"):
        lines += "\n"
    lines += f"exit {exit_code}\n"
    return lines


def open_gate(gate: Path) -> None:
    gate.touch()


def read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def names_in(root: Path, state: str) -> list[str]:
    try:
        return sorted(os.listdir(root / state))
    except FileNotFoundError:
        return []


def where(root: Path, name: str) -> str | None:
    for state in STATES:
        if os.path.lexists(root / state / name):
            return state
    return None


def snapshot(root: Path) -> str:
    """The folders of a root, for failure messages."""
    return "; ".join(f"{s}={names_in(root, s)}" for s in STATES)


def record(root: Path, name: str) -> dict:
    with open(root / "logs" / f"{name}.json") as fh:
        return json.load(fh)


def record_or_none(root: Path, name: str) -> dict | None:
    try:
        return record(root, name)
    except (FileNotFoundError, ValueError):
        return None


def log_messages(root: Path) -> list[str]:
    """The messages of ``logfile.txt`` without timestamps; every line must be well formed."""
    out = []
    for line in read_lines(root / "logfile.txt"):
        match = LOG_LINE.match(line)
        assert match, f"malformed logfile line: {line!r}"
        out.append(f"{match.group(1)}: {match.group(2)}")
    return out


def logfile_text(root: Path) -> str:
    try:
        return (root / "logfile.txt").read_text()
    except FileNotFoundError:
        return ""


def pid_alive(pid: int) -> bool:
    """A live process that is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = data[data.rfind(b")") + 2 : data.rfind(b")") + 3]
    return state not in (b"Z", b"X")


def parent_pid(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        data = fh.read()
    return int(data[data.rfind(b")") + 2 :].split()[1])


def job_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GPUDISPATCH_") and k != "CUDA_VISIBLE_DEVICES"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cli(*args: str, env: dict | None = None, cwd: Path | str | None = None,
        timeout: float = 30, check: bool | None = None) -> subprocess.CompletedProcess:
    """Run ``gpudispatch ARGS`` to completion."""
    result = subprocess.run(
        [PYTHON, "-m", "gpudispatch", *args],
        env=env or job_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert result.returncode == 0, f"gpudispatch {args} failed: {result.stderr}"
    return result


# ---------------------------------------------------------------------- dispatchers
class DispatcherProcess:
    """A real dispatcher (``gpudispatch run`` or ``jobdispatcher``) in its own session."""

    def __init__(self, argv: Sequence[str], root: Path, cwd: Path, env: dict, out: Path):
        self.argv = list(argv)
        self.root = root
        self.out_path = out
        with open(out, "wb") as fh:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                self.argv, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise WaitTimeout(
                f"dispatcher {self.argv} did not exit within {timeout}s; "
                f"{snapshot(self.root)}\n--- output:\n{self.output()[-3000:]}"
            ) from None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def kill_jobs_of(root: Path) -> None:
    """SIGKILL every job group still running for ``root`` (found by its environment)."""
    marker = f"GPUDISPATCH_EXIT_FILE={root}/.gpudispatch/exit/".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                env = fh.read()
        except OSError:
            continue
        if marker in env:
            try:
                os.killpg(int(entry.name), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                try:
                    os.kill(int(entry.name), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


class Launcher:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[DispatcherProcess] = []
        self.roots: set[Path] = set()
        self._n = 0

    def _start(self, argv, root: Path, cwd, env) -> DispatcherProcess:
        self._n += 1
        root = Path(os.path.abspath(root))
        self.roots.add(root)
        proc = DispatcherProcess(argv, root, Path(cwd or self.tmp_path), env or job_env(),
                                 self.tmp_path / f"dispatcher-{self._n}.out")
        self.started.append(proc)
        return proc

    def run(self, root: Path, *args: str, cwd=None, env=None, with_dir: bool = True):
        """``python -m gpudispatch run --dir ROOT ARGS`` (``-q``: log to the file only)."""
        argv = [PYTHON, "-m", "gpudispatch", "run", "-q"]
        if with_dir:
            argv += ["--dir", str(root)]
        return self._start([*argv, *args], root, cwd, env)

    def seed(self, gpu: int, directory: Path | None, *args: str, cwd=None, env=None):
        """``jobdispatcher --gpu N [--dir D] ARGS``; its root is D/gpuN."""
        argv = [str(BIN / "jobdispatcher"), "--gpu", str(gpu)]
        if directory is not None:
            argv += ["--dir", str(directory)]
            root = Path(directory) / f"gpu{gpu}"
        else:
            root = Path(cwd or self.tmp_path).parent / f"gpu{gpu}"
        return self._start([*argv, *args], root, cwd, env)

    def close(self) -> None:
        for proc in self.started:
            proc.close()
        for root in self.roots:
            kill_jobs_of(root)


@pytest.fixture
def launch(tmp_path):
    """Start real dispatchers; whatever is left (dispatchers, job groups) is killed after."""
    launcher = Launcher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.close()


@pytest.fixture
def root(tmp_path) -> Path:
    """A queue root with its queue/ folder (the dispatcher creates the rest)."""
    path = tmp_path / "root"
    (path / "queue").mkdir(parents=True)
    return path


def wait_idle(root: Path, count: int = 1, timeout: float = 10.0) -> None:
    """Wait until ``logfile.txt`` says "Job queue empty. Waiting..." ``count`` times."""
    wait_until(
        lambda: logfile_text(root).count("Job queue empty. Waiting...") >= count,
        timeout,
        message=lambda: f"{count} idle line(s) in logfile:\n{logfile_text(root)}",
    )


def wait_state(root: Path, name: str, state: str, timeout: float = 10.0,
               proc: DispatcherProcess | None = None) -> None:
    def msg() -> str:
        text = f"{name} in {state}/; seen: {snapshot(root)}\nlogfile:\n{logfile_text(root)}"
        if proc is not None:
            text += f"\n--- dispatcher output:\n{proc.output()[-2000:]}"
        return text

    wait_until(lambda: where(root, name) == state, timeout, message=msg)


def wait_record(root: Path, name: str, predicate: Callable[[dict], bool],
                timeout: float = 10.0) -> dict:
    def check():
        rec = record_or_none(root, name)
        return rec if rec is not None and predicate(rec) else None

    return wait_until(check, timeout,
                      message=lambda: f"record of {name}: {record_or_none(root, name)}")


def wait_lines(path: Path, n: int, timeout: float = 10.0) -> list[str]:
    return wait_until(lambda: len(read_lines(path)) >= n and read_lines(path), timeout,
                      message=lambda: f"{n} lines in {path}: {read_lines(path)}")
