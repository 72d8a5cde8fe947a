"""The scan orders of a token grid that GroupMamba and VMamba read through index streams, made once per grid and
device.

    grid_order(kind, H, W, device)   (L,) int32: the raster position each step of the scan visits
        row      raster order                       row_rev  raster order backwards
        col      column-major (transpose, flatten)  col_rev  column-major backwards

Made at every forward, a column order is an arange, a transposing copy, a flip and a cast: about 140 of a
GroupMamba-T forward's 1,530 launches. Cached, a forward makes none of them, and no host-to-device copy either
(CUDA graphs capture forwards whole).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

KINDS = ("row", "col", "row_rev", "col_rev")


def grid_order_definition(kind: str, H: int, W: int, device=None) -> Tensor:
    """(L,) int64, made afresh: the definition the cached orders are made from."""
    if kind not in KINDS:
        raise ValueError(f"unknown scan order {kind!r}; choose one of {', '.join(KINDS)}")
    idx = torch.arange(H * W, device=device)
    if kind.startswith("col"):
        idx = idx.view(H, W).t().reshape(-1)
    return idx.flip(0) if kind.endswith("_rev") else idx


def grid_order(kind: str, H: int, W: int, device=None) -> Tensor:
    """(L,) int32 order of `kind` on an H x W grid (module docstring), shared by every call with these arguments.
    Under torch.compile the definition is traced instead (the compiled graph makes it; a cached look-up would
    break the graph at every block)."""
    if torch.compiler.is_compiling():
        return grid_order_definition(kind, H, W, device).to(torch.int32)
    return _made(kind, int(H), int(W), torch.device(device if device is not None else "cpu"))


@lru_cache(maxsize=256)
def _made(kind: str, H: int, W: int, device: torch.device) -> Tensor:
    with torch.inference_mode(False):  # an index a training graph may save for its backward
        return grid_order_definition(kind, H, W, device).to(torch.int32)
