"""The one progress bar (rich), shared by training loops, the report, downloads and feature extraction.

Every long-running function of uncertlr takes ``progress``: ``True`` for a bar of its own,
``False``/``None`` for none, or a ``rich.progress.Progress`` to add its task to (so several
trainings share one live display). :func:`progress_task` turns that argument into an
``advance`` callable.

Example:
    >>> from uncertlr._progress import progress_task
    >>> with progress_task(False, "counting", total=3) as advance:
    ...     for _ in range(3):
    ...         advance(info="ok")
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Advance", "progress_bar", "progress_task"]

#: ``advance(n=1, *, description=None, info=None)``: move the task ``n`` units, optionally
#: relabelling it or updating the text column.
Advance = Callable[..., None]


def progress_bar(*, transient: bool = False, transfer: bool = False) -> Any:
    """A ``rich.progress.Progress`` with uncertlr's columns.

    Args:
        transient: remove the bar from the terminal when it stops.
        transfer: byte counts and speed (downloads) instead of ``M/N`` and the ETA.
    """
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    if transfer:
        columns: tuple[Any, ...] = (DownloadColumn(), TransferSpeedColumn())
    else:
        columns = (
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), *columns, transient=transient)


@contextlib.contextmanager
def progress_task(
    progress: Any,
    description: str,
    total: int | None,
    *,
    completed: int = 0,
    transient: bool = False,
    transfer: bool = False,
) -> Iterator[Advance]:
    """Yield ``advance(n=1, *, description=None, info=None)`` for one task.

    Args:
        progress: ``True`` (a bar of its own, started and stopped here), ``False``/``None``
            (``advance`` does nothing) or a ``rich.progress.Progress`` that the caller runs.
        description: the task's label (shown as plain text: brackets in model names or paths
            are not read as rich markup).
        total: units of work (``None``: unknown).
        completed: units already done (a resumed run).
        transient, transfer: for a bar of its own, see :func:`progress_bar`.
    """
    if progress is False or progress is None:
        yield _nothing
        return
    from rich.markup import escape  # labels carry model names and paths: never rich markup

    own = progress is True
    bar = progress_bar(transient=transient, transfer=transfer) if own else progress
    task = bar.add_task(escape(description), total=total, completed=completed, info="")

    def advance(n: int = 1, *, description: str | None = None, info: str | None = None) -> None:
        fields: dict[str, Any] = {} if info is None else {"info": escape(info)}
        bar.update(task, advance=n, **({"description": escape(description)} if description else {}), **fields)

    if own:
        bar.start()
    try:
        yield advance
    finally:
        if own:
            bar.stop()


def _nothing(n: int = 1, *, description: str | None = None, info: str | None = None) -> None:
    return None
