"""The scan every mixer calls, in token-major layout with index streams (dispatch point + PyTorch reference).

Shapes (b batch, E channels, N states, S steps of one scan order):
    u: (b, Tu, E)               row u_row(t) is step t's input
    delta: (b, Tp, E), B, C: (b, Tp, N)      row p_row(t) holds step t's Δ, B and C
    z, acc, out: (b, S, E)      row o_row(t) receives step t's output
    gap: (b, S) pruned positions skipped just before each step (the position map); A: (E, N)
    D, delta_bias, delta_fill: (E,)          B_bias: (Tp, N) shared, or (b, Tp, N), added to B's rows
    u_idx, p_idx, o_idx: integer (b, S), or (S,) shared by the batch, or None: row t (row S-1-t with `reverse`)
Semantics: y_t is `ops.selective_scan` (its docstring is the definition of the recurrence) over the steps' inputs;
then out[o_row(t)] = out_scale · (acc[o_row(t)] + y_t) · silu(z[o_row(t)]), acc and z optional. o_idx must visit
every output row once (a permutation of 0..S-1 per image): each scan order visits every kept token once.

Why this form: the matmuls produce (b, tokens, channels), so a scan that reads rows through indices needs no
transposes, flips or gathers in memory. Vim's backward direction is `reverse=True` over the kept tokens;
PlainMamba's zig-zag orders and GroupMamba's column orders are index streams; PlainMamba's pairing of u at token
o[t] with Δ/B/C at raster token t (docs/plainmamba-scan-pairing.md) is u_idx ≠ p_idx.

CUDA tensors without a gradient go to one Triton kernel (kernels/token_scan.py). Everything else (CPU, float64,
training) runs `token_scan_ref`: gathers, `ops.selective_scan` (the channel-major Triton kernels with their backward
on CUDA, the PyTorch reference on CPU), a scatter. Under torch.compile the Triton forward is an opaque custom op.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._kernels import kernel_module
from .selective_scan import current_backend, selective_scan


def _rows(x: Tensor, idx: Optional[Tensor], S: int, reverse: bool) -> Tensor:
    """(b, S, C): the rows of x that steps 0..S-1 read."""
    if idx is None:
        return x[:, :S].flip(1) if reverse else x[:, :S]
    idx = idx.long()
    if idx.dim() == 1:
        return x[:, idx]
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))


def _place(y: Tensor, idx: Optional[Tensor], reverse: bool) -> Tensor:
    """Step outputs (b, S, C) → output rows (b, S, C)."""
    if idx is None:
        return y.flip(1) if reverse else y
    idx = idx.long()
    if idx.dim() == 1:
        idx = idx.expand(y.shape[0], -1)
    return torch.zeros_like(y).scatter(1, idx[..., None].expand_as(y), y)


def _steps(u: Tensor, u_idx, p_idx, o_idx) -> int:
    for idx in (o_idx, u_idx, p_idx):
        if idx is not None:
            return int(idx.shape[-1])
    return int(u.shape[1])


def token_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, B_bias=None, gap=None, delta_fill=None,
                   u_idx=None, p_idx=None, o_idx=None, reverse=False, acc=None, out_scale=1.0,
                   delta_softplus=True, a_is_log=False, backend: Optional[str] = None) -> Tensor:
    """The definition, differentiable: gather each step's rows, scan channel-major, place the outputs."""
    if a_is_log:
        A = -torch.exp(A)
    S = _steps(u, u_idx, p_idx, o_idx)
    us = _rows(u, u_idx, S, reverse).transpose(1, 2)                      # (b, E, S) in step order
    dts = _rows(delta, p_idx, S, reverse).transpose(1, 2)
    Bs = _rows(B, p_idx, S, reverse).transpose(1, 2)                      # (b, N, S)
    Cs = _rows(C, p_idx, S, reverse).transpose(1, 2)
    Bb = None
    if B_bias is not None:
        full = B_bias.expand(u.shape[0], *B_bias.shape[-2:]) if B_bias.dim() == 2 else B_bias
        Bb = _rows(full, p_idx, S, reverse).transpose(1, 2)
    y = selective_scan(us, dts, A, Bs, Cs, D, None, delta_bias, delta_softplus, Bb, gap, delta_fill,
                       backend=backend)
    out = _place(y.transpose(1, 2), o_idx, reverse)                       # (b, S, E) in output rows
    if acc is not None:
        out = acc + out
    if z is not None:
        out = out * F.silu(z)
    if out_scale != 1.0:
        out = out * out_scale
    return out


def token_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, B_bias=None, gap=None, delta_fill=None,
               u_idx=None, p_idx=None, o_idx=None, reverse=False, acc=None, out_scale=1.0, delta_softplus=True,
               a_is_log=False, backend: Optional[str] = None) -> Tensor:
    """Dispatch: the fused Triton forward for CUDA inference, `token_scan_ref` otherwise (module docstring).

    a_is_log: A holds the parameter A_log and the scan uses -exp(A_log) (the kernel caches its copy of it)."""
    name = backend or current_backend()
    if name == "auto":
        name = "triton" if u.is_cuda else "reference"
    tensors = (u, delta, A, B, C, D, z, delta_bias, B_bias, gap, delta_fill, acc)
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    fused = (name == "triton" and not grad and not torch.jit.is_tracing()
             and all(t is None or t.dtype != torch.float64 for t in tensors))
    args = (u, delta, A, B, C, D, z, delta_bias, B_bias, gap, delta_fill, u_idx, p_idx, o_idx, bool(reverse), acc,
            float(out_scale), bool(delta_softplus), bool(a_is_log))
    if not fused:
        return token_scan_ref(*args, backend=name)
    if torch.compiler.is_compiling():
        return _compiled_op()(*args)
    return kernel_module("token_scan").token_scan_triton(*args)


_OP = None


def _compiled_op():
    """The Triton forward as a torch.library custom op, so torch.compile treats it as one opaque call."""
    global _OP
    if _OP is None:
        @torch.library.custom_op("ssmprune::token_scan", mutates_args=())
        def op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
               z: Optional[Tensor], delta_bias: Optional[Tensor], B_bias: Optional[Tensor], gap: Optional[Tensor],
               delta_fill: Optional[Tensor], u_idx: Optional[Tensor], p_idx: Optional[Tensor],
               o_idx: Optional[Tensor], reverse: bool, acc: Optional[Tensor], out_scale: float,
               delta_softplus: bool, a_is_log: bool) -> Tensor:
            return kernel_module("token_scan").token_scan_triton(u, delta, A, B, C, D, z, delta_bias, B_bias, gap,
                                                                 delta_fill, u_idx, p_idx, o_idx, reverse, acc,
                                                                 out_scale, delta_softplus, a_is_log)

        @op.register_fake
        def _(u, delta, A, B, C, D, z, delta_bias, B_bias, gap, delta_fill, u_idx, p_idx, o_idx, reverse, acc,
              out_scale, delta_softplus, a_is_log):
            S = _steps(u, u_idx, p_idx, o_idx)
            return u.new_empty((u.shape[0], S, u.shape[2]))

        _OP = op
    return _OP
