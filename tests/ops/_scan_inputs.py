"""Random scan inputs shared by the op tests: tiny shapes, every optional argument switchable."""

from __future__ import annotations

from typing import Dict, List, Optional

import torch

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "delta_softplus", "B_bias", "gap", "delta_fill")


def make_inputs(b: int, e: int, n: int, l: int, *, D=True, z=True, bias=True, softplus=True,
                B_bias: Optional[str] = "shared", gap=True, act_dtype=torch.float32, device="cpu",
                big_delta: bool = False) -> List:
    """Arguments of `selective_scan` in order. Activations (u, delta, B, C, z) in `act_dtype`, the rest float32.

    B_bias: None, 'shared' (n, l) or 'batch' (b, n, l). big_delta draws pre-activations up to ~40, so dt reaches
    the linear branch of softplus and decays underflow.
    """
    act = {"dtype": act_dtype, "device": device}
    f32 = {"dtype": torch.float32, "device": device}
    delta = torch.randn(b, e, l, **f32) * (12.0 if big_delta else 1.0) + (15.0 if big_delta else -1.0)
    return [
        torch.randn(b, e, l, **f32).to(**act),
        delta.to(**act),
        -torch.exp(torch.randn(e, n, **f32) * 0.5 + 0.5),
        torch.randn(b, n, l, **f32).to(**act),
        torch.randn(b, n, l, **f32).to(**act),
        torch.randn(e, **f32) if D else None,
        torch.randn(b, e, l, **f32).to(**act) if z else None,
        torch.randn(e, **f32) * 0.5 if bias else None,
        softplus,
        {None: None, "shared": torch.randn(n, l, **f32) * 0.3, "batch": torch.randn(b, n, l, **f32) * 0.3}[B_bias],
        torch.randint(0, 4, (b, l), device=device).to(act_dtype) if gap else None,
        torch.rand(e, **f32) * 0.5 if gap else None,
    ]


def leaves(args: List, dtype=None, device=None) -> List:
    """Detached copies that require grad (gap excepted: it is a position count), optionally cast/moved."""
    out = []
    for name, a in zip(NAMES, args):
        if not isinstance(a, torch.Tensor):
            out.append(a)
            continue
        a = a.detach().to(device=device or a.device, dtype=dtype or a.dtype)
        out.append(a.requires_grad_(name != "gap"))
    return out


def grads(args: List) -> Dict[str, torch.Tensor]:
    return {n: a.grad for n, a in zip(NAMES, args) if isinstance(a, torch.Tensor) and a.grad is not None}


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref|| / ||ref|| in float64; NaN anywhere gives inf, so unwritten (poisoned) elements fail."""
    x, ref = x.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(x).all():
        return float("inf")
    return ((x - ref).norm() / ref.norm().clamp_min(1e-300)).item()
