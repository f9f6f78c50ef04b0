"""How results are printed: rich tables on a terminal; plain aligned text, never wrapped, when the
output is piped (so `clipvdb classify x.png | grep cat` finds every class name whole); JSON on
request. Progress bars go to stderr."""

from __future__ import annotations

import dataclasses
import json
import sys


def is_terminal() -> bool:
    return sys.stdout.isatty()


def cell(v) -> str:
    if isinstance(v, list | tuple):
        return ",".join(str(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, default=str)
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    if v is None:
        return "-"
    return str(v)


def _plain(obj):
    """What JSON cannot encode as it is: a typed result as its dict, anything else as text."""
    if hasattr(obj, "as_dict"):
        return obj.as_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return str(obj)


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=_plain))


def print_table(title: str, rows: list[dict], columns: list[str] | None = None) -> None:
    columns = columns or (list(rows[0]) if rows else [])
    numeric = {c: bool(rows) and isinstance(rows[0].get(c), int | float) for c in columns}
    if is_terminal():
        from rich.console import Console  # rich: only for a terminal, kept off the start-up of --help
        from rich.table import Table

        table = Table(title=title, title_justify="left")
        for c in columns:
            table.add_column(c, justify="right" if numeric[c] else "left")
        for r in rows:
            table.add_row(*[cell(r.get(c)) for c in columns])
        Console().print(table)
        return
    print_plain(title, [columns] + [[cell(r.get(c)) for c in columns] for r in rows], numeric=list(numeric.values()))


def print_plain(title: str, grid: list[list[str]], numeric: list[bool] | None = None) -> None:
    """A title line, then columns aligned with two spaces; numbers right-aligned; no wrapping."""
    widths = [max(len(row[i]) for row in grid) for i in range(len(grid[0]))] if grid and grid[0] else []
    numeric = numeric or [False] * len(widths)
    print(title)
    for row in grid:
        cells = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric, strict=True)]
        print("  ".join(cells).rstrip())
    print()


def progress(label: str, unit: str = "img", show: str | None = None) -> tuple:
    """A progress bar on stderr and its update(advance, total, **fields) function; the rate is in
    `unit`s. `show` is a format string of the fields shown after the rate (e.g. "loss {loss:.3f}").
    Shown on a terminal only: a redirected stderr gets no bar, so that a failure there is one line."""
    from rich.console import Console  # rich: kept off the start-up of --help
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(TextColumn):
        def __init__(self):
            super().__init__("")

        def render(self, task):
            speed = task.finished_speed or task.speed
            return Text(f"{speed:6.1f} {unit}/s" if speed else f"   -- {unit}/s")

    class Fields(TextColumn):
        def __init__(self):
            super().__init__("")

        def render(self, task):
            return Text(show.format(**task.fields) if show and task.fields else "")

    console = Console(stderr=True)
    bar = Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        Rate(),
        *([Fields()] if show else []),
        TimeRemainingColumn(),
        transient=False,
        console=console,
        disable=not console.is_terminal,
    )
    task = bar.add_task(label, total=None)

    def update(advance: int, total: int, **fields) -> None:
        bar.update(task, total=total, advance=advance, **fields)

    return bar, update
