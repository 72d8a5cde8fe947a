"""The aligned Mamba mixer core: the one place that interprets `conv_fill`, `delta_fill` and the position map.

Every family's mixer is in_proj → depthwise conv + SiLU → x_proj / dt_proj → scan(s) → gate → out_proj on
token-major (b, tokens, channels) tensors; the family files keep what differs (token orders, class token, direction
bias, channel groups) and call these functions for the rest:

    depthwise_conv(x, conv, grid, layout)   a depthwise conv (+ activation) at the kept tokens, reading pruned positions
                                            through the layout's fill map (DESIGN 2.3 `conv_fill`); with the taps
                                            given, `depthwise_conv_weights`, also for channel groups in one launch
    scan_plan(layout, length, ...)          one scan order over the kept tokens: index streams and the gap counts
    prepare_orders(layout, specs)           the maps of every order a block scans, in one launch (pruned only)
    scan(mixer, d, u, dt, ..., plan)        the scan of direction d with Δ̂ resolved from `delta_fill`

Dense models pass `layout=None`. With a layout, projections run on kept tokens only; the conv reads each tap
through the fill map (no scatter to full length), and the scan reads rows through index streams with pruned steps
decaying the state by Δ̂ (ops/token_scan.py). Inside `alignment_reference()` the scan runs DESIGN 2.3's reference
semantics instead (scatter, full-length scan with u = 0 and Δ = Δ̂ at pruned steps, gather): tests hold the two
equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmprune_cli.errors import RecipeError
from ssmprune_cli.ops.aligned_scan import aligned_scan_ref
from ssmprune_cli.ops.gather_conv import gather_conv
from ssmprune_cli.ops.token_scan import _place, _rows, token_scan

from .reference_mode import reference_active
from .token_layout import TokenLayout


# ---------------------------------------------------------------------------------------------- convolution
def depthwise_conv(x: Tensor, conv: nn.Module, grid: Tuple[int, int], layout: Optional[TokenLayout], *,
                   causal: bool = False, reverse: bool = False, full_grid: bool = False,
                   act: Optional[str] = None) -> Tensor:
    """Depthwise conv (+ the activation `act`, 'silu' or 'gelu', fused into the conv) of token-major x (b, K, C)
    on an (H, W) grid of positions.

    causal: a 1-D conv (H = 1) that reads the k-1 tokens before each one in scan order (Vim); `reverse` runs that
    order backwards (the tokens after it in position order). Otherwise a 2-D conv with `conv.padding`.
    Returns the conv at the kept tokens (b, K, C), or at every grid position with `full_grid` (PlainMamba's
    Δ, B and C come from every raster position; docs/plainmamba-scan-pairing.md).

    conv_fill (what a pruned position reads): 'hold' the kept token before it in scan order (1-D) or the nearest
    kept token on the grid (2-D); 'zero' zeros; 'packed' (1-D only) the kept tokens as if adjacent.
    """
    w = conv.weight
    weight = w.view(w.shape[0], *w.shape[2:]) if w.dim() == 4 else w.view(w.shape[0], 1, w.shape[-1])
    return depthwise_conv_weights(x, weight, conv.bias, grid, layout, tuple(int(p) for p in conv.padding),
                                  causal=causal, reverse=reverse, full_grid=full_grid, act=act)


def depthwise_conv_weights(x: Tensor, weight: Tensor, bias: Optional[Tensor], grid: Tuple[int, int],
                           layout: Optional[TokenLayout], padding: Tuple[int, int] = (0, 0), *, causal: bool = False,
                           reverse: bool = False, full_grid: bool = False, act: Optional[str] = None) -> Tensor:
    """`depthwise_conv` with the taps (C, KH, KW) and bias given; `padding` is the 2-D conv's. Channel groups
    (GroupMamba's SS2D groups in one launch): x (G, b, K, C), weight (G, C, KH, KW), bias (G, C), output
    (G, b, K, C), every group read through the same layout."""
    if causal:
        padding, flip = (0, weight.shape[-1] - 1), reverse
    else:
        flip = False
    if layout is None or (causal and layout.conv_fill == "packed"):
        L = x.shape[-2]
        g = (1, L) if causal else grid
        return gather_conv(x, weight, bias, g, padding, flip=flip, act=act)
    if layout.conv_fill == "packed":
        raise RecipeError("conv_fill 'packed' is for 1-D convolutions; this model's are 2-D: use 'hold' or 'zero'")
    if causal:
        kind = "zero" if layout.conv_fill == "zero" else ("backward" if reverse else "forward")
        g = (1, layout.length)
    else:
        kind = "zero" if layout.conv_fill == "zero" else "grid"
        g = grid
    keep = None if full_grid else layout.keep_index()
    return gather_conv(x, weight, bias, g, padding, keep=keep, src=layout.source_map(kind), flip=flip, act=act)


# ---------------------------------------------------------------------------------------------- scan orders
@dataclass
class ScanPlan:
    """One scan order: which rows each step reads (u, Δ/B/C) and writes (out, z), and the pruned positions
    skipped before each step. `steps`/`length` describe the same order at full length, for the reference."""

    u_idx: Optional[Tensor] = None
    p_idx: Optional[Tensor] = None
    o_idx: Optional[Tensor] = None
    reverse: bool = False
    gap: Optional[Tensor] = None
    steps: Optional[Tensor] = None
    length: int = 0


def scan_plan(layout: Optional[TokenLayout], length: int, order: Optional[Tensor] = None, *,
              reverse: bool = False, key: Optional[str] = None, pairing: bool = False) -> ScanPlan:
    """The plan of one scan order over `length` positions: raster order (order=None; `reverse` for the reversed
    sequence) or `order` (L,), the position visited at each step.

    pairing (PlainMamba): u and out follow the order, Δ/B/C are read at the step's own raster index; u is then a
    full-grid tensor and so are Δ, B, C.
    """
    if layout is None:
        if order is None:
            return ScanPlan(reverse=reverse, length=length)
        o = order.to(torch.int32)
        return ScanPlan(u_idx=o, p_idx=None if pairing else o, o_idx=o, length=length)
    if order is None:
        maps = layout.order_maps(reverse=reverse)
        # kept tokens in (reversed) position order: identity rows, walked backwards for the reversed sequence
        return ScanPlan(reverse=reverse, gap=maps.gap, steps=maps.steps, length=length)
    if key is None:
        raise ValueError("a scan order over a pruned layout needs a cache key")
    maps = layout.order_maps(order, key=key)
    if pairing:
        return ScanPlan(u_idx=maps.pos, p_idx=maps.steps, o_idx=maps.src, gap=maps.gap, steps=maps.steps,
                        length=length)
    return ScanPlan(u_idx=maps.src, p_idx=maps.src, o_idx=maps.src, gap=maps.gap, steps=maps.steps, length=length)


def prepare_orders(layout: Optional[TokenLayout], specs) -> None:
    """Before a block's scans: the maps of all its orders, each (order, reverse, key) exactly as that scan passes
    it to `scan_plan`, made together (one launch for up to four on the GPU; later blocks find them made)."""
    if layout is not None:
        layout.prepare_orders(specs)


# ---------------------------------------------------------------------------------------------- Δ̂ and the scan
def delta_fill(mixer: nn.Module, layout: Optional[TokenLayout], d: int) -> Optional[Tensor]:
    """Δ̂ (E,) after softplus that pruned positions decay by in direction d, or None (no decay: 'zero')."""
    if layout is None or layout.delta_fill == "zero":
        return None
    if layout.delta_fill == "bias":
        return mixer.default_delta_hat()[d]
    if getattr(mixer, "delta_hat", None) is None:
        raise RecipeError("delta_fill 'calib' needs calibrated Δ̂ (run calibration first, or use 'bias')")
    return mixer.delta_hat[d]


def scan(mixer: nn.Module, d: int, u: Tensor, dt: Tensor, A_log: Tensor, B: Tensor, C: Tensor,
         D: Optional[Tensor], delta_bias: Optional[Tensor], plan: ScanPlan, layout: Optional[TokenLayout], *,
         B_bias: Optional[Tensor] = None, z: Optional[Tensor] = None, acc: Optional[Tensor] = None,
         out_scale: float = 1.0) -> Tensor:
    """Direction d of `mixer`: out[o] = out_scale · (acc[o] + y) · silu(z[o]) (ops/token_scan.py), token-major,
    with A = -exp(A_log).

    Reports the post-softplus Δ (b, E, steps) in scan order to `mixer.delta_probe` when one is set (calibration),
    and the token-major dt rows (b, rows, E) with `delta_bias` to `mixer.token_delta_probe` when one is set (the
    `mtr` score: Δ = softplus(dt + delta_bias) of each row; rows are the kept tokens, or the whole grid where the
    family computes Δ there)."""
    probe = getattr(mixer, "delta_probe", None)
    if probe is not None:
        rows = _rows(dt, plan.p_idx, _steps(u, plan), plan.reverse).transpose(1, 2)
        probe(d, F.softplus(rows + delta_bias[:, None]).detach() if delta_bias is not None else F.softplus(rows))
    token_probe = getattr(mixer, "token_delta_probe", None)
    if token_probe is not None:
        token_probe(d, dt, delta_bias)
    fill = delta_fill(mixer, layout, d)
    if layout is not None and reference_active():
        return _scan_reference(u, dt, -torch.exp(A_log), B, C, D, delta_bias, plan, B_bias, fill, z, acc, out_scale)
    return token_scan(u, dt, A_log, B, C, D, z, delta_bias, B_bias, plan.gap, fill, plan.u_idx, plan.p_idx,
                      plan.o_idx, plan.reverse, acc, out_scale, a_is_log=True)


def _steps(u: Tensor, plan: ScanPlan) -> int:
    for idx in (plan.o_idx, plan.u_idx, plan.p_idx):
        if idx is not None:
            return int(idx.shape[-1])
    return int(u.shape[1])


def _scan_reference(u, dt, A, B, C, D, delta_bias, plan, B_bias, fill, z, acc, out_scale) -> Tensor:
    """DESIGN 2.3's definition: the kept steps scattered into a full-length scan with u = 0 and Δ = Δ̂ elsewhere."""
    S = _steps(u, plan)
    t = lambda x, idx: _rows(x, idx, S, plan.reverse).transpose(1, 2)  # noqa: E731
    Bb = None
    if B_bias is not None:
        full = B_bias.expand(u.shape[0], *B_bias.shape[-2:]) if B_bias.dim() == 2 else B_bias
        Bb = t(full, plan.p_idx)
    y = aligned_scan_ref(t(u, plan.u_idx), t(dt, plan.p_idx), A, t(B, plan.p_idx), t(C, plan.p_idx), D, None,
                         delta_bias, True, Bb, steps=plan.steps.long(), length=plan.length, delta_fill=fill)
    out = _place(y.transpose(1, 2), plan.o_idx, plan.reverse)
    if acc is not None:
        out = acc + out
    if z is not None:
        out = out * F.silu(z)
    return out * out_scale if out_scale != 1.0 else out


def activation_dtype(x: Tensor) -> torch.dtype:
    """The dtype matmuls will produce from x: autocast's when it is on for x's device, else x's own."""
    kind = x.device.type
    if kind in ("cuda", "cpu") and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype
