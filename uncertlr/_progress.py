"""Progress bars shared by both backends (rich)."""

from __future__ import annotations

from typing import Any

__all__ = ["progress_bar"]


def progress_bar(transient: bool = False) -> Any:
    """A ``rich.progress.Progress`` with the columns the CLI uses (description, bar, M/N, elapsed, ETA)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=transient,
    )
