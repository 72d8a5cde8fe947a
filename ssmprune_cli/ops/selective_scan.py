"""Mamba-1 selective scan as the vision models use it: dispatch point plus PyTorch references.

Shapes (b batch, e channels, n state size, l steps):
    u, delta, z: (b, e, l)      A: (e, n)        B, C: (b, n, l)
    D, delta_bias, delta_fill: (e,)              B_bias: (n, l) or (b, n, l)
    gap: (b, l), pruned positions skipped just before each step (the aligned-pruning position map)

Semantics (DESIGN 2.1 / 2.3):
    dt    = softplus(delta + delta_bias)            (no softplus when delta_softplus=False)
    dt_a  = dt + gap * delta_fill                   (decay stream; equals dt when gap is None)
    h_t   = exp(dt_a_t * A) h_{t-1} + dt_t * (B_t + B_bias_t) * u_t
    y_t   = C_t . h_t + D * u_t ;   out = y * silu(z) when z is given
Computation runs in float32, or float64 when the inputs are float64; the output has u's dtype.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._kernels import kernel_module

_BACKENDS = ("auto", "triton", "reference", "exact")
_backend = os.environ.get("SSMPRUNE_SCAN_BACKEND", "auto")


@contextlib.contextmanager
def scan_backend(name: str) -> Iterator[None]:
    """Force a backend: 'auto' (Triton on CUDA, chunked reference elsewhere), 'triton', 'reference' or 'exact'."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"unknown scan backend {name!r}; choose one of {', '.join(_BACKENDS)}")
    previous, _backend = _backend, name
    try:
        yield
    finally:
        _backend = previous


def current_backend() -> str:
    return _backend


def resolve_backend(backend: Optional[str], t: Tensor) -> str:
    """The backend an op runs for tensor `t`: `backend`, else the switch above; 'auto' means the Triton kernels on
    CUDA and the PyTorch reference elsewhere."""
    name = backend or _backend
    if name == "auto":
        name = "triton" if t.is_cuda else "reference"
    return name


def index_kernel_applies(t: Tensor, backend: Optional[str]) -> bool:
    """Whether an index-building op (layout maps, token selection) runs its Triton kernel for `t`: the Triton
    backend, and neither `torch.jit` tracing (fvcore) nor `torch.compile` (both take the PyTorch forms)."""
    name = resolve_backend(backend, t)
    if name not in ("triton", "reference", "exact"):
        raise ValueError(f"unknown backend {name!r}; choose one of auto, triton, reference, exact")
    return name == "triton" and not torch.jit.is_tracing() and not torch.compiler.is_compiling()


_shapes_only = False


@contextlib.contextmanager
def traced_scan_shapes_only() -> Iterator[None]:
    """While tracing to count FLOPs: the traced scan returns a tensor of the right shape without computing it
    (counts depend on shapes only, and the CPU reference is slow on full-size models)."""
    global _shapes_only
    previous, _shapes_only = _shapes_only, True
    try:
        yield
    finally:
        _shapes_only = previous


def _compute_dtype(*tensors: Optional[Tensor]) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        if t is not None and t.dtype == torch.float64:
            dtype = torch.float64
    return dtype


def _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus, B_bias, gap, delta_fill):
    """Discretisation shared by both references: returns dt (input stream), log-decay, B, C in compute dtype."""
    dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias, delta_fill)
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)  # threshold 20, as the CUDA kernels
    dt_decay = dt
    if gap is not None and delta_fill is not None:
        dt_decay = dt + gap.to(dtype)[:, None, :] * delta_fill.to(dtype)[None, :, None]
    Bf = B.to(dtype)
    if B_bias is not None:
        Bf = Bf + B_bias.to(dtype)
    return dtype, dt, dt_decay, A.to(dtype), Bf, C.to(dtype)


def _finish(y, u, D, z, dtype, out_dtype):
    if D is not None:
        y = y + u.to(dtype) * D.to(dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(out_dtype)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True,
                       B_bias=None, gap=None, delta_fill=None) -> Tensor:
    """The definition: one exact loop over the steps. Slow; use it to check everything else."""
    dtype, dt, dt_decay, A, Bf, Cf = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                              B_bias, gap, delta_fill)
    b, e, l = u.shape
    uf = u.to(dtype)
    h = u.new_zeros((b, e, A.shape[1]), dtype=dtype)
    ys = []
    for t in range(l):
        decay = torch.exp(dt_decay[:, :, t, None] * A)                     # (b, e, n)
        h = decay * h + (dt[:, :, t] * uf[:, :, t])[:, :, None] * Bf[:, None, :, t]
        ys.append(torch.einsum("ben,bn->be", h, Cf[:, :, t]))
    y = torch.stack(ys, dim=-1) if ys else uf.new_zeros((b, e, 0))
    return _finish(y, u, D, z, dtype, u.dtype)


