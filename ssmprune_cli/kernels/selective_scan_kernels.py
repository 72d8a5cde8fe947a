"""Triton kernels for the Mamba-1 selective scan, forward and backward (docs/kernels.md explains the design).

One program owns one batch row and BE channels and walks the sequence step by step; the state (NP, BE) stays in
registers. In `_fwd_kernel_rows` and `_bwd_kernel` each thread holds a 4 (state) x k (channel) block of it: the
layout Triton derives from the 2-D load of A, which keeps both the sum over states (y, the input gradient) and the
sum over channels (dB, dC) mostly inside a thread. `_fwd_kernel_tpc`, the inference forward for 16-bit
activations, gives each thread one channel and all its states instead. Per-token inputs are read as coalesced
(BE, chunk) tiles and split into per-step columns in registers.

The forward saves the state every 4 steps when a backward will follow; the backward walks 4-step chunks in reverse,
recomputes each chunk from its saved state (one exp per element, kept in registers) and runs the adjoint recurrence
g_t = C_t dy_t + a_{t+1} g_{t+1} through it.

Pointer conventions (all set up by selective_scan_fn.py):
    u, delta, z, dout: (b, e, l), last dim contiguous; out, du, ddelta, dz: contiguous (b, e, l)
    A: (e, n) with strides (s_ae, s_an); the kernels scale it by log2(e) as they load it (A2) and read states
        n..NP-1 as zero (a padded state decays by 1 and receives nothing). _fwd_kernel_tpc reads A2 transposed,
        (n, e), scaled on the host (its machine code scheduled 4 % faster that way, Vim-S bf16)
    Bt, Ct = (B + B_bias), C as (b, Lp, NP) fp32, zero-padded in steps and states (written by _pack_bc_kernel)
    hs: (b, Lp // 4, e, NP) fp32 states before each 4-step chunk
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

# The interpreter (CPU tests) cannot run inline PTX; it gets the plain library calls instead.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
CHECKPOINT = 4  # steps between saved states; also the backward's chunk length

LOG2E = 1.4426950408889634  # A is scaled by it, so the kernels use exp2
_LN2 = tl.constexpr(0.6931471805599453)
_LOG2E = tl.constexpr(LOG2E)


@triton.jit
def _ex2(x, FAST: tl.constexpr):
    """2**x. On the GPU one MUFU.EX2; subnormal results flush to zero (a decay below 1e-38 is zero anyway)."""
    if FAST:
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.exp2(x)


@triton.jit
def _rcp(x, FAST: tl.constexpr):
    if FAST:
        return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return 1.0 / x


@triton.jit
def _softplus(x, FAST: tl.constexpr, TERMS: tl.constexpr = 7):
    """softplus(x) (identity above 20, as torch) and its derivative sigmoid(x).

    log1p(w), w = exp(-|x|) in (0, 1], is 2 atanh(s) with s = w / (2 + w) <= 1/3: an odd series accurate to
    ~1e-8 after seven terms (TERMS = 7) and to 2e-5 relative after four (TERMS = 4, enough for 16-bit activations;
    the error falls as s^8 away from x = 0). It is exact for small w, where log(1 + w) would lose Vim's typical
    Δ ~ 1e-3, and costs one reciprocal instead of a logarithm.
    """
    w = _ex2(-tl.abs(x) * _LOG2E, FAST)
    r = _rcp(2.0 + w, FAST)
    s = w * r
    s2 = s * s
    if TERMS == 7:
        p = s2 * (1.0 / 13.0) + (1.0 / 11.0)
        p = p * s2 + (1.0 / 9.0)
        p = p * s2 + (1.0 / 7.0)
    else:
        p = s2 * (1.0 / 7.0)
    p = p * s2 + (1.0 / 5.0)
    p = p * s2 + (1.0 / 3.0)
    p = p * s2 + 1.0
    sp = tl.where(x > 20.0, x, tl.maximum(x, 0.0) + 2.0 * s * p)
    # sigmoid(x) = 1 / (1 + w) for x >= 0, w / (1 + w) below; the forward never uses it and drops it
    inv = _rcp(1.0 + w, FAST)
    sig = tl.where(x >= 0.0, inv, w * inv)
    return sp, tl.where(x > 20.0, 1.0, sig)


@triton.jit
def _sigmoid(x, FAST: tl.constexpr):
    return _rcp(1.0 + _ex2(-x * _LOG2E, FAST), FAST)


# ----------------------------------------------------------------------------------------------- tile columns
# A (BE, 4) or (BE, 8) tile holds consecutive steps along its last axis; split/join move between the tile and its
# per-step columns. Both need the step axis inside a thread, so Triton converts the tile once, in shared memory.
@triton.jit
def _cols4(x):
    ev, od = tl.split(tl.reshape(x, (x.shape[0], 2, 2)))
    c0, c2 = tl.split(ev)
    c1, c3 = tl.split(od)
    return c0, c1, c2, c3


@triton.jit
def _join4(c0, c1, c2, c3):
    return tl.reshape(tl.join(tl.join(c0, c2), tl.join(c1, c3)), (c0.shape[0], 4))


@triton.jit
def _cols8(x):
    ev, od = tl.split(tl.reshape(x, (x.shape[0], 4, 2)))
    c0, c2, c4, c6 = _cols4(ev)
    c1, c3, c5, c7 = _cols4(od)
    return c0, c1, c2, c3, c4, c5, c6, c7


@triton.jit
def _join8(c0, c1, c2, c3, c4, c5, c6, c7):
    ev = _join4(c0, c2, c4, c6)
    od = _join4(c1, c3, c5, c7)
    return tl.reshape(tl.join(ev, od), (c0.shape[0], 8))


# ----------------------------------------------------------------------------------------------- shared pieces
# Both loops are latency-bound rather than bandwidth- or exp-bound (docs/kernels.md): every chunk therefore loads
# the next chunk's per-token tiles one iteration ahead, and issues all of its own B/C rows before the first step.
@triton.jit
def _load_tiles(dl_row, u_row, z_row, o_row, gap_row, t0, me, L, CH: tl.constexpr, HAS_Z: tl.constexpr,
                HAS_GAP: tl.constexpr, HAS_DOUT: tl.constexpr):
    """Raw per-token tiles (BE, CH) of one chunk; steps past L read as zero. Absent inputs return a stand-in."""
    tt = t0 + tl.arange(0, CH)
    mt = tt < L
    m2 = me[:, None] & mt[None, :]
    x = tl.load(dl_row + tt[None, :], mask=m2, other=0.0)
    u = tl.load(u_row + tt[None, :], mask=m2, other=0.0)
    z = tl.load(z_row + tt[None, :], mask=m2, other=0.0) if HAS_Z else u
    do = tl.load(o_row + tt[None, :], mask=m2, other=0.0) if HAS_DOUT else u
    g = tl.load(gap_row + tt, mask=mt, other=0.0).to(tl.float32) if HAS_GAP else mt.to(tl.float32)
    return x, u, z, do, g


@triton.jit
def _delta_tiles(x, u, g, bias, fill, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_GAP: tl.constexpr,
                 FAST: tl.constexpr, TERMS: tl.constexpr = 7):
    """Per-token tiles: dt (input stream), dtd (decay stream), dt*u, u and softplus'(pre-activation)."""
    x = x.to(tl.float32)
    if HAS_BIAS:
        x += bias[:, None]
    if SOFTPLUS:
        dt, dsp = _softplus(x, FAST, TERMS)
    else:
        dt = x
        dsp = tl.full(x.shape, 1.0, tl.float32)
    uu = u.to(tl.float32)
    if HAS_GAP:
        dtd = dt + g[None, :] * fill[:, None]
    else:
        dtd = dt
    return dt, dtd, dt * uu, uu, dsp


