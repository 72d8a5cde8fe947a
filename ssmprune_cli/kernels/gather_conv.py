"""Triton kernels for the gather conv (a depthwise conv read through a position map), forward and backward, and
its torch.autograd.Function. Shapes and semantics are those of `ssmprune_cli.ops.gather_conv` (its docstring is
the definition); docs/kernels.md ("Gather conv") explains the design.

Forward: a program owns BT outputs x BC channels of one image. For each tap (a loop over the KH rows of taps,
each unrolled over KW) it computes the tap's grid position for each output, masks it to the grid, looks up `src`
(one int load per output, shared by the channel block), then loads a (BT, BC) tile of x rows (coalesced along
channels) and adds it times the tap's weights in float32. Taps of neighbouring outputs read the same rows, so
they come from L1/L2: HBM sees about one read of x and one write of out.

Backward, three kernels:
    _bwd_pre_kernel  only with an activation: dpre = dout * act'(a), the pre-activation a recomputed (not saved by the
                     forward), stored as float32 (b, M, C). Without SiLU the gradient at the outputs is dout.
    _bwd_w_kernel    dweight and dbias: per program ROWS outputs of one image and BC channels; for each tap, the
                     products of the output gradient and the x rows the tap read, summed elementwise over tiles and
                     reduced once, then one float32 atomic add per (tap, channel).
    _bwd_x_kernel    dx, the transposed conv: for each grid position p that reads a row of x (src[p] >= 0), the
                     sum over taps of weight * gradient at the output that the tap feeds from p (mirrored offset,
                     looked up through the inverse of `keep`), added to dx[src[p]] with a float32 atomic (hold
                     fills map several positions to one row). Without `src`, p is row p: a plain store.
dx thus costs one atomic per (position, channel) instead of one per (output, tap, channel), 49 for a 7x7 conv.

Pointer conventions (set up by the launcher below):
    x (b, K, C), dout (b, M, C): any strides; out, dpre (b, M, C) and dx (b, K, C): contiguous
    wt (KH*KW, C): float32 copy of the taps, contiguous; bias (C,): float32, contiguous
    keep (b, M), src (b, L): int32 or int64, any strides, read in place (loaded values cast to int32)
    outrank (b, L) int32: the output index at each position, -1 where none (the backward's inverse of keep)

Channel groups (GroupMamba's four SS2D groups in one launch): x (G, NB, K, C) with weights (G, C, KH, KW) and
bias (G, C), the maps (NB, ·) shared by the groups. The kernels see G·NB images: image pid_b is group
pid_b // NB, map row pid_b % NB, and its taps and bias sit at group offsets in wt (G, KH*KW, C) and bias (G, C).
Without groups G = 1 and NB = b.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Dict, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ssmprune_cli.errors import BadInputError

from ssmprune_cli.param_cache import derived

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Launch shapes. TILE: elements (outputs x channels) of a program's tile; BC: channels per program, capped at C
# rounded up to a power of two (narrow convs, GroupMamba's 16 channels a group, get taller tiles instead); BT =
# TILE // BC outputs. "bwd_w" walks ROWS outputs per program in BT-output tiles, so one float32 atomic per
# (channel, tap) covers ROWS outputs. Chosen from the machine code (sm_90, compiled here): with 4 warps and
# BC = 64 the warps split only the outputs, so each tap's weights load straight into the layout of the x tile;
# shapes whose warps also split channels (BC = 128 with 4 warps, BC = 64 with 2) convert that vector through
# shared memory at every tap. Not yet timed on a GPU: `benchmarks/gather_conv.py --sweep KIND` compares others.
# "fwd" preloads a map's src rows (PRELOAD in _conv_tile) when its grid has at most `preload_warps_per_sm` warps
# per SM: one wave of programs, bound by the latency of its dependent loads rather than by occupancy.
LAUNCH: Dict[str, Dict[str, int]] = {"fwd": {"TILE": 2048, "BC": 64, "num_warps": 4, "preload_warps_per_sm": 16},
                                     "bwd_pre": {"TILE": 2048, "BC": 64, "num_warps": 4},
                                     "bwd_w": {"TILE": 2048, "BC": 64, "num_warps": 4, "ROWS": 512},
                                     "bwd_x": {"TILE": 2048, "BC": 64, "num_warps": 4}}

_LOG2E = tl.constexpr(1.4426950408889634)
_SQRT1_2 = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)
ACTS = {None: 0, "silu": 1, "gelu": 2}  # the activation after the conv, as the kernels' ACT code


@triton.jit
def _act(a, ACT: tl.constexpr):
    """SiLU (ACT 1) as a / (1 + 2^(-a log2 e)): exp2 overflow gives -0, not NaN; GELU (ACT 2) exact, with erf."""
    if ACT == 1:
        a = a / (1.0 + tl.exp2(-a * _LOG2E))
    elif ACT == 2:
        a = 0.5 * a * (1.0 + tl.math.erf(a * _SQRT1_2))
    return a


@triton.jit
def _act_grad(a, ACT: tl.constexpr):
    """d act / da: silu' = s (1 + a (1 - s)) with s = sigmoid(a); gelu' = Phi(a) + a phi(a)."""
    if ACT == 1:
        s = 1.0 / (1.0 + tl.exp2(-a * _LOG2E))
        d = s * (1.0 + a * (1.0 - s))
    else:
        d = 0.5 * (1.0 + tl.math.erf(a * _SQRT1_2)) + a * _INV_SQRT_2PI * tl.exp2(-0.5 * a * a * _LOG2E)
    return d


# ----------------------------------------------------------------------------------------------- shared pieces
@triton.jit
def _channel_mask(offs_c, C, BC: tl.constexpr, EVEN_C: tl.constexpr):
    """Channels inside C; all of them (a constant the compiler drops from every mask) when BC divides C."""
    if EVEN_C:
        return tl.full((BC,), 1, tl.int1)
    else:
        return offs_c < C


@triton.jit
def _group_and_image(pid_b, NB, GROUPED: tl.constexpr):
    """(channel group, map row) of kernel image pid_b: (pid_b // NB, pid_b % NB), or (0, pid_b) without groups
    (constants the compiler folds: the ungrouped kernels compile as before groups existed). The division runs in
    32 bits (a 64-bit one cost 48 registers in a 3x3 hold conv, sm_90)."""
    if GROUPED:
        pid = pid_b.to(tl.int32)
        grp = pid // NB
        return grp, pid - grp * NB
    else:
        return 0, pid_b


@triton.jit
def _positions(keep_ptr, pid_b, offs_t, mt, W, s_kb, s_km, HAS_KEEP: tl.constexpr):
    """Raster position, grid row and column of each output (its entry in keep, or the output index itself)."""
    if HAS_KEEP:
        pos = tl.load(keep_ptr + pid_b * s_kb + offs_t * s_km, mask=mt, other=0).to(tl.int32)
    else:
        pos = offs_t
    r = pos // W
    return pos, r, pos - r * W


@triton.jit
def _tap(cols, at_pos, idx_row, pos, col, ok_r, W, s_il, s_row, DI, DJ: tl.constexpr, HAS_IDX: tl.constexpr):
    """(BT, BC) pointers to the rows that each output's tap at offset (DI, DJ) reads, and whether it reads one:
    inside the grid (ok_r is the row test, from the caller's loop over DI) and, read through an index map
    (idx_row: src, or the inverse of keep), a row >= 0. Without a map the row is the position: at_pos + offset."""
    cc = col + DJ
    ok = ok_r & (cc >= 0) & (cc < W)
    if HAS_IDX:
        row = tl.load(idx_row + (pos + (DI * W + DJ)) * s_il, mask=ok, other=-1).to(tl.int32)
        ok = ok & (row >= 0)
        ptrs = cols + row.to(tl.int64)[:, None] * s_row
    else:
        ptrs = at_pos + (DI * W + DJ) * s_row
    return ptrs, ok


@triton.jit
def _conv_tile(x_ptr, wt_ptr, src_ptr, pid_b, img, pos, r, col, mt, offs_c, mc, C, H, W,
               s_xb, s_xk, s_xc, s_sb, s_sl,
               KH: tl.constexpr, KW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr, FLIP: tl.constexpr,
               HAS_SRC: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, PRELOAD: tl.constexpr = False):
    """(BT, BC) float32 sum over taps of weight * x read through src, without bias: x of image pid_b, its map
    row img (pid_b without groups), wt_ptr at its group's taps.

    PRELOAD (through src, at most 16 taps): the src rows of all taps are loaded at once before any x row, so a
    program waits on one index load and then on x, instead of an index load and an x load one after the other for
    each row of taps. Chosen for launches too small to fill the GPU, which are latency-bound (at batch 1 on an
    H100, GroupMamba-T's pruned 3x3 convs took 1.48x the time of its dense ones); it takes more registers (80 ->
    128 compiled here for a 3x3 hold conv), which a full grid would pay in occupancy."""
    acc = tl.zeros((BT, BC), dtype=tl.float32)
    x_cols = x_ptr + pid_b * s_xb + offs_c[None, :] * s_xc
    x_pos = x_cols if HAS_SRC else x_cols + pos.to(tl.int64)[:, None] * s_xk
    w_cols = wt_ptr + offs_c
    src_row = src_ptr + img * s_sb
    # a loop over tap rows (a static unroll of 7x7 hoisted all 49 loads and spilled): 64 registers for 3x3 dense,
    # 78 through a hold map, 96 for 7x7, 56 for Vim's 1x4, at BT 32 x BC 64 (sm_90, launch-time specialisation),
    # no spills (docs/kernels.md)
    if PRELOAD:
        KP: tl.constexpr = 16
        kk = tl.arange(0, KP)
        ki = kk // KW
        kj = kk - ki * KW
        tdi = (PH - ki) if FLIP else (ki - PH)
        tdj = (PW - kj) if FLIP else (kj - PW)
        rr = r[:, None] + tdi[None, :]
        cc = col[:, None] + tdj[None, :]
        okt = mt[:, None] & (kk < KH * KW)[None, :] & (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W)
        rows = tl.load(src_row + (pos[:, None] + tdi[None, :] * W + tdj[None, :]) * s_sl, mask=okt, other=-1)
        rows = rows.to(tl.int32)
        for i in range(KH):
            for j in tl.static_range(KW):
                row = tl.max(tl.where(kk[None, :] == i * KW + j, rows, -1), axis=1)  # tap (i, j)'s column
                ok = row >= 0
                xv = tl.load(x_cols + row.to(tl.int64)[:, None] * s_xk, mask=ok[:, None] & mc[None, :], other=0.0)
                wv = tl.load(w_cols + (i * KW + j) * C, mask=mc, other=0.0)
                acc += xv.to(tl.float32) * wv[None, :]
    else:
        for i in range(KH):
            di = (PH - i) if FLIP else (i - PH)
            ok_r = mt & (r + di >= 0) & (r + di < H)
            for j in tl.static_range(KW):
                dj = (PW - j) if FLIP else (j - PW)
                ptrs, ok = _tap(x_cols, x_pos, src_row, pos, col, ok_r, W, s_sl, s_xk, di, dj, HAS_SRC)
                xv = tl.load(ptrs, mask=ok[:, None] & mc[None, :], other=0.0)
                wv = tl.load(w_cols + (i * KW + j) * C, mask=mc, other=0.0)
                acc += xv.to(tl.float32) * wv[None, :]
    return acc


# ----------------------------------------------------------------------------------------------- forward
@triton.jit
def _conv_fwd_kernel(
    # pointers
    x_ptr, wt_ptr, bias_ptr, keep_ptr, src_ptr, out_ptr,
    # dimensions
    M, C, H, W, NB,
    # strides
    s_xb, s_xk, s_xc, s_kb, s_km, s_sb, s_sl,
    # meta-parameters
    KH: tl.constexpr, KW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr, FLIP: tl.constexpr,
    HAS_KEEP: tl.constexpr, HAS_SRC: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    BT: tl.constexpr, BC: tl.constexpr, EVEN_C: tl.constexpr, PRELOAD: tl.constexpr = False,
    GROUPED: tl.constexpr = False,
):
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    grp, img = _group_and_image(pid_b, NB, GROUPED)   # channel group and the image's row of keep / src
    offs_t = pid_t * BT + tl.arange(0, BT)
    offs_c = pid_c * BC + tl.arange(0, BC)
    mt = offs_t < M
    mc = _channel_mask(offs_c, C, BC, EVEN_C)
    pos, r, col = _positions(keep_ptr, img, offs_t, mt, W, s_kb, s_km, HAS_KEEP)
    acc = _conv_tile(x_ptr, wt_ptr + grp * (KH * KW * C), src_ptr, pid_b, img, pos, r, col, mt, offs_c, mc, C, H,
                     W, s_xb, s_xk, s_xc, s_sb, s_sl, KH, KW, PH, PW, FLIP, HAS_SRC, BT, BC, PRELOAD)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + grp * C + offs_c, mask=mc, other=0.0)[None, :]
    acc = _act(acc, ACT)
    dst = out_ptr + pid_b * M * C + offs_t[:, None] * C + offs_c[None, :]
    tl.store(dst, acc.to(out_ptr.dtype.element_ty), mask=mt[:, None] & mc[None, :])


# ----------------------------------------------------------------------------------------------- backward
@triton.jit
def _bwd_pre_kernel(
    # pointers
    x_ptr, wt_ptr, bias_ptr, keep_ptr, src_ptr, dout_ptr, dpre_ptr,
    # dimensions
    M, C, H, W, NB,
    # strides
    s_xb, s_xk, s_xc, s_kb, s_km, s_sb, s_sl, s_gb, s_gm, s_gc,
    # meta-parameters
    KH: tl.constexpr, KW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr, FLIP: tl.constexpr,
    HAS_KEEP: tl.constexpr, HAS_SRC: tl.constexpr, HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, EVEN_C: tl.constexpr, GROUPED: tl.constexpr = False,
):
    """With an activation: dpre = dout * act'(a), the pre-activation a recomputed as in the forward; float32
    (b, M, C)."""
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    grp, img = _group_and_image(pid_b, NB, GROUPED)
    offs_t = pid_t * BT + tl.arange(0, BT)
    offs_c = pid_c * BC + tl.arange(0, BC)
    mt = offs_t < M
    mc = _channel_mask(offs_c, C, BC, EVEN_C)
    m2 = mt[:, None] & mc[None, :]
    pos, r, col = _positions(keep_ptr, img, offs_t, mt, W, s_kb, s_km, HAS_KEEP)
    a = _conv_tile(x_ptr, wt_ptr + grp * (KH * KW * C), src_ptr, pid_b, img, pos, r, col, mt, offs_c, mc, C, H, W,
                   s_xb, s_xk, s_xc, s_sb, s_sl, KH, KW, PH, PW, FLIP, HAS_SRC, BT, BC)
    if HAS_BIAS:
        a += tl.load(bias_ptr + grp * C + offs_c, mask=mc, other=0.0)[None, :]
    g = tl.load(dout_ptr + pid_b * s_gb + offs_t[:, None] * s_gm + offs_c[None, :] * s_gc, mask=m2,
                other=0.0).to(tl.float32)
    g = g * _act_grad(a, ACT)
    tl.store(dpre_ptr + pid_b * M * C + offs_t[:, None] * C + offs_c[None, :], g, mask=m2)


@triton.jit
def _bwd_w_kernel(
    # pointers
    x_ptr, keep_ptr, src_ptr, g_ptr, dwt_ptr, db_ptr,
    # dimensions
    M, C, H, W, NB,
    # strides
    s_xb, s_xk, s_xc, s_kb, s_km, s_sb, s_sl, s_gb, s_gm, s_gc,
    # meta-parameters
    KH: tl.constexpr, KW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr, FLIP: tl.constexpr,
    HAS_KEEP: tl.constexpr, HAS_SRC: tl.constexpr, NEED_DW: tl.constexpr, NEED_DB: tl.constexpr,
    BT: tl.constexpr, BC: tl.constexpr, ROWS: tl.constexpr, EVEN_C: tl.constexpr, GROUPED: tl.constexpr = False,
):
    """dweight[tap] = sum over outputs of g * (x read by the tap), dbias = sum of g, over the program's ROWS outputs
    of one image (a loop of BT-output tiles per tap, the tiles' products summed elementwise and reduced once), then
    one float32 atomic add per channel and tap into (G, KH*KW, C) / (G, C) buffers (at the image's group)."""
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    grp, img = _group_and_image(pid_b, NB, GROUPED)
    m0 = pid_r * ROWS
    m1 = tl.minimum(m0 + ROWS, M)
    offs_c = pid_c * BC + tl.arange(0, BC)
    mc = _channel_mask(offs_c, C, BC, EVEN_C)
    g_cols = g_ptr + pid_b * s_gb + offs_c[None, :] * s_gc
    if NEED_DB:
        acc = tl.zeros((BT, BC), dtype=tl.float32)
        for t0 in range(m0, m1, BT):
            offs_t = t0 + tl.arange(0, BT)
            m2 = (offs_t < m1)[:, None] & mc[None, :]
            acc += tl.load(g_cols + offs_t[:, None] * s_gm, mask=m2, other=0.0).to(tl.float32)
        tl.atomic_add(db_ptr + grp * C + offs_c, tl.sum(acc, axis=0), mask=mc, sem="relaxed")
    if NEED_DW:
        x_cols = x_ptr + pid_b * s_xb + offs_c[None, :] * s_xc
        src_row = src_ptr + img * s_sb
        for i in range(KH):  # a loop, not unrolled: bounds the loads in flight (registers)
            di = (PH - i) if FLIP else (i - PH)
            for j in tl.static_range(KW):
                dj = (PW - j) if FLIP else (j - PW)
                acc = tl.zeros((BT, BC), dtype=tl.float32)
                for t0 in range(m0, m1, BT):
                    offs_t = t0 + tl.arange(0, BT)
                    mt = offs_t < m1
                    pos, r, col = _positions(keep_ptr, img, offs_t, mt, W, s_kb, s_km, HAS_KEEP)
                    x_pos = x_cols if HAS_SRC else x_cols + pos.to(tl.int64)[:, None] * s_xk
                    ok_r = mt & (r + di >= 0) & (r + di < H)
                    ptrs, ok = _tap(x_cols, x_pos, src_row, pos, col, ok_r, W, s_sl, s_xk, di, dj, HAS_SRC)
                    xv = tl.load(ptrs, mask=ok[:, None] & mc[None, :], other=0.0)
                    gv = tl.load(g_cols + offs_t[:, None] * s_gm, mask=mt[:, None] & mc[None, :], other=0.0)
                    acc += gv.to(tl.float32) * xv.to(tl.float32)
                tl.atomic_add(dwt_ptr + (grp * (KH * KW) + i * KW + j) * C + offs_c, tl.sum(acc, axis=0), mask=mc,
                              sem="relaxed")


@triton.jit
def _bwd_x_kernel(
    # pointers
    g_ptr, wt_ptr, outrank_ptr, src_ptr, dx_ptr,
    # dimensions
    L, M, K, C, H, W, NB,
    # strides
    s_gb, s_gm, s_gc, s_sb, s_sl,
    # meta-parameters
    KH: tl.constexpr, KW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr, FLIP: tl.constexpr,
    HAS_KEEP: tl.constexpr, HAS_SRC: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, EVEN_C: tl.constexpr,
    GROUPED: tl.constexpr = False,
):
    """dx: for each grid position p, sum over taps of weight * dpre at the output whose tap read p."""
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    grp, img = _group_and_image(pid_b, NB, GROUPED)
    offs_p = pid_t * BT + tl.arange(0, BT)
    offs_c = pid_c * BC + tl.arange(0, BC)
    mp = offs_p < L
    mc = _channel_mask(offs_c, C, BC, EVEN_C)
    if HAS_SRC:  # positions that read no row give nothing
        dst_row = tl.load(src_ptr + img * s_sb + offs_p * s_sl, mask=mp, other=-1).to(tl.int32)
        mp = mp & (dst_row >= 0)
    else:
        dst_row = offs_p
    r = offs_p // W
    col = offs_p - r * W
    acc = tl.zeros((BT, BC), dtype=tl.float32)
    g_cols = g_ptr + pid_b * s_gb + offs_c[None, :] * s_gc
    g_pos = g_cols if HAS_KEEP else g_cols + offs_p.to(tl.int64)[:, None] * s_gm
    w_cols = wt_ptr + grp * (KH * KW * C) + offs_c
    rank_row = outrank_ptr + img * L
    for i in range(KH):  # a loop, not unrolled: bounds the loads in flight (registers)
        # the output at q reads p through tap (i, j) when q + offset = p: the offsets are mirrored
        di = (i - PH) if FLIP else (PH - i)
        ok_r = mp & (r + di >= 0) & (r + di < H)
        for j in tl.static_range(KW):
            dj = (j - PW) if FLIP else (PW - j)
            ptrs, ok = _tap(g_cols, g_pos, rank_row, offs_p, col, ok_r, W, 1, s_gm, di, dj, HAS_KEEP)
            gv = tl.load(ptrs, mask=ok[:, None] & mc[None, :], other=0.0)
            wv = tl.load(w_cols + (i * KW + j) * C, mask=mc, other=0.0)
            acc += gv.to(tl.float32) * wv[None, :]
    dst = dx_ptr + pid_b * K * C + dst_row.to(tl.int64)[:, None] * C + offs_c[None, :]
    m2 = mp[:, None] & mc[None, :]
    if HAS_SRC:
        tl.atomic_add(dst, acc, mask=m2, sem="relaxed")
    else:
        tl.store(dst, acc.to(dx_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _outrank_kernel(keep_ptr, outrank_ptr, M, L, s_kb, s_km, BT: tl.constexpr):
    """outrank[b, keep[b, m]] = m (outrank filled with -1 beforehand)."""
    pid_t = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_t = pid_t * BT + tl.arange(0, BT)
    mt = offs_t < M
    pos = tl.load(keep_ptr + pid_b * s_kb + offs_t * s_km, mask=mt, other=0).to(tl.int32)
    tl.store(outrank_ptr + pid_b * L + pos, offs_t, mask=mt)


# ----------------------------------------------------------------------------------------------- launcher
def _empty(shape, dtype, device) -> Tensor:
    """Every buffer a kernel must fill completely (tests swap in a NaN-filled version to catch gaps)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)  # triton.cdiv from Python goes through the constexpr-function machinery (~7 us a call)


def _blocks(kind: str, C: int) -> Tuple[int, int, int]:
    """(BT, BC, num_warps) of a LAUNCH entry for C channels."""
    cfg = LAUNCH[kind]
    BC = min(cfg["BC"], 1 << max(C - 1, 0).bit_length())
    return max(cfg["TILE"] // BC, 1), BC, cfg["num_warps"]


def _preload(src: Optional[Tensor], taps: int, grid, warps: int, x: Tensor) -> bool:
    """Whether a forward launch reads its src rows ahead (PRELOAD): through a map, at most 16 taps, and a grid of
    at most one latency-bound wave (LAUNCH["fwd"]["preload_warps_per_sm"] warps per SM)."""
    if src is None or taps > 16:
        return False
    return grid[0] * grid[1] * grid[2] * warps <= LAUNCH["fwd"].get("preload_warps_per_sm", 0) * _sms(x)


def _sms(x: Tensor) -> int:
    """The SMs of x's GPU (1 for a CPU tensor under the interpreter)."""
    return _sm_count(x.device.index if x.device.index is not None else torch.cuda.current_device()) if x.is_cuda \
        else 1


@functools.lru_cache(maxsize=None)
def _sm_count(device: int) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _strides2(t: Optional[Tensor]) -> Tuple[int, int]:
    return (0, 0) if t is None else (t.stride(0), t.stride(1))


def _taps_major(weight: Tensor) -> Tensor:
    """(KH*KW, C) float32 copy of the (C, KH, KW) taps, (G, KH*KW, C) of grouped (G, C, KH, KW) ones: each tap's
    weights are then one contiguous channel vector, loaded like a row of x (one launch; the (C, 1, KH, KW) layout
    of nn.Conv weights would need a scalar load per channel and tap)."""
    C, KT = int(weight.shape[-3]), int(weight.shape[-2] * weight.shape[-1])
    taps = weight.detach().reshape(-1, C, KT).transpose(1, 2).float().contiguous()
    return taps if weight.dim() == 4 else taps[0]


def _vec(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.detach().to(torch.float32).contiguous()


def _conv_params(weight: Tensor, bias: Optional[Tensor], trained: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """The kernels' (taps, bias) copies. For parameters that get no gradient here they are made once per parameter
    version (inference replays no copy kernels); parameters being trained (a CUDA graph replays the step after
    every optimizer update) get them at each call, inside what the graph captures."""
    if trained:
        return _taps_major(weight), _vec(bias)
    return derived(weight, "conv.taps", _taps_major), None if bias is None else derived(bias, "conv.bias", _vec)


class GatherConvFn(torch.autograd.Function):
    """Forward and backward of the gather conv through the Triton kernels; `apply(x, weight, bias, keep, src, H,
    W, ph, pw, flip, act, trained)`, absent tensors as None; `act`: the ACTS code of the activation; `trained`: the
    weight or bias gets a gradient (its kernel copies are then made at every call, see `_conv_params`). Gradients
    for x, weight and bias, in their dtypes and shapes. Grouped: x (G, b, K, C), weight (G, C, KH, KW), bias
    (G, C), output (G, b, M, C)."""

    @staticmethod
    def forward(ctx, x, weight, bias, keep, src, H, W, ph, pw, flip, act, trained=True):
        shape = tuple(int(s) for s in x.shape)  # ints even under jit tracing, where shapes are traced tensors
        G, NB, K, C = shape if len(shape) == 4 else (1, *shape)
        b = G * NB                                # the kernels' images: every group of every image
        x3 = x.reshape(b, K, C)                   # a view for GroupMamba's (G, b, K, ·) slices of one projection
        KH, KW = int(weight.shape[-2]), int(weight.shape[-1])
        M = int(keep.shape[1]) if keep is not None else H * W
        wt, bv = _conv_params(weight, bias, trained)
        out = _empty((b, M, C), x.dtype, x.device)
        if b * M * C > 0:
            BT, BC, warps = _blocks("fwd", C)
            grid = (_cdiv(M, BT), _cdiv(C, BC), b)
            _conv_fwd_kernel[grid](
                x3, wt, wt if bv is None else bv, x if keep is None else keep, x if src is None else src, out,
                M, C, H, W, NB, *x3.stride(), *_strides2(keep), *_strides2(src),
                KH=KH, KW=KW, PH=ph, PW=pw, FLIP=flip, HAS_KEEP=keep is not None, HAS_SRC=src is not None,
                HAS_BIAS=bv is not None, ACT=act, BT=BT, BC=BC, EVEN_C=C % BC == 0, num_warps=warps,
                PRELOAD=_preload(src, KH * KW, grid, warps, x), GROUPED=G > 1)
        ctx.save_for_backward(x3, wt, bv, keep, src)
        ctx.meta = (H, W, KH, KW, ph, pw, flip, act, weight.dtype, None if bias is None else bias.dtype, shape, NB)
        return out.view(G, NB, M, C) if len(shape) == 4 else out

    @staticmethod
    def backward(ctx, dout):
        x, wt, bv, keep, src = ctx.saved_tensors
        H, W, KH, KW, ph, pw, flip, act, w_dtype, b_dtype, shape, NB = ctx.meta
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and bv is not None
        b, K, C = (int(s) for s in x.shape)
        G = b // NB
        KT = KH * KW
        M = int(dout.shape[-2])
        dout = dout.reshape(b, M, C)
        dev = x.device
        flags = {"KH": KH, "KW": KW, "PH": ph, "PW": pw, "FLIP": flip, "HAS_KEEP": keep is not None,
                 "HAS_SRC": src is not None, "GROUPED": G > 1}
        dx = dw = db = None
        g = dout
        if act and b * M * C > 0:  # every gradient goes through dpre
            g = _empty((b, M, C), torch.float32, dev)
            BT, BC, warps = _blocks("bwd_pre", C)
            _bwd_pre_kernel[(_cdiv(M, BT), _cdiv(C, BC), b)](
                x, wt, wt if bv is None else bv, x if keep is None else keep, x if src is None else src, dout, g,
                M, C, H, W, NB, *x.stride(), *_strides2(keep), *_strides2(src), *dout.stride(),
                HAS_BIAS=bv is not None, ACT=act, BT=BT, BC=BC, EVEN_C=C % BC == 0, num_warps=warps, **flags)
        if need_w or need_b:
            dwt = torch.zeros((G, KT, C), dtype=torch.float32, device=dev) if need_w else None
            db32 = torch.zeros((G, C), dtype=torch.float32, device=dev) if need_b else None
            if b * M * C > 0:
                BT, BC, warps = _blocks("bwd_w", C)
                rows = LAUNCH["bwd_w"]["ROWS"]
                _bwd_w_kernel[(_cdiv(M, rows), _cdiv(C, BC), b)](
                    x, x if keep is None else keep, x if src is None else src, g, wt if dwt is None else dwt,
                    wt if db32 is None else db32, M, C, H, W, NB, *x.stride(), *_strides2(keep), *_strides2(src),
                    *g.stride(), NEED_DW=need_w, NEED_DB=need_b, BT=BT, BC=BC, ROWS=rows, EVEN_C=C % BC == 0,
                    num_warps=warps, **flags)
            grouped = len(shape) == 4
            if dwt is not None:
                dw = dwt.transpose(1, 2).reshape(G, C, KH, KW)
                dw = (dw if grouped else dw[0]).to(w_dtype)
            db = None if db32 is None else (db32 if grouped else db32[0]).to(b_dtype)
        if need_x:
            dx = _dx(g, wt, keep, src, b, NB, K, C, H, W, M, x.dtype, flags).view(shape)
        return dx, dw, db, None, None, None, None, None, None, None, None, None


def _dx(g, wt, keep, src, b, NB, K, C, H, W, M, dtype, flags) -> Tensor:
    """dx through _bwd_x_kernel; g: the gradient at the outputs (b, M, C), any strides; b = G·NB images, the maps
    (NB, ·)."""
    dev = g.device
    L = H * W
    if src is None:
        dx = _empty((b, K, C), dtype, dev)                      # every row is a position: each written once
    else:
        dx = torch.zeros((b, K, C), dtype=torch.float32, device=dev)  # atomics; rows nobody reads stay zero
    outrank = wt
    if keep is not None:
        outrank = torch.full((NB, L), -1, dtype=torch.int32, device=dev)
        if NB * M > 0:
            _outrank_kernel[(_cdiv(M, 256), NB)](keep, outrank, M, L, *keep.stride(), BT=256, num_warps=4)
    if b * L * C > 0:
        BT, BC, warps = _blocks("bwd_x", C)
        _bwd_x_kernel[(_cdiv(L, BT), _cdiv(C, BC), b)](
            g, wt, outrank, g if src is None else src, dx, L, M, K, C, H, W, NB,
            *g.stride(), *_strides2(src), BT=BT, BC=BC, EVEN_C=C % BC == 0, num_warps=warps, **flags)
    return dx if dx.dtype == dtype else dx.to(dtype)


def gather_conv_triton(x: Tensor, weight: Tensor, bias: Optional[Tensor], grid: Tuple[int, int],
                       padding: Tuple[int, int], keep: Optional[Tensor] = None, src: Optional[Tensor] = None,
                       flip: bool = False, act: Optional[str] = None) -> Tensor:
    """`ops.gather_conv` on the GPU (or under TRITON_INTERPRET=1), differentiable in x, weight and bias; `act`:
    None, 'silu' or 'gelu', applied to the conv's output."""
    if not (x.is_cuda or INTERPRET):
        raise BadInputError("the Triton gather conv needs CUDA tensors; use the 'reference' backend on the CPU")
    H, W = (int(v) for v in grid)
    ph, pw = (int(v) for v in padding)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        trained = torch.is_grad_enabled() and (weight.requires_grad or (bias is not None and bias.requires_grad))
        return GatherConvFn.apply(x, weight, bias, keep, src, H, W, ph, pw, bool(flip), ACTS[act], trained)
