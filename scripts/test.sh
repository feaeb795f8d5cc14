#!/usr/bin/env bash
# Install what the tests need and run them all: the project (with its test extras) in
# .venv, a single-node Slurm with two fake GPUs and a second user, gdtestuser (as root,
# via .ci/slurm-up.sh and useradd), then ruff and pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

if [ "$(id -u)" -eq 0 ]; then
  bash .ci/slurm-up.sh
  # A second user for the ownership tests (tests/test_other_users.py).
  id -u gdtestuser >/dev/null 2>&1 || useradd --no-create-home gdtestuser
else
  echo "test.sh: not root, so no local Slurm is started; the Slurm end-to-end tests will skip" >&2
fi

.venv/bin/ruff check src tests bench
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
