"""Residual add + normalisation (+ gate) in one op: dispatch point and PyTorch reference.

Shapes: x, residual, gate: (..., D), any leading shape; rows may be strided as long as the last dim is contiguous
(a column slice `t[..., :D]` is read in place). weight, bias: (D,); or grouped, (G, D): x is (G, ..., D) and
x[g]'s rows take weight[g] and bias[g] (GroupMamba's four out_norms in one launch; the kernels run it forwards
only, so with gradients to compute it takes the reference).

Semantics (`add_norm_ref` is the definition):
    s      = x + residual                 (x when residual is None), in float32; float64 if any input is float64
    normed = s * rsqrt(mean(s^2) + eps) * weight (+ bias)                       kind="rms"   (mamba_ssm's RMSNorm)
    normed = (s - mean(s)) * rsqrt(var(s) + eps) * weight (+ bias)              kind="layer" (torch's LayerNorm,
                                                                                              biased variance)
    out    = normed * gate                (when a gate is given: GroupMamba's `out_norm(y) * silu(z)`), in out_dtype;
                                          with gate_act="silu" the gate is silu(gate), computed in float32 inside
                                          the op (one pass over z instead of a separate silu kernel)
Returns (out, residual_out):
    out_dtype defaults to x.dtype.
    residual_out is s in residual_dtype. It is returned whenever a residual is given, and when residual is None only
    if residual_dtype is given (Vim's first block, where the residual stream starts as the hidden state); otherwise
    it is None and never written. residual_dtype defaults to promote(x.dtype, residual.dtype, float32): Vim's
    residual_in_fp32, which keeps float64 as float64.
Both outputs are differentiable in x, residual, weight, bias and gate; gradients come back in their inputs' dtypes.

Examples, as the models compute them:
    Vim block:   hidden, residual = add_norm(hidden, residual, w, None, eps, "rms")           (residual: float32)
    Vim block 0: hidden, residual = add_norm(hidden, None, w, None, eps, "rms",
                                             residual_dtype=torch.promote_types(hidden.dtype, torch.float32))
    PlainMamba:  h, _ = add_norm(x, None, ln.weight, ln.bias, ln.eps, "layer")   (= layer_norm(x, ...))
    GroupMamba:  y, _ = add_norm(y, None, out_norm.weight, out_norm.bias, out_norm.eps, "layer", gate=z,
                                 gate_act="silu")
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ._kernels import kernel_module
from .profiling import op_range

_KINDS = ("rms", "layer")
_BACKENDS = (None, "auto", "triton", "reference")
MAX_WIDTH = 4096  # widest row the Triton kernels take in one block (kernels/fused_norm.py); wider go to the reference


def _check(x, residual, weight, bias, kind, gate, gate_act=None) -> None:
    if kind not in _KINDS:
        raise ValueError(f"unknown norm kind {kind!r}; choose 'rms' or 'layer'")
    if gate_act not in (None, "silu"):
        raise ValueError(f"unknown gate activation {gate_act!r}; choose None or 'silu'")
    if gate_act is not None and gate is None:
        raise ValueError("add_norm: gate_act needs a gate")
    if torch.jit.is_tracing():  # shapes are traced values there (comparing them warns); eager calls check
        return
    D = x.shape[-1]
    for name, t in (("residual", residual), ("gate", gate)):
        if t is not None and t.shape != x.shape:
            raise ValueError(f"add_norm: {name} has shape {tuple(t.shape)}, x has {tuple(x.shape)}")
    grouped = weight.dim() == 2
    want = (x.shape[0], D) if grouped else (D,)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.shape != want:
            raise ValueError(f"add_norm: {name} has shape {tuple(t.shape)}, expected {want}"
                             + (" (grouped: x's first dim is the group)" if grouped else ""))


def _residual_dtype(x: Tensor, residual: Optional[Tensor], residual_dtype: Optional[torch.dtype]
                    ) -> Optional[torch.dtype]:
    """The residual output's dtype, or None when there is none (see the module docstring)."""
    if residual_dtype is not None:
        return residual_dtype
    if residual is None:
        return None
    return torch.promote_types(torch.promote_types(x.dtype, residual.dtype), torch.float32)


