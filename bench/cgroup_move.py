"""What a cgroup per job costs, step by step, on an idle machine (root, cgroup v2).

    .venv/bin/python bench/cgroup_move.py [CGROUP_DIR]

Each step is timed after a 0.3 s pause, as a job dropped into an idle queue meets it:
making the cgroup, a shell that moves itself in (``echo 0 > cgroup.procs``) against one
that does not, ``cgroup.kill`` and removing it. The move waits for an RCU grace period
unless another move happened just before: why gpudispatch moves a job in only once it has
run half a second (``cgroups.ENCLOSE_AFTER_SECONDS``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from gpudispatch.cgroups import own_cgroup_dir


def main() -> int:
    if len(sys.argv) > 1:
        base = sys.argv[1]
    else:
        with open("/proc/self/cgroup") as fh, open("/proc/self/mountinfo") as mi:
            base = own_cgroup_dir(fh.read(), mi.read()) or ""
    times: dict[str, list[float]] = {k: [] for k in ("mkdir", "spawn + join", "spawn",
                                                      "cgroup.kill", "rmdir")}

    def timed(step: str, action) -> None:
        time.sleep(0.3)
        start = time.perf_counter()
        action()
        times[step].append(time.perf_counter() - start)

    def shell(script: str, env: dict[str, str]) -> None:
        os.waitpid(os.posix_spawn("/bin/sh", ["/bin/sh", "-c", script], env), 0)

    for i in range(12):
        path = f"{base}/gpudispatch-bench-{os.getpid()}-{i}"
        timed("mkdir", lambda p=path: os.mkdir(p))
        timed("spawn + join", lambda p=path: shell('echo 0 > "$G/cgroup.procs"', {"G": p}))
        timed("spawn", lambda: shell("true", {}))
        timed("cgroup.kill", lambda p=path: Path(f"{p}/cgroup.kill").write_text("1"))
        timed("rmdir", lambda p=path: os.rmdir(p))
    for step, values in times.items():
        values.sort()
        print(f"{step:14s} median {values[len(values) // 2] * 1e3:7.3f} ms"
              f"   max {values[-1] * 1e3:7.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
