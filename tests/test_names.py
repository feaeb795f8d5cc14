"""Job names a queue cannot handle (too long, not UTF-8, control characters) and how names
are printed: the pure helpers, table-driven, and ``submit``/``sweep`` refusing them."""

from __future__ import annotations

import os

import pytest
from conftest import cli, names_in

from gpudispatch.layout import (
    JOB_NAME_MAX_BYTES,
    NAME_MAX_BYTES,
    Layout,
    is_job_name,
    name_problem,
    printable,
)
from gpudispatch.store import FolderQueue

LONGEST = "x" * (JOB_NAME_MAX_BYTES - 3) + ".sh"


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("a.sh", None),
        ("with space.sh", None),
        ("-dash.sh", None),
        ("quote'\"s.sh", None),
        ("ünï cødé.sh", None),
        ("日本語.sh", None),
        ("rtl\u202eoverride.sh", None),  # printable escaped, but not a problem
        (LONGEST, None),
        ("x" + LONGEST, f"at most {JOB_NAME_MAX_BYTES}"),
        ("x" * 252 + ".sh", "name of 255 bytes"),
        ("é" * 120 + ".sh", "243 bytes"),  # 123 characters, 243 bytes: bytes count
        (os.fsdecode(b"bad\xff.sh"), "not valid UTF-8 (bad\\xff.sh)"),
        ("new\nline.sh", "control character in its name (new\\nline.sh)"),
        ("cr\r.sh", "control character"),
        ("tab\t.sh", "control character"),
        ("esc\x1b[2J.sh", "control character"),
        ("del\x7f.sh", "control character"),
        ("c1\x85.sh", "control character"),
        ("ls\u2028.sh", "control character"),
        ("a/b.sh", "'/'"),
        ("nul\x00.sh", "NUL"),
        ("", "empty"),
    ],
)
def test_name_problem(name: str, fragment: str | None) -> None:
    problem = name_problem(name)
    if fragment is None:
        assert problem is None
    else:
        assert problem is not None and fragment in problem
        assert "\n" not in problem and problem.isprintable()


def test_every_file_derived_from_an_accepted_name_fits() -> None:
    """The rule's point: the longest accepted name still gives file names that fit."""
    layout = Layout("/r")
    aside = f"{layout.record(LONGEST)}.bad-20240101-120000-abcd"
    for path in (layout.job_log(LONGEST, 999), layout.record(LONGEST),
                 layout.metrics(LONGEST), aside):
        assert len(os.path.basename(path).encode()) <= NAME_MAX_BYTES, path


def test_the_longest_accepted_name_works_on_a_real_folder(tmp_path) -> None:
    queue = FolderQueue(tmp_path / "root")
    assert is_job_name(LONGEST)
    queue.enqueue_text(LONGEST, "#!/bin/sh\n")
    for path in (queue.layout.job_log(LONGEST, 999), queue.layout.metrics(LONGEST),
                 f"{queue.layout.record(LONGEST)}.bad-20240101-120000-abcd"):
        with open(path, "w") as fh:
            fh.write("x")


@pytest.mark.parametrize(
    "name, shown",
    [
        ("a.sh", "a.sh"),
        ("with space.sh", "with space.sh"),
        ("ünï.sh", "ünï.sh"),
        ("new\nline.sh", "new\\nline.sh"),
        ("tab\t.sh", "tab\\t.sh"),
        ("esc\x1b[31m.sh", "esc\\x1b[31m.sh"),
        (os.fsdecode(b"bad\xff\xfe.sh"), "bad\\xff\\xfe.sh"),
        ("rtl\u202e.sh", "rtl\\u202e.sh"),
        ("nbsp\u00a0.sh", "nbsp\\xa0.sh"),
        ("ls\u2028.sh", "ls\\u2028.sh"),
    ],
)
def test_printable(name: str, shown: str) -> None:
    assert printable(name) == shown
    assert printable(shown) == shown  # escaping twice changes nothing more
    printable(name).encode("utf-8")  # never a lone surrogate: always printable as UTF-8


# ---------------------------------------------------------------------- submit and sweep
@pytest.mark.parametrize(
    "raw, fragment",
    [(b"x" * 250 + b".sh", "bytes"), (b"bad\xff.sh", "not valid UTF-8"),
     (b"new\nline.sh", "control character")],
)
def test_submit_refuses_names_the_queue_cannot_handle(tmp_path, root, raw: bytes,
                                                      fragment: str) -> None:
    script = os.path.join(os.fsencode(tmp_path), raw)
    with open(script, "w") as fh:
        fh.write("#!/bin/sh\necho hi\n")
    result = cli("submit", "--dir", str(root), os.fsdecode(script))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert names_in(root, "queue") == []


@pytest.mark.parametrize("name", ["x" * 250 + ".sh", "new\nline.sh"])
def test_submit_name_option_is_checked(root, name: str) -> None:
    result = cli("submit", "--dir", str(root), "--name", name, "--", "true")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert names_in(root, "queue") == []


def test_sweep_refuses_job_names_too_long(tmp_path, root) -> None:
    spec = tmp_path / "sweep.yaml"
    spec.write_text(f"prefix: {'p' * 240}\nprogram: train.py\n"
                    "parameters:\n  lr:\n    values: [1, 2]\n")
    result = cli("sweep", "--dir", str(root), str(spec))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "bytes" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert names_in(root, "queue") == []
