"""Command-line values out of range: one line on stderr, a non-zero exit, no traceback,
and nothing started. Real ``gpudispatch``/``jobdispatcher`` processes; a value that
would hang or spin shows as the subprocess timeout."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import BIN, cli, job_env, names_in

from gpudispatch import argcheck

pytestmark = pytest.mark.slow


def assert_refused(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--slots", "1", "--heartbeat", "0"], "--heartbeat 0: must be more than 0"),
        (["--slots", "1", "--heartbeat", "-5"], "--heartbeat -5"),
        (["--slots", "1", "--heartbeat", "nan"], "--heartbeat nan"),
        (["--slots", "1", "--kill-grace", "-1"], "--kill-grace -1: must be 0 or more"),
        (["--slots", "1", "--wait", "-1"], "--wait -1"),
        (["--slots", "1", "--wait", "0"], "--wait 0"),
        (["--slots", "1", "--wait", "inf"], "--wait inf"),
        (["--slots", "1", "--gpu-poll", "0"], "--gpu-poll 0"),
        (["--slots", "1", "--reserve-after", "-1"], "--reserve-after -1"),
        (["--slots", "0"], "--slots 0: must be 1 or more"),
        (["--slots", "-2"], "--slots -2"),
        (["--slots", "100000000"], "--slots 100000000: must be at most"),
        (["--gpus", "0-100000000"], "too large"),
        (["--gpus", "100000000"], "too large"),
        (["--gpus", "3-1"], "runs backwards"),
    ],
)
def test_run_refuses_values_out_of_range(root, args: list[str], fragment: str) -> None:
    result = cli("run", "-q", "--dir", str(root), "--drain", *args, timeout=20)
    assert_refused(result, fragment)
    assert not (root / "logfile.txt").exists()  # no dispatcher started


@pytest.mark.parametrize("verb", [["run", "--slots", "1", "--drain"], ["submit"],
                                  ["status"], ["results"], ["pause"]])
def test_dir_that_is_a_file(tmp_path, verb: list[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder\n")
    script = tmp_path / "a.sh"
    script.write_text("#!/bin/sh\n")
    extra = [str(script)] if verb == ["submit"] else []
    result = cli(*verb, "--dir", str(afile), *extra, timeout=20)
    assert_refused(result, "is not a folder")
    assert afile.read_text() == "not a folder\n"


def test_run_on_a_root_whose_state_folder_is_a_file(root) -> None:
    (root / "completed").write_text("x")
    result = cli("run", "-q", "--dir", str(root), "--slots", "1", "--drain", timeout=20)
    assert_refused(result, "completed is not a folder")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--interval", "0"], "--interval 0: must be at least 0.1"),
        (["--interval", "-1"], "--interval -1"),
        (["--interval", "nan"], "--interval nan"),
        (["--recent", "-1"], "--recent -1"),
    ],
)
def test_status_refuses_values_out_of_range(root, args: list[str], fragment: str) -> None:
    result = cli("status", "--dir", str(root), "--watch", *args, timeout=20)
    assert_refused(result, fragment)


def test_cancel_refuses_a_negative_grace(root) -> None:
    result = cli("cancel", "--dir", str(root), "--grace", "-1", "a.sh", timeout=20)
    assert_refused(result, "--grace -1")


@pytest.mark.parametrize(
    "args, fragment",
    [(["--gpu", "0", "--wait", "0"], "--wait 0"), (["--gpu", "0", "--wait", "-1"], "--wait -1"),
     (["--gpu", "-1"], "--gpu -1"), (["--gpu", "100000000"], "--gpu 100000000")],
)
def test_jobdispatcher_refuses_values_out_of_range(tmp_path, args: list[str],
                                                   fragment: str) -> None:
    result = subprocess.run([str(BIN / "jobdispatcher"), *args, "--dir", str(tmp_path),
                             "--drain"], env=job_env(), capture_output=True, text=True,
                            timeout=20)
    assert_refused(result, fragment)
    assert list(tmp_path.iterdir()) == []


def test_jobdispatcher_dir_that_is_a_file(tmp_path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = subprocess.run([str(BIN / "jobdispatcher"), "--gpu", "0", "--dir", str(afile),
                             "--drain"], env=job_env(), capture_output=True, text=True,
                            timeout=20)
    assert_refused(result, "is not a folder")


def test_gpus_the_probe_does_not_list_are_refused(tmp_path, root) -> None:
    fake = tmp_path / "gpus.json"
    fake.write_text(json.dumps([{"index": i, "name": "Fake", "memory_total": 2**34,
                                 "memory_used": 0, "processes": []} for i in (0, 1)]))
    env = {**job_env(), "GPUDISPATCH_FAKE_GPUS": str(fake)}
    result = cli("run", "-q", "--dir", str(root), "--gpus", "1,99", "--drain", env=env,
                 timeout=20)
    assert_refused(result, "no GPU 99 on this host (GPUs here: 0,1)")
    ok = cli("run", "-q", "--dir", str(root), "--gpus", "1", "--drain", env=env, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert names_in(root, "failed") == []


# ---------------------------------------------------------------------- the pure checks
@pytest.mark.parametrize(
    "value, kwargs, ok",
    [(1.0, {}, True), (0.0, {}, False), (-1.0, {}, False), (float("nan"), {}, False),
     (float("inf"), {}, False), (1e12, {}, False), (0.0, {"zero_ok": True}, True),
     (-0.5, {"zero_ok": True}, False), (0.05, {"minimum": 0.1}, False),
     (0.1, {"minimum": 0.1}, True)],
)
def test_seconds(value: float, kwargs: dict, ok: bool) -> None:
    if ok:
        assert argcheck.seconds(value, "--x", **kwargs) == value
    else:
        with pytest.raises(argcheck.OptionError, match="--x"):
            argcheck.seconds(value, "--x", **kwargs)


@pytest.mark.parametrize(
    "value, kwargs, ok",
    [(1, {}, True), (0, {}, False), (0, {"minimum": 0}, True), (5, {"maximum": 4}, False)],
)
def test_count(value: int, kwargs: dict, ok: bool) -> None:
    if ok:
        assert argcheck.count(value, "--n", **kwargs) == value
    else:
        with pytest.raises(argcheck.OptionError, match="--n"):
            argcheck.count(value, "--n", **kwargs)
