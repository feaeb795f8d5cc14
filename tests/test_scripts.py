"""create_shell_script: the seed's layout, and values that survive the shell unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpudispatch.job import parse_directives
from gpudispatch.scripts import create_shell_script, option_words

DATE = datetime(2018, 10, 8, 10, 13)

SEED_README_EXAMPLE = """\
#!/bin/sh

# This script was automatically generated
# user: billtubbs
# date: 2018-10-08 10:13

LOGDIR='../logs/mnist/'
mkdir -p $LOGDIR

python -u main.py \\
    --model LeNet \\
    --dataset mnist \\
    | tee $LOGDIR/log.out
"""

DUMP_ARGV = """\
import json, os, sys
sys.stdout.write(json.dumps({"argv": sys.argv[1:], "greeting": os.environ.get("GREETING")}))
"""


def test_seed_readme_example_text() -> None:
    params = {"model": "LeNet", "dataset": "mnist"}
    headers = ["LOGDIR='../logs/mnist/'", "mkdir -p $LOGDIR"]
    end = "| tee $LOGDIR/log.out"
    text = create_shell_script(params, headers=headers, end=end, user="billtubbs", date=DATE)
    assert text == SEED_README_EXAMPLE


def test_default_header_has_user_and_current_date() -> None:
    lines = create_shell_script({}).splitlines()
    assert lines[:3] == ["#!/bin/sh", "", "# This script was automatically generated"]
    assert lines[3].startswith("# user: ") and len(lines[3]) > len("# user: ")
    datetime.strptime(lines[4], "# date: %Y-%m-%d %H:%M")


@pytest.mark.parametrize(
    ("kwargs", "body"),
    [
        ({}, ["python -u main.py"]),
        ({"params": {"a": 1}}, ["python -u main.py \\", "    --a 1"]),
        ({"params": {"a": 1, "b": "x"}, "end": "> out.txt"},
         ["python -u main.py \\", "    --a 1 \\", "    --b x \\", "    > out.txt"]),
        ({"app": "python3", "opts": "", "path": "src", "target": "train.py"},
         ["python3 src/train.py"]),
        ({"before": "srun --gres=gpu:1"}, ["srun --gres=gpu:1 python -u main.py"]),
        ({"before": "OMP_NUM_THREADS=4", "params": {"lr": 0.1}},
         ["OMP_NUM_THREADS=4 python -u main.py \\", "    --lr 0.1"]),
        ({"params": {"flag": True, "off": False, "none": None, "n": 0}},
         ["python -u main.py \\", "    --flag \\", "    --n 0"]),
        ({"params": {"sizes": [32, 64], "name": "a b"}},
         ["python -u main.py \\", "    --sizes 32 64 \\", "    --name 'a b'"]),
    ],
)
def test_command_layout(kwargs: dict, body: list[str]) -> None:
    params = kwargs.pop("params", {})
    lines = create_shell_script(params, user="u", date=DATE, **kwargs).splitlines()
    assert lines[6:] == body


def test_headers_footers_and_directives_placement() -> None:
    text = create_shell_script(
        {"a": 1}, headers=["H1", "H2"], footers=["F1", "F2"],
        directives=["#GPUDISPATCH --gpus 2 --timeout 2h"], user="u", date=DATE,
    )
    assert text.splitlines() == [
        "#!/bin/sh", "", "# This script was automatically generated", "# user: u",
        "# date: 2018-10-08 10:13", "#GPUDISPATCH --gpus 2 --timeout 2h", "",
        "H1", "H2", "", "python -u main.py \\", "    --a 1", "", "F1", "F2",
    ]
    assert parse_directives(text).gpus == 2


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("plain", ["--k", "plain"]),
        ("a b", ["--k", "'a b'"]),
        ("", ["--k", "''"]),
        (1.5e-3, ["--k", "0.0015"]),
        (True, ["--k"]),
        (False, []),
        (None, []),
        ((1, "x y"), ["--k", "1", "'x y'"]),
    ],
)
def test_option_words(value: object, words: list[str]) -> None:
    assert option_words("k", value) == words


def run_script(tmp_path: Path, params: dict, **kwargs: object) -> dict:
    """Run a generated script under the real /bin/sh; the target prints its argv as JSON."""
    dump = tmp_path / "dump_argv.py"
    dump.write_text(DUMP_ARGV)
    script = tmp_path / "job.sh"
    script.write_text(create_shell_script(
        params, app=sys.executable, opts="", path=str(tmp_path), target=dump.name, **kwargs))
    env = {**os.environ, "PYTHONUTF8": "1", "LC_ALL": "C.UTF-8"}
    done = subprocess.run(["/bin/sh", str(script)], capture_output=True, env=env, timeout=60,
                          check=True, cwd=tmp_path)
    return json.loads(done.stdout.decode("utf-8"))


NASTY = [
    "two words", "it's", 'say "hi"', "$HOME", "${PATH}", "`id`", "$(echo pwned)", "a\nb",
    "tab\there", "back\\slash", "*", "~", "-x", "a;b|c&d", "'", "''", "é ünïcødé 🚀", " ",
    "#not a comment", "trailing\\", "\r",
]


def test_nasty_values_reach_the_program_unchanged(tmp_path: Path) -> None:
    params = {f"p{i}": value for i, value in enumerate(NASTY)}
    expected = [w for key, value in params.items() for w in (f"--{key}", value)]
    assert run_script(tmp_path, params)["argv"] == expected


def test_before_and_end_are_shell_text(tmp_path: Path) -> None:
    out = run_script(tmp_path, {"x": "1"}, before="GREETING=hello",
                     end='"$(echo hel)lo" | cat')
    assert out == {"argv": ["--x", "1", "hello"], "greeting": "hello"}


# NUL cannot be in an argv string; surrogates cannot be encoded to UTF-8 bytes at all.
ARG_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(ARG_TEXT, min_size=1, max_size=8))
def test_any_text_value_round_trips_through_sh(tmp_path: Path, values: list[str]) -> None:
    params = {f"v{i}": v for i, v in enumerate(values)}
    expected = [w for key, value in params.items() for w in (f"--{key}", value)]
    assert run_script(tmp_path, params)["argv"] == expected
