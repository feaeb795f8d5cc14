"""Box-drawn tables for ``status``, drawn as rich draws its default table, without rich.

Importing rich's console costs several times Python's own start, and ``status`` is run
in loops and watch commands; this draws the same boxes (rich's ``HEAVY_HEAD``), folds
cells to the width of the terminal (80 columns when the output is not one), and colours
only a terminal (never with ``NO_COLOR`` or ``TERM=dumb``). Cell text is drawn as given:
callers escape what is not printable (:func:`gpudispatch.layout.printable`).
"""

from __future__ import annotations

import os
import sys
import unicodedata

STYLES = {"": "", "bold": "1", "italic": "3", "dim": "2", "cyan": "36", "green": "32",
          "red": "31", "bold yellow": "1;33", "bold red": "1;31"}

Segment = tuple[str, str]  # text, style (a key of STYLES)


def char_width(ch: str) -> int:
    """Terminal columns of one character: 2 for wide East Asian ones, 0 for combining."""
    if ch < "\u0300":
        return 1
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def text_width(text: str) -> int:
    return len(text) if text.isascii() else sum(map(char_width, text))


def _fold(word: str, width: int) -> list[str]:
    """``word`` cut into pieces of at most ``width`` columns."""
    pieces, current, used = [], "", 0
    for ch in word:
        w = char_width(ch)
        if used + w > width and current:
            pieces.append(current)
            current, used = "", 0
        current += ch
        used += w
    return [*pieces, current]


def wrap(text: str, width: int) -> list[str]:
    """Lines of at most ``width`` columns: words kept whole where they fit, else folded."""
    if text_width(text) <= width:
        return [text]
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if text_width(candidate) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        pieces = _fold(word, width)
        lines.extend(pieces[:-1])
        current = pieces[-1]
    lines.append(current)
    return lines


def terminal_width(stream=None) -> int:
    """$COLUMNS, else the terminal's width, else 80 (as rich's console finds it)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns > 0:
        return columns
    try:
        return os.get_terminal_size((stream or sys.stdout).fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


def use_color(stream=None) -> bool:
    stream = stream or sys.stdout
    if "NO_COLOR" in os.environ or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Table:
    """A title, named columns, rows of (text, style) cells and a caption of segments."""

    def __init__(self, title: str | None = None, caption: list[Segment] | None = None) -> None:
        self.title = title
        self.caption = caption or []
        self.columns: list[str] = []
        self.kept: list[bool] = []  # columns cut only when no other one can be
        self.rows: list[list[Segment]] = []

    def add_column(self, header: str, keep: bool = False) -> None:
        """``keep``: a column whose cells are cut (folded) last, such as a job's name."""
        self.columns.append(header)
        self.kept.append(keep)

    def add_row(self, *cells: str | Segment) -> None:
        self.rows.append([c if isinstance(c, tuple) else (c, "") for c in cells])

    def _widths(self, width: int) -> list[int]:
        """Column widths: each its widest cell; while the table is too wide, the widest
        column is cut first, down to its header's width, then below it if need be; a
        kept column only once no other can be cut."""
        widths = [max([text_width(h)] + [text_width(r[i][0]) for r in self.rows])
                  for i, h in enumerate(self.columns)]
        room = width - 3 * len(widths) - 1
        headers = [min(text_width(h), 12) for h in self.columns]
        for floors in ([w if keep else h for w, h, keep in zip(widths, headers, self.kept,
                                                                 strict=True)],
                       [w if keep else 1 for w, keep in zip(widths, self.kept, strict=True)],
                       [1] * len(widths)):
            while sum(widths) > room:
                cuttable = [i for i, w in enumerate(widths) if w > floors[i]]
                if not cuttable:
                    break
                widest = max(cuttable, key=lambda i: widths[i])
                below = max([widths[i] for i in cuttable if widths[i] < widths[widest]]
                            + [floors[widest]])
                widths[widest] -= max(1, min(sum(widths) - room, widths[widest] - below))
        return widths

    def render(self, width: int = 80, color: bool = False) -> str:
        def paint(text: str, style: str) -> str:
            code = STYLES.get(style, "")
            return f"\x1b[{code}m{text}\x1b[0m" if color and code and text else text

        widths = self._widths(width)
        total = sum(widths) + 3 * len(widths) + 1

        def centred(segments: list[Segment], style: str) -> list[str]:
            plain = "".join(text for text, _ in segments)
            if text_width(plain) > total:
                return [paint(line, style) for line in wrap(plain, total)]
            pad = (total - text_width(plain)) // 2
            return [" " * pad + "".join(paint(t, s or style) for t, s in segments)]

        def border(left: str, fill: str, mid: str, right: str) -> str:
            return left + mid.join(fill * (w + 2) for w in widths) + right

        def row(cells: list[Segment], edge: str, style: str = "") -> list[str]:
            wrapped = [wrap(text, w) for (text, _), w in zip(cells, widths, strict=True)]
            out = []
            for n in range(max(map(len, wrapped))):
                parts = []
                for (_, cell_style), lines, w in zip(cells, wrapped, widths, strict=True):
                    text = lines[n] if n < len(lines) else ""
                    parts.append(f" {paint(text, cell_style or style)}"
                                 f"{' ' * (w - text_width(text))} ")
                out.append(edge + edge.join(parts) + edge)
            return out

        lines = centred([(self.title, "")], "italic") if self.title else []
        lines.append(border("┏", "━", "┳", "┓"))
        lines += row([(h, "") for h in self.columns], "┃", "bold")
        lines.append(border("┡", "━", "╇", "┩"))
        for cells in self.rows:
            lines += row(cells, "│")
        lines.append(border("└", "─", "┴", "┘"))
        for caption_line in _split_lines(self.caption):
            lines += centred(caption_line, "dim")
        return "\n".join(lines) + "\n"


def _split_lines(segments: list[Segment]) -> list[list[Segment]]:
    """Caption segments cut at newlines into one list per line."""
    lines: list[list[Segment]] = [[]]
    for text, style in segments:
        first, *rest = text.split("\n")
        lines[-1].append((first, style))
        for part in rest:
            lines.append([(part, style)])
    return [line for line in lines if "".join(t for t, _ in line)]
