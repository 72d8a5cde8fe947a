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
def progress_bar(description: str, total: Optional[int]) -> Iterator[Callable[..., None]]:
    """Yields update(n=1, *, completed=None, total=None, info=None): advance by n, or set the count done
    (`completed`), the `total` (when it becomes known or changes) and a short `info` text shown after the ETA
    (e.g. the running loss). Draws a bar on stderr when it is a terminal."""
    if not (_enabled and sys.stderr.isatty()):
        yield lambda n=1, **kw: None
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total, info="")

        def update(n: int = 1, *, completed: Optional[int] = None, total: Optional[int] = None,
                   info: Optional[str] = None) -> None:
            fields = {} if info is None else {"info": info}
            if completed is None:
                progress.update(task, advance=n, total=total, **fields)
            else:
                progress.update(task, completed=completed, total=total, **fields)

        yield update
