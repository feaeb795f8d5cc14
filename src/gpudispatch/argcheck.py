"""Checks of command-line values that argparse's types let through.

``type=float`` takes ``0``, ``-5``, ``nan`` and ``inf``; each would reach the dispatcher
as a busy loop (``--wait 0``), a heartbeat peers misread, or an ``OverflowError`` deep in
a sleep. These checks turn such a value into one line naming the option, before anything
starts (pure: no files, no processes).
"""

from __future__ import annotations

import math

MAX_SECONDS = 366 * 86400.0  # more is a typo; and sleeps/waits overflow far above it


class OptionError(ValueError):
    """A command-line value out of range; the message names the option and the value."""


def seconds(value: float, flag: str, *, zero_ok: bool = False, minimum: float = 0.0) -> float:
    """``value`` when it is a finite number of seconds above ``minimum`` (or equal to 0
    with ``zero_ok``) and at most a year; else :class:`OptionError`."""
    if not math.isfinite(value) or value > MAX_SECONDS:
        raise OptionError(f"{flag} {value:g}: give a number of seconds up to {MAX_SECONDS:g}")
    if zero_ok and value == 0:
        return value
    if value < 0 or (value == 0 and minimum == 0) or value < minimum:
        least = f"at least {minimum:g}" if minimum else ("0 or more" if zero_ok else
                                                         "more than 0")
        raise OptionError(f"{flag} {value:g}: must be {least} seconds")
    return value


def count(value: int, flag: str, *, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` when ``minimum <= value <= maximum``; else :class:`OptionError`."""
    if value < minimum:
        raise OptionError(f"{flag} {value}: must be {minimum} or more")
    if maximum is not None and value > maximum:
        raise OptionError(f"{flag} {value}: must be at most {maximum}")
    return value
