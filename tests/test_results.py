"""Results: job records, params and hand-written metrics files merged into rows."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest

from gpudispatch.job import JobState
from gpudispatch.results import (
    METRICS_ENV,
    columns,
    duration_s,
    merge_row,
    read_metrics,
    result_rows,
    rows_to_csv,
    sort_rows,
    write_metrics,
)
from gpudispatch.store import FolderQueue
from gpudispatch.sweep import build_sweep, queue_sweep

SPEC = {
    "program": "train.py",
    "prefix": "s",
    "parameters": {"lr": {"values": [0.1, 0.01, 0.001]}, "bs": {"value": 8}},
}


@pytest.fixture
def queue(tmp_path: Path) -> FolderQueue:
    """A sweep of 3 jobs (one completed with metrics, one failed, one queued) + a stranger."""
    q = FolderQueue(tmp_path / "root")
    sweep = build_sweep(SPEC)
    queue_sweep(sweep.jobs, q, sweep.name)
    q.enqueue_text("other.sh", "#!/bin/sh\n", params={"lr": 5})
    for name, state, metrics in [("s-0001.sh", JobState.COMPLETED, {"loss": 0.5, "acc": 0.9}),
                                 ("s-0002.sh", JobState.FAILED, None)]:
        q.move(name, JobState.QUEUED, state)
        record = q.read_record(name)
        record.gpus, record.started_at = [0, 1], "2024-01-01T10:00:00.000+00:00"
        record.ended_at = "2024-01-01T10:01:30.500+00:00"
        q.write_record(record)
        if metrics is not None:
            Path(q.layout.metrics(name)).write_text(json.dumps(metrics))
    return q


def test_rows_for_a_sweep(queue: FolderQueue) -> None:
    rows = result_rows(queue, sweep="s")
    assert rows == [
        {"name": "s-0001.sh", "state": "completed", "duration_s": 90.5, "gpus": [0, 1],
         "lr": 0.1, "bs": 8, "loss": 0.5, "acc": 0.9},
        {"name": "s-0002.sh", "state": "failed", "duration_s": 90.5, "gpus": [0, 1],
         "lr": 0.01, "bs": 8},
        {"name": "s-0003.sh", "state": "queued", "duration_s": None, "gpus": [],
         "lr": 0.001, "bs": 8},
    ]


def test_all_jobs_without_sweep_filter(queue: FolderQueue) -> None:
    assert [r["name"] for r in result_rows(queue)] == ["other.sh", "s-0001.sh", "s-0002.sh",
                                                       "s-0003.sh"]
    assert result_rows(queue, sweep="nope") == []


def test_metric_colliding_with_param_is_prefixed(queue: FolderQueue) -> None:
    Path(queue.layout.metrics("s-0001.sh")).write_text(json.dumps({"lr": 0.05, "name": "x"}))
    row = result_rows(queue, sweep="s")[0]
    assert (row["lr"], row["metric.lr"], row["metric.name"], row["name"]) == (
        0.1, 0.05, "x", "s-0001.sh")


def test_merge_row_param_colliding_with_base() -> None:
    row = merge_row({"name": "a.sh", "state": "queued"}, {"name": "resnet"}, {"name": 1})
    assert row == {"name": "a.sh", "state": "queued", "param.name": "resnet", "metric.name": 1}


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]", "3"])
def test_unreadable_metrics_are_empty(tmp_path: Path, content: str) -> None:
    path = tmp_path / "m.json"
    path.write_text(content)
    assert read_metrics(path) == {}
    assert read_metrics(tmp_path / "missing.json") == {}


def test_write_metrics_uses_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(METRICS_ENV, raising=False)
    assert write_metrics({"a": 1}) is None
    target = tmp_path / "x.metrics.json"
    monkeypatch.setenv(METRICS_ENV, str(target))
    assert write_metrics({"a": 1}) == target
    assert read_metrics(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.metrics.json"]  # no temp left


@pytest.mark.parametrize(
    ("started", "ended", "expected"),
    [
        ("2024-01-01T10:00:00+00:00", "2024-01-01T10:00:02.250+00:00", 2.25),
        ("2024-01-01T10:00:00+00:00", None, None),
        (None, None, None),
        ("garbage", "2024-01-01T10:00:00+00:00", None),
    ],
)
def test_duration(started, ended, expected) -> None:
    from gpudispatch.job import JobRecord

    assert duration_s(JobRecord("a.sh", started_at=started, ended_at=ended)) == expected


@pytest.mark.parametrize(
    ("descending", "expected"),
    [(False, ["b", "c", "a", "s", "d", "e"]), (True, ["a", "c", "b", "s", "d", "e"])],
)
def test_sort_rows_missing_last(descending: bool, expected: list[str]) -> None:
    rows = [{"name": "a", "m": 3}, {"name": "b", "m": 1.0}, {"name": "c", "m": 2},
            {"name": "d", "m": None}, {"name": "e", "m": math.nan}, {"name": "s", "m": "z"}]
    rows.append({"name": "f"})
    expected = [*expected, "f"]
    assert [r["name"] for r in sort_rows(rows, "m", descending)] == expected


def test_columns_and_csv(queue: FolderQueue) -> None:
    rows = result_rows(queue, sweep="s")
    assert columns(rows) == ["name", "state", "duration_s", "gpus", "lr", "bs", "loss", "acc"]
    parsed = list(csv.DictReader(io.StringIO(rows_to_csv(rows))))
    assert parsed[0] == {"name": "s-0001.sh", "state": "completed", "duration_s": "90.5",
                         "gpus": "0,1", "lr": "0.1", "bs": "8", "loss": "0.5", "acc": "0.9"}
    assert parsed[2]["duration_s"] == "" and parsed[2]["loss"] == ""
    assert rows_to_csv([]) == "name,state,duration_s,gpus\n"
