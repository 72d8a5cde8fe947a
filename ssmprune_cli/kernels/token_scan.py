"""The scan's forward in token-major layout: activations stay (b, tokens, channels) as the matmuls produce them.

`ssmprune_cli.ops.token_scan` is the definition (its docstring); this file is its Triton forward for CUDA tensors.
Inference calls it alone; training calls it through `token_scan_bwd.TokenScanFn`, with SAVE set: the kernels then
also store the state before every 4th step, which the backward (token_scan_bwd.py) recomputes from.

One program owns one batch row and BE = 32·warps channels, one channel per thread with all its states in
registers (the layout of `_fwd_kernel_tpc`), and walks the S steps of one scan order. Each step reads its rows
through up to three index streams, so no activation is ever gathered, flipped or transposed in memory:
    u row       where the step's input token sits (a kept token, or a position of a full-length tensor)
    param row   where its Δ, B and C sit (PlainMamba pairs u of token o[t] with Δ/B/C of raster token t)
    out row     where its output goes (and where z and the accumulator are read)
A stream is an int32 (b, S) or shared (S,) array, or absent: then the row is the step itself, counted backwards
when REVERSE is set (Vim's backward direction reads kept tokens in descending order, in place).

Per-token loads in this layout are one coalesced 2-byte (bf16) or 4-byte element per thread and step, with no
shared-memory conversion. The step's loads (u, Δ, gap, z, acc) are issued one step ahead of their use, and the
next step's B/C rows are asked into L1 (`prefetch.global.L1`) while this step computes.

Chunks. A program walks its steps one after another, so a launch with few programs (batch 1: Vim-S has 24 per
direction, a GroupMamba-T first-stage group one) takes the time of S dependent steps whatever the GPU's size: on an
H100 Vim-S's scans were 5.4 of its 6.2 ms at batch 1 while the stock CUDA kernel, which splits each sequence over a
thread block, ran the whole model in 2.8 ms. Such a launch splits its steps into P chunks instead (`_chunks`; never
the training forward, whose saved states follow one pass). The recurrence h <- a h + b with a = exp2(A·log2(e)·Δ)
composes over a chunk into h <- exp2(A·log2(e)·ΣΔ) h + h_chunk, so a summary launch (PHASE 1) scans every chunk but
the last from a zero state and stores its end state h_chunk and its decay sum ΣΔ; the output launch (PHASE 2) starts
chunk c from the combination of chunks 0 … c-1 (c cheap steps) and scans it as usual. The latency is then about
2·S/P + P steps instead of S, for at most twice the work of the chunked launch. The chunk states move one
(BE,) state row at a time, so every phase keeps the one-pass layout (one thread per channel) that the 16-wide B/C
row loads need; N > 1 chunks are off by default until a GPU run has timed them (LAUNCH, docs/kernels.md).
"""

from __future__ import annotations

import contextlib
from typing import Dict, Optional

import torch
from torch import Tensor

from . import selective_scan_kernels as K
from ssmprune_cli.param_cache import derived
from .selective_scan_fn import _bc_copies, _cdiv, _padded_states, _scaled_transpose, _sm_count, _vec

import triton
import triton.language as tl

# One warp per program for the one-channel-per-thread forward; tiles of steps x channels for one state, whose
# last, shorter tiles split the remaining steps finely when the grid gives every SM at least `tail_warps_per_sm`
# warps, and are one tile otherwise.
# A launch with fewer programs than `chunk_below` per SM (batch 1, a narrow channel group) splits its steps into
# chunks of at least `chunk_min` steps, as many as give about `chunk_target` programs per SM (module docstring).
# N > 1 chunks stay off (chunk_below 0) until a GPU run has held the row-wise chunk states fault-free and timed
# them: the (NP, BE) version faulted on the H100 (2026-12-08), the fix is checked on sm_90 compiles only.
LAUNCH: Dict[str, Dict[str, float]] = {
    "states": {"num_warps": 1, "chunk_below": 0.0, "chunk_target": 4.0, "chunk_min": 16},
    "one_state": {"BT": 128, "BE": 16, "num_warps": 4, "tail_warps_per_sm": 16,
                  "chunk_below": 0.5, "chunk_target": 2.0, "chunk_min": 128}}
_TILE = 8  # B/C copies are padded to a multiple of it (the copy kernel's convention)


@triton.jit
def _rows(t, S, idx_ptr, HAS_IDX: tl.constexpr, REVERSE: tl.constexpr):
    """The row step t reads through one index stream."""
    if HAS_IDX:
        return tl.load(idx_ptr + t).to(tl.int64)
    elif REVERSE:
        return (S - 1 - t).to(tl.int64)
    else:
        return t.to(tl.int64)


