"""`gpudispatch report`'s data and page, without a browser (tests/test_report_browser.py
loads them in one); records are written with the store's own functions."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from gpudispatch import htmlreport
from gpudispatch.job import JobState
from gpudispatch.store import FolderQueue

T0 = datetime(2026, 1, 2, 3, 0, 0, tzinfo=timezone.utc)


def _at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


def finished(queue: FolderQueue, name: str, gpus: list[int], start: float, end: float,
             state: JobState = JobState.COMPLETED, **fields) -> None:
    """A job as a dispatcher leaves it: queued, claimed, concluded."""
    queue.enqueue_text(name, "#!/bin/sh\ntrue\n", params=fields.pop("params", None),
                       extra=fields.pop("extra", None))
    assert queue.claim(name)
    record = queue.read_record(name)
    record.gpus, record.started_at, record.ended_at = gpus, _at(start), _at(end)
    record.attempts = fields.pop("attempts", 1)
    record.log = queue.layout.job_log(name, record.attempts)
    for key, value in fields.items():
        setattr(record, key, value)
    queue.conclude(name, record, state)


@pytest.fixture
def queue(tmp_path) -> FolderQueue:
    return FolderQueue(tmp_path / "root")


def test_lanes_one_per_gpu_and_cpu_slot_with_overlaps_split(queue):
    finished(queue, "a.sh", [0], 0, 10)
    finished(queue, "b.sh", [0], 10, 20)            # after a on GPU 0: same row
    finished(queue, "c.sh", [0], 5, 15)             # overlaps a (--gpu-mem): a second row
    finished(queue, "d.sh", [0, 1], 20, 30)         # two GPUs: a bar on each
    finished(queue, "e.sh", [], 0, 5)
    finished(queue, "f.sh", [], 1, 6)               # two CPU slots at once
    data = htmlreport.snapshot(queue, now=T0.timestamp() + 40)
    assert data["lanes"] == ["gpu 0", "gpu 0 ·2", "gpu 1", "cpu 1", "cpu 2"]
    names = [j["n"] for j in data["jobs"]]
    on = {}
    for job, lane, start, end, kind in data["bars"]:
        on.setdefault(names[job], []).append(data["lanes"][lane])
        assert end >= start and kind == "completed"
    assert on == {"a.sh": ["gpu 0"], "b.sh": ["gpu 0"], "c.sh": ["gpu 0 ·2"],
                  "d.sh": ["gpu 0", "gpu 1"], "e.sh": ["cpu 1"], "f.sh": ["cpu 2"]}
    assert data["counts"] == {"queued": 0, "running": 0, "completed": 6, "failed": 0}


def test_failures_cancelled_retries_and_earlier_runs(queue):
    finished(queue, "bad.sh", [0], 0, 3, JobState.FAILED, reason="exit code 1: ValueError: x",
             exit_code=1, attempts=3)
    with open(queue.layout.job_log("bad.sh", 3), "w") as fh:
        fh.write("".join(f"line {i}\n" for i in range(30)) + "ValueError: x\n")
    finished(queue, "gone.sh", [1], 0, 1, JobState.FAILED, reason="cancelled")
    finished(queue, "again.sh", [0], 20, 25, attempts=2, extra={"earlier_runs": [
        {"attempts": 1, "started_at": _at(4), "ended_at": _at(8), "exit_code": 0}]})
    data = htmlreport.snapshot(queue, now=T0.timestamp() + 40)
    jobs = {j["n"]: j for j in data["jobs"]}
    assert jobs["bad.sh"]["s"] == "failed" and jobs["bad.sh"]["a"] == 3
    assert jobs["bad.sh"]["tail"].endswith("line 29\nValueError: x")
    assert jobs["bad.sh"]["tail"].count("\n") == htmlreport.TAIL_LINES - 1
    assert jobs["gone.sh"]["s"] == "cancelled"
    kinds = sorted(b[4] for b in data["bars"] if data["jobs"][b[0]]["n"] == "again.sh")
    assert kinds == ["completed", "earlier"]


def test_hand_overs_are_marked(queue):
    finished(queue, "first.sh", [0], 0, 10)
    finished(queue, "next.sh", [0], 10, 20, extra={"handed_over": True})
    jobs = {j["n"]: j for j in htmlreport.snapshot(queue, now=T0.timestamp() + 40)["jobs"]}
    assert jobs["next.sh"]["ho"] is True and jobs["first.sh"]["ho"] is False
    assert "handed over" in htmlreport.render(htmlreport.snapshot(queue))  # the legend


def test_waiting_says_why(queue):
    finished(queue, "prep.sh", [0], 0, 1, JobState.FAILED, reason="exit code 1")
    queue.enqueue_text("after.sh", "#!/bin/sh\n#GPUDISPATCH --after prep.sh\ntrue\n")
    queue.enqueue_text("big.sh", "#!/bin/sh\n#GPUDISPATCH --gpus 4\ntrue\n")
    queue.enqueue_text("plain.sh", "#!/bin/sh\ntrue\n")
    why = dict(htmlreport.snapshot(queue)["waiting"])
    assert why["after.sh"] == "--after prep.sh (failed)"
    assert why["big.sh"] == "needs 4 GPUs at once"
    assert "dispatcher" in why["plain.sh"]
    queue.set_paused(True)
    data = htmlreport.snapshot(queue)
    assert data["paused"] and dict(data["waiting"])["plain.sh"].startswith("paused")


def test_sweep_plots_data_best_first(queue):
    extra = {"sweep": "toy", "sweep_metric": {"name": "acc", "goal": "maximize"}}
    for i, (lr, acc) in enumerate([(0.1, 0.5), (0.01, 0.9), (0.001, 0.7)]):
        name = f"toy-{i}.sh"
        finished(queue, name, [0], i, i + 1, params={"lr": lr, "opt": "adam"}, extra=extra)
        with open(queue.layout.metrics(name), "w") as fh:
            fh.write(json.dumps({"step": 1, "acc": acc / 2}) + "\n"
                     + json.dumps({"step": 2, "acc": acc}) + "\n")
    finished(queue, "other.sh", [0], 9, 10)
    (sweep,) = htmlreport.snapshot(queue)["sweeps"]
    assert sweep["name"] == "toy" and sweep["metric"] == "acc" and sweep["goal"] == "maximize"
    assert sweep["params"] == ["lr", "opt"]
    assert sweep["best"] == ["toy-1.sh", "toy-2.sh", "toy-0.sh"]
    assert sweep["columns"] == ["name", "state", "lr", "opt", "acc"]
    assert ["toy-1.sh", "completed", 0.01, "adam", 0.9] in sweep["rows"]


def test_page_is_self_contained_and_escapes_hostile_text(queue, tmp_path):
    hostile = "<img src=x onerror=alert(1)><!--.sh"  # no "/" in a file name
    finished(queue, hostile, [0], 0, 1, JobState.FAILED, reason="<!-- </script> & \u2028")
    out = tmp_path / "report.html"
    assert htmlreport.write_report(queue, out) > 0
    page = out.read_text()
    # Nothing is fetched: no external script, style, image or font.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "url(http" not in page
    # The name reaches the page only inside the JSON, where it cannot close the script.
    assert page.count("</script>") == 3
    data = json.loads(re.search(r'id="gd-data" type="application/json">(.*?)</script>',
                                page, re.S).group(1))
    assert data["jobs"][0]["n"] == hostile
    assert data["jobs"][0]["r"] == "<!-- </script> & \\u2028"  # printable(): escaped


def test_log_tail_reads_only_regular_files_inside_root(queue, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("secret\n")
    assert htmlreport.log_tail(queue, str(outside)) == ""
    link = queue.layout.logs / "link.log"
    os.symlink(outside, link)
    assert htmlreport.log_tail(queue, str(link)) == ""
    os.mkfifo(queue.layout.logs / "fifo.log")
    assert htmlreport.log_tail(queue, str(queue.layout.logs / "fifo.log")) == ""


def test_cli_report_and_lazy_imports(queue, tmp_path):
    finished(queue, "a.sh", [0], 0, 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUDISPATCH_")}
    out = tmp_path / "r.html"
    done = subprocess.run([sys.executable, "-m", "gpudispatch", "report", "--dir",
                           str(queue.layout.root), "-o", str(out)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "a.sh" in out.read_text() and str(out) in done.stdout
    # The other verbs load neither the page nor the server.
    status = subprocess.run([sys.executable, "-X", "importtime", "-m", "gpudispatch",
                             "status", "--dir", str(queue.layout.root)], env=env,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    for module in ("gpudispatch.htmlreport", "gpudispatch.serve", "http.server"):
        assert f" {module}\n" not in status.stderr
    bad = subprocess.run([sys.executable, "-m", "gpudispatch", "serve", "--dir",
                          str(queue.layout.root), "--port", "70000"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--port" in bad.stderr
    nowhere = subprocess.run([sys.executable, "-m", "gpudispatch", "report", "--dir",
                              str(queue.layout.root), "-o", str(tmp_path / "no" / "r.html")],
                             env=env, capture_output=True, text=True, timeout=60)
    assert nowhere.returncode == 2 and "Traceback" not in nowhere.stderr
    assert nowhere.stderr == (f"gpudispatch report: cannot write {tmp_path / 'no' / 'r.html'}"
                              ": No such file or directory\n")
