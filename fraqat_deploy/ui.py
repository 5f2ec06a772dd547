"""Console output shared by every stage: one Rich console (stderr for progress), plain when not a terminal."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

#: piped or captured output (logs, CI, tests) is not wrapped at 80 columns: tables stay one row per line
_WIDTH = None if sys.stdout.isatty() else 160
console = Console(stderr=True, highlight=False, width=_WIDTH)
out = Console(highlight=False, width=_WIDTH)


def progress(disable: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=console,
        disable=disable or not console.is_terminal,  # a log file gets the results, not bar frames
        transient=False,
    )