@triton.jit
def _step_inputs(t, S, u_row, dl_row, z_row, a_row, ui_row, pi_row, oi_row, gap_row, me, offs_e,
                 s_ur, s_dr, s_zr, s_ar, U_IDX: tl.constexpr, P_IDX: tl.constexpr, O_IDX: tl.constexpr,
                 REVERSE: tl.constexpr, HAS_GAP: tl.constexpr, HAS_Z: tl.constexpr, HAS_ACC: tl.constexpr):
    """Rows and per-token inputs of step t: (u, Δ pre-activation, gap, z, acc, param row, out row); z and acc are
    zeros when absent (compiled away)."""
    ru = _rows(t, S, ui_row, U_IDX, REVERSE)
    rp = _rows(t, S, pi_row, P_IDX, REVERSE)
    ro = _rows(t, S, oi_row, O_IDX, REVERSE)
    u = tl.load(u_row + ru * s_ur + offs_e, mask=me, other=0.0).to(tl.float32)
    x = tl.load(dl_row + rp * s_dr + offs_e, mask=me, other=0.0).to(tl.float32)
    if HAS_GAP:
        g = tl.load(gap_row + t).to(tl.float32)
    else:
        g = (t * 0).to(tl.float32)  # a run-time scalar, so the loop carries one type either way
    if HAS_Z:
        z = tl.load(z_row + ro * s_zr + offs_e, mask=me, other=0.0).to(tl.float32)
    else:
        z = u * 0.0
    if HAS_ACC:
        a = tl.load(a_row + ro * s_ar + offs_e, mask=me, other=0.0).to(tl.float32)
    else:
        a = u * 0.0
    return u, x, g, z, a, rp, ro