def add_norm_ref(x: Tensor, residual: Optional[Tensor], weight: Tensor, bias: Optional[Tensor], eps: float,
                 kind: str, out_dtype: Optional[torch.dtype] = None, residual_dtype: Optional[torch.dtype] = None,
                 gate: Optional[Tensor] = None, backend: Optional[str] = None, gate_act: Optional[str] = None
                 ) -> Tuple[Tensor, Optional[Tensor]]:
    """The definition, in plain differentiable PyTorch (`backend` is accepted and ignored)."""
    _check(x, residual, weight, bias, kind, gate, gate_act)
    dtype = torch.float64 if _any_float64(x, residual, weight, bias, gate) else torch.float32
    s = x.to(dtype) if residual is None else x.to(dtype) + residual.to(dtype)
    if kind == "rms":
        normed = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps)
    else:
        centred = s - s.mean(-1, keepdim=True)
        normed = centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps)
    if weight.dim() == 2:  # grouped: x's first dim picks the row of weight and bias
        per_group = (weight.shape[0],) + (1,) * (x.dim() - 2) + (weight.shape[1],)
        weight, bias = weight.view(per_group), None if bias is None else bias.view(per_group)
    normed = normed * weight.to(dtype)
    if bias is not None:
        normed = normed + bias.to(dtype)
    if gate is not None:
        g = gate.to(dtype)
        normed = normed * (g * torch.sigmoid(g) if gate_act == "silu" else g)
    res_dtype = _residual_dtype(x, residual, residual_dtype)
    return normed.to(out_dtype or x.dtype), None if res_dtype is None else s.to(res_dtype)


def add_norm(x: Tensor, residual: Optional[Tensor], weight: Tensor, bias: Optional[Tensor], eps: float, kind: str,
             out_dtype: Optional[torch.dtype] = None, residual_dtype: Optional[torch.dtype] = None,
             gate: Optional[Tensor] = None, backend: Optional[str] = None, gate_act: Optional[str] = None
             ) -> Tuple[Tensor, Optional[Tensor]]:
    """Fused residual add + RMSNorm / LayerNorm (+ gate); see the module docstring for the semantics.

    backend None / "auto": the Triton kernels for CUDA tensors (rows up to MAX_WIDTH wide), the reference otherwise.
    "triton" forces the kernels (CUDA tensors, or any under TRITON_INTERPRET=1), "reference" the reference.
    Float64 inputs always take the reference (it computes in float64), and so does a torch.jit trace, so that FLOP
    counting sees ordinary (uncounted) elementwise ops instead of a Python op.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"unknown add_norm backend {backend!r}; choose 'auto', 'triton' or 'reference'")
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        use_triton = False  # torch.compile fuses the reference's elementwise chain itself
    elif backend is None or backend == "auto":
        use_triton = x.is_cuda and 0 < x.shape[-1] <= MAX_WIDTH
    else:
        use_triton = backend == "triton"
    if weight.dim() == 2 and torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, residual, weight, bias, gate)):
        use_triton = False  # grouped weights: the kernels run forwards only
    if not use_triton or _any_float64(x, residual, weight, bias, gate):
        return add_norm_ref(x, residual, weight, bias, eps, kind, out_dtype, residual_dtype, gate, gate_act=gate_act)
    _check(x, residual, weight, bias, kind, gate, gate_act)
    with op_range("ssmprune::add_norm"):
        kernels = kernel_module("fused_norm")
        return kernels.add_norm_triton(x, residual, weight, bias, float(eps), kind == "rms", out_dtype or x.dtype,
                                       _residual_dtype(x, residual, residual_dtype), gate, gate_act == "silu")


def _any_float64(*tensors: Optional[Tensor]) -> bool:
    for t in tensors:
        if t is not None and t.dtype == torch.float64:
            return True
    return False


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Weight-only RMSNorm of x's rows (Vim's RMSNorm), in x's dtype: `add_norm` without a residual."""
    return add_norm(x, None, weight, None, eps, "rms")[0]


def layer_norm(x: Tensor, weight: Tensor, bias: Optional[Tensor], eps: float, gate: Optional[Tensor] = None
               ) -> Tensor:
    """LayerNorm of x's rows (then `* gate` when given), in x's dtype: `add_norm` without a residual."""
    return add_norm(x, None, weight, bias, eps, "layer", gate=gate)[0]
