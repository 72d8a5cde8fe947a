"""Where output goes, by the ecosystem's convention (pip, gh, docker, timm's CLI):

- `results`, on stdout: a command's result, the tables and lines that answer it (`ssmprune models | grep vim`,
  `ssmprune analyze CKPT > info.txt`). With `--json` the result is one JSON document there instead, alone.
- `console`, on stderr: everything for people while the work runs: progress bars, notes, warnings, errors.

Both Consoles look up `sys.stdout` / `sys.stderr` at each print, so test runners that swap the streams capture
them. Library code reports through the `ssmprune` logger (`log_to_console` routes it here for the CLI).
"""

from __future__ import annotations

import logging
import os
import sys

from rich.console import Console
from rich.text import Text

console = Console(stderr=True, highlight=False)
# Piped or redirected (`| grep`, `> info.txt`), a result is not wrapped at rich's default 80 columns: one table
# row stays one line. On a terminal, or with $COLUMNS set, the width is the terminal's.
results = Console(highlight=False, width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160)


def error(message: str, label: str = "error") -> None:
    """One red line, `label: message`; the message is printed literally (no markup) and never wrapped."""
    console.print(Text(f"{label}: ", style="bold red") + Text(message, style="red"), soft_wrap=True)


def warning(message: str) -> None:
    """One yellow line `warning: message` on stderr: something the user should know that does not stop the run."""
    console.print(Text("warning: ", style="bold yellow") + Text(message, style="yellow"), soft_wrap=True)


def note(message: str) -> None:
    """A dim remark for people on stderr, e.g. which weights of a checkpoint were used."""
    console.print(Text(message, style="dim"), soft_wrap=True)


class _ConsoleHandler(logging.Handler):
    """Log records of the `ssmprune` loggers as notes (INFO) and warnings (WARNING and above) on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a malformed log call must not end the run
            self.handleError(record)
            return
        (warning if record.levelno >= logging.WARNING else note)(message)


def log_to_console(level: int = logging.INFO) -> None:
    """Route the package's log records (`logging.getLogger("ssmprune...")`) to stderr as notes and warnings;
    idempotent, so every CLI call may make it."""
    logger = logging.getLogger("ssmprune")
    if not any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
        logger.addHandler(_ConsoleHandler())
    logger.setLevel(level)
    logger.propagate = False
