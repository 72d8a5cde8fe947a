"""A switch for tests: mixers run DESIGN 2.3's reference semantics (scatter → dense scan → gather)."""

from __future__ import annotations

import contextlib
from typing import Iterator

_active = False


@contextlib.contextmanager
def alignment_reference() -> Iterator[None]:
    global _active
    previous, _active = _active, True
    try:
        yield
    finally:
        _active = previous


def reference_active() -> bool:
    return _active
