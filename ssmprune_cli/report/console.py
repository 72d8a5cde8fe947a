"""The one rich Console for people's output. It writes to stderr so stdout stays clean for `--json`.

The Console looks up `sys.stderr` at each print, so test runners that swap the stream capture it too.
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

console = Console(stderr=True, highlight=False)


def error(message: str, label: str = "error") -> None:
    """One red line, `label: message`; the message is printed literally (no markup) and never wrapped."""
    console.print(Text(f"{label}: ", style="bold red") + Text(message, style="red"), soft_wrap=True)


def note(message: str) -> None:
    """A dim remark for people, e.g. which weights of a checkpoint were used."""
    console.print(Text(message, style="dim"), soft_wrap=True)
