"""Triton forms of `ssmprune_cli.ops.layout_maps` (the definitions and shapes are there).

`order_maps`: one program per image and order (up to four orders a launch) walks the scan order in blocks of BLOCK steps (no wider than the order: a
196-step order is one block of 256), carrying how many kept steps it has seen and the last one; a prefix sum numbers
the kept steps of a block and a running maximum finds each step's previous (and last) kept step, so every output is
written in one pass.

`kept_maps`: one program per image writes -1 over its rank row, waits at a barrier (the CTA's earlier global stores
are then seen by all its threads), and writes, for each kept row j, keep[j] = parent[idx[j]] (int64 and int32) and
rank[keep[j]] = j.

`nearest_kept`: one program per block of BL positions of one image compares them with every kept token, BK at a
time, by squared grid distance in integers (exact; the first minimum, in ascending kept order, is the lowest
raster index among ties).
"""

from __future__ import annotations

import contextlib
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

import triton
import triton.language as tl

LAUNCH = {"order": {"BLOCK": 1024, "num_warps": 4}, "nearest": {"BL": 32, "BK": 64, "num_warps": 4},
          "kept": {"BLOCK": 1024, "num_warps": 4}}
_FAR = 2 ** 30  # farther than any two cells of a grid the models use (squared distance)


@triton.jit
def _larger(a, b):
    return tl.maximum(a, b)


@triton.jit
def _visited(t, L, order_ptr, m, HAS_ORDER: tl.constexpr, REVERSE: tl.constexpr):
    """The position step t visits (0 where m is False)."""
    if HAS_ORDER:
        return tl.load(order_ptr + t, mask=m, other=0).to(tl.int32)
    elif REVERSE:
        return tl.where(m, L - 1 - t, 0)
    else:
        return tl.where(m, t, 0)


@triton.jit(do_not_specialize=["L", "K"])
def _order_maps_kernel(rank_ptr, o0_ptr, o1_ptr, o2_ptr, o3_ptr, steps_ptr, src_ptr, pos_ptr, gap_ptr, hold_ptr,
                       L, K, s_rb, s_og, s_hg,
                       BLOCK: tl.constexpr, HAS_ORDER: tl.constexpr, REVERSE: tl.constexpr, HOLD: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1)
    # up to four orders in one launch (program axis 1), each with its own outputs s_og / s_hg elements further on
    order_ptr = o0_ptr
    if g == 1:
        order_ptr = o1_ptr
    elif g == 2:
        order_ptr = o2_ptr
    elif g == 3:
        order_ptr = o3_ptr
    steps_ptr += g * s_og
    src_ptr += g * s_og
    pos_ptr += g * s_og
    gap_ptr += g * s_og
    hold_ptr += g * s_hg
    rank_row = rank_ptr + b * s_rb
    out = b * K
    count = tl.zeros((), dtype=tl.int32)   # kept steps before this block
    last = tl.full((), -1, dtype=tl.int32)  # the last kept step before this block
    for t0 in range(0, L, BLOCK):
        t = t0 + tl.arange(0, BLOCK)
        m = t < L
        o = _visited(t, L, order_ptr, m, HAS_ORDER, REVERSE)
        r = tl.load(rank_row + o, mask=m, other=-1).to(tl.int32)
        kept = (r >= 0) & m
        j = count + tl.cumsum(kept.to(tl.int32), 0) - 1              # number of the kept step in the order
        # the previous kept step of every step: the running maximum of the kept steps before it
        mp = m & (t > 0)
        rp = tl.load(rank_row + _visited(t - 1, L, order_ptr, mp, HAS_ORDER, REVERSE), mask=mp, other=-1)
        prev = tl.maximum(tl.associative_scan(tl.where(mp & (rp >= 0), t - 1, -1), 0, _larger), last)
        tl.store(steps_ptr + out + j, t, mask=kept)
        tl.store(src_ptr + out + j, r, mask=kept)
        tl.store(pos_ptr + out + j, o, mask=kept)
        tl.store(gap_ptr + out + j, (t - prev - 1).to(tl.float32), mask=kept)
        here = tl.where(kept, t, -1)
        if HOLD:
            # the kept row of the last kept step at or before each step, written at the step's position
            lk = tl.maximum(tl.associative_scan(here, 0, _larger), last)
            has = m & (lk >= 0)
            rl = tl.load(rank_row + _visited(lk, L, order_ptr, has, HAS_ORDER, REVERSE), mask=has, other=-1)
            tl.store(hold_ptr + b * L + o, rl.to(tl.int32), mask=m)
        count += tl.sum(kept.to(tl.int32), axis=0)
        last = tl.maximum(last, tl.max(here, axis=0))


def order_maps(rank: Tensor, num_kept: int, order: Optional[Tensor], reverse: bool, hold: bool
               ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Optional[Tensor]]:
    return _launch(rank, num_kept, [order], reverse, hold)[0]


def order_maps_many(rank: Tensor, num_kept: int, orders: Sequence[Tensor], hold: bool
                    ) -> List[Tuple[Tensor, Tensor, Tensor, Tensor, Optional[Tensor]]]:
    """Several explicit orders, four to a launch."""
    out = []
    for i in range(0, len(orders), MAX_ORDERS):
        out += _launch(rank, num_kept, list(orders[i:i + MAX_ORDERS]), False, hold)
    return out


MAX_ORDERS = 4