@functools.lru_cache(maxsize=32)
def _tri_masks(T: int, device: torch.device) -> Tuple[Tensor, Tensor]:
    """(not strictly lower, not lower-or-diagonal) masks, built once per chunk length and device.

    Built outside inference mode: a cached inference tensor could not be saved for a later backward."""
    with torch.inference_mode(False):
        ones = torch.ones(T, T, dtype=torch.bool, device=device)
        return ~ones.tril(-1), ~ones.tril(0)


def _segsum(a: Tensor) -> Tensor:
    """seg[..., t, s] = sum_{s < j <= t} a_j for s <= t, -inf above the diagonal.

    Summed directly (not as a difference of cumulative sums), so large |a| neither overflows nor cancels.
    """
    T = a.shape[-1]
    not_strict, not_keep = _tri_masks(T, a.device)
    x = a[..., :, None].expand(*a.shape, T).masked_fill(not_strict, 0.0)  # x[..., j, s] = a_j for j > s
    return x.cumsum(dim=-2).masked_fill(not_keep, float("-inf"))         # sum over s < j <= t


def selective_scan_chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True,
                           B_bias=None, gap=None, delta_fill=None, chunk: int = 8) -> Tensor:
    """Same result as the loop, chunk by chunk with dense (T x T) decay matrices.

    Fewer Python steps than the loop (L / T instead of L) for T times the arithmetic: faster for narrow scans
    over long sequences (GroupMamba's grouped scans, N = 1), slower for wide ones; `selective_scan` picks.
    """
    dtype, dt, dt_decay, A, Bf, Cf = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                              B_bias, gap, delta_fill)
    b, e, l = u.shape
    n = A.shape[1]
    uf = u.to(dtype)
    a_all = dt_decay[:, :, None, :] * A[None, :, :, None]                     # (b, e, n, l) log-decay
    x_all = (dt * uf)[:, :, None, :] * Bf[:, None, :, :]                      # (b, e, n, l) input term
    h = uf.new_zeros((b, e, n, 1))
    ys = []
    for s in range(0, l, chunk):
        sl = slice(s, min(s + chunk, l))
        a, x = a_all[..., sl], x_all[..., sl]
        w = torch.exp(_segsum(a))                                              # (b, e, n, T, T)
        H = torch.matmul(w, x.unsqueeze(-1)).squeeze(-1) + torch.exp(a.cumsum(-1)) * h
        ys.append((H * Cf[:, None, :, sl]).sum(2))                              # (b, e, T)
        h = H[..., -1:]
    y = torch.cat(ys, dim=-1) if ys else uf.new_zeros((b, e, 0))
    return _finish(y, u, D, z, dtype, u.dtype)


# Below this many (batch x channel x state) scan lanes the chunked form beats the loop on CPU.
_CHUNKED_MAX_LANES = 8192


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True,
                   B_bias=None, gap=None, delta_fill=None, backend: Optional[str] = None) -> Tensor:
    """The scan every model calls. CUDA tensors go to the Triton kernels, CPU tensors to the chunked reference;
    `backend` (or `scan_backend(...)` / $SSMPRUNE_SCAN_BACKEND) forces one."""
    name = resolve_backend(backend, u)
    if torch.jit.is_tracing():
        absent = u.new_empty(0)
        opt = [absent if t is None else t for t in (D, z, delta_bias, B_bias, gap, delta_fill)]
        return TracedScan.apply(u, delta, A, B, C, *opt, delta_softplus, name)
    return _run(name, u, delta, A, B, C, D, z, delta_bias, delta_softplus, B_bias, gap, delta_fill)


class TracedScan(torch.autograd.Function):
    """While tracing (fvcore, torch.jit.trace) the scan is this one op, `prim::PythonOp.TracedScan`, so a FLOP
    counter sees one call, not the backend's internals. Tensor inputs keep fixed positions: (u, delta, A, B, C,
    D, z, delta_bias, B_bias, gap, delta_fill), an absent one as an empty (0,) tensor."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, B_bias, gap, delta_fill, delta_softplus, name):
        if _shapes_only:
            return u.clone()
        D, z, delta_bias, B_bias, gap, delta_fill = (None if t.shape == (0,) else t
                                                     for t in (D, z, delta_bias, B_bias, gap, delta_fill))
        return _run(name, u, delta, A, B, C, D, z, delta_bias, delta_softplus, B_bias, gap, delta_fill)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("the traced scan is for counting and export; train without torch.jit tracing")


def _run(name, *args) -> Tensor:
    if name == "triton" and not any(isinstance(t, Tensor) and t.dtype == torch.float64 for t in args):
        return kernel_module("selective_scan_fn").selective_scan_triton(*args)
    if name == "triton":
        name = "reference"  # float64 stays exact: the kernels compute in float32
    if name == "exact":
        return selective_scan_ref(*args)
    if name == "reference":
        b, e, _ = args[0].shape
        # On a GPU, fewer launches win; on the CPU the loop wins once the lanes amortise its per-step cost.
        if args[0].is_cuda or b * e * args[2].shape[1] <= _CHUNKED_MAX_LANES:
            return selective_scan_chunked(*args)
        return selective_scan_ref(*args)
    raise ValueError(f"unknown scan backend {name!r}; choose one of {', '.join(_BACKENDS)}")
