"""The report file and the live page in a real headless Chromium (Debian's `chromium` and
`chromium-driver`, driven by Selenium), on queues that real dispatchers ran.

Screenshots are kept under $GPUDISPATCH_ARTIFACTS (else the test's tmp_path):
report.png and live.png.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PYTHON, cli, gate_wait, job_env, open_gate, q, wait_state, wait_until

pytestmark = pytest.mark.slow

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _find_browser() -> tuple[str, str]:
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("no headless Chromium here: install Debian's chromium and chromium-driver "
                    "(scripts/test.sh does, as root)")
    return browser, driver


@pytest.fixture
def browser():
    binary, driver_path = _find_browser()
    from selenium import webdriver  # in the test extras: missing, it fails, not skips
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--disable-gpu"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def artifacts(tmp_path) -> Path:
    where = Path(os.environ.get("GPUDISPATCH_ARTIFACTS") or tmp_path / "artifacts")
    where.mkdir(parents=True, exist_ok=True)
    return where


def console_errors(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def wait_ready(driver, timeout: float = 20.0) -> None:
    wait_until(lambda: driver.execute_script("return window.GD_READY === true"), timeout,
               message="the page to draw (window.GD_READY)")


def screenshot(driver, path: Path) -> None:
    """The whole page, as tall as it is."""
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1400, min(max(height + 40, 600), 5000))
    driver.save_screenshot(str(path))


def page_text(driver) -> str:
    return driver.execute_script("return document.body.innerText")


def bars(driver) -> int:
    return driver.execute_script(
        "return document.querySelectorAll('svg#timeline rect.bar').length")


TRAIN = """\
import argparse, math
from gpudispatch import log
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float)
p.add_argument("--width", type=int)
a = p.parse_args()
for step in range(3):
    log(step=step, val_loss=abs(math.log10(a.lr) + 2) + 8 / a.width + 1 / (step + 1))
"""

SWEEP = """\
name: toy
program: train.py
interpreter: {python}
method: grid
metric: {{name: val_loss, goal: minimize}}
parameters:
  lr: {{values: [0.001, 0.01, 0.1]}}
  width: {{values: [16, 64]}}