@triton.jit
def _load_a2(A_ptr, offs_n, offs_e, me, N, s_an, s_ae, SCALE: tl.constexpr):
    """A * log2(e) as the (NP, BE) state tile (SCALE: the kernel multiplies; else the host did); states past N
    read as zero."""
    a = tl.load(A_ptr + offs_n[:, None] * s_an + offs_e[None, :] * s_ae, mask=(offs_n < N)[:, None] & me[None, :],
                other=0.0).to(tl.float32)
    return a * _LOG2E if SCALE else a


@triton.jit
def _pack_bc_kernel(B_ptr, C_ptr, X_ptr, Bt_ptr, Ct_ptr, N, L, Lp,
                    s_bb, s_bn, s_bl, s_cb, s_cn, s_cl, s_xb, s_xn, s_xl,
                    NP: tl.constexpr, BL: tl.constexpr, HAS_X: tl.constexpr):
    """Bt = B + B_bias (X) and Ct = C, each (b, N, L) in any dtype and strides, as (b, Lp, NP) float32 with
    zeros past N and L: one launch for what would otherwise be several copies on the host's side."""
    pid_l = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    tt = pid_l * BL + tl.arange(0, BL)
    nn = tl.arange(0, NP)
    m = (tt < L)[:, None] & (nn < N)[None, :]
    b = tl.load(B_ptr + pid_b * s_bb + nn[None, :] * s_bn + tt[:, None] * s_bl, mask=m, other=0.0).to(tl.float32)
    if HAS_X:
        b += tl.load(X_ptr + pid_b * s_xb + nn[None, :] * s_xn + tt[:, None] * s_xl, mask=m, other=0.0).to(tl.float32)
    c = tl.load(C_ptr + pid_b * s_cb + nn[None, :] * s_cn + tt[:, None] * s_cl, mask=m, other=0.0).to(tl.float32)
    dst = pid_b * Lp * NP + tt[:, None] * NP + nn[None, :]
    tl.store(Bt_ptr + dst, b, mask=(tt < Lp)[:, None])
    tl.store(Ct_ptr + dst, c, mask=(tt < Lp)[:, None])


