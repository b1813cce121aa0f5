"""The one progress bar of casa_adapter's long commands (converters, `make-demo`, `data check`, `eval`).

A rich bar on stderr, so stdout keeps what a command prints as its result (tables, JSON).
Training uses Lightning's `RichProgressBar` (see `casa_adapter.training.cli`).

    >>> with progress_bar("demo", total=3, enabled=False) as advance:
    ...     for _ in range(3):
    ...         advance()
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yields `advance(n=1)`; draws a bar on stderr when `enabled`."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), disable=not enabled, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


__all__ = ["progress_bar"]
