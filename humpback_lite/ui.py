"""Rich progress bars and tables for long stages (all output goes to stderr)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(stderr=True)


class RateColumn(ProgressColumn):
    """Items per second (rich's own speed column is for bytes)."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f}/s" if speed else "-/s", style="progress.data.speed")


@contextlib.contextmanager
def progress(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """Yield `advance(n=1, total=None)`; shows count, rate and ETA. Quiet when HUMPBACK_QUIET=1."""
    if os.environ.get("HUMPBACK_QUIET") == "1":
        yield lambda n=1, total=None: None
        return
    columns = [SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               RateColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int = 1, total: int | None = None) -> None:
            if total is not None:
                bar.update(task, total=total)
            bar.advance(task, n)

        yield advance


def say(line: str) -> None:
    """A `progress.Say` for the terminal: a warning or note, printed as text (paths keep their brackets)."""
    if os.environ.get("HUMPBACK_QUIET") != "1":
        console.print(line, style="yellow", markup=False, highlight=False, soft_wrap=True)


def funnel_table(counts: dict):
    """The corpus funnel as a rich table: what came in, what each filter dropped, what was kept."""
    from rich.table import Table

    table = Table(title="corpus funnel")
    table.add_column("step")
    table.add_column("count", justify="right")
    order = ["documents", "records", "candidates"]
    rest = sorted(k for k in counts if k not in order + ["kept", "sampled"])
    for key in order + rest + ["kept", "sampled"]:
        if key in counts:
            table.add_row(key, str(counts[key]))
    return table
