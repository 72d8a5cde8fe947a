"""Triton kernels for the fused residual add + RMSNorm / LayerNorm (+ gate), forward and backward, and their
torch.autograd.Function.

Semantics are those of `ssmprune_cli.ops.fused_norm.add_norm` (its docstring and `add_norm_ref` are the definition);
docs/kernels.md ("Fused add + norm") explains the design. In short, per row of width D:

    s = x + residual                     float32; stored as the residual output when asked for (residual_dtype)
    xhat = s * rstd                      rms:   rstd = rsqrt(mean(s^2) + eps)
    xhat = (s - mean) * rstd             layer: rstd = rsqrt(mean((s - mean)^2) + eps), biased variance
    y = (xhat * w + b) * g               b and g optional; stored in out_dtype

Forward: one program normalises a (ROWS, BLOCK_D) tile, BLOCK_D = D padded to a power of two; the whole row is in
registers, so each input is read once and each output written once. With a backward to follow it also stores
float32 `mean` (layer) and `rstd` per row.

Backward (dyn = dy * g, wdy = dyn * w, c1 = mean(xhat * wdy), c2 = mean(wdy), 0 for rms):
    ds = rstd * (wdy - xhat * c1 - c2) + d(residual output)      -> dx, dresidual
    dg = dy * (xhat * w + b);  dw = sum_rows dyn * xhat;  db = sum_rows dyn
The backward is persistent: `programs_per_sm` programs per SM each walk every nprog-th tile and keep dw and db in
registers; each writes its partial sums into one row of a (2, nprog, D) float32 buffer, which the host sums (no
atomics, so the result does not depend on scheduling). s is re-read as the float32 residual output when that
was stored, else recomputed from x and residual.

Pointer conventions (set up by `_forward` / `AddNormFn.backward`): every (M, D) operand has its own row stride and a
contiguous last dim; outputs and gradients are contiguous (M, D); w, b: contiguous (D,); mean, rstd: (M,) float32.
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

# The interpreter (CPU tests) runs the same kernels on CPU tensors.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Launch shapes by row width: {largest BLOCK_D: (rows per program, warps)}, the first key >= BLOCK_D applies.
# The forward gives each thread 16 elements of each (ROWS, BLOCK_D) array at every width, the backward 8 (it holds
# more live arrays: s, dy, g and the dw/db accumulators). Compiled for sm_90 these use 56-114 registers (the
# backward at 4096 wide: 110 with 16 warps, 217 with 8) and spill nothing. Chosen from the register budget, not yet
# timed on a GPU: `benchmarks/fused_norm.py --variants` times the alternatives.
# `programs_per_sm`: programs of the persistent backward per SM (each writes one row of dw/db partial sums).
LAUNCH: Dict[str, object] = {
    "fwd": {128: (16, 4), 256: (8, 4), 512: (4, 4), 1024: (2, 4), 2048: (1, 4), 4096: (1, 8)},
    "bwd": {128: (8, 4), 256: (4, 4), 512: (2, 4), 1024: (1, 4), 2048: (1, 8), 4096: (1, 16)},
    "programs_per_sm": 4,
}
MAX_WIDTH = 4096  # the widest row that fits one block; wider rows go to the reference (ops.fused_norm)


# ---------------------------------------------------------------------------------------------------- kernels
@triton.jit
def _norm_fwd_kernel(
    # pointers
    X, R, W, B, G, Y, RO, MEAN, RSTD,
    # dimensions; RPG: rows per group of weights (GROUPED: row r takes W and B row r // RPG)
    M, D, eps, RPG,
    # row strides
    s_x, s_r, s_g, s_y, s_ro,
    # meta-parameters
    BLOCK_D: tl.constexpr, ROWS: tl.constexpr, IS_RMS: tl.constexpr, HAS_RES: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_GATE: tl.constexpr, STORE_RES: tl.constexpr, SAVE_STATS: tl.constexpr,
    GATE_SILU: tl.constexpr = False, GROUPED: tl.constexpr = False,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < M
    cmask = cols < D
    mask = rmask[:, None] & cmask[None, :]
    r64 = rows.to(tl.int64)[:, None]  # row offsets in 64 bits: strided views of large tensors pass 2**31
    c = cols[None, :]

    s = tl.load(X + r64 * s_x + c, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        s += tl.load(R + r64 * s_r + c, mask=mask, other=0.0).to(tl.float32)
    if STORE_RES:
        tl.store(RO + r64 * s_ro + c, s.to(RO.dtype.element_ty), mask=mask)
    if IS_RMS:
        xc = s
    else:
        mean = tl.sum(s, axis=1) / D
        xc = tl.where(mask, s - mean[:, None], 0.0)
    rstd = tl.rsqrt(tl.sum(xc * xc, axis=1) / D + eps)
    if GROUPED:  # each row its group's weights (rows of one program may span two groups)
        wc = (rows // RPG).to(tl.int64)[:, None] * D + c
        y = xc * rstd[:, None] * tl.load(W + wc, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            y += tl.load(B + wc, mask=mask, other=0.0).to(tl.float32)
    else:
        w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
        y = xc * rstd[:, None] * w[None, :]
        if HAS_BIAS:
            y += tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if HAS_GATE:
        g = tl.load(G + r64 * s_g + c, mask=mask, other=0.0).to(tl.float32)
        if GATE_SILU:
            g = g * tl.sigmoid(g)
        y *= g
    tl.store(Y + r64 * s_y + c, y.to(Y.dtype.element_ty), mask=mask)
    if SAVE_STATS:
        tl.store(RSTD + rows, rstd, mask=rmask)
        if not IS_RMS:
            tl.store(MEAN + rows, mean, mask=rmask)


@triton.jit
def _norm_bwd_kernel(
    # pointers
    X, R, S, W, B, G, DY, DRO, MEAN, RSTD, DX, DR, DG, DWB,
    # dimensions
    M, D, tiles_per_program,
    # row strides
    s_x, s_r, s_s, s_g, s_dy, s_dro, s_dx, s_dr, s_dg,
    # meta-parameters
    BLOCK_D: tl.constexpr, ROWS: tl.constexpr, IS_RMS: tl.constexpr, HAS_RES: tl.constexpr,
    S_SAVED: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GATE: tl.constexpr, HAS_DRO: tl.constexpr,
    STORE_DX: tl.constexpr, STORE_DR: tl.constexpr, STORE_DG: tl.constexpr, STORE_DW: tl.constexpr,
    STORE_DB: tl.constexpr, GATE_SILU: tl.constexpr = False,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    c = cols[None, :]
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        b = tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    dw = tl.zeros((ROWS, BLOCK_D), dtype=tl.float32)
    db = tl.zeros((ROWS, BLOCK_D), dtype=tl.float32)
    for i in range(0, tiles_per_program):
        rows = (pid + i * nprog) * ROWS + tl.arange(0, ROWS)  # tiles past the last row are fully masked
        rmask = rows < M
        mask = rmask[:, None] & cmask[None, :]
        r64 = rows.to(tl.int64)[:, None]

        if S_SAVED:
            s = tl.load(S + r64 * s_s + c, mask=mask, other=0.0).to(tl.float32)
        else:
            s = tl.load(X + r64 * s_x + c, mask=mask, other=0.0).to(tl.float32)
            if HAS_RES:
                s += tl.load(R + r64 * s_r + c, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)[:, None]
        if IS_RMS:
            xhat = s * rstd
        else:
            mean = tl.load(MEAN + rows, mask=rmask, other=0.0)[:, None]
            xhat = tl.where(mask, (s - mean) * rstd, 0.0)
        dy = tl.load(DY + r64 * s_dy + c, mask=mask, other=0.0).to(tl.float32)
        if HAS_GATE:
            g = tl.load(G + r64 * s_g + c, mask=mask, other=0.0).to(tl.float32)
            if GATE_SILU:  # the gate is silu(g): d silu / dg = sigmoid(g) (1 + g (1 - sigmoid(g)))
                sg = tl.sigmoid(g)
                dact = sg * (1.0 + g * (1.0 - sg))
                g = g * sg
            if STORE_DG:
                yn = xhat * w
                if HAS_BIAS:
                    yn += b
                dgate = dy * yn
                if GATE_SILU:
                    dgate = dgate * dact
                tl.store(DG + r64 * s_dg + c, dgate.to(DG.dtype.element_ty), mask=mask)
            dy = dy * g
        if STORE_DW:
            dw += dy * xhat
        if STORE_DB:
            db += dy
        if STORE_DX or STORE_DR:
            wdy = dy * w
            c1 = tl.sum(xhat * wdy, axis=1)[:, None] / D
            if IS_RMS:
                ds = (wdy - xhat * c1) * rstd
            else:
                c2 = tl.sum(wdy, axis=1)[:, None] / D
                ds = (wdy - xhat * c1 - c2) * rstd
            if HAS_DRO:
                ds += tl.load(DRO + r64 * s_dro + c, mask=mask, other=0.0).to(tl.float32)
            if STORE_DX:
                tl.store(DX + r64 * s_dx + c, ds.to(DX.dtype.element_ty), mask=mask)
            if STORE_DR:
                tl.store(DR + r64 * s_dr + c, ds.to(DR.dtype.element_ty), mask=mask)
    if STORE_DW:
        tl.store(DWB + pid * D + cols, tl.sum(dw, axis=0), mask=cmask)
    if STORE_DB:
        tl.store(DWB + (nprog + pid) * D + cols, tl.sum(db, axis=0), mask=cmask)


# --------------------------------------------------------------------------------------------------- launchers
def _empty(shape, dtype, device) -> Tensor:
    """Every buffer a kernel must fill completely (tests swap in a NaN-filled version to catch gaps)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _rows(t: Optional[Tensor], D: int) -> Tuple[Optional[Tensor], int]:
    """(tensor, row stride) of (..., D) rows for the kernels, which need one stride between rows and a contiguous
    last dim. Contiguous tensors pass as they are; others as a (M, D) view when the leading dims merge (column
    slices do), else as a copy. Absent: (None, 0)."""
    if t is None:
        return None, 0
    if t.is_contiguous():
        return t, D
    if t.stride(-1) != 1:
        return t.contiguous(), D
    t = t.reshape(-1, D)
    return t, t.stride(0)