@triton.jit
def _token_rows(u_ptr, dl_ptr, z_ptr, gap_ptr, pid_b, offs_e, s_ub, s_ue, s_db, s_de, s_zb, s_ze, s_gb):
    """Row pointers of the program's channels into u, Δ and z, and its row of gap."""
    return (u_ptr + pid_b * s_ub + offs_e[:, None] * s_ue, dl_ptr + pid_b * s_db + offs_e[:, None] * s_de,
            z_ptr + pid_b * s_zb + offs_e[:, None] * s_ze, gap_ptr + pid_b * s_gb)


@triton.jit
def _rows4(ptr, t0, offs_n, NP: tl.constexpr):
    """The (NP,) rows of steps t0..t0+3 of a (Lp, NP) B or C copy."""
    return (tl.load(ptr + (t0 + 0) * NP + offs_n), tl.load(ptr + (t0 + 1) * NP + offs_n),
            tl.load(ptr + (t0 + 2) * NP + offs_n), tl.load(ptr + (t0 + 3) * NP + offs_n))


@triton.jit
def _row16(ptr, offs_n, VEC: tl.constexpr):
    """The (16,) float32 row at ptr, every thread holding all of it: four 16-byte loads from one address (the
    other 15 pointer operands are unused and compiled away); a plain load of a replicated row issues 16.

    The vector form assumes what the one-channel-per-thread layout gives: each asm instance receives one thread's
    16 row elements in order. The CUDA tests hold it to the plain load's results."""
    if VEC:
        return tl.inline_asm_elementwise(
            "ld.global.nc.v4.f32 {$0,$1,$2,$3}, [$16]; ld.global.nc.v4.f32 {$4,$5,$6,$7}, [$16+16]; "
            "ld.global.nc.v4.f32 {$8,$9,$10,$11}, [$16+32]; ld.global.nc.v4.f32 {$12,$13,$14,$15}, [$16+48];",
            "=f,=f,=f,=f,=f,=f,=f,=f,=f,=f,=f,=f,=f,=f,=f,=f,l,l,l,l,l,l,l,l,l,l,l,l,l,l,l,l",
            [ptr + offs_n], dtype=tl.float32, is_pure=True, pack=16)
    else:
        return tl.load(ptr + offs_n)


