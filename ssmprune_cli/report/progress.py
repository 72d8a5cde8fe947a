"""Progress bars for people, on stderr; silent when stderr is not a terminal or when disabled."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator, Optional

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ssmprune_cli.report.console import console

_enabled = True


def set_enabled(flag: bool) -> None:
    global _enabled
    _enabled = flag


@contextlib.contextmanager
def progress_bar(description: str, total: Optional[int]) -> Iterator[Callable[[int], None]]:
    """Yields advance(n); draws a bar on stderr when it is a terminal."""
    if not (_enabled and sys.stderr.isatty()):
        yield lambda n=1: None
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)
