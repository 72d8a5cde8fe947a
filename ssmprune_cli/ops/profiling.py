"""Named profiler ranges around the project's own kernels, for `bench --stages` and torch.profiler users."""

from __future__ import annotations

import contextlib

import torch


def op_range(name: str):
    """A torch.profiler range called `name` while the profiler records, else a no-op context.

    A Triton launch has no aten op around it, so the profiler would file its device time under the driver's launch
    call; inside this range it is attributed to `name` (e.g. "ssmprune::token_scan"). Off the profiler the cost is
    one attribute read."""
    if getattr(torch.autograd.profiler, "_is_profiler_enabled", False):
        return torch.profiler.record_function(name)
    return contextlib.nullcontext()
