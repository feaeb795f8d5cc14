"""``gpudispatch results`` as a researcher reads it: two sweeps run by a real dispatcher,
then the table, CSV and JSON through the real CLI."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, Launcher, cli, job_env

from gpudispatch.results import collect, columns, fit_widths
from gpudispatch.store import FolderQueue
from gpudispatch.sweep import build_sweep, queue_sweep

LONG = "digits-mlp-width-and-learning-rate-search"  # run names of 49 characters


def spec(name: str, metric: dict | None) -> dict:
    """A grid of three learning rates on examples/train_toy.py: the larger the rate, the
    lower val_loss and the higher weight, so name order is the worst-first order."""
    return {
        "name": name,
        "program": str(REPO / "examples" / "train_toy.py"),
        "interpreter": sys.executable,
        "method": "grid",
        "parameters": {"lr": {"values": [0.001, 0.01, 0.1]}, "epochs": {"value": 2}},
        **({"metric": metric} if metric else {}),
    }


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> Path:
    """Two finished sweeps (one minimizing val_loss, one maximizing weight) and a job
    from `submit --` that belongs to no sweep."""
    tmp = tmp_path_factory.mktemp("results")
    root = tmp / "root"
    for name, metric in [(LONG, {"name": "val_loss", "goal": "minimize"}),
                         ("up", {"name": "weight", "goal": "maximize"})]:
        path = tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec(name, metric)))
        cli("sweep", str(path), "--dir", str(root), check=True)
    cli("submit", "--dir", str(root), "--name", "plain.sh", "--", "true", check=True)
    launcher = Launcher(tmp)
    try:
        proc = launcher.run(root, "--slots", "2", "--drain")
        assert proc.wait(60) == 0, proc.output()
    finally:
        launcher.close()
    return root


def results(root: Path, *args: str, columns_: int = 200):
    return cli("results", "--dir", str(root), *args,
               env={**job_env(), "COLUMNS": str(columns_)})


def names_of(rows: list[dict]) -> list[str]:
    return [row["name"] for row in rows]


def test_a_sweep_is_best_first_by_its_metric(ran: Path) -> None:
    rows = json.loads(results(ran, "--sweep", LONG, "--json").stdout)
    assert names_of(rows) == [f"{LONG}-0003.sh", f"{LONG}-0002.sh", f"{LONG}-0001.sh"]
    losses = [row["val_loss"] for row in rows]
    assert losses == sorted(losses) and len(set(losses)) == 3
    rows = json.loads(results(ran, "--sweep", "up", "--json").stdout)  # maximize: largest
    weights = [row["weight"] for row in rows]
    assert weights == sorted(weights, reverse=True) and names_of(rows)[0] == "up-0003.sh"
    table = results(ran, "--sweep", LONG).stdout
    assert "best first by val_loss (minimize)" in table
    assert table.index(f"{LONG}-0003.sh") < table.index(f"{LONG}-0001.sh")


def test_sweeps_with_different_goals_together_stay_in_name_order(ran: Path) -> None:
    rows = json.loads(results(ran, "--json").stdout)
    assert names_of(rows) == sorted(names_of(rows)) and len(rows) == 7
    assert "plain.sh" in names_of(rows)


def test_sort_desc_and_top(ran: Path) -> None:
    rows = json.loads(results(ran, "--sort", "lr", "--desc", "--top", "2", "--json").stdout)
    assert [row["lr"] for row in rows] == [0.1, 0.1]
    rows = json.loads(results(ran, "--sweep", LONG, "--top", "1", "--json").stdout)
    assert names_of(rows) == [f"{LONG}-0003.sh"]
    out = results(ran, "--sweep", LONG, "--top", "1", "--csv").stdout
    assert [r["name"] for r in csv.DictReader(io.StringIO(out))] == [f"{LONG}-0003.sh"]
    assert "top 1 of 3" in results(ran, "--sweep", LONG, "--top", "1").stdout
    bad = results(ran, "--top", "0")
    assert bad.returncode != 0 and "--top" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("width", [40, 80, 120])
def test_whole_names_at_any_width(ran: Path, width: int) -> None:
    out = results(ran, "--sweep", LONG, columns_=width)
    assert out.returncode == 0, out.stderr
    for n in (1, 2, 3):
        assert f" {LONG}-000{n}.sh " in out.stdout, out.stdout
    body = [ln for ln in out.stdout.splitlines() if f"{LONG}-000" in ln]
    if width >= 80:  # room beside the name: the best run's metric is on its line
        best = json.loads(results(ran, "--sweep", LONG, "--json").stdout)[0]
        assert all(len(ln) <= width for ln in out.stdout.splitlines())
        assert "val_loss" in out.stdout and f"{best['val_loss']:.6g}" in body[0]
    if width == 80:
        assert "not shown" in out.stdout  # something had to go, and the caption says so


def test_unknown_sort_or_sweep_fails_with_one_line_naming_the_known_ones(ran: Path) -> None:
    bad = results(ran, "--sort", "val_los")
    assert bad.returncode != 0 and bad.stdout == ""
    assert len(bad.stderr.splitlines()) == 1
    assert "val_los " in bad.stderr and "val_loss" in bad.stderr and "lr" in bad.stderr
    bad = results(ran, "--sweep", "mlp")
    assert bad.returncode != 0 and bad.stdout == ""
    assert bad.stderr.splitlines() == [
        f"gpudispatch results: no sweep named mlp; known sweeps: {LONG}, up"]


def test_csv_and_json_keep_their_shape(ran: Path) -> None:
    """Every column of every job, whatever the terminal's width or --top: a narrow table
    leaves columns out, files never do."""
    rows = json.loads(results(ran, "--json", "--top", "7", columns_=40).stdout)
    cols = columns(rows)
    assert cols[:4] == ["name", "state", "duration_s", "gpus"]
    assert {"lr", "epochs", "step", "val_loss", "weight"} <= set(cols)
    assert all(set(row) <= set(cols) for row in rows) and len(rows) == 7
    parsed = list(csv.reader(io.StringIO(results(ran, "--csv", "--top", "7",
                                                 columns_=40).stdout)))
    assert parsed[0] == cols and len(parsed) == 8
    assert all(len(line) == len(cols) for line in parsed)


def test_sort_by_the_sweeps_metric_before_any_run_reports_it(tmp_path: Path) -> None:
    """What `sweep` suggests right after queueing must work though no column exists yet."""
    queue = FolderQueue(tmp_path / "root")
    sweep = build_sweep(spec("fresh", {"name": "val_loss", "goal": "minimize"}))
    queue_sweep(sweep.jobs, queue, sweep.name, sweep.metric)
    out = results(queue.layout.root, "--sweep", "fresh", "--sort", "val_loss", "--json")
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)) == 3


def test_the_sweeps_metric_is_recorded_with_each_run(tmp_path: Path) -> None:
    queue = FolderQueue(tmp_path / "root")
    sweep = build_sweep(spec("s", {"name": "acc", "goal": "maximize"}))
    queue_sweep(sweep.jobs, queue, sweep.name, sweep.metric)
    plain = build_sweep({**spec("t", None)})
    queue_sweep(plain.jobs, queue, plain.name, plain.metric)
    record = queue.read_record("s-0001.sh")
    assert record.extra["sweep_metric"] == {"name": "acc", "goal": "maximize"}
    assert "sweep_metric" not in queue.read_record("t-0001.sh").extra
    assert collect(queue, "s").ranking() == ("acc", True)
    assert collect(queue, "t").ranking() is None
    assert collect(queue).ranking() == ("acc", True)  # t has no metric: s's decides
    assert collect(queue).sweeps == {"s", "t"}


@pytest.mark.parametrize(
    ("width", "expected"),
    [
        (200, {"name": 30, "m": 8, "state": 9, "text": 20}),
        # 1 + 33 (name) + 11 (m) + 12 (state) = 57; text joins at its least, 6
        (66, {"name": 30, "m": 8, "state": 9, "text": 6}),
        # state does not fit at its least (left out); text does, and takes what is left
        (56, {"name": 30, "m": 8, "text": 8}),
        (20, {"name": 30}),  # the name whole, even alone and wider than the table
    ],
)
def test_fit_widths(width: int, expected: dict) -> None:
    natural = {"name": 30, "state": 9, "m": 8, "text": 20}
    least = {"name": 30, "state": 9, "m": 8, "text": 6}
    assert fit_widths(natural, least, "name", ["m", "state", "text"], width) == expected
