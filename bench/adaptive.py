"""Sweeps that learn (issue 13): method bayes and hyperband through the real dispatcher.

    .venv/bin/python bench/adaptive.py            # about a minute
    .venv/bin/python bench/adaptive.py --seeds 3 --runs 40 --random-seeds 20

- **bayes**: ``--seeds`` sweeps of ``--runs`` runs (2 slots) on the 2-D quadratic
  ``(x-0.37)**2 + (y+0.21)**2``, x, y uniform in [-1, 1]: ``gpudispatch sweep`` then
  ``gpudispatch run --slots 2 --drain``, each run a ``/bin/sh`` job that computes the
  value with awk and logs it. Requirement: each best <= 0.02. Printed beside it: Optuna's
  TPE in-process (same seeds, same budget, one trial at a time) and random search at the
  same budget (gpudispatch's own sampler, in-process, ``--random-seeds`` seeds): how many
  reach 0.02.
- **controller overhead per run**: the bayes sweep's wall time against a random sweep of
  the same size through the same dispatcher, per run, in ms.
- **Branin and Hartmann-6**: bayes through the dispatcher against Optuna's TPE
  in-process, same seeds and budget (``--function-seeds``): best found, median and range.
- **hyperband**: 27 runs of 9 steps (``min_iter: 1, eta: 3``), half of them hopeless
  (loss 5..8 against 0.1..1.5), each step 0.05 s: steps run out of 243, and that the best
  run ran all 9. Requirement: fewer than 60% of the steps, and the best kept.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
GD = [sys.executable, "-m", "gpudispatch"]
TARGET = 0.02

QUAD = r"""
for a in "$@"; do case $a in --x=*) x=${a#--x=};; --y=*) y=${a#--y=};; esac; done
awk -v x="$x" -v y="$y" 'BEGIN { printf "{\"step\": 1, \"loss\": %.12g}\n",
    (x - 0.37) ^ 2 + (y + 0.21) ^ 2 }' >> "$GPUDISPATCH_METRICS"
"""
STEPS = r"""
q=${1#--q=}
i=1
while [ $i -le 9 ]; do
  awk -v q="$q" -v i="$i" 'BEGIN { printf "{\"step\": %d, \"loss\": %.6g}\n", i,
      q * (1 + 1 / i) }' >> "$GPUDISPATCH_METRICS"
  i=$((i + 1))
  sleep 0.05
done
"""


BRANIN = r"""
for a in "$@"; do case $a in --x1=*) x1=${a#--x1=};; --x2=*) x2=${a#--x2=};; esac; done
awk -v x1="$x1" -v x2="$x2" 'BEGIN { pi = atan2(0, -1);
    b = 5.1 / (4 * pi * pi); c = 5 / pi; t = 1 / (8 * pi);
    printf "{\"step\": 1, \"loss\": %.12g}\n",
        (x2 - b * x1 * x1 + c * x1 - 6) ^ 2 + 10 * (1 - t) * cos(x1) + 10 }' \
    >> "$GPUDISPATCH_METRICS"
"""
HARTMANN6 = r"""
for a in "$@"; do case $a in --x*=*) k=${a%%=*}; eval "${k#--}=${a#*=}";; esac; done
awk -v x1="$x1" -v x2="$x2" -v x3="$x3" -v x4="$x4" -v x5="$x5" -v x6="$x6" 'BEGIN {
    split("1.0 1.2 3.0 3.2", al, " ")
    split("10 3 17 3.5 1.7 8 0.05 10 17 0.1 8 14 " \
          "3 3.5 1.7 10 17 8 17 8 0.05 10 0.1 14", A, " ")
    split("1312 1696 5569 124 8283 5886 2329 4135 8307 3736 1004 9991 " \
          "2348 1451 3522 2883 3047 6650 4047 8828 8732 5743 1091 381", P, " ")
    x[1] = x1; x[2] = x2; x[3] = x3; x[4] = x4; x[5] = x5; x[6] = x6
    f = 0
    for (i = 1; i <= 4; i++) {
        s = 0
        for (j = 1; j <= 6; j++) s += A[(i - 1) * 6 + j] * (x[j] - P[(i - 1) * 6 + j] / 10000) ^ 2
        f -= al[i] * exp(-s)
    }
    printf "{\"step\": 1, \"loss\": %.12g}\n", f }' >> "$GPUDISPATCH_METRICS"
