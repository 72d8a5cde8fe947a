"""The training path of the token-major scan: `TokenScanFn`, whose forward is the fused forward of token_scan.py
(with the state saved every 4 steps) and whose backward is `_token_scan_bwd_kernel` below.

`ssmprune_cli.ops.token_scan` is the definition (its docstring). The backward reads every row through the same index
streams as the forward, so nothing is gathered, flipped or transposed in memory in either direction.

One program owns one batch row and BE channels, the layout of `selective_scan_kernels._bwd_kernel` (each thread
holds 4 states x BE/8 channels, from the 2-D load of A): the sums over states (y, the input gradient) and over
channels (dB, dC) both start inside a thread. It walks 4-step chunks in reverse: reloads the chunk's saved state,
recomputes the 4 steps (decays and a·h_{t-1} kept in registers) and runs the adjoint recurrence
g_t = C_t dy_t + a_{t+1} g_{t+1} back through them. Per-token inputs are (BE, 4) tiles whose columns are the rows of
the chunk's steps, read through the streams one chunk ahead.

Where the gradients go:
    du, dΔ       rows u_row(t), p_row(t). Without a stream every row is one step's (stored in the input's dtype).
                 With a stream a row may be read by several steps, so they are added (float32 atomics onto zeros;
                 a row read once gets exactly one addition, so the result does not depend on scheduling)
    dz, dacc     rows o_row(t) (a permutation: stored)
    dB, dC       summed over the program's channels per step, stored per channel block in step order; the blocks are
                 summed afterwards and the steps placed at their rows (see `_place_rows`)
    dA, dD, dΔ-bias, dΔ̂   summed over the program's steps, stored per batch row, summed afterwards
No gradient is accumulated with atomics across programs, so every gradient is reproducible run to run.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from ssmprune_cli.errors import BadInputError

from . import selective_scan_kernels as K
from . import token_scan as TS
from .selective_scan_fn import _cdiv, _scaled_transpose, _vec

import triton
import triton.language as tl

# Channels per program and warps: the channel-major backward's measured best (docs/benchmarks.md), not yet timed
# for this kernel.
LAUNCH: Dict[str, Dict[str, int]] = {"bwd": {"BE": 16, "num_warps": 1}}


@triton.jit
def _tile(row_ptr, rows, s_r, offs_e, m2):
    """(BE, 4) tile: column j is row rows[j] of a token-major tensor (channels contiguous)."""
    return tl.load(row_ptr + rows[None, :] * s_r + offs_e[:, None], mask=m2, other=0.0)


@triton.jit
def _chunk_inputs(t0, S, u_row, dl_row, z_row, a_row, do_row, gap_row, ui_row, pi_row, oi_row, offs_e, me,
                  s_ur, s_dr, s_zr, s_ar, s_or,
                  U_IDX: tl.constexpr, P_IDX: tl.constexpr, O_IDX: tl.constexpr, REVERSE: tl.constexpr,
                  HAS_Z: tl.constexpr, HAS_ACC: tl.constexpr, HAS_GAP: tl.constexpr):
    """Raw (BE, 4) tiles of steps t0..t0+3 and their rows; steps past S read zeros (row 0, masked)."""
    tt = t0 + tl.arange(0, 4)
    mt = tt < S
    m2 = me[:, None] & mt[None, :]
    ru = TS._rows_tile(tt, S, ui_row, mt, U_IDX, REVERSE)
    rp = TS._rows_tile(tt, S, pi_row, mt, P_IDX, REVERSE)
    ro = TS._rows_tile(tt, S, oi_row, mt, O_IDX, REVERSE)
    x = _tile(dl_row, rp, s_dr, offs_e, m2)
    u = _tile(u_row, ru, s_ur, offs_e, m2)
    do = _tile(do_row, ro, s_or, offs_e, m2)
    z = _tile(z_row, ro, s_zr, offs_e, m2) if HAS_Z else u
    ac = _tile(a_row, ro, s_ar, offs_e, m2) if HAS_Z and HAS_ACC else u  # only dz needs acc
    g = tl.load(gap_row + tt, mask=mt, other=0.0).to(tl.float32) if HAS_GAP else mt.to(tl.float32)
    return x, u, z, ac, do, g, ru, rp, ro


@triton.jit
def _bc_row(Bt_ptr, Ct_ptr, t, S, pi_row, offs_n, NP: tl.constexpr, P_IDX: tl.constexpr, REVERSE: tl.constexpr):
    """B and C rows (NP,) of step t (zeros past S, so padded steps contribute nothing)."""
    r = TS._rows(tl.minimum(t, S - 1), S, pi_row, P_IDX, REVERSE)
    m = (offs_n * 0 + t) < S
    return (tl.load(Bt_ptr + r * NP + offs_n, mask=m, other=0.0),
            tl.load(Ct_ptr + r * NP + offs_n, mask=m, other=0.0))


@triton.jit
def _recompute(h, A2, dtd, dtu, dy, b, c, HAS_Z: tl.constexpr, FAST: tl.constexpr):
    """The forward step again from h_{t-1}: h_t, its decay a, a·h_{t-1}, this program's part of dC_t = Σ_e dy h_t,
    and y_t = C_t·h_t (for dz)."""
    a = K._ex2(dtd[None, :] * A2, FAST)
    ah = a * h
    h = ah + dtu[None, :] * b[:, None]
    dc = tl.sum(h * dy[None, :], axis=1)
    if HAS_Z:
        y = tl.sum(h * c[:, None], axis=0)
    else:
        y = dtd  # unused
    return h, a, ah, dc, y


@triton.jit
def _adjoint(w, A2, a, ah, dtd, dtu, dy, dA, b, c):
    """One reverse step; w carries a_{t+1} g_{t+1}. Returns the next carry, this program's part of
    dB_t = Σ_e g dt u, Σ_n g B (→ du, input-stream dΔ), Σ_n r A2 (→ decay-stream dΔ) and dA."""
    g = w + c[:, None] * dy[None, :]                       # dL/dh_t
    db = tl.sum(g * dtu[None, :], axis=1)
    s = tl.sum(g * b[:, None], axis=0)
    r = g * ah                                             # dL/d(log decay) per state
    q = tl.sum(r * A2, axis=0)
    dA += r * dtd[None, :]
    return a * g, db, s, q, dA


@triton.jit
def _put(ptr, rows, s_r, offs_e, m2, v, ADD: tl.constexpr):
    """Write a (BE, 4) tile at rows; ADD: add (float32 atomics) where rows may repeat."""
    p = ptr + rows[None, :] * s_r + offs_e[:, None]
    if ADD:
        tl.atomic_add(p, v, mask=m2, sem="relaxed")
    else:
        tl.store(p, v.to(ptr.dtype.element_ty), mask=m2)


@triton.jit(do_not_specialize=["S"])
def _token_scan_bwd_kernel(
    # pointers: inputs (A (e, n) float32 natural; Bt/Ct (b, Lp, NP) float32 copies of B + B_bias and C; hs the
    # forward's states, (b, ceil(S/4), hs_rows, E) float32, states past N unread)
    u_ptr, dl_ptr, A_ptr, Bt_ptr, Ct_ptr, D_ptr, z_ptr, bias_ptr, gap_ptr, fill_ptr, acc_ptr, hs_ptr, dout_ptr,
    ui_ptr, pi_ptr, oi_ptr,
    # pointers: outputs. du (b, Tu, E), ddl (b, Tp, E), dz/dacc (b, S, E): contiguous; per-block and per-row
    # partial sums: dBp/dCp (nblk, b, Sp, NP), dAp (b, E, NP), dDp/dbp/dfp (b, E), all float32
    du_ptr, ddl_ptr, dz_ptr, dacc_ptr, dBp_ptr, dCp_ptr, dAp_ptr, dDp_ptr, dbp_ptr, dfp_ptr,
    # sizes
    S, E, N, Lp, Tu, Tp, hs_rows, out_scale,
    # strides in elements (the channel stride of every activation is 1); A's two strides
    s_an, s_ae, s_ub, s_ur, s_db, s_dr, s_zb, s_zr, s_ab, s_ar, s_gb, s_ob, s_or, s_uib, s_pib, s_oib,
    # meta-parameters
    BE: tl.constexpr, NP: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_GAP: tl.constexpr, HAS_ACC: tl.constexpr, U_IDX: tl.constexpr,
    P_IDX: tl.constexpr, O_IDX: tl.constexpr, REVERSE: tl.constexpr, STORE_DZ: tl.constexpr,
    STORE_DACC: tl.constexpr, FAST: tl.constexpr,
):
    pid_e = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    nb = tl.num_programs(1)
    offs_e = pid_e * BE + tl.arange(0, BE)
    offs_n = tl.arange(0, NP)
    me = offs_e < E
    A2 = K._load_a2(A_ptr, offs_n, offs_e, me, N, s_an, s_ae, True)        # (NP, BE), A · log2(e)
    bias = tl.load(bias_ptr + offs_e, mask=me, other=0.0) if HAS_BIAS else None
    fill = tl.load(fill_ptr + offs_e, mask=me, other=0.0) if HAS_GAP else None
    Dv = tl.load(D_ptr + offs_e, mask=me, other=0.0) if HAS_D else None
    n_chunks = (S + 3) // 4
    Sp = n_chunks * 4
    Bt_ptr += pid_b * Lp * NP
    Ct_ptr += pid_b * Lp * NP
    HR = hs_rows
    hs_ptr += pid_b * n_chunks * HR * E
    hs_offs = offs_n[:, None] * E + offs_e[None, :]
    hs_mask = (offs_n < N)[:, None] & me[None, :]
    part = (pid_e * nb + pid_b) * Sp * NP                   # this program's rows of dBp / dCp
    u_row = u_ptr + pid_b * s_ub
    dl_row = dl_ptr + pid_b * s_db
    z_row = z_ptr + pid_b * s_zb
    a_row = acc_ptr + pid_b * s_ab
    do_row = dout_ptr + pid_b * s_ob
    g_row = gap_ptr + pid_b * s_gb
    ui_row = ui_ptr + pid_b * s_uib
    pi_row = pi_ptr + pid_b * s_pib
    oi_row = oi_ptr + pid_b * s_oib
    du_row = du_ptr + pid_b * Tu * E
    ddl_row = ddl_ptr + pid_b * Tp * E
    dz_row = dz_ptr + pid_b * S * E
    dacc_row = dacc_ptr + pid_b * S * E

    w = tl.zeros((NP, BE), dtype=tl.float32)
    dA = tl.zeros((NP, BE), dtype=tl.float32)
    accD = tl.zeros((BE,), dtype=tl.float32)
    accB = tl.zeros((BE,), dtype=tl.float32)
    accF = tl.zeros((BE,), dtype=tl.float32)
    t_last = (n_chunks - 1) * 4
    xn, un, zn, an, on, gn, run, rpn, ron = _chunk_inputs(
        t_last, S, u_row, dl_row, z_row, a_row, do_row, g_row, ui_row, pi_row, oi_row, offs_e, me,
        s_ur, s_dr, s_zr, s_ar, s_or, U_IDX, P_IDX, O_IDX, REVERSE, HAS_Z, HAS_ACC, HAS_GAP)
    hn = tl.load(hs_ptr + (t_last // 4) * HR * E + hs_offs, mask=hs_mask, other=0.0)
    for k in range(0, n_chunks):
        t0 = (n_chunks - 1 - k) * 4
        xc, uc, zc, ac, oc, gc, ru, rp, ro, h = xn, un, zn, an, on, gn, run, rpn, ron, hn
        b0, c0 = _bc_row(Bt_ptr, Ct_ptr, t0 + 0, S, pi_row, offs_n, NP, P_IDX, REVERSE)
        b1, c1 = _bc_row(Bt_ptr, Ct_ptr, t0 + 1, S, pi_row, offs_n, NP, P_IDX, REVERSE)
        b2, c2 = _bc_row(Bt_ptr, Ct_ptr, t0 + 2, S, pi_row, offs_n, NP, P_IDX, REVERSE)
        b3, c3 = _bc_row(Bt_ptr, Ct_ptr, t0 + 3, S, pi_row, offs_n, NP, P_IDX, REVERSE)
        # the next chunk back (t0 - 4; at the last iteration it re-reads chunk 0, harmlessly)
        tp = tl.maximum(t0 - 4, 0)
        xn, un, zn, an, on, gn, run, rpn, ron = _chunk_inputs(
            tp, S, u_row, dl_row, z_row, a_row, do_row, g_row, ui_row, pi_row, oi_row, offs_e, me,
            s_ur, s_dr, s_zr, s_ar, s_or, U_IDX, P_IDX, O_IDX, REVERSE, HAS_Z, HAS_ACC, HAS_GAP)
        hn = tl.load(hs_ptr + (tp // 4) * HR * E + hs_offs, mask=hs_mask, other=0.0)
        dt, dtd, dtu, uu, dsp = K._delta_tiles(xc, uc, gc, bias, fill, HAS_BIAS, SOFTPLUS, HAS_GAP, FAST)
        do = oc.to(tl.float32) * out_scale
        if HAS_Z:
            zz = zc.to(tl.float32)
            sz = K._sigmoid(zz, FAST)
            dy = do * zz * sz                                   # dL/dy: also dL/dacc
        else:
            dy = do
        d0, d1, d2, d3 = K._cols4(dtd)
        v0, v1, v2, v3 = K._cols4(dtu)
        y0, y1, y2, y3 = K._cols4(dy)
        h, a0, ah0, e0, p0 = _recompute(h, A2, d0, v0, y0, b0, c0, HAS_Z, FAST)
        h, a1, ah1, e1, p1 = _recompute(h, A2, d1, v1, y1, b1, c1, HAS_Z, FAST)
        h, a2, ah2, e2, p2 = _recompute(h, A2, d2, v2, y2, b2, c2, HAS_Z, FAST)
        h, a3, ah3, e3, p3 = _recompute(h, A2, d3, v3, y3, b3, c3, HAS_Z, FAST)
        dc_ptr = dCp_ptr + part + t0 * NP + offs_n
        tl.store(dc_ptr, e0)
        tl.store(dc_ptr + NP, e1)
        tl.store(dc_ptr + 2 * NP, e2)
        tl.store(dc_ptr + 3 * NP, e3)
        tt = t0 + tl.arange(0, 4)
        m2 = me[:, None] & (tt < S)[None, :]
        if STORE_DZ:
            # out = scale (acc + y) silu(z): dz = dout scale (acc + y) sigmoid(z) (1 + z (1 - sigmoid(z)))
            yv = K._join4(p0, p1, p2, p3)
            if HAS_D:
                yv += Dv[:, None] * uu
            if HAS_ACC:
                yv += ac.to(tl.float32)
            _put(dz_row, ro, E, offs_e, m2, do * yv * sz * (1.0 + zz * (1.0 - sz)), False)
        if STORE_DACC:
            _put(dacc_row, ro, E, offs_e, m2, dy, False)
        w, f3, s3, q3, dA = _adjoint(w, A2, a3, ah3, d3, v3, y3, dA, b3, c3)
        w, f2, s2, q2, dA = _adjoint(w, A2, a2, ah2, d2, v2, y2, dA, b2, c2)
        w, f1, s1, q1, dA = _adjoint(w, A2, a1, ah1, d1, v1, y1, dA, b1, c1)
        w, f0, s0, q0, dA = _adjoint(w, A2, a0, ah0, d0, v0, y0, dA, b0, c0)
        db_ptr = dBp_ptr + part + t0 * NP + offs_n
        tl.store(db_ptr, f0)
        tl.store(db_ptr + NP, f1)
        tl.store(db_ptr + 2 * NP, f2)
        tl.store(db_ptr + 3 * NP, f3)
        s = K._join4(s0, s1, s2, s3)
        q = K._join4(q0, q1, q2, q3) * K._LN2                 # dL/d(decay-stream Δ)
        du = dt * s
        if HAS_D:
            du += Dv[:, None] * dy
            accD += tl.sum(dy * uu, axis=1)
        ddl = (uu * s + q) * dsp
        _put(du_row, ru, E, offs_e, m2, du, U_IDX)
        _put(ddl_row, rp, E, offs_e, m2, ddl, P_IDX)
        if HAS_BIAS:
            accB += tl.sum(tl.where(m2, ddl, 0.0), axis=1)
        if HAS_GAP:
            accF += tl.sum(q * gc[None, :], axis=1)
    tl.store(dAp_ptr + pid_b * E * NP + offs_e[None, :] * NP + offs_n[:, None], dA, mask=me[None, :])
    if HAS_D:
        tl.store(dDp_ptr + pid_b * E + offs_e, accD, mask=me)
    if HAS_BIAS:
        tl.store(dbp_ptr + pid_b * E + offs_e, accB, mask=me)
    if HAS_GAP:
        tl.store(dfp_ptr + pid_b * E + offs_e, accF, mask=me)


def _place_rows(steps: Tensor, idx: Optional[Tensor], reverse: bool, T: int) -> Tensor:
    """(b, S, n) per-step gradients → (b, T, n) per row of the tensor the steps read (rows no step reads: zero)."""
    b, S, n = steps.shape
    if idx is None:
        rows = steps.flip(1) if reverse else steps
        if T == S:
            return rows
        return torch.cat([rows, rows.new_zeros((b, T - S, n))], dim=1)
    idx = idx.long()
    idx = idx.expand(b, -1) if idx.dim() == 1 else idx
    return steps.new_zeros((b, T, n)).scatter_add_(1, idx[..., None].expand(-1, -1, n), steps)


def train_forward(u, delta, A, B, C, D, z, delta_bias, B_bias, gap, delta_fill, u_idx, p_idx, o_idx, reverse, acc,
                  out_scale, delta_softplus, a_is_log) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The forward of the training path: (out, hs, Bt, Ct), the last three being what `train_backward` reads besides
    the inputs: the states before every 4th step and the float32 copies of B + B_bias and C."""
    out, (hs, Bt, Ct) = TS.forward(u, delta, _scaled_transpose(_natural_a(A, a_is_log)), B, C, D, z, delta_bias,
                                   B_bias, gap, delta_fill, u_idx, p_idx, o_idx, reverse, acc, out_scale,
                                   delta_softplus, save=True)
    return out, hs, Bt, Ct


