"""Names that cannot be handled fail at intake with a reason; the dispatcher goes on."""

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
