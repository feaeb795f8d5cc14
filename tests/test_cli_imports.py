"""Each verb imports only what it uses (issue 16): ``submit`` and ``status`` run in shell
loops, so a module they do not need must not load on their start.

Not a timing test (timings are bench/cli_start.py's): a real ``gpudispatch`` process runs
the verb on a temp queue and reports what ``sys.modules`` holds when it is done.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON, job_env

from gpudispatch import cli

# Loaded by sweeps, results, the dispatcher or rich; or heavy stdlib modules that only
# some verbs need (dataclasses imports inspect, ast, dis and tokenize).
NEVER_ON_SUBMIT = {
    "yaml", "gpudispatch.sweep", "gpudispatch.params", "gpudispatch.results",
    "gpudispatch.scripts", "gpudispatch.dispatcher", "gpudispatch.gpus",
    "gpudispatch.cgroups", "gpudispatch.procs", "gpudispatch.monitor", "gpudispatch.keeper",
    "watchdog", "pynvml", "rich", "dataclasses", "inspect", "logging", "socket", "ctypes",
    "typing", "shutil", "datetime",
    "optuna", "gpudispatch.adaptive",  # method bayes: only for a bayes sweep
}
# A command and the status table use paths as strings (submit SCRIPT reads a Path).
NEVER_ON_SUBMIT_COMMAND = NEVER_ON_SUBMIT | {"pathlib"}
NEVER_ON_STATUS = NEVER_ON_SUBMIT_COMMAND - {"datetime"} | {"gpudispatch.control"}

RUN_VERB = """
import sys
from gpudispatch.cli import main
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as fh:
    fh.write("\\n".join(sorted(sys.modules)))
raise SystemExit(code)
"""


def modules_after(tmp_path: Path, *argv: str) -> set[str]:
    """The modules a real ``gpudispatch ARGV`` process has loaded when it is done."""
    out = tmp_path / "modules.txt"
    result = subprocess.run([PYTHON, "-c", RUN_VERB, str(out), *argv], env=job_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return set(out.read_text().split())


def roots_of(modules: set[str]) -> set[str]:
    """Each module with its parents (``rich.console`` counts as ``rich`` too)."""
    found = set()
    for name in modules:
        parts = name.split(".")
        found.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return found


@pytest.mark.parametrize("argv", [
    ("submit", "--", "true"),
    ("submit", "--gpus", "1", "--timeout", "1h", "--after", "x.sh", "--", "sh", "-c", "true"),
])
def test_submit_imports_only_what_it_uses(tmp_path, argv) -> None:
    loaded = roots_of(modules_after(tmp_path, argv[0], "--dir", str(tmp_path / "q"),
                                    *argv[1:]))
    assert loaded & NEVER_ON_SUBMIT_COMMAND == set()


def test_submit_of_a_script_imports_only_what_it_uses(tmp_path) -> None:
    script = tmp_path / "a.sh"
    script.write_text("#!/bin/sh\ntrue\n")
    loaded = roots_of(modules_after(tmp_path, "submit", "--dir", str(tmp_path / "q"),
                                    str(script)))
    assert loaded & NEVER_ON_SUBMIT == set()


@pytest.mark.parametrize("flags", [(), ("--all",), ("--json",)])
def test_status_imports_only_what_it_uses(tmp_path, flags) -> None:
    root = tmp_path / "q"
    for name in ("a.sh", "b.sh"):
        modules_after(tmp_path, "submit", "--dir", str(root), "--name", name, "--", "true")
    loaded = roots_of(modules_after(tmp_path, "status", "--dir", str(root), *flags))
    assert loaded & NEVER_ON_STATUS == set()


def test_the_verb_list_names_every_verb() -> None:
    """main() builds the parser of the verb in VERBS alone; a verb missing from VERBS
    would still work (the full parser), only slower."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "verb")
    assert tuple(sub.choices) == cli.VERBS


def test_sweep_still_loads_what_it_needs(tmp_path) -> None:
    """The lazy package still hands out its public names (PEP 562)."""
    import gpudispatch

    assert gpudispatch.build_sweep.__module__ == "gpudispatch.sweep"
    assert set(gpudispatch.__all__) <= set(dir(gpudispatch))
    assert gpudispatch.params.grid is gpudispatch.grid  # submodules, as the eager package
    with pytest.raises(AttributeError):
        gpudispatch.no_such_name  # noqa: B018
