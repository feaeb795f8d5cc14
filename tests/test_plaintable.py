"""The status tables drawn without rich: rich's boxes, cells folded to the width, colour
only on a terminal, and text drawn as given (pure: strings in, strings out)."""

from __future__ import annotations

import io

from gpudispatch.plaintable import Table, terminal_width, text_width, use_color, wrap


def table(*rows: tuple, title: str | None = "t", caption=None) -> Table:
    t = Table(title=title, caption=caption)
    for header in ("name", "state"):
        t.add_column(header)
    for row in rows:
        t.add_row(*row)
    return t


def test_draws_rich_s_heavy_head_box() -> None:
    text = table(("a.sh", ("queued", "")), caption=[("queued 1", "")]).render(80)
    assert text.splitlines() == [
        "        t",
        "┏━━━━━━┳━━━━━━━━┓",
        "┃ name ┃ state  ┃",
        "┡━━━━━━╇━━━━━━━━┩",
        "│ a.sh │ queued │",
        "└──────┴────────┘",
        "    queued 1",
    ]


def test_every_line_fits_the_width_and_no_text_is_lost() -> None:
    name = "x" * 50 + " y" * 10
    text = table((name, "running"), ("b.sh", "queued")).render(30)
    lines = text.splitlines()
    assert all(text_width(line) <= 30 for line in lines)
    cells = "".join(line.split("│")[1].strip() for line in lines if line.startswith("│"))
    assert cells.replace(" ", "") == (name + "b.sh").replace(" ", "")


def test_wide_characters_take_two_columns() -> None:
    assert text_width("日本") == 4 and text_width("é") == 1 and text_width("e\u0301") == 1
    assert wrap("日本語テキスト", 4) == ["日本", "語テ", "キス", "ト"]
    lines = table(("日本.sh", "queued")).render(80).splitlines()
    assert len({text_width(line) for line in lines[1:6]}) == 1  # the box stays square


def test_colour_only_when_asked_and_markup_is_text() -> None:
    t = table(("[red]x[/] [/oops]", ("failed", "red")), caption=[("  PAUSED", "bold yellow")])
    plain = t.render(80)
    assert "\x1b[" not in plain and "[red]x[/] [/oops]" in plain
    coloured = t.render(80, color=True)
    assert "\x1b[31mfailed\x1b[0m" in coloured and "\x1b[1;33m  PAUSED\x1b[0m" in coloured


def test_width_and_colour_follow_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "123")
    assert terminal_width(io.StringIO()) == 123
    monkeypatch.delenv("COLUMNS")
    assert terminal_width(io.StringIO()) == 80  # not a terminal
    assert not use_color(io.StringIO())


def test_caption_lines_and_an_empty_table() -> None:
    text = table(caption=[("counts", ""), ("\ncontained by x", "")]).render(80)
    assert [line.strip() for line in text.splitlines()[-2:]] == ["counts", "contained by x"]
    assert "┡━━━━━━╇━━━━━━━┩" in text


def test_status_draws_the_gpu_table_from_a_fresh_report(tmp_path, monkeypatch) -> None:
    import json
    import time

    from gpudispatch.cli import render_status
    from gpudispatch.store import FolderQueue

    queue = FolderQueue(tmp_path / "q")
    report = {"at": time.time(), "gpus": [
        {"index": 0, "name": "Fake A100", "memory_total": 80 * 2**30, "memory_used": 2**30,
         "utilization": 7, "blocked": None, "jobs": [{"name": "a.sh", "gpu_mem": 2**30}],
         "processes": [{"pid": 42, "user": "bob", "command": "[red]py", "used": 2**29,
                        "foreign": True}]},
        {"index": 1, "name": "Fake A100", "memory_total": 80 * 2**30, "memory_used": 0,
         "utilization": None, "blocked": "held by bob", "jobs": [], "processes": []},
    ]}
    (tmp_path / "q" / ".gpudispatch" / "gpus.json").write_text(json.dumps(report))
    monkeypatch.setenv("COLUMNS", "300")  # no cell folded: whole phrases to look for
    text = render_status(queue, 20)
    assert text.splitlines()[0].strip() == "GPUs"
    flat = " ".join(text.split())
    assert "0 Fake A100" in flat and "1.0 GiB / 80.0 GiB" in flat and "7%" in flat
    assert "a.sh (1.0 GiB)" in flat and "bob pid 42 [red]py 512.0 MiB" in flat
    assert "busy: held by bob" in flat and "queued 0 running 0" in flat


def test_a_kept_column_is_cut_only_when_nothing_else_can_be() -> None:
    table = Table()
    table.add_column("name", keep=True)
    for header in ("state", "started", "reason"):
        table.add_column(header)
    table.add_row("experiment-0001.sh", "completed", "11-29 04:50:22", "exit code 1: " + "x" * 40)
    lines = table.render(60).splitlines()
    assert max(len(line) for line in lines) <= 60
    assert any("experiment-0001.sh" in line for line in lines)  # whole, on one line
    unkept = Table()
    for header in ("name", "state", "started", "reason"):
        unkept.add_column(header)
    unkept.add_row("experiment-0001.sh", "completed", "11-29 04:50:22", "x" * 53)
    assert not any("experiment-0001.sh" in line for line in unkept.render(60).splitlines())
    tiny = table.render(20).splitlines()  # no room at all: the kept column is cut too
    assert max(len(line) for line in tiny) <= 20
