"""Write experiment shell scripts from parameter sets (the seed's ``create_shell_script``).

The layout is the seed's, line for line, so scripts made by the seed and by gpudispatch
look alike. One thing differs on purpose: every parameter value is quoted with
:func:`shlex.quote`, so a value holding spaces, quotes, ``$``, backticks or newlines
reaches the program as exactly the same string instead of being split or expanded by
the shell.

How a value becomes words on the command line:

* ``True`` becomes a bare flag ``--key`` (argparse ``store_true``); ``False`` and ``None``
  leave the option out. ``--key False`` is a classic bug (``bool("False")`` is true), so
  we never write it; pass the string ``"False"`` if a program really wants that word.
* a list or tuple becomes one word per item, ``--key a b c`` (argparse ``nargs``).
* anything else becomes ``str(value)``, quoted.

``app``, ``opts``, ``path``/``target``, ``before``, ``end``, ``headers`` and ``footers``
are shell text written as given (not quoted): they are the user's own shell code, such as
``end="| tee $LOGDIR/log.out"``.
"""

from __future__ import annotations

import getpass
import os
import shlex
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

SHEBANG = "#!/bin/sh"
GENERATED_COMMENT = "# This script was automatically generated"
INDENT = "    "
CONTINUATION = " \\"


def current_user() -> str:
    """The login name for the header comment; a script must still be made without one."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no $USER (some containers)
        return "unknown"


def option_words(key: str, value: Any) -> list[str]:
    """The quoted command-line words for one parameter (empty when it is left out)."""
    if value is None or value is False:
        return []
    flag = shlex.quote(f"--{key}")
    if value is True:
        return [flag]
    if isinstance(value, (list, tuple)):
        return [flag, *(shlex.quote(str(item)) for item in value)]
    return [flag, shlex.quote(str(value))]


def command_line(
    app: str = "python",
    opts: str = "-u",
    path: str = "",
    target: str = "main.py",
    before: str | None = None,
) -> str:
    """The first line of the command: ``[before] app [opts] path/target``, blanks skipped."""
    program = os.path.join(path, target) if path else target
    return " ".join(part for part in (before, app, opts, program) if part)


def header_lines(
    user: str | None = None,
    date: datetime | None = None,
    directives: Iterable[str] = (),
) -> list[str]:
    """The seed's header comment, then any ``#GPUDISPATCH`` lines (read before any code)."""
    stamp = (date or datetime.now()).strftime("%Y-%m-%d %H:%M")
    return [
        SHEBANG,
        "",
        GENERATED_COMMENT,
        f"# user: {user if user is not None else current_user()}",
        f"# date: {stamp}",
        *directives,
    ]


def create_shell_script(
    params: Mapping[str, Any],
    app: str = "python",
    opts: str = "-u",
    path: str = "",
    target: str = "main.py",
    before: str | None = None,
    end: str | None = None,
    headers: Sequence[str] | None = None,
    footers: Sequence[str] | None = None,
    *,
    directives: Sequence[str] = (),
    user: str | None = None,
    date: datetime | None = None,
) -> str:
    """Return the text of a ``/bin/sh`` script that runs ``target`` with ``params`` as options.

    ``before`` is shell text put in front of the command on the same line, e.g. a launcher
    (``before="srun"``) or environment assignments (``before="OMP_NUM_THREADS=4"``).
    ``end`` is written as the command's last continuation line (e.g. a pipe). ``directives``
    are full ``#GPUDISPATCH ...`` lines placed right after the header comment; ``user`` and
    ``date`` override the header's values (for reproducible output).
    """
    lines = header_lines(user, date, directives)
    lines.append("")
    if headers:
        lines.extend(headers)
        lines.append("")
    command = [command_line(app, opts, path, target, before)]
    command.extend(
        INDENT + " ".join(words)
        for key, value in params.items()
        if (words := option_words(str(key), value))
    )
    if end:
        command.append(INDENT + end)
    # Every line but the last continues the command (the seed also ended the last with
    # " \" when there was no ``end``; the dangling backslash is dropped here).
    lines.extend(line + CONTINUATION for line in command[:-1])
    lines.append(command[-1])
    if footers:
        lines.append("")
        lines.extend(footers)
    return "\n".join(lines) + "\n"