@triton.jit
def _prefetch_l1(ptr, FAST: tl.constexpr):
    """Asks L1 for the 128-byte line at ptr; writes no register."""
    if FAST:
        tl.inline_asm_elementwise("prefetch.global.L1 [$1]; mov.u32 $0, 0;", "=r,l", [ptr], dtype=tl.int32,
                                  is_pure=False, pack=1)


@triton.jit
def _fwd_step(h, A2, dtd, dtu, Bt_ptr, Ct_ptr, t, offs_n, NP: tl.constexpr, FAST: tl.constexpr):
    """h <- exp(dtd A) h + dtu B_t ; returns h and y_t = C_t . h (pre skip and gate)."""
    vec: tl.constexpr = FAST and NP == 16
    b = _row16(Bt_ptr + t * NP, offs_n, vec)
    c = _row16(Ct_ptr + t * NP, offs_n, vec)
    a = _ex2(dtd[None, :] * A2, FAST)
    h = a * h + dtu[None, :] * b[:, None]
    return h, tl.sum(h * c[:, None], axis=0)


@triton.jit
def _fwd_four(h, A2, d0, d1, d2, d3, v0, v1, v2, v3, Bt_ptr, Ct_ptr, t, offs_n, NP: tl.constexpr, FAST: tl.constexpr):
    """Steps t..t+3."""
    h, y0 = _fwd_step(h, A2, d0, v0, Bt_ptr, Ct_ptr, t + 0, offs_n, NP, FAST)
    h, y1 = _fwd_step(h, A2, d1, v1, Bt_ptr, Ct_ptr, t + 1, offs_n, NP, FAST)
    h, y2 = _fwd_step(h, A2, d2, v2, Bt_ptr, Ct_ptr, t + 2, offs_n, NP, FAST)
    h, y3 = _fwd_step(h, A2, d3, v3, Bt_ptr, Ct_ptr, t + 3, offs_n, NP, FAST)
    return h, y0, y1, y2, y3


# The inference forward (no saved states): one thread per channel with all its states, the layout of the load of
# A's transpose below, whose run-time row stride s_an keeps it at one element per thread and row. The sum over states
# is then an
# in-thread FMA chain and B/C rows are 16-byte loads shared by the warp: about half the instructions of
# _fwd_kernel_rows per (channel, step, state). Per-token inputs come in (BE, 8) tiles that Triton loads along the
# steps and converts through shared memory once per tile. L is never specialised, so those layouts stay the same
# for every length.
@triton.jit(do_not_specialize=["L", "s_an"])
def _fwd_kernel_tpc(
    # pointers; A2T = (A * log2(e)) transposed, (n, e) with e contiguous
    u_ptr, dl_ptr, A2T_ptr, Bt_ptr, Ct_ptr, D_ptr, z_ptr, bias_ptr, gap_ptr, fill_ptr, out_ptr,
    # sizes; s_an = e, the row stride of A2T
    L, E, Lp, N, s_an,
    # strides, in elements
    s_ub, s_ue, s_db, s_de, s_zb, s_ze, s_gb,
    # meta-parameters
    BE: tl.constexpr, NP: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_GAP: tl.constexpr, FAST: tl.constexpr,
    TERMS: tl.constexpr = 4,  # softplus series terms: 4 for 16-bit activations (docs/kernels.md)
):
    pid_e = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_e = pid_e * BE + tl.arange(0, BE)
    offs_n = tl.arange(0, NP)
    me = offs_e < E
    A2 = _load_a2(A2T_ptr, offs_n, offs_e, me, N, s_an, 1, False)
    bias = tl.load(bias_ptr + offs_e, mask=me, other=0.0) if HAS_BIAS else None
    fill = tl.load(fill_ptr + offs_e, mask=me, other=0.0) if HAS_GAP else None
    Dv = tl.load(D_ptr + offs_e, mask=me, other=0.0) if HAS_D else None
    Bt_ptr += pid_b * Lp * NP
    Ct_ptr += pid_b * Lp * NP
    u_row, dl_row, z_row, gap_row = _token_rows(u_ptr, dl_ptr, z_ptr, gap_ptr, pid_b, offs_e, s_ub, s_ue, s_db, s_de,
                                                s_zb, s_ze, s_gb)
    out_row = out_ptr + pid_b * E * L + offs_e[:, None] * L

    h = tl.zeros((NP, BE), dtype=tl.float32)
    for t0 in range(0, L, 8):
        if NP == 16:  # the next tile's B and C rows (measured: 230 -> 197 us, Vim-S bf16)
            for j in tl.static_range(4):
                _prefetch_l1(Bt_ptr + (t0 + 8) * NP + j * 32, FAST)
                _prefetch_l1(Ct_ptr + (t0 + 8) * NP + j * 32, FAST)
        xc, uc, zc, _unused, gc = _load_tiles(dl_row, u_row, z_row, u_row, gap_row, t0, me, L, 8, HAS_Z,
                                              HAS_GAP, False)
        dt, dtd, dtu, uu, dsp = _delta_tiles(xc, uc, gc, bias, fill, HAS_BIAS, SOFTPLUS, HAS_GAP, FAST, TERMS)
        d0, d1, d2, d3, d4, d5, d6, d7 = _cols8(dtd)
        v0, v1, v2, v3, v4, v5, v6, v7 = _cols8(dtu)
        h, y0, y1, y2, y3 = _fwd_four(h, A2, d0, d1, d2, d3, v0, v1, v2, v3, Bt_ptr, Ct_ptr, t0, offs_n, NP, FAST)
        h, y4, y5, y6, y7 = _fwd_four(h, A2, d4, d5, d6, d7, v4, v5, v6, v7, Bt_ptr, Ct_ptr, t0 + 4, offs_n, NP,
                                      FAST)
        y = _join8(y0, y1, y2, y3, y4, y5, y6, y7)
        if HAS_D:
            y += Dv[:, None] * uu
        if HAS_Z:
            zz = zc.to(tl.float32)
            y *= zz * _sigmoid(zz, FAST)
        tt = t0 + tl.arange(0, 8)
        tl.store(out_row + tt[None, :], y.to(out_ptr.dtype.element_ty), mask=me[:, None] & (tt < L)[None, :])


