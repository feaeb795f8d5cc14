"""Huge sweeps: counted without being made, refused above 100,000 runs without --yes,
streamed by --dry-run and queued one job at a time, in bounded memory.

Memory is measured on a real ``gpudispatch`` process: a small wrapper runs it (under a
1 GiB address-space limit, so a regression fails fast instead of eating the machine)
and reports its peak RSS from ``getrusage(RUSAGE_CHILDREN)``, which no other child of
the test process can inflate.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import tracemalloc
from pathlib import Path

from conftest import PYTHON, job_env, names_in

from gpudispatch.store import FolderQueue
from gpudispatch.sweep import CONFIRM_ABOVE, build_sweep, iter_queue_sweep

PEAK_RSS_LIMIT_MB = 200

_MEASURE = r"""
import json, resource, subprocess, sys, time
head = int(sys.argv[1])
limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
start = time.monotonic()
proc = subprocess.Popen([sys.executable, "-m", "gpudispatch", *sys.argv[2:]],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=limit)
if head:
    out = proc.stdout.read(head)
    proc.stdout.close()
    err = proc.stderr.read()
else:
    out, err = proc.communicate()
rc = proc.wait()
print(json.dumps({"rc": rc, "stdout": out.decode(errors="replace"),
                  "stderr": err.decode(errors="replace"),
                  "seconds": time.monotonic() - start,
                  "peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def measured(*args: str, head: int = 0) -> dict:
    """Run ``gpudispatch ARGS`` (reading only ``head`` bytes of its output when given)
    and return its exit status, output, wall time and peak RSS in MB."""
    result = subprocess.run([PYTHON, "-c", _MEASURE, str(head), *args], env=job_env(),
                            capture_output=True, text=True, timeout=120, check=True)
    return json.loads(result.stdout)


def write_spec(path: Path, text: str) -> Path:
    path.write_text("program: train.py\n" + text)
    return path


BILLION_GRID = """name: huge
parameters:
  a: {distribution: int_uniform, min: 1, max: 1000}
  b: {distribution: int_uniform, min: 1, max: 1000}
  c: {values: [x, y, z, w, v, u, t, s, r, q]}
  d: {distribution: int_uniform, min: 1, max: 100}
"""


def test_billion_point_grid_is_refused_at_once_without_yes(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "huge.yaml", BILLION_GRID)
    root = tmp_path / "root"
    run = measured("sweep", str(spec), "--dir", str(root))
    assert run["rc"] != 0 and "Traceback" not in run["stderr"], run["stderr"]
    assert run["stderr"].count("\n") == 1, run["stderr"]
    assert "1,000,000,000 runs" in run["stderr"] and "--yes" in run["stderr"]
    assert not root.exists()  # nothing created
    assert run["peak_mb"] < PEAK_RSS_LIMIT_MB, run
    assert run["seconds"] < 30, run  # counted, not made (generous for a loaded machine)


def test_random_run_cap_1e8_is_refused_without_yes(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "cap.yaml", "method: random\nrun_cap: 1e8\nparameters:\n"
                      "  lr: {distribution: log_uniform_values, min: 1.0e-5, max: 1.0e-1}\n")
    root = tmp_path / "root"
    run = measured("sweep", str(spec), "--dir", str(root))
    assert run["rc"] != 0 and "Traceback" not in run["stderr"], run["stderr"]
    assert "100,000,000 runs" in run["stderr"] and "--yes" in run["stderr"]
    assert not root.exists()
    assert run["peak_mb"] < PEAK_RSS_LIMIT_MB, run


def test_a_grid_too_large_to_count_is_one_line(tmp_path: Path) -> None:
    axes = "".join(f"  p{i}: {{distribution: int_uniform, min: 1, max: 1000}}\n"
                   for i in range(7))  # 10**21 runs: len() itself would overflow
    spec = write_spec(tmp_path / "vast.yaml", "parameters:\n" + axes)
    run = measured("sweep", str(spec), "--dir", str(tmp_path / "root"), "--yes")
    assert run["rc"] != 0 and "Traceback" not in run["stderr"], run["stderr"]
    assert run["stderr"].count("\n") == 1 and "too many" in run["stderr"], run["stderr"]
    assert not (tmp_path / "root").exists()


def test_dry_run_of_a_billion_runs_streams(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "huge.yaml", BILLION_GRID)
    run = measured("sweep", str(spec), "--dir", str(tmp_path / "root"), "--dry-run",
                   head=2 << 20)  # some 8,000 scripts, then the reader goes away
    assert run["rc"] == 0 and "Traceback" not in run["stderr"], run["stderr"]
    text = run["stdout"]
    assert text.startswith("# sweep huge (grid): 1000000000 jobs, dry run, nothing queued\n")
    assert "==> huge-0000000001.sh <== a=1 b=1 c='x' d=1\n" in text
    assert "==> huge-0000000002.sh <== a=1 b=1 c='x' d=2\n" in text
    assert text.count("#!/bin/sh") > 5000
    assert not (tmp_path / "root").exists()
    assert run["peak_mb"] < PEAK_RSS_LIMIT_MB, run


def test_a_big_sweep_queued_again_asks_and_resumes_lazily(tmp_path: Path) -> None:
    """One job of a sweep above the limit is there already: queueing it again (or with
    --resume) counts the runs still missing, lazily, and asks for --yes in one line."""
    count = CONFIRM_ABOVE + 2
    spec = write_spec(tmp_path / "big.yaml", "name: big\nparameters:\n"
                      f"  n: {{distribution: int_uniform, min: 1, max: {count}}}\n")
    root = tmp_path / "root"
    sweep = build_sweep(spec)
    FolderQueue(root).enqueue_text(sweep.jobs[count - 1].name, "#!/bin/sh\n",
                                   params=sweep.jobs[count - 1].params)

    again = measured("sweep", str(spec), "--dir", str(root))  # again: resumes, so asks
    assert again["rc"] == 2 and "Traceback" not in again["stderr"], again["stderr"]
    assert again["stderr"].count("\n") == 1, again["stderr"]
    assert f"{count - 1:,} runs" in again["stderr"] and "--yes" in again["stderr"]
    assert again["peak_mb"] < PEAK_RSS_LIMIT_MB, again

    asked = measured("sweep", str(spec), "--dir", str(root), "--resume")
    assert asked["rc"] == 2 and f"{count - 1:,} runs" in asked["stderr"], asked["stderr"]
    assert names_in(root, "queue") == [f"big-{count:06d}.sh"]
    assert asked["peak_mb"] < PEAK_RSS_LIMIT_MB, asked


def test_queueing_makes_one_job_at_a_time(tmp_path: Path) -> None:
    """Past the name check, the first jobs of a 30,000-run sweep are queued while the
    rest are not made: memory stays that of a few scripts, not of the sweep."""
    spec = write_spec(tmp_path / "cap.yaml", "name: lazy\nmethod: random\nrun_cap: 3e4\n"
                      "seed: 3\nparameters:\n  n: {distribution: int_uniform, min: 1, "
                      "max: 9}\n")
    root = tmp_path / "root"
    queue = FolderQueue(root)
    tracemalloc.start()
    try:
        sweep = build_sweep(spec)
        queued = list(itertools.islice(iter_queue_sweep(sweep.jobs, queue, sweep.name), 3))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(sweep.jobs) == 30_000
    assert queued == ["lazy-00001.sh", "lazy-00002.sh", "lazy-00003.sh"]
    assert names_in(root, "queue") == queued
    assert [json.loads((root / "logs" / f"{n}.json").read_text())["params"] for n in queued] \
        == [job.params for job in sweep.jobs[:3]]
    assert peak < 4 << 20, peak  # the list of 30,000 jobs it used to make: over 15 MB


def test_grid_length_and_items_are_arithmetic() -> None:
    from gpudispatch.params import Grid, grid

    big = Grid({"a": range(10**6), "b": ["x", "y"], "c": 7, "d": range(10**6)})
    assert len(big) == 2 * 10**12
    assert big[0] == {"a": 0, "b": "x", "c": 7, "d": 0}
    assert big[-1] == {"a": 10**6 - 1, "b": "y", "c": 7, "d": 10**6 - 1}
    assert big[10**6 + 5] == {"a": 0, "b": "y", "c": 7, "d": 5}
    space = {"a": [1, 2, 3], "b": ["p", "q"], "c": "fixed"}
    expected = grid(space)
    assert len(expected) == 6 and expected[1] == {"a": 1, "b": "q", "c": "fixed"}
    assert list(Grid({**space, "b": iter("pq")})) == expected
    assert [Grid(space)[i] for i in range(6)] == expected