def _launch(key: str, block_d: int) -> Tuple[int, int]:
    for width, shape in LAUNCH[key].items():
        if block_d <= width:
            return shape
    raise BadInputError(f"fused add + norm: rows of {block_d} elements are wider than the kernels' "
                        f"{MAX_WIDTH}; use the reference backend")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)  # triton.cdiv from Python goes through the constexpr machinery (~7 us a call)


@functools.lru_cache(maxsize=None)
def _sm_count(device: int) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _device_guard(t: Tensor):
    """Triton launches on the current CUDA device; switch only when the tensors live on another one."""
    if t.is_cuda and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def _forward(x: Tensor, residual: Optional[Tensor], weight: Tensor, bias: Optional[Tensor], gate: Optional[Tensor],
             eps: float, is_rms: bool, out_dtype: torch.dtype, residual_dtype: Optional[torch.dtype], save: bool,
             gate_silu: bool = False) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """One forward launch: (out, residual out or None, mean or None, rstd or None). out and the residual output
    have x's shape and are allocated so, not as views (autograd forbids in-place changes to views a custom
    Function returns); mean (layer) and rstd, (M,) float32, only with `save`. Grouped weights (G, D): x's first
    dim is the group (forward only)."""
    D = int(x.shape[-1])
    groups = int(weight.shape[0]) if weight.dim() == 2 else 1
    (x2, s_x), (r2, s_r), (g2, s_g) = _rows(x, D), _rows(residual, D), _rows(gate, D)
    M, dev = x.numel() // D, x.device
    y = _empty(x.shape, out_dtype, dev)
    ro = None if residual_dtype is None else _empty(x.shape, residual_dtype, dev)
    rstd = _empty((M,), torch.float32, dev) if save else None
    mean = _empty((M,), torch.float32, dev) if save and not is_rms else None
    if M > 0:
        block_d = 1 << (D - 1).bit_length()
        rows, warps = _launch("fwd", block_d)
        with _device_guard(x):
            _norm_fwd_kernel[(_cdiv(M, rows),)](
                x2, _or(r2, x2), weight, _or(bias, weight), _or(g2, x2), y, _or(ro, y), _or(mean, y), _or(rstd, y),
                M, D, eps, M // groups,
                s_x, s_r, s_g, D, D,
                BLOCK_D=block_d, ROWS=rows, IS_RMS=is_rms, HAS_RES=r2 is not None, HAS_BIAS=bias is not None,
                HAS_GATE=g2 is not None, STORE_RES=ro is not None, SAVE_STATS=save, GATE_SILU=gate_silu,
                GROUPED=groups > 1, num_warps=warps)
    return y, ro, mean, rstd