"""
BRANIN_SPACE = {"x1": (-5.0, 10.0), "x2": (0.0, 15.0)}
HARTMANN_SPACE = {f"x{i}": (0.0, 1.0) for i in range(1, 7)}


def branin(p: dict) -> float:
    x1, x2 = p["x1"], p["x2"]
    b, c, t = 5.1 / (4 * math.pi ** 2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1 * x1 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


HA = [[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14], [3, 3.5, 1.7, 10, 17, 8],
      [17, 8, 0.05, 10, 0.1, 14]]
HP = [[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
      [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]]


def hartmann6(p: dict) -> float:
    x = [p[f"x{i}"] for i in range(1, 7)]
    return -sum(a * math.exp(-sum(HA[i][j] * (x[j] - HP[i][j] / 1e4) ** 2 for j in range(6)))
                for i, a in enumerate((1.0, 1.2, 3.0, 3.2)))


def quad(x: float, y: float) -> float:
    return (x - 0.37) ** 2 + (y + 0.21) ** 2


def write_sweep(folder: Path, spec: dict, program: str) -> Path:
    """The sweep file (W&B's keys only) and its settings file beside it (``_seed``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prog.sh").write_text(program)
    spec = dict(spec)
    settings = {"interpreter": "sh", "interpreter_options": ""}
    if "_seed" in spec:
        settings["seed"] = spec.pop("_seed")
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    (folder / f"{spec['name']}.gpudispatch.yaml").write_text(yaml.safe_dump(settings))
    return path


def run_sweep(folder: Path, spec_path: Path) -> float:
    """``sweep`` then ``run --drain``: the wall time of both, in seconds."""
    root = folder / "root"
    t0 = time.perf_counter()
    subprocess.run([*GD, "sweep", str(spec_path), "--dir", str(root)], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([*GD, "run", "--dir", str(root), "--slots", "2", "--drain", "-q"],
                   check=True)
    return time.perf_counter() - t0


def results(root: Path, name: str) -> list[dict]:
    out = subprocess.run([*GD, "results", "--dir", str(root), "--sweep", name, "--json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def space(name: str, method: str, runs: int) -> dict:
    return {"name": name, "program": "prog.sh", "method": method, "run_cap": runs,
            "metric": {"name": "loss", "goal": "minimize"},
            "parameters": {"x": {"min": -1.0, "max": 1.0}, "y": {"min": -1.0, "max": 1.0}}}


def optuna_inprocess(seed: int, runs: int) -> float:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(lambda t: quad(t.suggest_float("x", -1, 1), t.suggest_float("y", -1, 1)),
                   n_trials=runs)
    return study.best_value


def random_inprocess(seed: int, runs: int) -> float:
    from gpudispatch.sweep import sweep_params

    spec = space("r", "random", runs)
    return min(quad(p["x"], p["y"]) for p in sweep_params(spec, seed))


def bench_bayes(work: Path, seeds: int, runs: int, random_seeds: int) -> bool:
    print(f"## bayes: {seeds} sweeps of {runs} runs, 2 slots, on (x-0.37)^2 + (y+0.21)^2")
    ok = True
    walls = []
    for seed in range(1, seeds + 1):
        folder = work / f"bayes{seed}"
        spec = {**space(f"bayes{seed}", "bayes", runs), "_seed": seed}
        wall = run_sweep(folder, write_sweep(folder, spec, QUAD))
        walls.append(wall)
        rows = results(folder / "root", f"bayes{seed}")
        best = min(r["loss"] for r in rows)
        done = sum(r["state"] == "completed" for r in rows)
        standalone = optuna_inprocess(seed, runs)
        passed = best <= TARGET and done == runs
        ok &= passed
        print(f"  seed {seed}: best {best:.5f} after {done} runs in {wall:.1f}s "
              f"(Optuna TPE in-process, same seed: {standalone:.5f})  "
              f"{'PASS' if passed else 'FAIL'}")
    reach = sum(random_inprocess(s, runs) <= TARGET for s in range(1, random_seeds + 1))
    tpe = sum(optuna_inprocess(s, runs) <= TARGET for s in range(100, 100 + random_seeds))
    print(f"  random search, {runs} runs: {reach} of {random_seeds} seeds reach {TARGET}; "
          f"Optuna TPE in-process: {tpe} of {random_seeds}")
    folder = work / "random"
    wall = run_sweep(folder, write_sweep(folder, {**space("random", "random", runs),
                                                  "_seed": 1}, QUAD))
    per_bayes = sorted(walls)[len(walls) // 2] / runs * 1000
    per_random = wall / runs * 1000
    print(f"  controller overhead: bayes {per_bayes:.0f} ms per run (median sweep) against "
          f"random {per_random:.0f} ms per run through the same dispatcher: "
          f"{per_bayes - per_random:+.0f} ms per run")
    return ok


def optuna_on(fn, space: dict, seed: int, runs: int, parallel: int = 1) -> float:
    """Optuna in-process: one trial at a time, or ``parallel`` outstanding (asked before
    the earlier ones are told, oldest told first: what 2 slots do), with the sampler the
    dispatcher uses for parallel trials (``constant_liar``)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=parallel > 1)
    study = optuna.create_study(sampler=sampler)
    pending: list = []
    for _ in range(runs):
        if len(pending) == parallel:
            trial, value = pending.pop(0)
            study.tell(trial, value)
        trial = study.ask()
        pending.append((trial, fn({k: trial.suggest_float(k, lo, hi)
                                   for k, (lo, hi) in space.items()})))
    for trial, value in pending:
        study.tell(trial, value)
    return study.best_value


def bench_functions(work: Path, seeds: int, runs: int) -> None:
    """Branin and Hartmann-6 through the dispatcher against Optuna in-process (same
    sampler, same budget, one trial at a time there, 2 at a time here)."""
    print(f"## bayes against Optuna in-process: {seeds} seeds x {runs} runs, best found "
          "(median, min..max)")
    for label, program, fn, space_ in (("branin (min 0.397887)", BRANIN, branin,
                                        BRANIN_SPACE),
                                       ("hartmann6 (min -3.32237)", HARTMANN6, hartmann6,
                                        HARTMANN_SPACE)):
        ours, theirs, theirs2 = [], [], []
        for seed in range(1, seeds + 1):
            name = f"{label.split()[0]}{seed}"
            folder = work / name
            spec = {"name": name, "program": "prog.sh", "method": "bayes", "run_cap": runs,
                    "metric": {"name": "loss", "goal": "minimize"},
                    "parameters": {k: {"min": lo, "max": hi} for k, (lo, hi) in
                                   space_.items()}, "_seed": seed}
            run_sweep(folder, write_sweep(folder, spec, program))
            rows = results(folder / "root", name)
            assert len(rows) == runs and all(r["state"] == "completed" for r in rows)
            check = rows[0]  # the job computed what the function gives
            assert abs(check["loss"] - fn(check)) < 1e-6, check
            ours.append(min(r["loss"] for r in rows))
            theirs.append(optuna_on(fn, space_, seed, runs))
            theirs2.append(optuna_on(fn, space_, seed, runs, parallel=2))

        def show(values: list[float]) -> str:
            v = sorted(values)
            return f"{v[len(v) // 2]:.4f} ({v[0]:.4f}..{v[-1]:.4f})"

        print(f"  {label}: gpudispatch (2 slots) {show(ours)}; Optuna in-process: 2 at a "
              f"time {show(theirs2)}, one at a time {show(theirs)}")


def bench_hyperband(work: Path) -> bool:
    print("## hyperband: 27 runs of 9 steps, min_iter 1, eta 3, half hopeless, 2 slots")
    rng = random.Random(5)
    good = [round(0.1 + 0.1 * i, 2) for i in range(14)]  # 0.1 .. 1.4
    hopeless = [round(5 + 0.25 * i, 2) for i in range(13)]  # 5 .. 8
    values = good + hopeless
    rng.shuffle(values)
    folder = work / "hb"
    spec = {"name": "hb", "program": "prog.sh", "method": "grid",
            "metric": {"name": "loss", "goal": "minimize"},
            "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 3},
            "parameters": {"q": {"values": values}}}
    wall = run_sweep(folder, write_sweep(folder, spec, STEPS))
    root = folder / "root"
    rows = results(root, "hb")
    steps = {}
    for row in rows:
        lines = (root / "logs" / f"{row['name']}.metrics.json").read_text().splitlines()
        steps[row["q"]] = len(lines)
    total = sum(steps.values())
    stopped = sum(1 for r in rows if (json.loads((root / "logs" / f"{r['name']}.json")
                                                 .read_text()).get("reason") or "")
                  .startswith("stopped early"))
    hopeless_steps = sum(steps[q] for q in hopeless)
    best_q = min(values)
    failed = sum(r["state"] == "failed" for r in rows)
    passed = total < 0.6 * 243 and steps[best_q] == 9 and failed == 0
    print(f"  {total} of 243 steps run ({total / 243:.0%}; hopeless runs: {hopeless_steps} "
          f"of {13 * 9}); {stopped} runs stopped early, {failed} failed; the best run "
          f"(q={best_q}) ran {steps[best_q]} of 9 steps; {wall:.1f}s  "
          f"{'PASS' if passed else 'FAIL'}")
    return passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--random-seeds", type=int, default=20)
    parser.add_argument("--only", choices=("bayes", "functions", "hyperband"))
    parser.add_argument("--function-seeds", type=int, default=5)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    work = Path(tempfile.mkdtemp(prefix="gd-adaptive-"))
    os.environ.setdefault("PYTHONPATH", str(REPO / "src"))
    try:
        ok = True
        if args.only in (None, "bayes"):
            ok &= bench_bayes(work, args.seeds, args.runs, args.random_seeds)
        if args.only in (None, "functions"):
            bench_functions(work, args.function_seeds, args.runs)
        if args.only in (None, "hyperband"):
            ok &= bench_hyperband(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
