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

Rows and gradients: u_idx and p_idx may repeat rows (the gradients of a row read by several steps add up); rows
that no step reads get zero gradient. gap and the index streams get no gradient; delta_fill gets one (the 'bias'
fill computes Δ̂ from the dt bias, a parameter).

Dispatch (backend 'triton', or 'auto' on CUDA): CUDA tensors go to the fused Triton kernels, without a gradient
to the inference forward (kernels/token_scan.py), with one to `TokenScanFn` (kernels/token_scan_bwd.py: the same
forward saving the state every 4 steps, and a backward kernel that reads rows through the same streams). Everything
else (CPU, float64, tracing) runs `token_scan_ref`: gathers, `ops.selective_scan` (the channel-major Triton kernels
on CUDA, the PyTorch reference on CPU), a scatter. Under torch.compile the fused paths are opaque custom ops: the
inference forward, and for training a forward and a backward op tied by `register_autograd`.
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._kernels import kernel_module
from .profiling import op_range
from .selective_scan import resolve_backend, selective_scan


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
    """Dispatch: the fused Triton kernels on CUDA (forward, or forward and backward when a gradient is needed),
    `token_scan_ref` otherwise (module docstring).

    a_is_log: A holds the parameter A_log and the scan uses -exp(A_log) (the kernel caches its copy of it)."""
    name = resolve_backend(backend, u)
    tensors = (u, delta, A, B, C, D, z, delta_bias, B_bias, gap, delta_fill, acc)
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    fused = (name == "triton" and not torch.jit.is_tracing()
             and all(t is None or t.dtype != torch.float64 for t in tensors))
    args = (u, delta, A, B, C, D, z, delta_bias, B_bias, gap, delta_fill, u_idx, p_idx, o_idx, bool(reverse), acc,
            float(out_scale), bool(delta_softplus), bool(a_is_log))
    if torch.compiler.is_compiling() and fused:
        return _compiled_train_op()(*args)[0] if grad else _compiled_op()(*args)
    with op_range("ssmprune::token_scan"):   # the forward launch; the backward runs later, from autograd
        if not fused:
            return token_scan_ref(*args, backend=name)
        if grad:
            return kernel_module("token_scan_bwd").token_scan_train(*args)
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


_TRAIN_OP = None

# token_scan's differentiable tensor arguments, by position, and their order in the backward op's result
_GRAD_ARGS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 15)


def _compiled_train_op():
    """The training path as two torch.library custom ops, the fused forward (returning the output and what the
    backward reads) and the fused backward, tied by `register_autograd`: torch.compile treats each as one opaque
    call and AOTAutograd differentiates through the formula."""
    global _TRAIN_OP
    if _TRAIN_OP is None:
        @torch.library.custom_op("ssmprune::token_scan_train", mutates_args=())
        def fwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
                delta_bias: Optional[Tensor], B_bias: Optional[Tensor], gap: Optional[Tensor],
                delta_fill: Optional[Tensor], u_idx: Optional[Tensor], p_idx: Optional[Tensor],
                o_idx: Optional[Tensor], reverse: bool, acc: Optional[Tensor], out_scale: float,
                delta_softplus: bool, a_is_log: bool) -> List[Tensor]:
            kernels = kernel_module("token_scan_bwd")
            return list(kernels.train_forward(u, delta, A, B, C, D, z, delta_bias, B_bias, gap, delta_fill, u_idx,
                                              p_idx, o_idx, reverse, acc, out_scale, delta_softplus, a_is_log))

        @fwd.register_fake
        def _(u, delta, A, B, C, D, z, delta_bias, B_bias, gap, delta_fill, u_idx, p_idx, o_idx, reverse, acc,
              out_scale, delta_softplus, a_is_log):
            b, E, Tp, N = u.shape[0], u.shape[2], delta.shape[1], A.shape[1]
            S = _steps(u, u_idx, p_idx, o_idx)
            NP = max(2, 1 << (int(N) - 1).bit_length())
            Lp = -(-max(int(Tp), 1) // 8) * 8
            f32 = dict(dtype=torch.float32)
            return [u.new_empty((b, S, E)), u.new_empty((b, -(-S // 4), NP if N > 1 else 1, E), **f32),
                    u.new_empty((b, Lp, NP), **f32), u.new_empty((b, Lp, NP), **f32)]

        @torch.library.custom_op("ssmprune::token_scan_train_bwd", mutates_args=())
        def bwd(dout: Tensor, hs: Tensor, Bt: Tensor, Ct: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor,
                C: Tensor, D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
                B_bias: Optional[Tensor], gap: Optional[Tensor], delta_fill: Optional[Tensor],
                u_idx: Optional[Tensor], p_idx: Optional[Tensor], o_idx: Optional[Tensor], reverse: bool,
                acc: Optional[Tensor], out_scale: float, delta_softplus: bool, a_is_log: bool) -> List[Tensor]:
            args = (u, delta, A, B, C, D, z, delta_bias, B_bias, gap, delta_fill, u_idx, p_idx, o_idx, reverse, acc)
            kernels = kernel_module("token_scan_bwd")
            grads = kernels.train_backward(dout, hs, Bt, Ct, *args, out_scale, delta_softplus, a_is_log)
            # every present input gets a tensor (an op returns no None): a zero one where the formula has none
            return [dout.new_empty(0) if args[i] is None else
                    (grads[i] if grads[i] is not None else torch.zeros_like(args[i])) for i in _GRAD_ARGS]

        @bwd.register_fake
        def _(dout, hs, Bt, Ct, u, delta, A, B, C, D, z, delta_bias, B_bias, gap, delta_fill, u_idx, p_idx, o_idx,
              reverse, acc, out_scale, delta_softplus, a_is_log):
            args = (u, delta, A, B, C, D, z, delta_bias, B_bias, gap, delta_fill, u_idx, p_idx, o_idx, reverse, acc)
            return [dout.new_empty(0) if args[i] is None else torch.empty_like(args[i]) for i in _GRAD_ARGS]

        def setup_context(ctx, inputs, output):
            _out, hs, Bt, Ct = output
            tensors = [inputs[i] for i in range(19) if i not in (14, 16, 17, 18)]
            ctx.save_for_backward(hs, Bt, Ct, *tensors)
            ctx.flags = (inputs[14], inputs[16], inputs[17], inputs[18])

        def backward(ctx, douts):
            dout = douts[0]                             # the saved states and copies have no gradient
            hs, Bt, Ct, *t = ctx.saved_tensors
            reverse, out_scale, delta_softplus, a_is_log = ctx.flags
            got = bwd(dout.contiguous(), hs, Bt, Ct, *t[:14], reverse, t[14], out_scale, delta_softplus, a_is_log)
            present = t[:14] + [None, t[14]]            # inputs by position 0..15 (14 is the flag `reverse`)
            grads = [None] * 19
            for g, i in zip(got, _GRAD_ARGS):
                grads[i] = g if present[i] is not None else None
            return tuple(grads)

        fwd.register_autograd(backward, setup_context=setup_context)
        _TRAIN_OP = fwd
    return _TRAIN_OP


# Registered at import (12 ms, no triton import): a first registration inside a compiled region would be traced by
# dynamo, which cannot trace it (a graph break, or an error under fullgraph=True).
_compiled_op()
_compiled_train_op()
