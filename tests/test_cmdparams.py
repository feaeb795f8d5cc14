"""The parameters of jobs that did not come from a sweep: read from their command lines
(pure table tests), and shown by ``results`` for ``submit --``, ``--each-line`` and a
script the seed's ``create_shell_script`` wrote (real CLI, real dispatcher)."""

from __future__ import annotations

import json

import pytest
from conftest import cli, job_env, q, write_script

from gpudispatch.cmdparams import command_params, line_params, script_params, value_of
from gpudispatch.scripts import create_shell_script


@pytest.mark.parametrize("text, value", [
    ("0.1", 0.1), ("1e-3", 0.001), ("64", 64), ("-2", -2), (".5", 0.5), ("True", True),
    ("false", False), ("None", None), ("[64, 32]", [64, 32]), ('{"a": 1}', {"a": 1}),
    ("adam", "adam"), ("1.2.3", "1.2.3"), ("nan", "nan"), ("-", "-"), ("", ""),
])
def test_values_read_as_a_program_would(text, value) -> None:
    assert value_of(text) == value and type(value_of(text)) is type(value)


@pytest.mark.parametrize("words, params", [
    (["python", "-u", "train.py", "--lr", "0.1", "--opt=adam", "--use_bn"],
     {"lr": 0.1, "opt": "adam", "use_bn": True}),
    (["train", "--flag", "--n", "-1", "--last"], {"flag": True, "n": -1, "last": True}),
    (["train", "--lr", "0.1", "|", "tee", "--x", "1"], {"lr": 0.1}),  # tee's are not ours
    (["train", "--a", "1", ">", "out", "--b"], {"a": 1}),
    (["train", "--", "--not-an-option"], {}),
    (["train", "pos", "-x", "1"], {}),
    (["train", "--layers=[64, 32]"], {"layers": [64, 32]}),
])
def test_command_params(words, params) -> None:
    assert command_params(words) == params


def test_lines_and_scripts() -> None:
    assert line_params("python t.py --name 'a b' --k=v # --not 1") == {"name": "a b", "k": "v"}
    assert line_params("python t.py --name 'unclosed") == {}
    text = create_shell_script({"model": "LeNet", "lr": 0.01, "flag": True},
                               headers=["LOG=--x", "echo --y 1"], end="| tee $LOG/out")
    assert script_params(text) == {"model": "LeNet", "lr": 0.01, "flag": True}
    assert script_params("#!/bin/sh\n# --lr 1\necho hi\n") == {}


def test_results_show_the_parameters_of_commands_and_seed_scripts(launch, root, tmp_path):
    train = tmp_path / "train.sh"
    write_script(train, "#!/bin/sh\necho \"$@\"\n")
    cli("submit", "--dir", str(root), "--name", "cmd.sh", "--", "sh", str(train), "--lr",
        "0.1", "--layers", "2", "--use_bn", check=True)
    lines = tmp_path / "lines.txt"
    lines.write_text(f"sh {q(train)} --lr 0.2 --opt=sgd > /dev/null\n")
    cli("submit", "--dir", str(root), "--each-line", str(lines), check=True)
    seed = create_shell_script({"model": "LeNet", "lr": 0.3}, app="sh", opts="",
                               target=str(train))
    write_script(root / "queue" / "seed.sh", seed)
    proc = launch.run(root, "--slots", "1", "--drain")
    assert proc.wait(60) == 0, proc.output()
    rows = {r["name"]: r for r in json.loads(cli("results", "--dir", str(root), "--json",
                                                 check=True).stdout)}
    assert {k: rows["cmd.sh"].get(k) for k in ("lr", "layers", "use_bn")} == {
        "lr": 0.1, "layers": 2, "use_bn": True}
    (line_job,) = [n for n in rows if n.endswith("-1-sh.sh")]
    assert rows[line_job]["lr"] == 0.2 and rows[line_job]["opt"] == "sgd"
    assert rows["seed.sh"]["model"] == "LeNet" and rows["seed.sh"]["lr"] == 0.3
    table = cli("results", "--dir", str(root), "--sort", "lr",
                env={**job_env(), "COLUMNS": "200"}, check=True).stdout
    assert "LeNet" in table and "use_bn" in table
