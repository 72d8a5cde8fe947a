"""The Triton selective scan as a torch.autograd.Function: argument preparation, launches and gradients.

Shapes and semantics are those of `ssmprune_cli.ops.selective_scan` (its docstring is the definition). The kernels
compute in float32 whatever the input dtypes; outputs and input gradients come back in their inputs' dtypes.
Float64 inputs go to the PyTorch reference instead, which keeps float64.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from ssmprune_cli.errors import BadInputError

from . import SCAN_FUNCTION_NAME  # noqa: F401  (the class name below must match it)
from . import selective_scan_kernels as K

# Launch shapes: channels per program and warps, measured on the H200 (docs/benchmarks.md; benchmarks/scan.py
# --variants compares others). "fwd" and "bwd": each thread holds 4 states x BE/(8*warps) channels; one-warp programs
# measured fastest. "fwd_tpc": the inference forward for 16-bit activations, one channel per thread (BE = 32 x
# warps), taken when the grid gives every SM at least `min_warps_per_sm` warps: with fewer it is latency-starved
# (1.66 ms against 1.01 ms at b=8, e=2048, l=4096), and in float32 or with states saved it measured slower too.
LAUNCH: Dict[str, Dict[str, int]] = {"fwd": {"BE": 16, "num_warps": 1}, "bwd": {"BE": 16, "num_warps": 1},
                                     "fwd_tpc": {"BE": 32, "num_warps": 1, "min_warps_per_sm": 8}}

_TILE = 8  # the forwards' steps per tile; B and C copies are padded to a multiple of it
_PACK_STEPS = 64  # steps per program of the B/C copy kernel


def _empty(shape, dtype, device) -> Tensor:
    """Every buffer a kernel must fill completely (tests swap in a NaN-filled version to catch gaps)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _rows(x: Tensor) -> Tensor:
    """The kernels need the step axis contiguous; other strides are passed through."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _vec(x: Optional[Tensor]) -> Optional[Tensor]:
    return None if x is None else x.detach().float().contiguous()


def _cdiv(a: int, b: int) -> int:
    # triton.cdiv is a constexpr function: called from Python it costs ~7 us a time (a fifth of the launcher)
    return -(-a // b)


def _padded_states(N: int) -> int:
    return max(2, 1 << (N - 1).bit_length())


def _bc_copies(B: Tensor, C: Tensor, B_bias: Optional[Tensor], NP: int, Lp: int) -> Tuple[Tensor, Tensor]:
    """(b, Lp, NP) float32 copies of B + B_bias and C, zero-padded: one 16-byte row per step and state block.
    One kernel writes both (on the host side this is one launch instead of about six tensor operations)."""
    b, n, l = (int(s) for s in B.shape)
    Bt = torch.empty((b, Lp, NP), dtype=torch.float32, device=B.device)
    Ct = torch.empty((b, Lp, NP), dtype=torch.float32, device=B.device)
    X = B if B_bias is None else B_bias
    xs = (0, *X.stride()) if X.dim() == 2 else X.stride()  # a shared (n, l) bias has no batch stride
    K._pack_bc_kernel[(_cdiv(Lp, _PACK_STEPS), b)](
        B, C, X, Bt, Ct, n, l, Lp, *B.stride(), *C.stride(), *xs,
        NP=NP, BL=_PACK_STEPS, HAS_X=B_bias is not None, num_warps=4)
    return Bt, Ct


def _scaled_transpose(A: Tensor) -> Tensor:
    """(n, e) float32 copy of A * log2(e), e contiguous: what the one-channel-per-thread forward reads."""
    e, n = (int(s) for s in A.shape)
    return torch.mul(A.t().float(), K.LOG2E, out=torch.empty((n, e), dtype=torch.float32, device=A.device))


def _flags(D, z, delta_bias, delta_softplus, gap, delta_fill) -> Dict[str, bool]:
    return {"HAS_D": D is not None, "HAS_Z": z is not None, "HAS_BIAS": delta_bias is not None,
            "SOFTPLUS": bool(delta_softplus), "HAS_GAP": gap is not None and delta_fill is not None,
            "FAST": not K.INTERPRET}


class SelectiveScanFn(torch.autograd.Function):
    """Forward and backward of the selective scan through the Triton kernels (argument order as
    `ops.selective_scan`, plus `save`: keep the 4-step states for a backward)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, B_bias, gap, delta_fill, save):
        b, e, l = (int(s) for s in u.shape)  # ints even under jit tracing, where shapes are traced tensors
        N = int(A.shape[1])
        NP = _padded_states(N)
        Lp = _cdiv(max(l, 1), _TILE) * _TILE
        u, delta = _rows(u), _rows(delta)
        z = None if z is None else _rows(z)
        gap = None if gap is None else _rows(gap)
        A = A.detach()
        Bt, Ct = _bc_copies(B.detach(), C.detach(), None if B_bias is None else B_bias.detach(), NP, Lp)
        Dv, bias, fill = _vec(D), _vec(delta_bias), _vec(delta_fill)
        flags = _flags(D, z, delta_bias, delta_softplus, gap, delta_fill)
        out = _empty((b, e, l), u.dtype, u.device)
        hs = _empty((b, Lp // K.CHECKPOINT, e, NP), torch.float32, u.device) if save else Bt
        if l > 0:
            common = (l, e, Lp, N)
            strides = (u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), *_bstrides(z), *_gstride(gap))
            opt = _or(Dv, Bt), _or(z, u), _or(bias, Bt), _or(gap, u), _or(fill, Bt)
            if _use_tpc(u, save, b, e):
                cfg = LAUNCH["fwd_tpc"]
                K._fwd_kernel_tpc[(_cdiv(e, cfg["BE"]), b)](
                    u, delta, _scaled_transpose(A), Bt, Ct, *opt, out, *common, e, *strides,
                    BE=cfg["BE"], NP=NP, num_warps=cfg["num_warps"], **_extra(cfg), **flags)
            else:
                cfg = LAUNCH["fwd"]
                K._fwd_kernel_rows[(_cdiv(e, cfg["BE"]), b)](
                    u, delta, A, Bt, Ct, *opt, out, hs, *common, A.stride(1), A.stride(0), *strides,
                    BE=cfg["BE"], NP=NP, SAVE=bool(save), num_warps=cfg["num_warps"], **_extra(cfg), **flags)
        if save:
            ctx.save_for_backward(u, delta, A, Bt, Ct, Dv, z, bias, gap, fill, hs)
            ctx.meta = (N, NP, Lp, flags, A.dtype, B.dtype, C.dtype, B_bias is not None and B_bias.dim() == 2,
                        None if D is None else D.dtype, None if delta_bias is None else delta_bias.dtype,
                        None if delta_fill is None else delta_fill.dtype)
        return out

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, Bt, Ct, Dv, z, bias, gap, fill, hs = ctx.saved_tensors
        N, NP, Lp, flags, A_dt, B_dt, C_dt, shared_bias, D_dt, bias_dt, fill_dt = ctx.meta
        b, e, l = (int(s) for s in u.shape)
        dout = _rows(dout)
        f32 = {"dtype": torch.float32, "device": u.device}
        du = _empty((b, e, l), u.dtype, u.device)
        ddelta = _empty((b, e, l), delta.dtype, u.device)
        dz = _empty((b, e, l), z.dtype, u.device) if z is not None else None
        dBt, dCt = torch.zeros((b, Lp, NP), **f32), torch.zeros((b, Lp, NP), **f32)
        dA2 = torch.zeros((e, NP), **f32)
        dD, dbias, dfill = (torch.zeros((e,), **f32) if t is not None else None for t in (Dv, bias, fill))
        cfg = LAUNCH["bwd"]
        if l > 0:
            K._bwd_kernel[(_cdiv(e, cfg["BE"]), b)](
                u, delta, A, Bt, Ct, _or(Dv, Bt), _or(z, u), _or(bias, Bt), _or(gap, u), _or(fill, Bt), hs, dout,
                du, ddelta, _or(dz, du), dBt, dCt, dA2, _or(dD, dA2), _or(dbias, dA2), _or(dfill, dA2),
                l, e, Lp, N, A.stride(1), A.stride(0),
                u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), *_bstrides(z), *_gstride(gap),
                dout.stride(0), dout.stride(1),
                BE=cfg["BE"], NP=NP, num_warps=cfg["num_warps"], **_extra(cfg), **flags)
        dBfull = dBt[:, :l, :N].transpose(1, 2)
        dB = dBfull.to(B_dt)
        dC = dCt[:, :l, :N].transpose(1, 2).to(C_dt)
        dB_bias = None
        if ctx.needs_input_grad[9]:
            dB_bias = dBfull.sum(0) if shared_bias else dBfull
        return (du, ddelta, dA2[:, :N].to(A_dt), dB, dC, _cast(dD, D_dt), dz, _cast(dbias, bias_dt), None,
                dB_bias, None, _cast(dfill, fill_dt), None)


