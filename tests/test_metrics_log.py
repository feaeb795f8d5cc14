"""Intermediate metrics: ``gpudispatch.log`` appends lines, ``results`` shows the last
value of each key and ``results --history NAME`` the series; real jobs, real dispatcher."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON, cli, job_env, q, wait_state, write_script

import gpudispatch
from gpudispatch.results import (
    METRICS_MAX_BYTES,
    history_columns,
    latest,
    metric_history,
    parse_metrics,
    read_metrics,
)
from gpudispatch.store import FolderQueue
from gpudispatch.track import METRICS_ENV, log


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"loss": 0.5}', [{"loss": 0.5}]),
        ('{\n  "loss": 0.5,\n  "acc": {"top1": 0.9}\n}\n', [{"loss": 0.5, "acc": {"top1": 0.9}}]),
        ('{"step": 1, "loss": 2}\n{"step": 2, "loss": 1}\n',
         [{"step": 1, "loss": 2}, {"step": 2, "loss": 1}]),
        # garbage, an array, a number, a blank line, a half-written last line: skipped
        ('{"step": 1}\nnot json\n[1, 2]\n3\n\n{"step": 2}\n{"step": 3, "lo',
         [{"step": 1}, {"step": 2}]),
        ("[" * 100_000, []),  # deeper than the parser goes: still no traceback
        ("", []),
        (b'{"a": 1}\n\xff\xfe\n{"a": 2}\n', [{"a": 1}, {"a": 2}]),
        # a writer that does not escape U+2028 (JSON allows it raw): still one line
        ('{"a": 1, "note": "x\u2028y"}\n{"a": 2}\r\n', [{"a": 1, "note": "x\u2028y"}, {"a": 2}]),
    ],
)
def test_parse_metrics(text: str | bytes, expected: list) -> None:
    assert parse_metrics(text) == expected


def test_latest_keeps_the_last_value_of_every_key() -> None:
    history = [{"step": 1, "loss": 3, "lr": 0.1}, {"step": 2, "loss": 2}, {"acc": 0.5}]
    assert latest(history) == {"step": 2, "loss": 2, "lr": 0.1, "acc": 0.5}
    assert history_columns([{"loss": 1, "step": 1}, {"acc": 2}]) == ["step", "loss", "acc"]


def test_log_appends_one_line_per_call(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(METRICS_ENV, raising=False)
    assert log(step=1, loss=1.0) is None  # outside gpudispatch: nothing, no error
    target = tmp_path / "x.metrics.json"
    monkeypatch.setenv(METRICS_ENV, str(target))
    assert log(step=1, loss=1.5) == target
    assert log(loss=0.5, note="two\nlines") == target
    assert target.read_text().count("\n") == 2
    assert metric_history(target) == [{"step": 1, "loss": 1.5},
                                      {"loss": 0.5, "note": "two\nlines"}]
    assert read_metrics(target) == {"step": 1, "loss": 0.5, "note": "two\nlines"}


def test_concurrent_writers_never_interleave(tmp_path: Path) -> None:
    """Four processes log 200 lines of 20 kB each at once: a buffered writer would split
    such a line into several writes, and lines of two writers would mix."""
    target = tmp_path / "m.json"
    code = ("import sys; from gpudispatch import log\n"
            "for i in range(200): log(step=i, who=sys.argv[1], pad='x' * 20000)\n")
    env = {**job_env(), METRICS_ENV: str(target)}
    procs = [subprocess.Popen([PYTHON, "-c", code, str(w)], env=env) for w in range(4)]
    assert [p.wait(timeout=60) for p in procs] == [0] * 4
    lines = target.read_bytes().split(b"\n")
    assert lines.pop() == b""
    entries = [json.loads(line) for line in lines]  # every line whole
    assert len(entries) == 800
    for who in "0123":
        assert [e["step"] for e in entries if e["who"] == who] == list(range(200))


def test_importing_log_loads_nothing_else() -> None:
    code = ("import sys; from gpudispatch import log; "
            "print(sorted(m for m in sys.modules if m.startswith(('gpudispatch', 'yaml', "
            "'rich', 'logging', 'threading'))))")
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True,
                         env=job_env()).stdout
    assert json.loads(out.replace("'", '"')) == ["gpudispatch", "gpudispatch.track"]


def test_package_names_resolve_lazily() -> None:
    assert set(gpudispatch.__all__) == set(gpudispatch._WHERE)
    for name in gpudispatch.__all__:
        assert getattr(gpudispatch, name) is not None, name
    assert gpudispatch.log is log
    with pytest.raises(AttributeError):
        gpudispatch.no_such_name  # noqa: B018


def test_a_long_history_keeps_its_recent_end(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    line = json.dumps({"pad": "x" * 1000, "step": 0})
    count = METRICS_MAX_BYTES // len(line) + 100
    with open(target, "w") as fh:
        for i in range(count):
            fh.write(line.replace('"step": 0', f'"step": {i}') + "\n")
    history = metric_history(target)
    assert history[-1]["step"] == count - 1
    assert 0 < history[0]["step"] < 200  # the start is dropped, from a whole line
    assert [e["step"] for e in history] == list(range(history[0]["step"], count))


def test_history_and_last_values_from_a_real_job(root: Path, launch) -> None:
    """A Python job logs three steps (and a stray line) through the real dispatcher."""
    name = "train.sh"
    train = ("import gpudispatch, os\n"
             "for step, loss in enumerate([0.9, 0.5, 0.25], 1):\n"
             "    gpudispatch.log(step=step, val_loss=loss)\n"
             "open(os.environ['GPUDISPATCH_METRICS'], 'a').write('oops, not json\\n')\n"
             "gpudispatch.log(acc=0.75)\n")
    (root / "train.py").write_text(train)
    write_script(root / "queue" / name, f"#!/bin/sh\nexec {q(PYTHON)} {q(root / 'train.py')}\n")
    proc = launch.run(root, "--slots", "1", "--drain")
    assert proc.wait(30) == 0, proc.output()
    wait_state(root, name, "completed")

    rows = json.loads(cli("results", "--dir", str(root), "--json", check=True).stdout)
    assert [(r["name"], r["step"], r["val_loss"], r["acc"]) for r in rows] == [
        (name, 3, 0.25, 0.75)]
    series = [{"step": 1, "val_loss": 0.9}, {"step": 2, "val_loss": 0.5},
              {"step": 3, "val_loss": 0.25}, {"acc": 0.75}]
    out = cli("results", "--dir", str(root), "--history", name, "--json", check=True).stdout
    assert json.loads(out) == series
    out = cli("results", "--dir", str(root), "--history", name, "--csv", check=True).stdout
    assert list(csv.reader(io.StringIO(out))) == [
        ["step", "val_loss", "acc"], ["1", "0.9", ""], ["2", "0.5", ""], ["3", "0.25", ""],
        ["", "", "0.75"]]
    table = cli("results", "--dir", str(root), "--history", name,
                env={**job_env(), "COLUMNS": "100"}, check=True).stdout
    assert "4 entries" in table
    lines = [ln for ln in table.splitlines() if "0.5" in ln]
    assert len(lines) == 1 and lines[0].split("│")[1].strip() == "2"

    missing = cli("results", "--dir", str(root), "--history", "nope.sh")
    assert missing.returncode != 0 and "nope.sh" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_history_of_a_job_that_reported_nothing(tmp_path: Path) -> None:
    queue = FolderQueue(tmp_path / "root")
    queue.enqueue_text("quiet.sh", "#!/bin/sh\n")
    args = ("results", "--dir", str(queue.layout.root), "--history", "quiet.sh")
    out = cli(*args, check=True).stdout
    assert out.startswith("quiet.sh has reported no metrics (")
    assert json.loads(cli(*args, "--json", check=True).stdout) == []
    assert cli(*args, "--csv", check=True).stdout == ""
    both = cli(*args, "--top", "2")
    assert both.returncode != 0 and "--history" in both.stderr


def test_log_never_fails_the_training_run(tmp_path: Path, monkeypatch, capsys) -> None:
    """A symlink planted at the metrics path is not followed, and a file that cannot be
    written costs the line (said once on stderr), not the run."""
    import gpudispatch.track as track

    victim = tmp_path / "victim.txt"
    victim.write_text("untouched\n")
    planted = tmp_path / "job.metrics.json"
    planted.symlink_to(victim)
    monkeypatch.setenv("GPUDISPATCH_METRICS", str(planted))
    monkeypatch.setattr(track, "_warned", False)
    assert track.log(step=1, loss=0.5) is None
    assert track.log(step=2, loss=0.4) is None
    assert victim.read_text() == "untouched\n"
    assert capsys.readouterr().err.count("metrics not written") == 1