@triton.jit(do_not_specialize=["S", "s_an", "s_he", "CL", "P"])
def _token_scan_kernel(
    # pointers; A2T = (A * log2(e)) transposed, (n, e), e contiguous; Bt/Ct (b, Lp, NP) float32 copies;
    # cs/cd: the chunks' end states (b, P, NP, E) and decay sums (b, P, E), float32 (PHASE 1 writes, 2 reads)
    u_ptr, dl_ptr, A2T_ptr, Bt_ptr, Ct_ptr, D_ptr, z_ptr, bias_ptr, gap_ptr, fill_ptr, acc_ptr, out_ptr,
    ui_ptr, pi_ptr, oi_ptr, hs_ptr, cs_ptr, cd_ptr,
    # sizes; s_an = e (A2T's row stride, not specialised: it keeps the A load at one channel per thread);
    # CL steps per chunk, P chunks (PHASE 0: one chunk of S steps)
    S, E, N, Lp, s_an, out_scale, CL, P,
    # strides in elements (the channel stride of every activation is 1; s_he = 1, hs's, not specialised)
    s_he, s_ub, s_ur, s_db, s_dr, s_zb, s_zr, s_ab, s_ar, s_ob, s_or, s_gb, s_uib, s_pib, s_oib,
    # meta-parameters
    BE: tl.constexpr, NP: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_GAP: tl.constexpr, HAS_ACC: tl.constexpr, U_IDX: tl.constexpr,
    P_IDX: tl.constexpr, O_IDX: tl.constexpr, REVERSE: tl.constexpr, FAST: tl.constexpr, TERMS: tl.constexpr,
    SAVE: tl.constexpr = False, PHASE: tl.constexpr = 0,
):
    """SAVE: also store the state before every 4th step (hs, (b, ceil(S/4), NP, E) float32) for the backward.

    PHASE (module docstring, "chunks"): 0 scans all S steps; 1 scans chunk pid_c from a zero state and stores its
    end state and the sum of its decay Δs, writing no output; 2 starts chunk pid_c from the state the earlier
    chunks' summaries give and writes its outputs."""
    pid_e = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    pid_c = tl.program_id(2)
    t_begin = pid_c * CL
    t_end = tl.minimum(S, t_begin + CL)
    offs_e = pid_e * BE + tl.arange(0, BE)
    offs_n = tl.arange(0, NP)
    me = offs_e < E
    A2 = K._load_a2(A2T_ptr, offs_n, offs_e, me, N, s_an, 1, False)       # (NP, BE)
    hs_ptr += pid_b * ((S + 3) // 4) * NP * E
    bias = tl.load(bias_ptr + offs_e, mask=me, other=0.0) if HAS_BIAS else None
    fill = tl.load(fill_ptr + offs_e, mask=me, other=0.0) if HAS_GAP else None
    Dv = tl.load(D_ptr + offs_e, mask=me, other=0.0) if HAS_D else None
    # the 16-wide vector loads of B/C rows assume each thread holds one channel's 16 states in order; the training
    # forward keeps plain loads, so a layout change there (the state store below) can never misread a row
    vec: tl.constexpr = FAST and NP == 16 and not SAVE
    Bt_ptr += pid_b * Lp * NP
    Ct_ptr += pid_b * Lp * NP
    u_row = u_ptr + pid_b * s_ub
    dl_row = dl_ptr + pid_b * s_db
    z_row = z_ptr + pid_b * s_zb
    a_row = acc_ptr + pid_b * s_ab
    o_row = out_ptr + pid_b * s_ob
    g_row = gap_ptr + pid_b * s_gb
    ui_row = ui_ptr + pid_b * s_uib
    pi_row = pi_ptr + pid_b * s_pib
    oi_row = oi_ptr + pid_b * s_oib

    h = tl.zeros((NP, BE), dtype=tl.float32)
    # The chunks' states move one state row (BE,) at a time: an (NP, BE) load or store lets Triton re-lay the whole
    # loop out with several threads per channel (sm_90, Triton 3.6: 4 channels x 4 states a thread, or 16 states
    # across 16 threads), and the 16-wide B/C row loads, which assume one thread per channel, then read misaligned
    # addresses (a fault on the H100, Vim-S at batch 1, 2026-12-08). Rows keep every thread on its own channel.
    cs_b = cs_ptr + pid_b * P * NP * E + offs_e
    cd_b = cd_ptr + pid_b * P * E + offs_e
    if PHASE == 2:
        # the state entering this chunk: the earlier chunks' end states, each decayed by the chunks after it
        # (a chunk's decay is exp2(A·log2(e) · its Δ sum): the product of its steps' decays)
        for k in range(0, pid_c):
            dsum = tl.load(cd_b + k * E, mask=me, other=0.0)
            hk = tl.zeros((NP, BE), dtype=tl.float32)
            for n in tl.static_range(NP):
                row = tl.load(cs_b + (k * NP + n) * E, mask=me, other=0.0)
                hk = tl.where(offs_n[:, None] == n, row[None, :], hk)
            h = K._ex2(dsum[None, :] * A2, FAST) * h + hk
    dacc = tl.zeros((BE,), dtype=tl.float32)
    un, xn, gn, zn, an, rpn, ron = _step_inputs(t_begin, S, u_row, dl_row, z_row, a_row, ui_row, pi_row, oi_row, g_row,
                                                me, offs_e, s_ur, s_dr, s_zr, s_ar, U_IDX, P_IDX, O_IDX, REVERSE,
                                                HAS_GAP, HAS_Z, HAS_ACC)
    for t in range(t_begin, t_end):
        uu, x, g, zz, acc, rp, ro = un, xn, gn, zn, an, rpn, ron
        # the next step's rows and inputs, one step ahead (the last iteration re-reads its own, harmlessly), and
        # its B/C rows asked into L1, so no load of a step waits on L2 or HBM
        un, xn, gn, zn, an, rpn, ron = _step_inputs(tl.minimum(t + 1, t_end - 1), S, u_row, dl_row, z_row, a_row, ui_row,
                                                    pi_row, oi_row, g_row, me, offs_e, s_ur, s_dr, s_zr, s_ar,
                                                    U_IDX, P_IDX, O_IDX, REVERSE, HAS_GAP, HAS_Z, HAS_ACC)
        K._prefetch_l1(Bt_ptr + rpn * NP, FAST)
        b = K._row16(Bt_ptr + rp * NP, offs_n, vec)
        if PHASE != 1:
            K._prefetch_l1(Ct_ptr + rpn * NP, FAST)
            c = K._row16(Ct_ptr + rp * NP, offs_n, vec)
        if SAVE:
            # all NP states (padded ones stay zero), in a store predicated on the step rather than a branch:
            # compiled for sm_90 (Triton 3.9) the branch took 128 registers, a state mask 108, this 96, as many
            # as without saving. The channel stride s_he (= 1) is a run-time value: a store seen as contiguous
            # along the channels makes Triton re-lay the whole loop out at 4 states x 4 channels per thread
            hs_e = hs_ptr + (t // 4) * NP * E + offs_e * s_he
            tl.store(hs_e[None, :] + offs_n[:, None] * E, h, mask=me[None, :] & (t % 4 == 0))
        if HAS_BIAS:
            x += bias
        if SOFTPLUS:
            dt, _unused = K._softplus(x, FAST, TERMS)
        else:
            dt = x
        if HAS_GAP:
            dtd = dt + g * fill
        else:
            dtd = dt
        a = K._ex2(dtd[None, :] * A2, FAST)
        h = a * h + (dt * uu)[None, :] * b[:, None]
        if PHASE == 1:
            dacc += dtd
        else:
            y = tl.sum(h * c[:, None], axis=0)
            if HAS_D:
                y += Dv * uu
            if HAS_ACC:
                y += acc
            if HAS_Z:
                y *= zz * K._sigmoid(zz, FAST)
            y *= out_scale
            tl.store(o_row + ro * s_or + offs_e, y.to(out_ptr.dtype.element_ty), mask=me)
    if PHASE == 1:
        for n in tl.static_range(NP):
            row = tl.sum(tl.where(offs_n[:, None] == n, h, 0.0), axis=0)
            tl.store(cs_b + (pid_c * NP + n) * E, row, mask=me)
        tl.store(cd_b + pid_c * E, dacc, mask=me)


@triton.jit
def _rows_tile(tt, S, idx_ptr, mt, HAS_IDX: tl.constexpr, REVERSE: tl.constexpr):
    """The rows a tile of steps reads through one index stream (steps past S read row 0, masked later)."""
    if HAS_IDX:
        return tl.load(idx_ptr + tt, mask=mt, other=0).to(tl.int64)
    elif REVERSE:
        return tl.where(mt, S - 1 - tt, 0).to(tl.int64)
    else:
        return tl.where(mt, tt, 0).to(tl.int64)


@triton.jit
def _linear_combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2) of h <- a h + b: the composition's decay and input
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _one_state_tile(
    t0, carry, S, t_end, E, offs_e, me, a2, bias, fill, Dv, out_scale,
    u_row, dl_row, Bt_ptr, Ct_ptr, z_row, a_row, o_row, g_row, ui_row, pi_row, oi_row, hs_ptr,
    s_ur, s_dr, s_zr, s_ar, s_or, s_br, s_cr,
    BT: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_GAP: tl.constexpr, HAS_ACC: tl.constexpr, U_IDX: tl.constexpr,
    P_IDX: tl.constexpr, O_IDX: tl.constexpr, REVERSE: tl.constexpr, FAST: tl.constexpr, TERMS: tl.constexpr,
    SAVE: tl.constexpr, OUT: tl.constexpr,
):
    """Steps t0 … t0 + BT - 1 (those < t_end) by one parallel prefix; returns the state after the tile's last step
    and, without OUT (no outputs written: a chunk's summary), the sum of the tile's decay Δs."""
    tt = t0 + tl.arange(0, BT)
    mt = tt < t_end
    m2 = mt[:, None] & me[None, :]
    ru = _rows_tile(tt, S, ui_row, mt, U_IDX, REVERSE)
    rp = _rows_tile(tt, S, pi_row, mt, P_IDX, REVERSE)
    ro = _rows_tile(tt, S, oi_row, mt, O_IDX, REVERSE)
    uu = tl.load(u_row + ru[:, None] * s_ur + offs_e[None, :], mask=m2, other=0.0).to(tl.float32)
    x = tl.load(dl_row + rp[:, None] * s_dr + offs_e[None, :], mask=m2, other=0.0).to(tl.float32)
    bb = tl.load(Bt_ptr + rp * s_br, mask=mt, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x += bias[None, :]
    if SOFTPLUS:
        dt, _unused = K._softplus(x, FAST, TERMS)
    else:
        dt = x
    if HAS_GAP:
        g = tl.load(g_row + tt, mask=mt, other=0.0).to(tl.float32)
        dtd = dt + g[:, None] * fill[None, :]
    else:
        dtd = dt
    # steps past S: decay 1, input 0, so the tile's last row carries the state of its last real step
    a = tl.where(m2, K._ex2(dtd * a2[None, :], FAST), 1.0)
    bx = tl.where(m2, dt * uu * bb[:, None], 0.0)
    decay, h = tl.associative_scan((a, bx), 0, _linear_combine)
    h += decay * carry[None, :]
    last = (tl.arange(0, BT) == BT - 1)[:, None]
    carry = tl.sum(tl.where(last, h, 0.0), axis=0)
    if SAVE:
        # h after step t is the state before step t + 1: keep it where t + 1 starts a 4-step chunk
        nxt = tt + 1
        keep = (nxt % 4 == 0) & (nxt < S)
        tl.store(hs_ptr + (nxt // 4)[:, None] * E + offs_e[None, :], h, mask=m2 & keep[:, None])
    if OUT:
        cc = tl.load(Ct_ptr + rp * s_cr, mask=mt, other=0.0).to(tl.float32)
        y = h * cc[:, None]
        if HAS_D:
            y += Dv[None, :] * uu
        if HAS_ACC:
            y += tl.load(a_row + ro[:, None] * s_ar + offs_e[None, :], mask=m2, other=0.0).to(tl.float32)
        if HAS_Z:
            zz = tl.load(z_row + ro[:, None] * s_zr + offs_e[None, :], mask=m2, other=0.0).to(tl.float32)
            y *= zz * K._sigmoid(zz, FAST)
        y *= out_scale
        tl.store(o_row + ro[:, None] * s_or + offs_e[None, :], y.to(o_row.dtype.element_ty), mask=m2)
        dsum = carry * 0.0
    else:
        dsum = tl.sum(tl.where(m2, dtd, 0.0), axis=0)
    return carry, dsum


@triton.jit(do_not_specialize=["S", "CL", "P"])
def _token_scan_one_state_kernel(
    # pointers; A (e,) as A·log2(e) (one state); Bt/Ct: B and C, one element per row (the (b, Tp, 1) inputs read
    # in place, or state 0 of the (b, Lp, NP) float32 copies a backward reads); cs/cd the chunks' end states and
    # decay sums, (b, P, E) float32 each (PHASE 1 writes, 2 reads)
    u_ptr, dl_ptr, A2_ptr, Bt_ptr, Ct_ptr, D_ptr, z_ptr, bias_ptr, gap_ptr, fill_ptr, acc_ptr, out_ptr,
    ui_ptr, pi_ptr, oi_ptr, hs_ptr, cs_ptr, cd_ptr,
    # sizes; CL steps per chunk (a multiple of BT), P chunks (PHASE 0: one chunk of S steps)
    S, E, out_scale, CL, P,
    # strides in elements (the channel stride of every activation is 1); B and C: image and row strides
    s_ub, s_ur, s_db, s_dr, s_zb, s_zr, s_ab, s_ar, s_ob, s_or, s_gb, s_uib, s_pib, s_oib, s_bb, s_br, s_cb, s_cr,
    # meta-parameters
    BT: tl.constexpr, BE: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_GAP: tl.constexpr, HAS_ACC: tl.constexpr,
    U_IDX: tl.constexpr, P_IDX: tl.constexpr, O_IDX: tl.constexpr, REVERSE: tl.constexpr, FAST: tl.constexpr,
    TERMS: tl.constexpr, SAVE: tl.constexpr = False, SPLIT: tl.constexpr = False, PHASE: tl.constexpr = 0,
):
    """One state per channel (GroupMamba, VMamba: d_state = 1). The recurrence h <- a h + b is first order, so
    each tile of BT steps is solved at once by a parallel prefix (associative scan) and only the carry crosses
    tiles: a long sequence (3,136 steps in GroupMamba's first stage) no longer runs one step at a time.

    The r steps after the last whole tile run in one tile of BT, BT/2 or BT/4 steps, the smallest that holds them
    (137 steps: 128 + 32 instead of 2 x 128), so a short sequence is never more serial tiles than whole tiles make.
    SPLIT (a grid that fills the GPU, where the padded steps cost throughput and one more serial tile is hidden):
    r in (BT/2, 3BT/4] runs as a BT/2 and a BT/4 tile instead of one of BT, so fewer than BT/4 padded steps are
    ever solved.

    SAVE: also store the state before every 4th step (hs, (b, ceil(S/4), 1, E) float32) for the backward.
    PHASE: as in `_token_scan_kernel` (chunks of CL steps; the tail rule applies to the last chunk)."""
    pid_e = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    pid_c = tl.program_id(2)
    t_begin = pid_c * CL
    t_end = tl.minimum(S, t_begin + CL)
    OUT: tl.constexpr = PHASE != 1
    offs_e = pid_e * BE + tl.arange(0, BE)
    me = offs_e < E
    a2 = tl.load(A2_ptr + offs_e, mask=me, other=0.0)
    # unused vectors are zeros, not None: the tile helper takes them either way
    zero = tl.zeros((BE,), dtype=tl.float32)
    bias = tl.load(bias_ptr + offs_e, mask=me, other=0.0) if HAS_BIAS else zero
    fill = tl.load(fill_ptr + offs_e, mask=me, other=0.0) if HAS_GAP else zero
    Dv = tl.load(D_ptr + offs_e, mask=me, other=0.0) if HAS_D else zero
    Bt_ptr += pid_b * s_bb
    Ct_ptr += pid_b * s_cb
    u_row = u_ptr + pid_b * s_ub
    dl_row = dl_ptr + pid_b * s_db
    z_row = z_ptr + pid_b * s_zb
    a_row = acc_ptr + pid_b * s_ab
    o_row = out_ptr + pid_b * s_ob
    g_row = gap_ptr + pid_b * s_gb
    ui_row = ui_ptr + pid_b * s_uib
    pi_row = pi_ptr + pid_b * s_pib
    oi_row = oi_ptr + pid_b * s_oib
    hs_ptr += pid_b * ((S + 3) // 4) * E
    if SAVE:
        tl.store(hs_ptr + offs_e, tl.zeros((BE,), dtype=tl.float32), mask=me)  # the state before step 0

    carry = tl.zeros((BE,), dtype=tl.float32)
    cs_b = cs_ptr + pid_b * P * E + offs_e
    cd_b = cd_ptr + pid_b * P * E + offs_e
    if PHASE == 2:
        # the state entering this chunk: the earlier chunks' end states, each decayed by the chunks after it
        for k in range(0, pid_c):
            dk = tl.load(cd_b + k * E, mask=me, other=0.0)
            carry = K._ex2(dk * a2, FAST) * carry + tl.load(cs_b + k * E, mask=me, other=0.0)
    dacc = tl.zeros((BE,), dtype=tl.float32)
    tiles = (t_end - t_begin) // BT
    for i in range(0, tiles):
        carry, d = _one_state_tile(
            t_begin + i * BT, carry, S, t_end, E, offs_e, me, a2, bias, fill, Dv, out_scale,
            u_row, dl_row, Bt_ptr, Ct_ptr, z_row, a_row, o_row, g_row, ui_row, pi_row, oi_row, hs_ptr,
            s_ur, s_dr, s_zr, s_ar, s_or, s_br, s_cr, BT, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, HAS_GAP, HAS_ACC,
            U_IDX, P_IDX, O_IDX, REVERSE, FAST, TERMS, SAVE, OUT)
        dacc += d
    t0 = t_begin + tiles * BT
    if t0 < t_end:  # the tail: steps past t_end are masked in its tile
        if t_end - t0 > ((3 * BT) // 4 if SPLIT else BT // 2):
            carry, d = _one_state_tile(
                t0, carry, S, t_end, E, offs_e, me, a2, bias, fill, Dv, out_scale,
                u_row, dl_row, Bt_ptr, Ct_ptr, z_row, a_row, o_row, g_row, ui_row, pi_row, oi_row, hs_ptr,
                s_ur, s_dr, s_zr, s_ar, s_or, s_br, s_cr, BT, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, HAS_GAP, HAS_ACC,
                U_IDX, P_IDX, O_IDX, REVERSE, FAST, TERMS, SAVE, OUT)
            dacc += d
        else:
            if t_end - t0 > BT // 4:
                carry, d = _one_state_tile(
                    t0, carry, S, t_end, E, offs_e, me, a2, bias, fill, Dv, out_scale,
                    u_row, dl_row, Bt_ptr, Ct_ptr, z_row, a_row, o_row, g_row, ui_row, pi_row, oi_row, hs_ptr,
                    s_ur, s_dr, s_zr, s_ar, s_or, s_br, s_cr, BT // 2, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, HAS_GAP,
                    HAS_ACC, U_IDX, P_IDX, O_IDX, REVERSE, FAST, TERMS, SAVE, OUT)
                dacc += d
                t0 += BT // 2
            if t0 < t_end:
                carry, d = _one_state_tile(
                    t0, carry, S, t_end, E, offs_e, me, a2, bias, fill, Dv, out_scale,
                    u_row, dl_row, Bt_ptr, Ct_ptr, z_row, a_row, o_row, g_row, ui_row, pi_row, oi_row, hs_ptr,
                    s_ur, s_dr, s_zr, s_ar, s_or, s_br, s_cr, BT // 4, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, HAS_GAP,
                    HAS_ACC, U_IDX, P_IDX, O_IDX, REVERSE, FAST, TERMS, SAVE, OUT)
                dacc += d
    if PHASE == 1:
        tl.store(cs_b + pid_c * E, carry, mask=me)
        tl.store(cd_b + pid_c * E, dacc, mask=me)


def _sms(u: Tensor) -> int:
    return _sm_count(u.device.index if u.device.index is not None else torch.cuda.current_device()) if u.is_cuda else 1


def _chunks(programs: int, S: int, cfg, u: Tensor, align: int, save: bool):
    """(P, CL): the number of chunks a launch of `programs` programs splits its S steps into, and the steps per
    chunk (a multiple of `align`). One chunk when the grid already occupies the GPU, for the training forward
    (its saved states follow one pass), when the steps are too few to split, or when the launch entry sets no
    `chunk_below`."""
    below, target, least = cfg.get("chunk_below", 0.0), cfg.get("chunk_target", 1.0), int(cfg.get("chunk_min", 1))
    sms = _sms(u)
    if save or programs >= below * sms or S < 2 * least:
        return 1, S
    want = min(_cdiv(int(target * sms), programs), _cdiv(S, least))
    CL = _cdiv(_cdiv(S, align), want) * align
    return _cdiv(S, CL), CL


def _split_tail(grid, cfg, u: Tensor) -> bool:
    """Split the one-state kernel's tail finely when the grid fills the GPU (throughput: fewer padded steps win);
    with few programs a run is latency-bound and one more serial tile would cost more than it saves."""
    return grid[0] * grid[1] * cfg["num_warps"] >= cfg["tail_warps_per_sm"] * _sms(u)


def _empty(shape, dtype, device) -> Tensor:
    """Every buffer a kernel must fill completely (tests swap in a NaN-filled version to catch gaps)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _index(idx: Optional[Tensor], S: int, b: int, like: Tensor):
    """(pointer tensor, batch stride) of an optional index stream; int32 (b, S) or shared (S,)."""
    if idx is None:
        return like, 0
    if idx.dtype != torch.int32:
        idx = idx.to(torch.int32)
    if idx.dim() == 1:
        return idx.contiguous(), 0
    idx = idx if idx.stride(-1) == 1 else idx.contiguous()
    return idx, idx.stride(0)


def _channel_rows(x: Tensor) -> Tensor:
    """Token-major (b, T, C): the channel axis must be contiguous; any batch and row strides."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _scaled_a(A: Tensor, a_is_log: bool) -> Tensor:
    """(n, e) float32 A · log2(e), e contiguous. From a parameter A_log it is made once per parameter version
    (param_cache.derived): a forward then launches nothing for it, and a CUDA graph replays no copy."""
    if not a_is_log:
        return _scaled_transpose(A)
    return derived(A, "scan.A2T", _scaled_from_log)


def _scaled_from_log(A_log: Tensor) -> Tensor:
    with torch.no_grad():
        return (-torch.exp(A_log.detach().float()) * K.LOG2E).t().contiguous()


def token_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, B_bias=None, gap=None, delta_fill=None,
                      u_idx=None, p_idx=None, o_idx=None, reverse=False, acc=None, out_scale=1.0,
                      delta_softplus=True, a_is_log=False) -> Tensor:
    """`ops.token_scan` forward on the GPU (or under TRITON_INTERPRET=1). No autograd: callers use it only when no
    gradient is needed (training goes through `token_scan_bwd.TokenScanFn`). The result is a new (b, S, E) tensor
    in u's dtype; `acc` is only read."""
    return forward(u, delta, _scaled_a(A, a_is_log), B, C, D, z, delta_bias, B_bias, gap, delta_fill, u_idx, p_idx,
                   o_idx, reverse, acc, out_scale, delta_softplus, save=False)[0]


def forward(u, delta, A2T, B, C, D, z, delta_bias, B_bias, gap, delta_fill, u_idx, p_idx, o_idx, reverse, acc,
            out_scale, delta_softplus, save: bool):
    """Launch one forward. A2T: (n, e) float32 A · log2(e), e contiguous. With `save`, the kernels also store the
    state before every 4th step, and the second result is what the backward reads besides the inputs: (hs, Bt, Ct),
    those states (b, ceil(S/4), NP or 1 for N = 1, E) and the float32 B + B_bias and C copies (b, Lp, NP);
    otherwise it is None."""
    b = int(u.shape[0])
    E = int(u.shape[2])
    if o_idx is not None:
        S = int(o_idx.shape[-1])
    elif u_idx is not None:
        S = int(u_idx.shape[-1])
    else:
        S = int(u.shape[1])
    Tp = int(delta.shape[1])
    N = int(A2T.shape[0])
    NP = _padded_states(N)
    Lp = _cdiv(max(Tp, 1), _TILE) * _TILE
    u, delta = _channel_rows(u), _channel_rows(delta)
    z = None if z is None else _channel_rows(z)
    # one state without a B bias and no backward to follow: the kernel reads B and C (b, Tp, 1) in place, one
    # element per step (a float32 copy would be one more launch per scan); otherwise (b, Lp, NP) float32 copies
    direct = N == 1 and B_bias is None and not save
    if direct:
        Bt, Ct = B.detach(), C.detach()
        bc_strides = (Bt.stride(0), Bt.stride(1), Ct.stride(0), Ct.stride(1))
        ph = A2T                                                         # a float32 stand-in for absent pointers
    else:
        Bv = B.detach().transpose(1, 2)                                 # (b, n, Tp) views for the copy kernel
        Cv = C.detach().transpose(1, 2)
        Xv = None if B_bias is None else B_bias.detach().transpose(-1, -2)  # (n, Tp) or (b, n, Tp)
        Bt, Ct = _bc_copies(Bv, Cv, Xv, NP, Lp)
        bc_strides = (Lp * NP, NP, Lp * NP, NP)
        ph = Bt
    Dv, bias, fill = _vec(D), _vec(delta_bias), _vec(delta_fill)
    if acc is not None:
        acc = _channel_rows(acc)
    out = _empty((b, S, E), u.dtype, u.device)
    has_gap = gap is not None and delta_fill is not None
    if has_gap:
        gap = gap if gap.stride(-1) == 1 else gap.contiguous()
    ui, s_uib = _index(u_idx, S, b, ph)
    pi, s_pib = _index(p_idx, S, b, ph)
    oi, s_oib = _index(o_idx, S, b, ph)
    # states every 4 steps: all NP for N > 1 (the kernel stores them unmasked), the one for N = 1
    hs = _empty((b, _cdiv(S, 4), NP if N > 1 else 1, E), torch.float32, u.device) if save else ph
    saved = (hs, Bt, Ct) if save else None
    if S == 0 or b == 0:
        return out, saved
    fast = not K.INTERPRET
    # softplus terms: 4 suffice for 16-bit inference; the training path keeps 7, as its backward recomputes Δ
    terms = 4 if u.dtype in (torch.bfloat16, torch.float16) and not save else 7
    zz, aa = (z if z is not None else u), (acc if acc is not None else u)
    common = (Dv if Dv is not None else ph, zz, bias if bias is not None else ph, gap if has_gap else ph,
              fill if has_gap else ph, aa, out, ui, pi, oi, hs)
    strides = (u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), zz.stride(0), zz.stride(1),
               aa.stride(0), aa.stride(1), out.stride(0), out.stride(1), gap.stride(0) if has_gap else 0,
               s_uib, s_pib, s_oib)
    flags = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                 SOFTPLUS=bool(delta_softplus), HAS_GAP=has_gap, HAS_ACC=acc is not None, U_IDX=u_idx is not None,
                 P_IDX=p_idx is not None, O_IDX=o_idx is not None, REVERSE=bool(reverse), FAST=fast, TERMS=terms,
                 SAVE=bool(save))
    # a chunk summary needs neither C, z, acc, D nor the output rows
    summary = dict(flags, HAS_D=False, HAS_Z=False, HAS_ACC=False, O_IDX=False, PHASE=1)
    with torch.cuda.device(u.device) if u.is_cuda else contextlib.nullcontext():
        if N == 1:
            cfg = LAUNCH["one_state"]
            BT, BE, warps = int(cfg["BT"]), int(cfg["BE"]), int(cfg["num_warps"])
            grid = (_cdiv(E, BE), b)
            P, CL = _chunks(grid[0] * b, S, cfg, u, BT, save)
            cs, cd = _chunk_buffers(P, (b, P, E), (b, P, E), u.device, ph)
            split = _split_tail((grid[0], b * P), cfg, u)
            args = (u, delta, A2T, Bt, Ct, *common, cs, cd, S, E, float(out_scale), CL, P, *strides, *bc_strides)
            if P > 1:
                _token_scan_one_state_kernel[grid + (P - 1,)](*args, BT=BT, BE=BE, num_warps=warps, SPLIT=split,
                                                              **summary)
            _token_scan_one_state_kernel[grid + (P,)](*args, BT=BT, BE=BE, num_warps=warps, SPLIT=split,
                                                      **flags, PHASE=2 if P > 1 else 0)
        else:
            cfg = LAUNCH["states"]
            warps = int(cfg["num_warps"])
            grid = (_cdiv(E, 32 * warps), b)
            P, CL = _chunks(grid[0] * b, S, cfg, u, 1, save)
            cs, cd = _chunk_buffers(P, (b, P, NP, E), (b, P, E), u.device, ph)
            args = (u, delta, A2T, Bt, Ct, *common, cs, cd, S, E, N, Lp, E, float(out_scale), CL, P, 1, *strides)
            if P > 1:
                _token_scan_kernel[grid + (P - 1,)](*args, BE=32 * warps, NP=NP, **summary, num_warps=warps)
            _token_scan_kernel[grid + (P,)](*args, BE=32 * warps, NP=NP, **flags, PHASE=2 if P > 1 else 0,
                                            num_warps=warps)
    return out, saved


def _chunk_buffers(P: int, states_shape, sums_shape, device, placeholder: Tensor):
    """The chunks' end states and decay sums (float32; the last chunk's are never written or read), or a
    placeholder pointer when the launch is one chunk."""
    if P == 1:
        return placeholder, placeholder
    return (torch.empty(states_shape, dtype=torch.float32, device=device),
            torch.empty(sums_shape, dtype=torch.float32, device=device))
