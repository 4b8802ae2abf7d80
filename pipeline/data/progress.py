"""One style of progress line for the long data jobs (generation, scanning, writing)."""
from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar() -> Progress:
    # Progress goes to stderr so that stdout stays clean for tables and JSON; when stderr is not
    # a terminal (DVC, CI logs) rich prints the finished bars once instead of redrawing them.
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(file=sys.stderr),
    )
