"""`gpudispatch sweep` as a user runs it: the settings file beside the sweep file, flags,
a sweep queued again (resume, extend), dry runs that show what is queued, and every
refusal one line with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import cli, names_in

RANDOM = {"name": "rs", "program": "train.py", "method": "random", "run_cap": 3,
          "parameters": {"lr": {"distribution": "log_uniform_values", "min": 1e-4,
                                "max": 1e-1},
                         "use_bn": {"values": [True, False]}}}
GRID = {"name": "gs", "program": "train.py", "method": "grid", "run_cap": 3,
        "parameters": {"a": {"values": [1, 2, 3]}, "b": {"values": ["x", "y"]}}}


def write(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def params_in(root: Path) -> dict[str, dict]:
    return {p.name.removesuffix(".sh.json"): json.loads(p.read_text())["params"]
            for p in sorted((root / "logs").glob("*.sh.json"))}


def dry_params(text: str) -> list[str]:
    return [line.split(" <== ", 1)[1] for line in text.splitlines() if line.startswith("==>")]


def one_line_error(result, *words: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def test_settings_file_beside_the_sweep_and_flags(tmp_path: Path) -> None:
    spec = write(tmp_path / "s.yaml", GRID)
    (tmp_path / "s.gpudispatch.yaml").write_text(
        "directives: {gpus: 2}\nheaders: [set -e]\nprefix: fromfile\n")
    out = cli("sweep", str(spec), "--dir", str(tmp_path / "r"), "--dry-run", check=True)
    assert "==> fromfile-0001.sh" in out.stdout and "#GPUDISPATCH --gpus 2\n" in out.stdout
    assert out.stderr == ""  # nothing to note: W&B's keys in one file, ours in the other
    flags = cli("sweep", str(spec), "--dir", str(tmp_path / "r"), "--dry-run",
                "--prefix", "flag", "--arg-style", "classic", check=True).stdout
    assert "==> flag-0001.sh" in flags and "    --a 1 \\\n" in flags
    other = tmp_path / "other.yaml"
    other.write_text("headers: [echo other]\n")
    explicit = cli("sweep", str(spec), "--dir", str(tmp_path / "r"), "--dry-run",
                   "--settings", str(other), check=True).stdout
    assert "echo other" in explicit and "--gpus 2" not in explicit
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: grid\n")
    one_line_error(cli("sweep", str(spec), "--dir", str(tmp_path / "r"), "--settings",
                       str(bad)), "unknown key 'method'", "W&B's keys go in the sweep file")


def test_dry_run_without_a_seed_shows_what_is_queued(tmp_path: Path) -> None:
    spec = write(tmp_path / "rs.yaml", RANDOM)
    root = tmp_path / "root"
    dry = cli("sweep", str(spec), "--dir", str(root), "--dry-run", check=True).stdout
    assert not root.exists()
    seed = int(dry.split("seed ", 1)[1].split(")", 1)[0])
    queued = cli("sweep", str(spec), "--dir", str(root), check=True).stdout
    assert f"queued 3 jobs for sweep rs (random, seed {seed})" in queued
    shown = dry_params(dry)
    records = params_in(root)
    assert [f"lr={p['lr']} use_bn={p['use_bn']}" for p in records.values()] == shown
    assert {json.loads((root / "logs" / f"{n}.sh.json").read_text())["extra"]["sweep_seed"]
            for n in records} == {seed}
    # a different --seed draws other values
    other = cli("sweep", str(spec), "--dir", str(tmp_path / "o"), "--dry-run",
                "--seed", str(seed + 1), check=True).stdout
    assert dry_params(other) != shown


def test_random_sweep_queued_again_resume_and_extend(tmp_path: Path) -> None:
    spec = write(tmp_path / "rs.yaml", RANDOM)
    root = tmp_path / "root"
    cli("sweep", str(spec), "--dir", str(root), check=True)
    first = params_in(root)

    again = cli("sweep", str(spec), "--dir", str(root), check=True)  # queued again: resumed
    assert again.stdout == ("sweep rs: nothing to queue, 3 jobs (rs-0001.sh .. rs-0003.sh: "
                            "3 queued); --extend N adds runs\n")
    assert params_in(root) == first

    resumed = cli("sweep", str(spec), "--dir", str(root), "--resume", check=True)
    assert "nothing to queue" in resumed.stdout and params_in(root) == first

    # a lost job comes back with the same values (the recorded seed, the same stream)
    (root / "queue" / "rs-0002.sh").unlink()
    (root / "logs" / "rs-0002.sh.json").unlink()
    back = cli("sweep", str(spec), "--dir", str(root), "--resume", check=True)
    assert "queued 1 jobs" in back.stdout and params_in(root) == first

    dry = cli("sweep", str(spec), "--dir", str(root), "--extend", "2", "--dry-run",
              check=True).stdout
    assert "2 jobs, dry run" in dry and "==> rs-0004.sh" in dry and "==> rs-0005.sh" in dry
    extended = cli("sweep", str(spec), "--dir", str(root), "--extend", "2", check=True)
    assert "queued 2 jobs" in extended.stdout and "(3 were there already)" in extended.stdout
    now = params_in(root)
    assert list(now) == [f"rs-000{i}" for i in range(1, 6)]
    assert dry_params(dry) == [f"lr={now[n]['lr']} use_bn={now[n]['use_bn']}"
                               for n in ("rs-0004", "rs-0005")]
    # continuing the stream: the same five runs as a sweep of run_cap 5 from the start
    five = write(tmp_path / "five.yaml", {**RANDOM, "run_cap": 5})
    fresh = tmp_path / "fresh"
    seed = json.loads((root / "logs" / "rs-0001.sh.json").read_text())["extra"]["sweep_seed"]
    cli("sweep", str(five), "--dir", str(fresh), "--seed", str(seed), check=True)
    assert list(params_in(fresh).values()) == list(now.values())

    one_line_error(cli("sweep", str(spec), "--dir", str(root), "--resume", "--seed",
                       str(seed + 1)), f"was queued with seed {seed}")


def test_grid_sweep_resume_queues_missing_points_by_value(tmp_path: Path) -> None:
    spec = write(tmp_path / "gs.yaml", GRID)
    root = tmp_path / "root"
    cli("sweep", str(spec), "--dir", str(root), check=True)
    assert [tuple(p.values()) for p in params_in(root).values()] == [
        (1, "x"), (1, "y"), (2, "x")]
    extended = cli("sweep", str(spec), "--dir", str(root), "--extend", "2", check=True)
    assert "queued 2 jobs" in extended.stdout
    assert names_in(root, "queue") == [f"gs-000{i}.sh" for i in range(1, 6)]
    # the file grows a value: --resume queues only the points not there, matched by value
    write(spec, {**GRID, "run_cap": None, "parameters": {**GRID["parameters"],
                                                       "b": {"values": ["x", "y", "z"]}}})
    spec.write_text(spec.read_text().replace("run_cap: null\n", ""))
    cli("sweep", str(spec), "--dir", str(root), "--resume", check=True)
    values = [tuple(p.values()) for p in params_in(root).values()]
    assert sorted(values) == sorted((a, b) for a in (1, 2, 3) for b in "xyz")
    assert len(values) == len(set(values)) == 9
    done = cli("sweep", str(spec), "--dir", str(root), "--resume", check=True)
    assert "nothing to queue, 9 jobs" in done.stdout


@pytest.mark.parametrize(("change", "args", "words"), [
    ({"early_terminate": {"type": "hyperband", "min_iter": 3}}, [], ["early_terminate",
                                                                   "needs 'metric'"]),
    ({"metric": {"name": "loss", "target": 0.1}}, [], ["metric.target", "not supported yet"]),
    ({"method": "custom"}, [], ["'custom' is not supported"]),
    ({"method": "bayes", "metric": {"name": "l"}, "parameters": {"x": {
        "distribution": "beta"}}}, [], ["beta is not supported with method bayes"]),
    ({"method": "bayes", "metric": {"name": "l"}}, ["--extend", "2"], ["bayes", "--extend"]),
    ({}, ["--extend", "0"], ["--extend"]),
    ({}, ["--extend", "2", "--resume"], ["give one"]),
    ({}, ["--extend", "2"], ["has no jobs in", "queue it first"]),
    ({"parameters": {"x": {"distribution": "normal"}}}, [], ["grid", "random"]),
    ({"command": ["python", "${nope}", "${args}"]}, [], ["${nope}"]),
])
def test_refusals_are_one_line(tmp_path: Path, change: dict, args: list, words: list) -> None:
    spec = write(tmp_path / "gs.yaml", {**GRID, **change})
    result = cli("sweep", str(spec), "--dir", str(tmp_path / "root"), *args)
    one_line_error(result, *words)
    assert not (tmp_path / "root").exists()


def test_unreadable_files_are_one_line(tmp_path: Path) -> None:
    spec = write(tmp_path / "gs.yaml", GRID)
    one_line_error(cli("sweep", str(spec), "--dir", str(tmp_path / "r"), "--settings",
                       str(tmp_path / "nope.yaml")), "cannot read settings file")
    bad = tmp_path / "bad.yaml"
    bad.write_text("program: [\n")
    one_line_error(cli("sweep", str(bad), "--dir", str(tmp_path / "r")),
                   "not valid YAML at line 2, column 1")


def test_ignore_unsupported_notes_what_it_ignores(tmp_path: Path) -> None:
    spec = write(tmp_path / "gs.yaml", {**GRID, "metric": {"name": "l", "target": 1},
                                        "project": "p"})
    result = cli("sweep", str(spec), "--dir", str(tmp_path / "root"), "--ignore-unsupported",
                 "--dry-run", check=True)
    assert result.stderr.splitlines() == [
        "note: ignored (they mean something to W&B only): project",
        "note: ignored (--ignore-unsupported): metric.target: every run runs to the end"]


def test_old_top_level_keys_queue_with_a_note_and_refusals_stay_one_line(tmp_path: Path) -> None:
    spec = write(tmp_path / "gs.yaml", {**GRID, "directives": {"gpus": 1}, "seed": 3})
    queued = cli("sweep", str(spec), "--dir", str(tmp_path / "root"), check=True)
    assert queued.stderr == ("note: directives, seed at the top level of the sweep file make "
                             "W&B's validator refuse it; move them to gs.gpudispatch.yaml "
                             "(see README)\n")
    assert "#GPUDISPATCH --gpus 1" in (tmp_path / "root" / "queue" / "gs-0001.sh").read_text()
    again = cli("sweep", str(spec), "--dir", str(tmp_path / "root"), check=True)
    assert "nothing to queue" in again.stdout


def test_status_counts_a_sweeps_jobs_by_state(tmp_path: Path) -> None:
    spec = write(tmp_path / "gs.yaml", GRID)
    root = tmp_path / "root"
    cli("sweep", str(spec), "--dir", str(root), check=True)
    (root / "queue" / "gs-0002.sh").rename(root / "failed" / "gs-0002.sh")
    want = "sweep gs: 3 jobs (gs-0001.sh .. gs-0003.sh: 1 failed, 2 queued)\n"
    assert cli("sweep", str(spec), "--dir", str(root), "--status", check=True).stdout == want
    assert cli("sweep", "gs", "--dir", str(root), "--status", check=True).stdout == want
    one_line_error(cli("sweep", "gz", "--dir", str(root), "--status"), "no sweep named gz")
