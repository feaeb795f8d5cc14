"""The seed README's names work from a checkout: ``python jobdispatcher.py``,
``from utils import create_shell_script``, ``from paramtests import
create_params_generator`` (run from the repository, as the seed README does)."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

CLEAN_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}  # no PYTHONPATH


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=CLEAN_ENV,
                          capture_output=True, text=True, timeout=60)


def test_jobdispatcher_py_help_is_the_seeds():
    result = subprocess.run([sys.executable, "jobdispatcher.py", "-h"], cwd=REPO, env=CLEAN_ENV,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage: Python script to automate the execution of shell scripts on GPUs." in (
        result.stdout)
    for flag in ("--gpu GPU", "--dir DIR", "--wait SEC"):
        assert flag in result.stdout


def test_utils_and_paramtests_import_by_their_seed_names():
    result = run(
        "from utils import create_shell_script\n"
        "from paramtests import create_params_generator\n"
        "print(create_shell_script({'model': 'LeNet'}).splitlines()[0])\n"
        "print(list(create_params_generator({'a': 1, 'b': [2, 3]})))\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["#!/bin/sh", "[{'a': 1, 'b': 2}, {'a': 1, 'b': 3}]"]
