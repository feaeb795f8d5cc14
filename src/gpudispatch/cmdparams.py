"""The parameters a command line passes (``--lr 0.1``, ``--lr=0.1``, a bare ``--flag``),
for the ``results`` of jobs that did not come from a sweep: ``submit -- python train.py
--lr 0.1``, a line of ``submit --each-line``, a script the seed's ``create_shell_script``
wrote. Pure functions; a command that cannot be read gives no parameters, never an error.
"""

from __future__ import annotations

import json
import shlex

TYPE_CHECKING = False  # typing's own import costs a CLI start a few ms
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

# Words that end the command whose options are read (what follows is another command,
# or where its output goes).
_OPERATORS = frozenset({"|", "||", "&&", ";", "&", ">", ">>", "<", "2>", "2>>", "2>&1",
                        "&>", "|&"})
_WORDS = {"true": True, "false": False, "none": None, "null": None}


def value_of(text: str) -> Any:
    """A value as the program would likely parse it: a number, a boolean (``True``,
    ``false``), None, a JSON list or object; else the text itself."""
    lowered = text.lower()
    if lowered in _WORDS:
        return _WORDS[lowered]
    if text[:1] in "-+.0123456789[{":
        try:
            value = json.loads(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                return text
            return value if value == value and abs(value) != float("inf") else text
        return value if not isinstance(value, str) else text
    return text


def command_params(words: Sequence[str]) -> dict[str, Any]:
    """``--key value``, ``--key=value`` and bare ``--flag`` (True) of one command, in
    order; positional words and single-dash options are not parameters. Reading stops
    at a shell operator (``|``, ``>``, ``&&``...) or a bare ``--``."""
    params: dict[str, Any] = {}
    pending: str | None = None
    for word in words:
        if word in _OPERATORS or word == "--":
            break
        if word.startswith("--") and len(word) > 2 and not word[2:3].isdigit():
            if pending is not None:
                params[pending] = True
            key, eq, value = word[2:].partition("=")
            if eq:
                params[key] = value_of(value)
                pending = None
            else:
                pending = key
        elif pending is not None:
            params[pending] = value_of(word)
            pending = None
    if pending is not None:
        params[pending] = True
    return params


def line_params(line: str) -> dict[str, Any]:
    """:func:`command_params` of a shell command line (``{}`` if it cannot be split)."""
    try:
        return command_params(shlex.split(line, comments=True))
    except ValueError:  # an unclosed quote
        return {}


def script_params(text: str) -> dict[str, Any]:
    """The parameters of a script's command: of its lines (continuations joined), the
    one passing the most ``--`` options; ``{}`` when none does."""
    joined = text.replace("\\\r\n", " ").replace("\\\n", " ")
    best: dict[str, Any] = {}
    for line in joined.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or "--" not in stripped:
            continue
        found = line_params(stripped)
        if len(found) > len(best):
            best = found
    return best