def _or(t: Optional[Tensor], dummy: Tensor) -> Tensor:
    """Absent optional inputs: any valid pointer; the kernel's flags keep it untouched."""
    return dummy if t is None else t


class AddNormFn(torch.autograd.Function):
    """`ops.add_norm` with a backward: apply(x, residual, weight, bias, gate, eps, is_rms, out_dtype,
    residual_dtype, gate_silu) -> (out, residual out or None). Gradients come back in their inputs' dtypes."""

    @staticmethod
    def forward(ctx, x, residual, weight, bias, gate, eps, is_rms, out_dtype, residual_dtype, gate_silu):
        y, ro, mean, rstd = _forward(x, residual, weight, bias, gate, eps, is_rms, out_dtype, residual_dtype, True,
                                     gate_silu)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None, and the kernel skips it
        # the float32 residual output *is* s: the backward reads it instead of x and residual
        s_saved = ro is not None and ro.dtype == torch.float32
        if s_saved:
            ctx.save_for_backward(None, None, ro, weight, bias, gate, mean, rstd)
        else:
            ctx.save_for_backward(x, residual, None, weight, bias, gate, mean, rstd)
        ctx.meta = (is_rms, x.dtype, None if residual is None else residual.dtype, residual is not None, gate_silu)
        return y, ro

    @staticmethod
    def backward(ctx, dy, dro):
        x, r, s, weight, bias, gate, mean, rstd = ctx.saved_tensors
        is_rms, x_dtype, r_dtype, has_res, gate_silu = ctx.meta
        need = ctx.needs_input_grad
        if dy is None:  # only the residual output was used: s = x + residual passes its gradient straight on
            return (_cast(dro, x_dtype, need[0]), _cast(dro, r_dtype, need[1]), None, None, None, None, None, None,
                    None, None)
        D = int(weight.shape[0])
        (dy2, s_dy), (dro2, s_dro) = _rows(dy, D), _rows(dro, D)
        (x2, s_x), (r2, s_r), (s2, s_s), (g2, s_g) = _rows(x, D), _rows(r, D), _rows(s, D), _rows(gate, D)
        M, dev, shape = dy.numel() // D, dy.device, dy.shape
        dx = _empty(shape, x_dtype, dev) if need[0] else None
        dr = _empty(shape, r_dtype, dev) if need[1] else None
        dg = _empty(shape, gate.dtype, dev) if need[4] else None
        store_dw, store_db = need[2], need[3]
        block_d = 1 << (D - 1).bit_length()
        rows, warps = _launch("bwd", block_d)
        tiles = _cdiv(M, rows)
        sms = _sm_count(dev.index if dev.index is not None else torch.cuda.current_device()) if dy.is_cuda else 1
        nprog = max(1, min(tiles, LAUNCH["programs_per_sm"] * sms))
        dwb = _empty((2, nprog, D), torch.float32, dev) if store_dw or store_db else None
        if M > 0:
            with _device_guard(dy):
                _norm_bwd_kernel[(nprog,)](
                    _or(x2, dy2), _or(r2, dy2), _or(s2, dy2), weight, _or(bias, weight), _or(g2, dy2), dy2,
                    _or(dro2, dy2), _or(mean, rstd), rstd, _or(dx, dy2), _or(dr, dy2), _or(dg, dy2), _or(dwb, rstd),
                    M, D, _cdiv(tiles, nprog),
                    s_x, s_r, s_s, s_g, s_dy, s_dro, D, D, D,
                    BLOCK_D=block_d, ROWS=rows, IS_RMS=is_rms, HAS_RES=has_res, S_SAVED=s2 is not None,
                    HAS_BIAS=bias is not None, HAS_GATE=g2 is not None, HAS_DRO=dro2 is not None,
                    STORE_DX=dx is not None, STORE_DR=dr is not None, STORE_DG=dg is not None,
                    STORE_DW=store_dw, STORE_DB=store_db, GATE_SILU=gate_silu, num_warps=warps)
        elif dwb is not None:
            dwb.zero_()
        sums = None if dwb is None else dwb.sum(1)  # (2, D): dw, db
        return (dx, dr, sums[0].to(weight.dtype) if store_dw else None, sums[1].to(bias.dtype) if store_db else None,
                dg, None, None, None, None, None)


