"""Console output for every layer: rich progress bars (stderr), warnings and info lines.

Library modules report through here, never through the CLI package, so they import without typer."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, highlight=False)
stdout = Console(highlight=False)


class _Rate(TextColumn):
    def __init__(self, unit: str):
        super().__init__("")
        self.unit = unit

    def render(self, task):  # type: ignore[override]
        from rich.text import Text

        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.1f} {self.unit}/s", style="cyan")


class _Quiet:
    def add_task(self, *a, **k):
        return 0

    def update(self, *a, **k):
        pass

    def advance(self, *a, **k):
        pass


@contextlib.contextmanager
def progress(quiet: bool = False, unit: str = "img") -> Iterator[Progress | _Quiet]:
    """A rich progress bar with count, rate and ETA (to stderr); a no-op with ``quiet``."""
    if quiet:
        yield _Quiet()
        return
    p = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
        _Rate(unit), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=console, transient=False,
    )
    with p:
        yield p


def warn(msg: str) -> None:
    console.print(f"[yellow]warning:[/] {msg}")


def info(msg: str, quiet: bool = False) -> None:
    if not quiet:
        console.print(msg)
