"""The one progress bar of casa_adapter's long commands (converters, `make-demo`, `data check`, `eval`).

A rich bar on stderr, so stdout keeps what a command prints as its result (tables, JSON).
Training uses Lightning's `RichProgressBar` (see `casa_adapter.training.cli`).

    >>> with progress_bar("demo", total=3, enabled=False) as advance:
    ...     for _ in range(3):
    ...         advance()

With `unit="samples"` the bar also counts those items (`advance(0, items=n)`) and shows their
rate, e.g. shards 3/20 with "2400 samples 812 samples/s": a slow source shows there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    """`N unit R unit/s`: a second count kept in the task's `items` field, and its mean rate."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        items, elapsed = task.fields.get("items", 0), task.elapsed or 0.0
        rate = items / elapsed if elapsed > 0 else 0.0
        return Text(f"{items} {self.unit} {rate:,.0f} {self.unit}/s")


@contextlib.contextmanager
def progress_bar(
    description: str, total: int | None, enabled: bool = True, unit: str | None = None
) -> Iterator[Callable[..., None]]:
    """Yields `advance(n=1, items=0)`; draws a bar on stderr when `enabled`; `unit` names `items`."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    columns += [TimeRemainingColumn()] + ([RateColumn(unit)] if unit else [])
    with Progress(*columns, console=Console(stderr=True), disable=not enabled, transient=False) as progress:
        task = progress.add_task(description, total=total, items=0)
        counted = 0

        def advance(n: int = 1, items: int = 0) -> None:
            nonlocal counted
            counted += items
            progress.update(task, advance=n, items=counted)

        yield advance


__all__ = ["progress_bar"]