def _natural_a(A: Tensor, a_is_log: bool) -> Tensor:
    """(e, n) float32 A. Computed every call: a cached copy (as the inference path keeps) would go stale under CUDA
    graphs, where the optimiser updates A_log in place between replays."""
    return -torch.exp(A.detach().float()) if a_is_log else A.detach().float()


def train_backward(dout, hs, Bt, Ct, u, delta, A, B, C, D, z, delta_bias, B_bias, gap, delta_fill, u_idx, p_idx,
                   o_idx, reverse, acc, out_scale, delta_softplus, a_is_log, need=None) -> Tuple:
    """Gradients of token_scan's 19 arguments, in order: None for gap, the streams and the flags, and for inputs
    that are absent or (by `need`, 19 booleans, default all) not wanted."""
    need = need or (True,) * 19
    b, E = int(u.shape[0]), int(u.shape[2])
    S = int(next((i.shape[-1] for i in (o_idx, u_idx) if i is not None), u.shape[1]))
    Tu, Tp, N = int(u.shape[1]), int(delta.shape[1]), int(A.shape[1])
    NP, Lp = int(Bt.shape[2]), int(Bt.shape[1])
    dev = u.device
    Af = _natural_a(A, a_is_log)
    uk, dk, dout = TS._channel_rows(u), TS._channel_rows(delta), TS._channel_rows(dout)
    zk = None if z is None else TS._channel_rows(z)
    ak = None if acc is None or z is None else TS._channel_rows(acc)    # the kernel reads acc only for dz
    has_gap = gap is not None and delta_fill is not None
    gk = (gap if gap.stride(-1) == 1 else gap.contiguous()) if has_gap else None
    Dv, bias, fill = _vec(D), _vec(delta_bias), (_vec(delta_fill) if has_gap else None)
    ui, pi, oi = (None if i is None else TS._index(i, S, b, Bt)[0] for i in (u_idx, p_idx, o_idx))
    cfg = LAUNCH["bwd"]
    nblk = _cdiv(E, cfg["BE"])
    Sp = _cdiv(S, 4) * 4
    # du/dΔ: stored in the input's dtype where each row is one step's; float32 sums where a stream may repeat rows.
    # Rows no step reads (past S without a stream) get zero.
    du = (torch.zeros((b, Tu, E), dtype=torch.float32, device=dev) if ui is not None
          else TS._empty((b, Tu, E), u.dtype, dev))
    ddl = (torch.zeros((b, Tp, E), dtype=torch.float32, device=dev) if pi is not None
           else TS._empty((b, Tp, E), delta.dtype, dev))
    if ui is None and Tu > S:
        du[:, S:].zero_()
    if pi is None and Tp > S:
        ddl[:, S:].zero_()
    store_dz = z is not None and need[6]
    store_dacc = acc is not None and need[15]
    dz = TS._empty((b, S, E), z.dtype, dev) if store_dz else None
    dacc = TS._empty((b, S, E), acc.dtype, dev) if store_dacc else None
    dBp = TS._empty((nblk, b, Sp, NP), torch.float32, dev)
    dCp = TS._empty((nblk, b, Sp, NP), torch.float32, dev)
    dAp = TS._empty((b, E, NP), torch.float32, dev)
    dDp, dbp, dfp = (TS._empty((b, E), torch.float32, dev) if t is not None else None for t in (Dv, bias, fill))
    if S > 0 and b > 0:
        any_ = Bt
        zz = zk if zk is not None else uk
        aa = ak if ak is not None else uk
        with torch.cuda.device(dev) if u.is_cuda else contextlib.nullcontext():
            _token_scan_bwd_kernel[(nblk, b)](
                uk, dk, Af, Bt, Ct, _or(Dv, any_), zz, _or(bias, any_), _or(gk, any_), _or(fill, any_), aa, hs, dout,
                _or(ui, any_), _or(pi, any_), _or(oi, any_),
                du, ddl, _or(dz, any_), _or(dacc, any_), dBp, dCp, dAp, _or(dDp, any_), _or(dbp, any_),
                _or(dfp, any_),
                S, E, N, Lp, Tu, Tp, int(hs.shape[2]), float(out_scale),
                Af.stride(1), Af.stride(0), uk.stride(0), uk.stride(1), dk.stride(0), dk.stride(1),
                zz.stride(0), zz.stride(1), aa.stride(0), aa.stride(1), 0 if gk is None else gk.stride(0),
                dout.stride(0), dout.stride(1), _bstride(ui), _bstride(pi), _bstride(oi),
                BE=cfg["BE"], NP=NP, HAS_D=Dv is not None, HAS_Z=zk is not None, HAS_BIAS=bias is not None,
                SOFTPLUS=bool(delta_softplus), HAS_GAP=has_gap, HAS_ACC=ak is not None, U_IDX=ui is not None,
                P_IDX=pi is not None, O_IDX=oi is not None, REVERSE=bool(reverse), STORE_DZ=store_dz,
                STORE_DACC=store_dacc, FAST=not K.INTERPRET, num_warps=cfg["num_warps"])
    else:
        for t in (dBp, dCp, dAp, dDp, dbp, dfp, dz, dacc):
            if t is not None:
                t.zero_()
    # dB and dC: the channel blocks' per-step sums added in a fixed order (the deterministic choice: atomics across
    # programs would make every training run differ at float32 rounding; the partials cost 2 x nblk x b x S x NP
    # floats written and read once, ~80 MB per Vim-S call at batch 64, against ~170 MB of activation traffic in the
    # kernel, which is latency-bound: docs/kernels.md)
    dB_rows = _place_rows(dBp.sum(0)[:, :S, :N], pi, reverse, Tp)      # (b, Tp, N) float32
    dC_rows = _place_rows(dCp.sum(0)[:, :S, :N], pi, reverse, Tp)
    dA = dAp.sum(0)[:, :N]
    if a_is_log:
        dA = dA * Af                                                    # A = -exp(A_log): dA_log = dA · A
    dB_bias = None
    if B_bias is not None and need[8]:
        # a copy even where the dtypes agree: B's and B_bias's gradients must not share memory
        dB_bias = (dB_rows.sum(0) if B_bias.dim() == 2 else dB_rows).to(B_bias.dtype, copy=True)
    dfill = None
    if delta_fill is not None and need[10]:
        dfill = dfp.sum(0).to(delta_fill.dtype) if dfp is not None else torch.zeros_like(delta_fill)
    return (du.to(u.dtype) if need[0] else None, ddl.to(delta.dtype) if need[1] else None,
            dA.to(A.dtype) if need[2] else None, dB_rows.to(B.dtype) if need[3] else None,
            dC_rows.to(C.dtype) if need[4] else None, _sum_cast(dDp, D, need[5]), dz,
            _sum_cast(dbp, delta_bias, need[7]), dB_bias, None, dfill, None, None, None, None, dacc,
            None, None, None)


