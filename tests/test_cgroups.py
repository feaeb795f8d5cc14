"""Finding where job cgroups go, and never signalling a cgroup that is not a job's."""

from __future__ import annotations

import os

from gpudispatch import cgroups

HYBRID = """\
25 31 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
UNIFIED = "30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev - cgroup2 cgroup2 rw,nsdelegate\n"


def test_own_cgroup_dir_on_a_hybrid_and_a_unified_host():
    assert cgroups.own_cgroup_dir("1:cpu:/\n0::/\n", HYBRID) == "/sys/fs/cgroup/unified"
    user = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/run.scope\n"
    assert cgroups.own_cgroup_dir(user, UNIFIED) == (
        "/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice/run.scope")


def test_own_cgroup_dir_under_a_mount_of_a_subtree():
    """A bind mount of part of the hierarchy: the path is taken relative to its root."""
    mount = "30 24 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    assert cgroups.own_cgroup_dir("0::/docker/abc/job\n", mount) == "/sys/fs/cgroup/job"


def test_no_cgroup_v2_means_no_dir():
    assert cgroups.own_cgroup_dir("1:cpu:/\n", UNIFIED) is None
    assert cgroups.own_cgroup_dir("0::/\n", HYBRID.splitlines()[0]) is None


def test_only_a_job_cgroup_is_ever_taken_from_a_record():
    ok = "/sys/fs/cgroup/unified/gpudispatch-12-345.2"
    assert cgroups.checked(ok) == ok
    for planted in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/user.slice",
                    "relative/gpudispatch-1-2.3", "/x/../gpudispatch-1-2.3/../..",
                    "/sys/fs/cgroup/gpudispatch-1-2.3/cgroup.kill", 5, None, ["/"]):
        assert cgroups.checked(planted) is None, planted


def test_detect_agrees_with_what_this_process_may_do():
    """Where this process can make a cgroup beside its own, it gets one (asked for, or
    by default); otherwise it says why not. process-group is taken when asked for."""
    found = cgroups.detect()
    assert found == cgroups.detect("cgroup")
    with open("/proc/self/cgroup") as fh, open("/proc/self/mountinfo") as mi:
        base = cgroups.own_cgroup_dir(fh.read(), mi.read())
    probe = f"{base}/gpudispatch-test-{os.getpid()}"
    try:
        os.mkdir(probe)
        can = os.path.exists(f"{probe}/cgroup.kill")
        os.rmdir(probe)
    except (OSError, TypeError):
        can = False
    assert (found.base is not None) == can, found.why_not
    assert found.mode == ("cgroup" if can else "process group")
    assert found.why_not or can
    assert cgroups.detect("process-group").base is None