def _use_tpc(u: Tensor, save: bool, b: int, e: int) -> bool:
    """Whether the one-channel-per-thread forward serves this call (LAUNCH["fwd_tpc"] says when)."""
    cfg = LAUNCH["fwd_tpc"]
    if save or u.dtype not in (torch.bfloat16, torch.float16):
        return False
    if cfg["BE"] != 32 * cfg["num_warps"]:
        raise ValueError("the one-channel-per-thread forward needs BE = 32 x num_warps")
    sms = _sm_count(u.device.index if u.device.index is not None else torch.cuda.current_device()) if u.is_cuda else 1
    return b * _cdiv(e, cfg["BE"]) * cfg["num_warps"] >= cfg["min_warps_per_sm"] * sms


@functools.lru_cache(maxsize=None)
def _sm_count(device: int) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _extra(cfg: Dict[str, int]) -> Dict[str, int]:
    """A launch entry's kernel options beyond its shape (benchmark variants set them; see benchmarks/scan.py)."""
    return {k: v for k, v in cfg.items() if k not in ("BE", "num_warps", "min_warps_per_sm")}


def _or(x: Optional[Tensor], dummy: Tensor) -> Tensor:
    """Absent optional inputs: any valid pointer; the kernel's flags keep it unread."""
    return dummy if x is None else x


def _bstrides(z: Optional[Tensor]) -> Tuple[int, int]:
    return (0, 0) if z is None else (z.stride(0), z.stride(1))


def _gstride(gap: Optional[Tensor]) -> Tuple[int]:
    return (0,) if gap is None else (gap.stride(0),)


def _cast(x: Optional[Tensor], dtype) -> Optional[Tensor]:
    return None if x is None else x.to(dtype)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True, B_bias=None,
                          gap=None, delta_fill=None) -> Tensor:
    """`ops.selective_scan` on the GPU (or under TRITON_INTERPRET=1), differentiable in every input but gap.
    float32 / bfloat16 / float16 only: `ops.selective_scan` sends float64 to its exact reference."""
    tensors = (u, delta, A, B, C, D, z, delta_bias, B_bias, gap, delta_fill)
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        raise BadInputError("the Triton scan computes in float32; ops.selective_scan runs float64 on the reference")
    if not (u.is_cuda or K.INTERPRET):
        raise BadInputError("the Triton scan needs CUDA tensors; use the 'reference' scan backend on the CPU")
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    with torch.cuda.device(u.device) if u.is_cuda else contextlib.nullcontext():
        return SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, B_bias, gap, delta_fill,
                                     save)