def _or(x: Optional[Tensor], dummy: Tensor) -> Tensor:
    """Absent optional inputs: any valid pointer; the kernel's flags keep it unread."""
    return dummy if x is None else x


def _bstride(idx: Optional[Tensor]) -> int:
    return 0 if idx is None or idx.dim() == 1 else idx.stride(0)


def _sum_cast(partial: Optional[Tensor], like: Optional[Tensor], wanted: bool) -> Optional[Tensor]:
    return None if partial is None or not wanted else partial.sum(0).to(like.dtype)


class TokenScanFn(torch.autograd.Function):
    """`ops.token_scan` with gradients, fused both ways. `apply` takes token_scan's 19 arguments in order.

    Gradients flow to u, delta, A (A_log when a_is_log), B, C, D, z, delta_bias, B_bias, delta_fill and acc;
    gap and the index streams get none (counts and positions). The forward keeps its inputs (no copies) plus the
    states every 4 steps and the float32 B/C copies."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, B_bias, gap, delta_fill, u_idx, p_idx, o_idx, reverse,
                acc, out_scale, delta_softplus, a_is_log):
        out, hs, Bt, Ct = train_forward(u, delta, A, B, C, D, z, delta_bias, B_bias, gap, delta_fill, u_idx, p_idx,
                                        o_idx, reverse, acc, out_scale, delta_softplus, a_is_log)
        ctx.save_for_backward(hs, Bt, Ct, u, delta, A, B, C, D, z, delta_bias, B_bias, gap, delta_fill, u_idx,
                              p_idx, o_idx, acc)
        ctx.flags = (reverse, out_scale, delta_softplus, a_is_log)
        return out

    @staticmethod
    def backward(ctx, dout):
        hs, Bt, Ct, u, delta, A, B, C, D, z, delta_bias, B_bias, gap, delta_fill, u_idx, p_idx, o_idx, acc = \
            ctx.saved_tensors
        reverse, out_scale, delta_softplus, a_is_log = ctx.flags
        return train_backward(dout, hs, Bt, Ct, u, delta, A, B, C, D, z, delta_bias, B_bias, gap, delta_fill, u_idx,
                              p_idx, o_idx, reverse, acc, out_scale, delta_softplus, a_is_log,
                              need=ctx.needs_input_grad)


def token_scan_train(u, delta, A, B, C, D=None, z=None, delta_bias=None, B_bias=None, gap=None, delta_fill=None,
                     u_idx=None, p_idx=None, o_idx=None, reverse=False, acc=None, out_scale=1.0,
                     delta_softplus=True, a_is_log=False) -> Tensor:
    """`ops.token_scan` with autograd through the fused kernels (CUDA tensors, or CPU under TRITON_INTERPRET=1)."""
    if not (u.is_cuda or K.INTERPRET):
        raise BadInputError("the Triton scan needs CUDA tensors; use the 'reference' scan backend on the CPU")
    return TokenScanFn.apply(u, delta, A, B, C, D, z, delta_bias, B_bias, gap, delta_fill, u_idx, p_idx, o_idx,
                             bool(reverse), acc, float(out_scale), bool(delta_softplus), bool(a_is_log))
