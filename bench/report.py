"""`gpudispatch report` on 10,000 finished runs: build time and load time in a browser
(issue 14: builds in <= 3 s, opens in <= 2 s).

    .venv/bin/python bench/report.py [--jobs 10000] [--reps 3] [--keep DIR]

1. A synthetic store of N finished records written with the store's own functions
   (``enqueue_text``, ``claim``, ``conclude``; metrics with ``write_metrics``): 8 GPUs and
   2 CPU slots over a day, one run in ten failed (a log each), a quarter of them a sweep
   of three parameters with a metric, some retried.
2. Build: ``gpudispatch report`` as a user runs it (a new process, wall time), the median
   of ``--reps``; and the same in this process (snapshot, render, write), to split the
   interpreter's start from the work.
3. Load: headless Chromium (Debian's chromium + chromedriver, via Selenium) opens the
   file; the time from navigation start until the page has drawn everything
   (``window.GD_READY``, set after the timeline, tables and plots are in the DOM), read
   as ``performance.now()`` in the page, and the wall time around ``get`` + that wait.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from gpudispatch import htmlreport
from gpudispatch.job import JobState
from gpudispatch.results import write_metrics
from gpudispatch.store import FolderQueue

GPUS = 8
CPU_SLOTS = 2


def make_store(root: Path, jobs: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    queue = FolderQueue(root)
    start = datetime(2026, 11, 28, 8, 0, tzinfo=timezone.utc)
    free = [start] * (GPUS + CPU_SLOTS)  # when each slot is free again
    sweep_every = 4
    extra = {"sweep": "lr-width", "sweep_metric": {"name": "val_loss", "goal": "minimize"}}
    for i in range(jobs):
        slot = min(range(len(free)), key=free.__getitem__)
        begin = free[slot] + timedelta(seconds=rng.uniform(0, 5))
        length = timedelta(seconds=rng.lognormvariate(math.log(60), 0.8))
        free[slot] = begin + length
        in_sweep = i % sweep_every == 0
        name = f"lr-width-{i:05d}.sh" if in_sweep else f"job-{i:05d}.sh"
        params = ({"lr": 10 ** rng.uniform(-4, -1), "width": rng.choice([64, 128, 256, 512]),
                   "opt": rng.choice(["adam", "sgd"])} if in_sweep else None)
        queue.enqueue_text(name, "#!/bin/sh\ntrue\n", params=params,
                           extra=extra if in_sweep else None)
        queue.claim(name)
        record = queue.read_record(name)
        record.gpus = [slot] if slot < GPUS else []
        record.host = "node1"
        record.started_at = begin.isoformat()
        record.ended_at = (begin + length).isoformat()
        record.attempts = 1 if rng.random() > 0.05 else rng.randint(2, 3)
        record.log = queue.layout.job_log(name, record.attempts)
        failed = rng.random() < 0.1
        if failed:
            record.exit_code = 1
            record.reason = rng.choice(["exit code 1: RuntimeError: CUDA error: out of memory",
                                        "exit code 137: Killed", "timeout after 3600s",
                                        "exit code 2: ValueError: bad lr"])
            with open(record.log, "w") as fh:
                fh.write("".join(f"step {s} loss {1 / (s + 1):.3f}\n" for s in range(40)))
                fh.write(record.reason.split(": ", 1)[-1] + "\n")
        else:
            record.exit_code = 0
        if in_sweep and not failed:
            loss = (abs(math.log10(params["lr"]) + 2.5) + 64 / params["width"]
                    + (0.1 if params["opt"] == "sgd" else 0) + rng.gauss(0, 0.05))
            write_metrics({"val_loss": round(loss, 4), "epochs": 10},
                          queue.layout.metrics(name))
        queue.conclude(name, record, JobState.FAILED if failed else JobState.COMPLETED)


def build_times(root: Path, out: Path, reps: int) -> tuple[list[float], list[float]]:
    cli, inproc = [], []
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUDISPATCH_")}
    for _ in range(reps):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "gpudispatch", "report", "--dir", str(root),
                        "-o", str(out)], env=env, check=True, stdout=subprocess.DEVNULL)
        cli.append(time.perf_counter() - t)
        t = time.perf_counter()
        htmlreport.write_report(FolderQueue(root, create=False), out)
        inproc.append(time.perf_counter() - t)
    return cli, inproc


def load_times(page: Path, reps: int) -> tuple[list[float], list[float]] | None:
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(b)), None)
    driver_path = shutil.which("chromedriver")
    if browser is None or driver_path is None:
        print("no chromium / chromedriver: load time not measured "
              "(apt-get install chromium chromium-driver)")
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    in_page, wall = [], []
    try:
        driver.get("about:blank")  # the browser's own start is not the page's
        for _ in range(reps):
            t = time.perf_counter()
            driver.get(page.as_uri())
            while not driver.execute_script("return window.GD_READY === true"):
                time.sleep(0.005)
            wall.append(time.perf_counter() - t)
            in_page.append(driver.execute_script("return window.GD_READY_AT") / 1000)
            driver.get("about:blank")
    finally:
        driver.quit()
    return in_page, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="make the store here and keep it")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="gd-report-")
    try:
        root = args.keep or Path(tmp) / "root"
        t = time.perf_counter()
        if not (root / "completed").is_dir() or not any((root / "completed").iterdir()):
            make_store(root, args.jobs)
        print(f"store: {args.jobs:,} finished records under {root} "
              f"({time.perf_counter() - t:.1f} s to write)")
        out = Path(tmp) / "report.html"
        cli, inproc = build_times(root, out, args.reps)
        print(f"build: gpudispatch report {statistics.median(cli):.2f} s median "
              f"(runs {', '.join(f'{x:.2f}' for x in cli)}); in-process "
              f"{statistics.median(inproc):.2f} s; {out.stat().st_size / 1e6:.1f} MB "
              "(issue 14: <= 3 s)")
        loads = load_times(out, args.reps)
        if loads:
            in_page, wall = loads
            print(f"load: drawn {statistics.median(in_page):.2f} s after navigation start "
                  f"(runs {', '.join(f'{x:.2f}' for x in in_page)}); wall "
                  f"{statistics.median(wall):.2f} s (issue 14: <= 2 s)")
        if args.keep:
            shutil.copy(out, args.keep / "report.html")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