@triton.jit
def _fwd_step_rows(h, A2, dtd, dtu, b, c, FAST: tl.constexpr):
    """h <- exp(dtd A) h + dtu B_t ; returns h and y_t = C_t . h (pre skip and gate)."""
    a = _ex2(dtd[None, :] * A2, FAST)
    h = a * h + dtu[None, :] * b[:, None]
    return h, tl.sum(h * c[:, None], axis=0)


# The general forward (training, float32, and grids too small for one channel per thread): each thread holds
# 4 states x BE/(8 warps) channels, the layout of the (e, NP) load of A; sums finish with warp shuffles. L is never
# specialised: a length divisible by 16 would change the tile loads' layout and cost a shared-memory round trip per
# step instead of one per tile.
@triton.jit(do_not_specialize=["L"])
def _fwd_kernel_rows(
    # pointers
    u_ptr, dl_ptr, A_ptr, Bt_ptr, Ct_ptr, D_ptr, z_ptr, bias_ptr, gap_ptr, fill_ptr, out_ptr, hs_ptr,
    # sizes, and A's strides
    L, E, Lp, N, s_an, s_ae,
    # strides, in elements
    s_ub, s_ue, s_db, s_de, s_zb, s_ze, s_gb,
    # meta-parameters
    BE: tl.constexpr, NP: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_GAP: tl.constexpr, SAVE: tl.constexpr, FAST: tl.constexpr,
):
    pid_e = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_e = pid_e * BE + tl.arange(0, BE)
    offs_n = tl.arange(0, NP)
    me = offs_e < E
    A2 = _load_a2(A_ptr, offs_n, offs_e, me, N, s_an, s_ae, True)
    bias = tl.load(bias_ptr + offs_e, mask=me, other=0.0) if HAS_BIAS else None
    fill = tl.load(fill_ptr + offs_e, mask=me, other=0.0) if HAS_GAP else None
    Dv = tl.load(D_ptr + offs_e, mask=me, other=0.0) if HAS_D else None
    Bt_ptr += pid_b * Lp * NP
    Ct_ptr += pid_b * Lp * NP
    hs_ptr += pid_b * (Lp // 4) * E * NP
    hs_offs = offs_e[None, :] * NP + offs_n[:, None]
    u_row, dl_row, z_row, gap_row = _token_rows(u_ptr, dl_ptr, z_ptr, gap_ptr, pid_b, offs_e, s_ub, s_ue, s_db, s_de,
                                                s_zb, s_ze, s_gb)
    out_row = out_ptr + pid_b * E * L + offs_e[:, None] * L

    h = tl.zeros((NP, BE), dtype=tl.float32)
    xn, un, zn, _unused, gn = _load_tiles(dl_row, u_row, z_row, u_row, gap_row, 0, me, L, 8, HAS_Z, HAS_GAP,
                                        False)
    for t0 in range(0, L, 8):
        xc, uc, zc, gc = xn, un, zn, gn
        b0, b1, b2, b3 = _rows4(Bt_ptr, t0, offs_n, NP)
        b4, b5, b6, b7 = _rows4(Bt_ptr, t0 + 4, offs_n, NP)
        c0, c1, c2, c3 = _rows4(Ct_ptr, t0, offs_n, NP)
        c4, c5, c6, c7 = _rows4(Ct_ptr, t0 + 4, offs_n, NP)
        xn, un, zn, _unused, gn = _load_tiles(dl_row, u_row, z_row, u_row, gap_row, t0 + 8, me, L, 8, HAS_Z,
                                              HAS_GAP, False)
        dt, dtd, dtu, uu, dsp = _delta_tiles(xc, uc, gc, bias, fill, HAS_BIAS, SOFTPLUS, HAS_GAP, FAST)
        d0, d1, d2, d3, d4, d5, d6, d7 = _cols8(dtd)
        v0, v1, v2, v3, v4, v5, v6, v7 = _cols8(dtu)
        if SAVE:
            tl.store(hs_ptr + (t0 // 4) * E * NP + hs_offs, h, mask=me[None, :])
        h, y0 = _fwd_step_rows(h, A2, d0, v0, b0, c0, FAST)
        h, y1 = _fwd_step_rows(h, A2, d1, v1, b1, c1, FAST)
        h, y2 = _fwd_step_rows(h, A2, d2, v2, b2, c2, FAST)
        h, y3 = _fwd_step_rows(h, A2, d3, v3, b3, c3, FAST)
        if SAVE:
            if t0 + 4 < L:
                tl.store(hs_ptr + (t0 // 4 + 1) * E * NP + hs_offs, h, mask=me[None, :])
        h, y4 = _fwd_step_rows(h, A2, d4, v4, b4, c4, FAST)
        h, y5 = _fwd_step_rows(h, A2, d5, v5, b5, c5, FAST)
        h, y6 = _fwd_step_rows(h, A2, d6, v6, b6, c6, FAST)
        h, y7 = _fwd_step_rows(h, A2, d7, v7, b7, c7, FAST)
        y = _join8(y0, y1, y2, y3, y4, y5, y6, y7)
        if HAS_D:
            y += Dv[:, None] * uu
        if HAS_Z:
            zz = zc.to(tl.float32)
            y *= zz * _sigmoid(zz, FAST)
        tt = t0 + tl.arange(0, 8)
        tl.store(out_row + tt[None, :], y.to(out_ptr.dtype.element_ty), mask=me[:, None] & (tt < L)[None, :])


@triton.jit
def _recompute_step(h, A2, dtd, dtu, dy, b, c, dC_ptr, t, offs_n, NP: tl.constexpr, HAS_Z: tl.constexpr,
                    FAST: tl.constexpr):
    """Forward step again from the saved state; adds this program's part of dC_t = sum_e dy h_t."""
    a = _ex2(dtd[None, :] * A2, FAST)
    ah = a * h
    h = ah + dtu[None, :] * b[:, None]
    tl.atomic_add(dC_ptr + t * NP + offs_n, tl.sum(h * dy[None, :], axis=1), sem="relaxed")
    if HAS_Z:
        y = tl.sum(h * c[:, None], axis=0)
    else:
        y = dtd  # unused
    return h, a, ah, y


@triton.jit
def _adjoint_step(w, A2, a, ah, dtd, dtu, dy, dA, b, c, dB_ptr, t, offs_n, NP: tl.constexpr):
    """One reverse step. w carries a_{t+1} g_{t+1}; returns the next carry, sum_n g B, sum_n r A2 and dA."""
    g = w + c[:, None] * dy[None, :]                       # dL/dh_t
    tl.atomic_add(dB_ptr + t * NP + offs_n, tl.sum(g * dtu[None, :], axis=1), sem="relaxed")
    s = tl.sum(g * b[:, None], axis=0)                     # -> du (x dt) and the input-stream dΔ (x u)
    r = g * ah                                             # dL/d(log decay) per state
    q = tl.sum(r * A2, axis=0)                             # x ln2 -> decay-stream dΔ
    dA += r * dtd[None, :]
    return a * g, s, q, dA


@triton.jit(do_not_specialize=["L"])
def _bwd_kernel(
    # pointers
    u_ptr, dl_ptr, A_ptr, Bt_ptr, Ct_ptr, D_ptr, z_ptr, bias_ptr, gap_ptr, fill_ptr, hs_ptr, dout_ptr,
    du_ptr, ddl_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr, dfill_ptr,
    # sizes, and A's strides
    L, E, Lp, N, s_an, s_ae,
    # strides, in elements
    s_ub, s_ue, s_db, s_de, s_zb, s_ze, s_gb, s_ob, s_oe,
    # meta-parameters
    BE: tl.constexpr, NP: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_GAP: tl.constexpr, FAST: tl.constexpr,
):
    pid_e = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_e = pid_e * BE + tl.arange(0, BE)
    offs_n = tl.arange(0, NP)
    me = offs_e < E
    A2 = _load_a2(A_ptr, offs_n, offs_e, me, N, s_an, s_ae, True)
    bias = tl.load(bias_ptr + offs_e, mask=me, other=0.0) if HAS_BIAS else None
    fill = tl.load(fill_ptr + offs_e, mask=me, other=0.0) if HAS_GAP else None
    Dv = tl.load(D_ptr + offs_e, mask=me, other=0.0) if HAS_D else None
    Bt_ptr += pid_b * Lp * NP
    Ct_ptr += pid_b * Lp * NP
    dB_ptr += pid_b * Lp * NP
    dC_ptr += pid_b * Lp * NP
    hs_ptr += pid_b * (Lp // 4) * E * NP
    hs_offs = offs_e[None, :] * NP + offs_n[:, None]
    u_row, dl_row, z_row, gap_row = _token_rows(u_ptr, dl_ptr, z_ptr, gap_ptr, pid_b, offs_e, s_ub, s_ue, s_db, s_de,
                                                s_zb, s_ze, s_gb)
    do_row = dout_ptr + pid_b * s_ob + offs_e[:, None] * s_oe
    g_off = pid_b * E * L + offs_e[:, None] * L

    w = tl.zeros((NP, BE), dtype=tl.float32)
    dA = tl.zeros((NP, BE), dtype=tl.float32)
    accD = tl.zeros((BE,), dtype=tl.float32)
    accB = tl.zeros((BE,), dtype=tl.float32)
    accF = tl.zeros((BE,), dtype=tl.float32)
    n_chunks = (L + 3) // 4
    t_last = (n_chunks - 1) * 4
    xn, un, zn, on, gn = _load_tiles(dl_row, u_row, z_row, do_row, gap_row, t_last, me, L, 4, HAS_Z, HAS_GAP, True)
    hn = tl.load(hs_ptr + (t_last // 4) * E * NP + hs_offs, mask=me[None, :], other=0.0)
    for k in range(0, n_chunks):
        t0 = (n_chunks - 1 - k) * 4
        xc, uc, zc, oc, gc, h = xn, un, zn, on, gn, hn
        b0, b1, b2, b3 = _rows4(Bt_ptr, t0, offs_n, NP)
        c0, c1, c2, c3 = _rows4(Ct_ptr, t0, offs_n, NP)
        # the next chunk back (t0 - 4; at k = last it re-reads chunk 0, harmlessly)
        tp = tl.maximum(t0 - 4, 0)
        xn, un, zn, on, gn = _load_tiles(dl_row, u_row, z_row, do_row, gap_row, tp, me, L, 4, HAS_Z, HAS_GAP, True)
        hn = tl.load(hs_ptr + (tp // 4) * E * NP + hs_offs, mask=me[None, :], other=0.0)
        dt, dtd, dtu, uu, dsp = _delta_tiles(xc, uc, gc, bias, fill, HAS_BIAS, SOFTPLUS, HAS_GAP, FAST)
        do = oc.to(tl.float32)
        if HAS_Z:
            zz = zc.to(tl.float32)
            sz = _sigmoid(zz, FAST)
            dy = do * zz * sz
        else:
            dy = do
        d0, d1, d2, d3 = _cols4(dtd)
        v0, v1, v2, v3 = _cols4(dtu)
        y0, y1, y2, y3 = _cols4(dy)
        h, a0, ah0, p0 = _recompute_step(h, A2, d0, v0, y0, b0, c0, dC_ptr, t0 + 0, offs_n, NP, HAS_Z, FAST)
        h, a1, ah1, p1 = _recompute_step(h, A2, d1, v1, y1, b1, c1, dC_ptr, t0 + 1, offs_n, NP, HAS_Z, FAST)
        h, a2, ah2, p2 = _recompute_step(h, A2, d2, v2, y2, b2, c2, dC_ptr, t0 + 2, offs_n, NP, HAS_Z, FAST)
        h, a3, ah3, p3 = _recompute_step(h, A2, d3, v3, y3, b3, c3, dC_ptr, t0 + 3, offs_n, NP, HAS_Z, FAST)
        tt = t0 + tl.arange(0, 4)
        mt = tt < L
        m2 = me[:, None] & mt[None, :]
        if HAS_Z:
            # out = y silu(z): dz = dout y sigmoid(z) (1 + z (1 - sigmoid(z)))
            yv = _join4(p0, p1, p2, p3)
            if HAS_D:
                yv += Dv[:, None] * uu
            dz = do * yv * sz * (1.0 + zz * (1.0 - sz))
            tl.store(dz_ptr + g_off + tt[None, :], dz.to(dz_ptr.dtype.element_ty), mask=m2)
        w, s3, q3, dA = _adjoint_step(w, A2, a3, ah3, d3, v3, y3, dA, b3, c3, dB_ptr, t0 + 3, offs_n, NP)
        w, s2, q2, dA = _adjoint_step(w, A2, a2, ah2, d2, v2, y2, dA, b2, c2, dB_ptr, t0 + 2, offs_n, NP)
        w, s1, q1, dA = _adjoint_step(w, A2, a1, ah1, d1, v1, y1, dA, b1, c1, dB_ptr, t0 + 1, offs_n, NP)
        w, s0, q0, dA = _adjoint_step(w, A2, a0, ah0, d0, v0, y0, dA, b0, c0, dB_ptr, t0 + 0, offs_n, NP)
        s = _join4(s0, s1, s2, s3)
        q = _join4(q0, q1, q2, q3) * _LN2                  # dL/d(decay-stream Δ)
        du = dt * s
        if HAS_D:
            du += Dv[:, None] * dy
            accD += tl.sum(dy * uu, axis=1)
        ddl = (uu * s + q) * dsp
        tl.store(du_ptr + g_off + tt[None, :], du.to(du_ptr.dtype.element_ty), mask=m2)
        tl.store(ddl_ptr + g_off + tt[None, :], ddl.to(ddl_ptr.dtype.element_ty), mask=m2)
        if HAS_BIAS:
            accB += tl.sum(tl.where(m2, ddl, 0.0), axis=1)
        if HAS_GAP:
            accF += tl.sum(q * gc[None, :], axis=1)
    tl.atomic_add(dA_ptr + hs_offs, dA, mask=me[None, :], sem="relaxed")
    if HAS_D:
        tl.atomic_add(dD_ptr + offs_e, accD, mask=me, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + offs_e, accB, mask=me, sem="relaxed")
    if HAS_GAP:
        tl.atomic_add(dfill_ptr + offs_e, accF, mask=me, sem="relaxed")