def _launch(rank: Tensor, num_kept: int, orders: List[Optional[Tensor]], reverse: bool, hold: bool):
    b, L = rank.shape
    K = int(num_kept)
    G = len(orders)
    dev = rank.device
    rank = rank if rank.stride(-1) == 1 else rank.contiguous()
    # one allocation per output for all orders; order g's maps are views [g]
    steps = torch.empty((G, b, K), dtype=torch.int32, device=dev)
    src = torch.empty((G, b, K), dtype=torch.int32, device=dev)
    pos = torch.empty((G, b, K), dtype=torch.int32, device=dev)
    gap = torch.empty((G, b, K), dtype=torch.float32, device=dev)
    held = torch.empty((G, b, L), dtype=torch.int32, device=dev) if hold else steps
    has_order = orders[0] is not None
    # any integer dtype: the kernel converts what it loads
    ptrs = [o.to(device=dev).contiguous() if o is not None else rank for o in orders]
    ptrs += [ptrs[0]] * (MAX_ORDERS - G)
    if b and L:
        cfg = LAUNCH["order"]
        with torch.cuda.device(dev) if rank.is_cuda else contextlib.nullcontext():
            _order_maps_kernel[(b, G)](
                rank, *ptrs, steps, src, pos, gap, held, L, K, rank.stride(0), b * K, b * L if hold else b * K,
                BLOCK=min(cfg["BLOCK"], triton.next_power_of_2(L)), HAS_ORDER=has_order,
                REVERSE=bool(reverse), HOLD=bool(hold), num_warps=cfg["num_warps"])
    return [(steps[g], src[g], pos[g], gap[g], held[g] if hold else None) for g in range(G)]


@triton.jit(do_not_specialize=["L", "K", "W"])
def _nearest_kept_kernel(keep_ptr, out_ptr, L, K, W, s_kb, BL: tl.constexpr, BK: tl.constexpr, FAR: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    p = pid * BL + tl.arange(0, BL)
    mp = p < L
    pr = p // W
    pc = p % W
    best = tl.full((BL,), FAR, dtype=tl.int32)
    arg = tl.zeros((BL,), dtype=tl.int32)
    for k0 in range(0, K, BK):
        k = k0 + tl.arange(0, BK)
        mk = k < K
        q = tl.load(keep_ptr + b * s_kb + k, mask=mk, other=0).to(tl.int32)
        dr = pr[:, None] - (q // W)[None, :]
        dc = pc[:, None] - (q % W)[None, :]
        d = tl.where(mk[None, :], dr * dr + dc * dc, FAR)
        near, at = tl.min(d, axis=1, return_indices=True, return_indices_tie_break_left=True)
        better = near < best  # strict: an earlier block (lower raster index) keeps a tie
        best = tl.where(better, near, best)
        arg = tl.where(better, k0 + at, arg)
    tl.store(out_ptr + b * L + p, arg, mask=mp)


def nearest_kept(keep: Tensor, grid: Tuple[int, int]) -> Tensor:
    b, K = keep.shape
    H, W = grid
    L = H * W
    keep = keep if keep.stride(-1) == 1 else keep.contiguous()
    out = torch.empty((b, L), dtype=torch.int32, device=keep.device)
    if b and L and K:
        cfg = LAUNCH["nearest"]
        with torch.cuda.device(keep.device) if keep.is_cuda else contextlib.nullcontext():
            _nearest_kept_kernel[(triton.cdiv(L, cfg["BL"]), b)](
                keep, out, L, K, W, keep.stride(0), BL=cfg["BL"], BK=cfg["BK"], FAR=_FAR,
                num_warps=cfg["num_warps"])
    return out


@triton.jit(do_not_specialize=["K", "L"])
def _kept_maps_kernel(parent_ptr, idx_ptr, keep_ptr, keep32_ptr, rank_ptr, K, L, s_pb, s_ib,
                      HAS_PARENT: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    for p0 in range(0, L, BLOCK):
        p = p0 + tl.arange(0, BLOCK)
        tl.store(rank_ptr + b * L + p, tl.full((BLOCK,), -1, tl.int64), mask=p < L)
    tl.debug_barrier()  # every -1 is written before any kept position overwrites its own
    for j0 in range(0, K, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        m = j < K
        row = tl.load(idx_ptr + b * s_ib + j, mask=m, other=0).to(tl.int64)
        if HAS_PARENT:
            pos = tl.load(parent_ptr + b * s_pb + row, mask=m, other=0).to(tl.int64)
        else:
            pos = row
        tl.store(keep_ptr + b * K + j, pos, mask=m)
        tl.store(keep32_ptr + b * K + j, pos.to(tl.int32), mask=m)
        tl.store(rank_ptr + b * L + pos, j.to(tl.int64), mask=m)


def kept_maps(parent: Optional[Tensor], idx: Tensor, L: int) -> Tuple[Tensor, Tensor, Tensor]:
    b, K = idx.shape
    dev = idx.device
    idx = idx if idx.stride(-1) == 1 else idx.contiguous()
    if parent is not None and parent.stride(-1) != 1:
        parent = parent.contiguous()
    keep = torch.empty((b, K), dtype=torch.int64, device=dev)
    keep32 = torch.empty((b, K), dtype=torch.int32, device=dev)
    rank = torch.empty((b, L), dtype=torch.int64, device=dev)
    if b and L:
        cfg = LAUNCH["kept"]
        with torch.cuda.device(dev) if idx.is_cuda else contextlib.nullcontext():
            _kept_maps_kernel[(b,)](parent if parent is not None else idx, idx, keep, keep32, rank, K, L,
                                    parent.stride(0) if parent is not None else 0, idx.stride(0),
                                    HAS_PARENT=parent is not None,
                                    BLOCK=min(cfg["BLOCK"], triton.next_power_of_2(max(K, L))),
                                    num_warps=cfg["num_warps"])
    return keep, keep32, rank