def _cast(t: Optional[Tensor], dtype: Optional[torch.dtype], needed: bool) -> Optional[Tensor]:
    return t.to(dtype) if needed and t is not None else None


def add_norm_triton(x: Tensor, residual: Optional[Tensor], weight: Tensor, bias: Optional[Tensor], eps: float,
                    is_rms: bool, out_dtype: torch.dtype, residual_dtype: Optional[torch.dtype],
                    gate: Optional[Tensor], gate_silu: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
    """`ops.add_norm` on the GPU (or under TRITON_INTERPRET=1), dtypes already resolved by the caller (None
    residual_dtype: no residual output). Inputs must not be float64 (the dispatcher sends those to the reference).
    Without a gradient to compute, the forward launches directly (no autograd.Function on the host path)."""
    if not (x.is_cuda or INTERPRET):
        raise BadInputError("the Triton add + norm needs CUDA tensors; use the 'reference' backend on the CPU")
    if not 0 < int(x.shape[-1]) <= MAX_WIDTH:
        raise BadInputError(f"fused add + norm: the kernels take rows of 1 to {MAX_WIDTH} elements, not "
                            f"{int(x.shape[-1])}; use the reference backend")
    weight = weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (x, residual, weight, bias, gate)):
        if weight.dim() == 2:
            raise BadInputError("fused add + norm: grouped weights have no Triton backward; use the reference")
        return AddNormFn.apply(x, residual, weight, bias, gate, eps, is_rms, out_dtype, residual_dtype, gate_silu)
    y, ro, _, _ = _forward(x, residual, weight, bias, gate, eps, is_rms, out_dtype, residual_dtype, False, gate_silu)
    return y, ro
