"""Where the kept tokens of a pruned sequence sit, and the index maps the aligned layers need (DESIGN 2.3).

A layout belongs to one forward pass. Tensors of kept tokens are (b, K, C) in ascending original position;
`keep` (b, K) holds those positions in the full sequence of length L. Index maps are computed once per layout
and shared by every layer after the prune point.

Fill of pruned positions for convolutions (`conv_fill`):
    hold    1-D: the last kept token before it in that scan order (none before: zero, like the conv padding).
            2-D: the nearest kept token on the grid by Euclidean distance, ties to the lowest raster index.
    packed  1-D only: the convolution runs over the kept tokens as if adjacent (what naive pruning does).
    zero    zeros.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ssmprune_cli.ops.layout_maps import OrderMaps, kept_maps, nearest_kept, order_maps, order_maps_many

from .grid_orders import grid_order

CONV_FILLS = ("hold", "packed", "zero")
DELTA_FILLS = ("calib", "bias", "zero")


class TokenLayout:
    def __init__(self, keep: Optional[Tensor], length: int, grid: Optional[Tuple[int, int]] = None,
                 conv_fill: str = "hold", delta_fill: str = "calib", refill: Optional[Tensor] = None):
        if conv_fill not in CONV_FILLS:
            raise ValueError(f"conv_fill must be one of {CONV_FILLS}, got {conv_fill!r}")
        if delta_fill not in DELTA_FILLS:
            raise ValueError(f"delta_fill must be one of {DELTA_FILLS}, got {delta_fill!r}")
        if grid is not None and grid[0] * grid[1] != length:
            raise ValueError(f"grid {grid} does not hold {length} tokens")
        self._keep = keep  # None only in `full`: made when read
        self.length = int(length)
        self.grid = grid
        self.conv_fill = conv_fill
        self.delta_fill = delta_fill
        self.refill = refill  # (b, L, C) features of pruned tokens, for hierarchical models
        self._cache: Dict[object, object] = {}
        self._every: Optional[Tuple[int, object]] = None  # (batch, device) of a layout that keeps every position

    # ------------------------------------------------------------------ construction
    @classmethod
    def full(cls, batch: int, length: int, device=None, **kw) -> "TokenLayout":
        """Every position kept (rows are positions). Its `keep` is made when something reads it: a prune point
        that only selects from it launches nothing for it."""
        layout = cls(None, length, **kw)
        layout._every = (int(batch), device)
        return layout

    @property
    def keep(self) -> Tensor:
        """(b, K) kept positions, ascending."""
        if self._keep is None:
            batch, device = self._every
            self._keep = torch.arange(self.length, device=device).expand(batch, self.length)
        return self._keep

    def select(self, idx: Tensor, refill: Optional[Tensor] = None) -> "TokenLayout":
        """Keep a subset: idx (b, K') indexes the current kept tokens and must be ascending per row. The new
        layout's positions, their int32 copy and its rank come from one launch on the GPU (ops/layout_maps.py)."""
        keep, keep32, rank = kept_maps(None if self._every else self.keep, idx, self.length)
        layout = TokenLayout(keep, self.length, self.grid, self.conv_fill, self.delta_fill,
                             self.refill if refill is None else refill)
        layout._cache["rank"], layout._cache["keep32"] = rank, keep32
        return layout

    @property
    def batch(self) -> int:
        return self._every[0] if self._keep is None else self._keep.shape[0]

    @property
    def num_kept(self) -> int:
        return self.length if self._keep is None else self._keep.shape[1]

    # ------------------------------------------------------------------ index maps
    def _cached(self, key, fn):
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def rank(self) -> Tensor:
        """(b, L) long: index of each position in the kept array, -1 where pruned (made with the int32 positions
        by `kept_maps`, as `select` makes them, for a layout built from its positions)."""
        if "rank" not in self._cache:
            _, keep32, self._cache["rank"] = kept_maps(None, self.keep, self.length)
            self._cache.setdefault("keep32", keep32)
        return self._cache["rank"]

    def order_maps(self, order: Optional[Tensor] = None, reverse: bool = False,
                   key: Optional[str] = None) -> OrderMaps:
        """The kept steps of a scan order and what they read (ops/layout_maps.py): `order` (L,) the position
        visited at each step, or None for position order (walked backwards with `reverse`; those also carry the
        1-D 'hold' fill of that direction)."""
        if order is None:
            return self._cached(_order_key(None, reverse, None), lambda: order_maps(
                self.rank(), self.num_kept, None, reverse, hold=True))
        return self._cached(_order_key(order, reverse, key), lambda: order_maps(self.rank(), self.num_kept, order))

    def prepare_orders(self, specs: Sequence[Tuple[Optional[Tensor], bool, Optional[str]]]) -> None:
        """Make the maps of several scan orders, (order, reverse, key) as `order_maps` takes them, in one launch
        on the GPU (ops/layout_maps.order_maps_many): a family calls it with every order its next block scans, so
        the prune point pays one launch for them instead of one each. Orders already made are skipped; position
        orders are given as explicit aranges (the same maps, their 1-D hold fill included)."""
        todo: Dict[object, Tensor] = {}
        for order, reverse, key in specs:
            k = _order_key(order, reverse, key)
            if k not in self._cache and k not in todo:
                todo[k] = order if order is not None else grid_order("row_rev" if reverse else "row", 1, self.length,
                                                                     self.rank().device)
        if todo:
            maps = order_maps_many(self.rank(), self.num_kept, list(todo.values()), hold=True)
            self._cache.update(zip(todo, maps))

    def scan_steps(self, order: Tensor, key: Optional[str] = None) -> Tuple[Tensor, Tensor]:
        """For a scan order (L,) of positions: the kept steps (b, K) ascending, and their kept-array index.

        A step is kept when the token it reads (order[step]) is kept.
        """
        maps = self.order_maps(order, key=key)
        return maps.steps.long(), maps.src.long()

    def fill_index(self, kind: str) -> Tensor:
        """(b, L) kept-array index that each position reads, -1 for zero.

        kind: 'zero', 'forward' (1-D hold in raster order), 'backward' (1-D hold in reversed order),
        'grid' (2-D hold: nearest kept token on the grid).
        """
        if kind == "zero":
            return self.rank()
        return self._cached(("fill", kind), lambda: self.source_map(kind).long())

    def source_map(self, kind: str) -> Tensor:
        """(b, L) int32 (the kernels' index type): the kept row each position reads under a fill kind
        (`fill_index`), -1 for zero."""
        return self._cached(("source", kind), lambda: self._source_map(kind))

    def _source_map(self, kind: str) -> Tensor:
        if kind == "zero":
            return self.rank().to(torch.int32)
        if kind in ("forward", "backward"):
            return self.order_maps(reverse=kind == "backward").hold
        if kind == "grid":
            if self.grid is None:
                raise ValueError("2-D fill needs a grid")
            return nearest_kept(self.keep, self.grid)
        raise ValueError(f"unknown fill kind {kind!r}")

    # ------------------------------------------------------------------ what the kernels read
    def keep_index(self) -> Tensor:
        """(b, K) int32 positions of the kept tokens (the kernels' index type)."""
        return self._cached("keep32", lambda: self.keep.to(torch.int32).contiguous())

    # ------------------------------------------------------------------ moving tokens
    def scatter(self, x: Tensor, fill_kind: str = "zero") -> Tensor:
        """(b, K, C) kept tokens → (b, L, C) full sequence, pruned positions filled by `fill_kind`."""
        idx = self.fill_index(fill_kind)
        b, L = idx.shape
        full = x.gather(1, idx.clamp(min=0)[..., None].expand(b, L, x.shape[-1]))
        if fill_kind != "grid":
            full = full.masked_fill((idx < 0)[..., None], 0.0)
        return full

    def gather(self, x_full: Tensor) -> Tensor:
        """(b, L, C) → (b, K, C) at the kept positions."""
        return x_full.gather(1, self.keep[..., None].expand(-1, -1, x_full.shape[-1]))

    def take(self, x: Tensor, idx: Tensor) -> Tensor:
        """Rows of (b, K, C) `x` at index (b, M)."""
        return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))

    def refilled(self, x: Tensor) -> Tensor:
        """Hierarchical models: the full grid again, pruned positions from their prune point's features."""
        if self.refill is None:
            raise ValueError("this layout carries no refill features")
        return self.refill.scatter(1, self.keep[..., None].expand(-1, -1, x.shape[-1]), x)


def _order_key(order: Optional[Tensor], reverse: bool, key: Optional[str]):
    """The cache key of a scan order's maps: position order by direction, others by the caller's key (or, without
    one, the order tensor's storage)."""
    if order is None:
        return ("order", "raster", bool(reverse))
    return ("order", key if key is not None else (order.data_ptr(), order.numel()))
