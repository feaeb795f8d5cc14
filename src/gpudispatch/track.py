"""``gpudispatch.log``: a job appends intermediate metrics, one JSON object per line.

Standard library only, and imported without the rest of the package (``from gpudispatch
import log`` loads this module alone): a training script pays nothing for it.
"""

from __future__ import annotations

import json
import os
import sys

TYPE_CHECKING = False  # typing's own import costs every job and verb a few ms
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

# The variable naming the file (re-exported by gpudispatch.layout, where the others live).
METRICS_ENV = "GPUDISPATCH_METRICS"


def log(step: int | None = None, **metrics: Any) -> Path | None:
    """Append ``{"step": step, **metrics}`` as one line to ``$GPUDISPATCH_METRICS``.

    One ``write`` of one whole line on an ``O_APPEND`` descriptor: lines of concurrent
    writers (data-loader workers, several ranks) never interleave, and a reader sees at
    worst a last line not yet complete, which it skips. Returns the file, or None outside
    gpudispatch (no variable), so a script may call it unconditionally. A file that
    cannot be written (a full disk, a symlink planted at its path) costs the line, said
    once on stderr, never the training run: it returns None then.
    """
    target = os.environ.get(METRICS_ENV)
    if not target:
        return None
    entry = metrics if step is None else {"step": step, **metrics}
    line = json.dumps(entry, default=str).encode() + b"\n"  # json escapes every newline
    try:
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                     | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as exc:
        global _warned
        if not _warned:
            _warned = True
            print(f"gpudispatch.log: metrics not written to {target}: {exc.strerror or exc}",
                  file=sys.stderr)
        return None
    from pathlib import Path  # here: every verb imports this module (METRICS_ENV)

    return Path(target)


_warned = False  # said once per process
