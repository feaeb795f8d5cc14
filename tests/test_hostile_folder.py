"""The folder defends itself at intake: bad names fail with a reason, bookkeeping is private."""

from __future__ import annotations

import os

from conftest import log_messages, wait_state, write_script


def test_bad_names_fail_with_a_reason_and_the_queue_goes_on(root, launch):
    long_name = "x" * 240 + ".sh"  # NAME.json would not fit in 255 bytes
    write_script(root / "queue" / long_name, "#!/bin/sh\ntrue\n")
    write_script(root / "queue" / os.fsdecode(b"bad\xff.sh"), "#!/bin/sh\ntrue\n")
    write_script(root / "queue" / "line\nbreak.sh", "#!/bin/sh\ntrue\n")
    write_script(root / "queue" / "self.sh", "#!/bin/sh\n#GPUDISPATCH --after self.sh\ntrue\n")
    write_script(root / "queue" / "z-good.sh", "#!/bin/sh\ntrue\n")
    proc = launch.run(root, "--slots", "1", "--drain")
    assert proc.wait() == 1  # --drain: jobs failed
    wait_state(root, "z-good.sh", "completed")
    failed = set(os.listdir(os.fsencode(root / "failed")))
    assert failed == {long_name.encode(), b"bad\xff.sh", b"line\nbreak.sh", b"self.sh"}
    messages = "\n".join(log_messages(root))
    assert "line\\nbreak.sh failed" in messages  # escaped: no forged log line
    assert "depends on itself" in messages


def test_bookkeeping_is_private_and_an_open_queue_is_warned_about(root, launch):
    """Other users must not plant exit statuses or temporaries where the dispatcher reads;
    scripts others can drop run as the dispatcher's user, which it says."""
    os.chmod(root / "queue", 0o777)
    write_script(root / "queue" / "a.sh", "#!/bin/sh\ntrue\n")
    proc = launch.run(root, "--slots", "1", "--drain")
    assert proc.wait() == 0
    for sub in ("", "exit", "tmp", "cancel", "dispatchers"):
        mode = os.stat(root / ".gpudispatch" / sub).st_mode & 0o777
        assert mode == 0o700, (sub, oct(mode))
    assert any("writable by other users" in m for m in log_messages(root))
