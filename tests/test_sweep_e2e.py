"""A sweep file, queued and run by a real dispatcher, then read back with `results`."""

from __future__ import annotations

import csv
import io
import json
import sys

import pytest
import yaml
from conftest import REPO, cli

pytestmark = pytest.mark.slow


def test_sweep_runs_and_reports_metrics(launch, tmp_path):
    root = tmp_path / "root"
    spec = {
        "name": "lr-search",
        "program": str(REPO / "examples" / "train_toy.py"),
        "method": "random",
        "run_cap": 3,
        "parameters": {
            "lr": {"distribution": "log_uniform_values", "min": 1e-3, "max": 1e-1},
            "batch_size": {"values": [16, 64]},
            "epochs": {"value": 3},
        },
    }
    spec_path = tmp_path / "sweep.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    # gpudispatch's settings, in the file read with sweep.yaml (W&B never sees them)
    (tmp_path / "sweep.gpudispatch.yaml").write_text(yaml.safe_dump(
        {"seed": 7, "interpreter": sys.executable, "directives": {"timeout": "5m"}}))

    dry = cli("sweep", str(spec_path), "--dir", str(root), "--dry-run", check=True)
    assert "3 jobs" in dry.stdout and not (root / "queue").exists()
    assert "seed 7" in dry.stdout and "#GPUDISPATCH --timeout 5m" in dry.stdout

    cli("sweep", str(spec_path), "--dir", str(root), check=True)
    queued = sorted(p.name for p in (root / "queue").iterdir())
    assert queued == ["lr-search-0001.sh", "lr-search-0002.sh", "lr-search-0003.sh"]

    proc = launch.run(root, "--slots", "2", "--drain")
    assert proc.wait(60) == 0, proc.output()

    rows = json.loads(cli("results", "--dir", str(root), "--sweep", "lr-search", "--json",
                          "--sort", "val_loss", check=True).stdout)
    assert len(rows) == 3
    assert all(row["state"] == "completed" for row in rows), rows
    assert all(1e-3 <= row["lr"] <= 1e-1 and row["batch_size"] in (16, 64) for row in rows)
    losses = [row["val_loss"] for row in rows]
    assert losses == sorted(losses) and all(isinstance(v, float) for v in losses)
    assert all(row["duration_s"] is not None and row["duration_s"] >= 0 for row in rows)

    table = list(csv.DictReader(io.StringIO(
        cli("results", "--dir", str(root), "--csv", check=True).stdout)))
    assert {r["name"] for r in table} == set(queued) and "weight" in table[0]

    # The same params reach the record, and the same seed gives the same sweep again.
    record = json.loads((root / "logs" / "lr-search-0001.sh.json").read_text())
    assert record["params"]["epochs"] == 3
    again = cli("sweep", str(spec_path), "--dir", str(tmp_path / "other"), "--dry-run",
                check=True).stdout
    def lr_lines(text):
        return [line for line in text.splitlines() if "--lr" in line]

    assert len(lr_lines(dry.stdout)) == 3 and lr_lines(again) == lr_lines(dry.stdout)


def test_bad_sweep_file_names_the_key_and_queues_nothing(tmp_path):
    spec_path = tmp_path / "sweep.yaml"
    spec_path.write_text(yaml.safe_dump({"program": "x.py", "method": "grid", "paramters": {}}))
    result = cli("sweep", str(spec_path), "--dir", str(tmp_path / "root"))
    assert result.returncode != 0 and "paramters" in result.stderr
    queue = tmp_path / "root" / "queue"
    assert not queue.exists() or not any(queue.iterdir())
