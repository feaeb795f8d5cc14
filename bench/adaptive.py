"""Sweeps that learn (issue 13): method bayes and hyperband through the real dispatcher.

    .venv/bin/python bench/adaptive.py            # about a minute and a half
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
- **hyperband**: 27 runs of 9 steps (``min_iter: 1, eta: 3``), half of them hopeless
  (loss 5..8 against 0.1..1.5), each step 0.05 s: steps run out of 243, and that the best
  run ran all 9. Requirement: fewer than 60% of the steps, and the best kept.
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--only", choices=("bayes", "hyperband"))
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    work = Path(tempfile.mkdtemp(prefix="gd-adaptive-"))
    os.environ.setdefault("PYTHONPATH", str(REPO / "src"))
    try:
        ok = True
        if args.only in (None, "bayes"):
            ok &= bench_bayes(work, args.seeds, args.runs, args.random_seeds)
        if args.only in (None, "hyperband"):
            ok &= bench_hyperband(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
