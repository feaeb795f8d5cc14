#!/usr/bin/env bash
# Install what the tests need and run them all: the project (with its test extras) in
# .venv, a single-node Slurm with two fake GPUs, a second user, gdtestuser, and a
# headless Chromium for the report's browser tests (as root, via .ci/slurm-up.sh, useradd
# and apt-get), then ruff and pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

if [ "$(id -u)" -eq 0 ]; then
  bash .ci/slurm-up.sh
  # A second user for the ownership tests (tests/test_other_users.py).
  id -u gdtestuser >/dev/null 2>&1 || useradd --no-create-home gdtestuser
  # Headless Chromium and its WebDriver for tests/test_report_browser.py (Selenium); a
  # font, so that the screenshots it keeps are legible on a bare machine.
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null \
      || { apt-get update >/dev/null && apt-get install -y --no-install-recommends \
             chromium chromium-driver fonts-dejavu-core >/dev/null; } \
      || { echo "test.sh: apt-get install of chromium chromium-driver fonts-dejavu-core failed" >&2; exit 1; }
  fi
else
  echo "test.sh: not root, so no local Slurm is started and no Chromium installed; the Slurm" \
       "end-to-end tests (and the browser tests, without chromium) will skip" >&2
fi

.venv/bin/ruff check src tests bench
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
