"""Index maps of a pruned token layout (models/layers/token_layout.py): dispatch point plus the PyTorch definitions.

    order_maps(rank, K, order, reverse, hold)   one scan order over the kept tokens
    order_maps_many(rank, K, orders, hold)      several explicit orders at once (one launch for up to four)
    nearest_kept(keep, grid)                    the 2-D 'hold' conv fill: the nearest kept token of each cell
    kept_maps(parent, idx, L)                   a new layout's kept positions (int64 and int32) and rank, from the
                                                rows `idx` a prune point keeps of its parent's kept tokens

Shapes: b images, L positions (a grid's cells in raster order), K kept tokens per image.
    rank: (b, L) integer, the kept row of each position, -1 where pruned (TokenLayout.rank)
    order: (L,) the position visited at each step of the scan, or None: position order, walked backwards with
           `reverse` (step t visits L - 1 - t)
    keep: (b, K) the kept positions, ascending

`order_maps` returns an `OrderMaps` of the kept steps in ascending step order: `steps` (b, K) int32, the step
indices; `src` (b, K) int32, the kept row each visits; `pos` (b, K) int32, the position each visits; `gap` (b, K)
float32, the pruned steps just before each (what the aligned scan decays by Δ̂); and with `hold`, `hold` (b, L) int32:
for every position, the kept row of the last kept step at or before the step that visits it, -1 if none (the 1-D
'hold' conv fill of that order). `nearest_kept` returns (b, L) int32: the kept row nearest to each cell by Euclidean
distance, ties to the lowest raster index. `kept_maps` takes parent (b, K0) the kept positions before the prune
point (None: every position, K0 = L) and idx (b, K) ascending rows of it, and returns keep = parent[idx] (b, K)
int64, the same as int32, and rank (b, L) int64 (TokenLayout.rank).

On CUDA each is one kernel launch (kernels/layout_maps.py) where the PyTorch forms take a dozen small ops: a
pruned model's prune points were mostly launches of those, which batch-1 latency pays one by one. CPU tensors,
tracing (fvcore) and torch.compile take the PyTorch forms; tests hold the two equal.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ._kernels import kernel_module
from .profiling import op_range
from .aligned_scan import gaps_from_steps
from .selective_scan import index_kernel_applies


# the profiler range of the kernels (`bench --stages` files it under "pruning / index")
RANGE = "ssmprune::layout_index_maps"


class OrderMaps(NamedTuple):
    steps: Tensor
    src: Tensor
    pos: Tensor
    gap: Tensor
    hold: Optional[Tensor] = None


def order_maps(rank: Tensor, num_kept: int, order: Optional[Tensor] = None, reverse: bool = False,
               hold: bool = False, backend: Optional[str] = None) -> OrderMaps:
    """The kept steps of one scan order and what the aligned layers read at them (module docstring)."""
    if index_kernel_applies(rank, backend):
        with op_range(RANGE):
            return OrderMaps(*kernel_module("layout_maps").order_maps(rank, num_kept, order, reverse, hold))
    return order_maps_ref(rank, num_kept, order, reverse, hold)


def order_maps_many(rank: Tensor, num_kept: int, orders: Sequence[Tensor], hold: bool = False,
                    backend: Optional[str] = None) -> List[OrderMaps]:
    """`order_maps` of several explicit orders (each (L,)); on CUDA one launch for up to four."""
    if index_kernel_applies(rank, backend):
        with op_range(RANGE):
            return [OrderMaps(*m) for m in kernel_module("layout_maps").order_maps_many(rank, num_kept, orders, hold)]
    return [order_maps_ref(rank, num_kept, o, False, hold) for o in orders]


def order_maps_ref(rank: Tensor, num_kept: int, order: Optional[Tensor] = None, reverse: bool = False,
                   hold: bool = False) -> OrderMaps:
    b, L = rank.shape
    t = torch.arange(L, device=rank.device)
    o = order.to(device=rank.device, dtype=torch.long) if order is not None else (L - 1 - t if reverse else t)
    r = rank[:, o]                                                   # (b, L) kept row at each step, -1 pruned
    kept = r >= 0
    steps = torch.where(kept, t, t + L).sort(dim=1).values[:, :num_kept]
    held = None
    if hold:
        last = torch.where(kept, t, -1).cummax(dim=1).values      # the last kept step at or before each step
        row = torch.where(last >= 0, r.gather(1, last.clamp(min=0)), -1)
        held = row.scatter(1, o.expand(b, L), row).to(torch.int32)  # o is a permutation: every entry is written
    return OrderMaps(steps.to(torch.int32), r.gather(1, steps).to(torch.int32), o[steps].to(torch.int32),
                     gaps_from_steps(steps).to(torch.float32), held)


def kept_maps(parent: Optional[Tensor], idx: Tensor, length: int, backend: Optional[str] = None
              ) -> Tuple[Tensor, Tensor, Tensor]:
    """(keep int64, keep int32, rank int64) of the layout that keeps rows `idx` of `parent` (module docstring)."""
    if index_kernel_applies(idx, backend):
        with op_range(RANGE):
            return kernel_module("layout_maps").kept_maps(parent, idx, int(length))
    return kept_maps_ref(parent, idx, length)


def kept_maps_ref(parent: Optional[Tensor], idx: Tensor, length: int) -> Tuple[Tensor, Tensor, Tensor]:
    keep = idx.long() if parent is None else parent.gather(1, idx.long())
    b, K = keep.shape
    rank = torch.full((b, int(length)), -1, dtype=torch.long, device=keep.device)
    rank = rank.scatter(1, keep, torch.arange(K, device=keep.device).expand(b, K))
    return keep, keep.to(torch.int32), rank


def nearest_kept(keep: Tensor, grid: Tuple[int, int], backend: Optional[str] = None) -> Tensor:
    """(b, L) int32: the kept row nearest to each cell of the grid (module docstring)."""
    H, W = (int(v) for v in grid)
    if index_kernel_applies(keep, backend):
        with op_range(RANGE):
            return kernel_module("layout_maps").nearest_kept(keep, (H, W))
    return nearest_kept_ref(keep, (H, W))


def nearest_kept_ref(keep: Tensor, grid: Tuple[int, int]) -> Tensor:
    H, W = grid
    p = torch.arange(H * W, device=keep.device, dtype=torch.int32)
    pr, pc = (p // W)[:, None], (p % W)[:, None]                                    # (L, 1)
    out = []
    for chunk in keep.to(torch.int32).split(16, dim=0):  # bound the (b, L, K) distance matrix
        kr, kc = (chunk // W)[:, None, :], (chunk % W)[:, None, :]                    # (c, 1, K)
        d = (pr - kr) ** 2 + (pc - kc) ** 2                                           # (c, L, K) exact integers
        out.append(d.argmin(dim=2))  # first minimum = lowest raster index among ties
    return torch.cat(out, dim=0).to(torch.int32)