"""


def test_report_file_in_a_browser(tmp_path, root, launch, browser, artifacts):
    (tmp_path / "train.py").write_text(TRAIN)
    spec = tmp_path / "sweep.yaml"
    spec.write_text(SWEEP.format(python=PYTHON))
    cli("sweep", str(spec), "--dir", str(root), check=True)
    scripts = {
        "prep.sh": "#!/bin/sh\necho preparing\nsleep 0.2\n",
        "train-a.sh": "#!/bin/sh\n#GPUDISPATCH --after prep.sh\necho training\nsleep 0.3\n",
        "bad.sh": f'#!/bin/sh\necho loading\n{q(PYTHON)} -c "raise ValueError(\'bogus lr\')"\n',
        # (it runs a moment: a run of a millisecond is a bar a pixel wide, next to the
        # bar of the job that follows it at once, too thin to aim the pointer at)
        "flaky.sh": "#!/bin/sh\n#GPUDISPATCH --retries 2\necho try\nsleep 0.3\nexit 3\n",
    }
    for name, text in scripts.items():
        (tmp_path / name).write_text(text)
        cli("submit", "--dir", str(root), str(tmp_path / name), check=True)
    proc = launch.run(root, "--slots", "2", "--drain", cwd=tmp_path)
    assert proc.wait(60) == 1  # bad.sh and flaky.sh failed
    names = sorted(os.listdir(root / "completed")) + sorted(os.listdir(root / "failed"))
    assert len(names) == 10

    out = tmp_path / "report.html"
    cli("report", "--dir", str(root), "-o", str(out), check=True)
    browser.get(out.as_uri())
    wait_ready(browser)
    assert console_errors(browser) == []
    text = page_text(browser)
    for name in names:
        assert name in text, f"{name} is not named on the page"
    assert bars(browser) >= len(names)  # one bar per run, flaky.sh's last attempt included
    lanes = browser.execute_script(
        "return Array.from(document.querySelectorAll('svg#timeline .lane-label'))"
        ".map(e => e.textContent)")
    assert lanes == ["cpu 1", "cpu 2"]
    assert "exit code 1: ValueError: bogus lr" in text and "loading" in text  # log tail
    assert "sweep toy" in text and "val_loss vs lr" in text
    assert browser.execute_script("return document.querySelectorAll('svg.pc polyline').length") \
        == 6
    screenshot(browser, artifacts / "report.png")
    # A retried run's bar is dashed; hovering it names the run, its times and attempts.
    from selenium.webdriver.common.action_chains import ActionChains

    bar = browser.execute_script("""
        const data = JSON.parse(document.getElementById('gd-data').textContent);
        const job = data.jobs.findIndex(j => j.n === 'flaky.sh');
        const i = data.bars.findIndex(b => b[0] === job);
        return document.querySelector('svg#timeline rect.bar[data-b="' + i + '"]');""")
    assert bar.get_attribute("stroke-dasharray")
    browser.set_window_size(1400, 1000)
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", bar)
    ActionChains(browser).move_to_element(bar).perform()
    tip = wait_until(lambda: browser.find_element("id", "tip").text, 5,
                     message="a tooltip over flaky.sh's bar")
    assert "flaky.sh" in tip and "attempts: 3" in tip and "exit code 3" in tip


def test_live_page_follows_the_queue(tmp_path, root, launch, browser, artifacts):
    gate = tmp_path / "gate"
    (tmp_path / "long.sh").write_text(
        f"#!/bin/sh\necho 'epoch 1: loss 0.73'\n{gate_wait(gate)}echo done\n")
    (tmp_path / "quick.sh").write_text("#!/bin/sh\necho quick\n")
    (tmp_path / "bad.sh").write_text("#!/bin/sh\necho 'CUDA error: out of memory'\nexit 2\n")
    (tmp_path / "eval.sh").write_text("#!/bin/sh\n#GPUDISPATCH --after long.sh\necho eval\n")
    for name in ("long.sh", "quick.sh", "bad.sh", "eval.sh"):
        cli("submit", "--dir", str(root), str(tmp_path / name), check=True)
    dispatcher = launch.run(root, "--slots", "2", cwd=tmp_path)
    server = subprocess.Popen(
        [sys.executable, "-m", "gpudispatch", "serve", "--dir", str(root), "--port", "0"],
        env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = server.stdout.readline()
        assert "http://127.0.0.1:" in first, first + server.stdout.read()
        url = first.split(" at ")[1].strip()
        wait_state(root, "bad.sh", "failed", 20, dispatcher)
        wait_state(root, "long.sh", "running", 20, dispatcher)
        browser.get(url)
        wait_ready(browser)
        browser.execute_script("window.gdNotReloaded = true")
        text = page_text(browser)
        for name in ("long.sh", "quick.sh", "bad.sh", "eval.sh"):
            assert name in text
        assert "--after long.sh (running)" in browser.find_element("id", "waiting").text
        # long.sh's start is recorded 50 ms after it starts: the next poll draws it.
        wait_until(lambda: bars(browser) >= 3, 10, message="3 bars on the live timeline")
        # The tail of the running job's log.
        browser.find_element("css selector", 'button[data-log="long.sh"]').click()
        wait_until(lambda: "epoch 1: loss 0.73" in page_text(browser), 10,
                   message="the log of long.sh on the page")
        # A job submitted now shows up without a reload, within the poll's second or two.
        (tmp_path / "late.sh").write_text("#!/bin/sh\necho late\n")
        cli("submit", "--dir", str(root), str(tmp_path / "late.sh"), check=True)
        wait_until(lambda: "late.sh" in browser.find_element("id", "jobs").text, 10,
                   message=lambda: "late.sh on the live page: " + page_text(browser)[-500:])
        assert browser.execute_script("return window.gdNotReloaded === true")
        wait_state(root, "late.sh", "completed", 20, dispatcher)
        wait_until(lambda: browser.execute_script(
            "return document.querySelectorAll('#cards .card.completed b')[0].textContent")
            == "2", 10, message="2 completed on the live page")
        assert console_errors(browser) == []
        screenshot(browser, artifacts / "live.png")
        # The page's own buttons act (from this machine): pause, then resume.
        browser.find_element("css selector", 'button[data-act="pause"]').click()
        wait_until(lambda: "PAUSED" in page_text(browser), 10, message="PAUSED on the page")
        assert (root / ".gpudispatch" / "paused").exists()
        browser.find_element("css selector", 'button[data-act="resume"]').click()
        wait_until(lambda: "PAUSED" not in page_text(browser), 10, message="resumed")
        assert not (root / ".gpudispatch" / "paused").exists()
        open_gate(gate)
        wait_state(root, "eval.sh", "completed", 20, dispatcher)
        wait_until(lambda: "Nothing runs." in page_text(browser)
                   and "Nothing waits." in page_text(browser), 10,
                   message="long.sh ended on the live page")
    finally:
        server.terminate()
        server.wait(10)
