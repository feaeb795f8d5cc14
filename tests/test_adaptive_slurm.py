"""Sweeps that learn on the Slurm backend (the controller lives in `run --backend slurm`),
against the real single-node Slurm of ``.ci/slurm-up.sh``."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import cli, names_in, record
from test_adaptive_e2e import (
    QUAD,
    bayes_spec,
    check_study_matches_queue,
    hyperband_spec,
    steps_program,
    sweep_files,
)

pytestmark = [
    pytest.mark.slurm, pytest.mark.slow,
    pytest.mark.skipif(shutil.which("sinfo") is None,
                       reason="Slurm client tools not on PATH (run: bash .ci/slurm-up.sh)"),
]
REPO = Path(__file__).resolve().parent.parent

SLOW_STEPS = steps_program(20, 0.5)


@pytest.fixture(scope="module", autouse=True)
def slurm_up() -> None:
    proc = subprocess.run(["bash", str(REPO / ".ci" / "slurm-up.sh")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"Slurm did not come up:\n{proc.stdout}{proc.stderr}"


def test_bayes_sweep_on_slurm(launch, tmp_path):
    root = tmp_path / "root"
    spec = sweep_files(tmp_path, bayes_spec("sq", 4), QUAD)
    cli("sweep", str(spec), "--dir", str(root), check=True)
    proc = launch.run(root, "--backend", "slurm", "--wait", "0.3", "--drain")
    assert proc.wait(180) == 0, proc.output()
    check_study_matches_queue(root, "sq", 4)


def test_hyperband_on_slurm(launch, tmp_path):
    root = tmp_path / "root"
    spec = sweep_files(tmp_path, hyperband_spec("shb", 2, [0.1, 0.2, 7]), SLOW_STEPS)
    cli("sweep", str(spec), "--dir", str(root), check=True)
    proc = launch.run(root, "--backend", "slurm", "--wait", "0.3", "--drain")
    assert proc.wait(180) == 0, proc.output()
    assert names_in(root, "failed") == []
    rec = record(root, "shb-0003.sh")
    assert re.fullmatch(r"stopped early by hyperband at step \d+ \(loss=7\)", rec["reason"]), rec
    assert rec["extra"]["slurm_state"] == "CANCELLED"
    assert record(root, "shb-0001.sh")["reason"] is None
