"""Depthwise convolution read through a position map ("gather conv"): dispatch point plus the PyTorch definition.

A pruned layer holds only its kept tokens, but its depthwise convolutions must read, at pruned positions, what
the fill policy says (DESIGN 2.3, `conv_fill`). This op computes the convolution's outputs directly at the
requested grid positions, reading each tap through an index map, instead of scattering to the full grid, running
a dense conv and gathering. With no maps it is the plain dense depthwise conv on token-major data.

Shapes (b batch, K rows of x, C channels, grid H x W with L = H*W positions in raster order, M outputs):
    x: (b, K, C), any strides      weight: (C, KH, KW)      bias: (C,) or None
    keep: (b, M) positions in [0, L) to compute (None: all L, in raster order)
    src: (b, L) row of x each position reads, -1 for zero (None: position q reads row q, and K = L)

Semantics, with (r, col) = divmod(keep[b, m], W) and tap offset (di, dj) = (i - ph, j - pw), or (ph - i, pw - j)
when `flip` (mirrored taps: a causal conv run over the reversed sequence, indexed in original positions):
    out[b, m, c] = bias[c] + sum_{i<KH, j<KW} weight[c, i, j] * X(b, r + di, col + dj, c)
    X(b, r', col', c) = 0 outside the grid, else x[b, src[b, r' W + col'], c] (0 where src < 0)
then the activation `act` ('silu', or 'gelu': torch's exact erf form; `silu=True` is short for act='silu').
Output (b, M, C), contiguous, in x's dtype. Arithmetic is float32 (float64 when an
input is float64). Gradients reach x, weight and bias, never keep or src.

Channel groups: x (G, b, K, C), weight (G, C, KH, KW), bias (G, C) or None, keep and src as above (shared by
the groups): out[g] is the conv of x[g] with weight[g] and bias[g], (G, b, M, C), in one launch (GroupMamba's
four SS2D groups, each a (b, K, C) slice of one projection).

The models' uses (docs/kernels.md, "Gather conv"): Vim's causal 1-D conv (grid (1, L), padding (0, KW - 1)) and
its backward-direction twin (the same with flip=True); 'packed' fill (grid (1, K), no maps: the kept tokens as if
adjacent); PlainMamba's 7x7 and GroupMamba's 3x3 convs (padding (3, 3) / (1, 1)); 'hold' fill (src maps a
pruned position to a kept row) and 'zero' fill (src = rank, -1 at pruned positions).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._kernels import kernel_module
from .profiling import op_range
from .selective_scan import resolve_backend

GATHER_CONV_OP = "prim::PythonOp.TracedGatherConv"


def gather_conv_ref(x: Tensor, weight: Tensor, bias: Optional[Tensor], grid: Tuple[int, int],
                    padding: Tuple[int, int], keep: Optional[Tensor] = None, src: Optional[Tensor] = None,
                    flip: bool = False, silu: bool = False, act: Optional[str] = None) -> Tensor:
    """The definition: fill the full grid through `src`, dense depthwise conv with explicit zero padding, the
    activation, gather the rows at `keep`. Differentiable in x, weight and bias. Grouped: each group alone."""
    if x.dim() == 4:
        return torch.stack([gather_conv_ref(x[g], weight[g], None if bias is None else bias[g], grid, padding, keep,
                                            src, flip, silu, act) for g in range(x.shape[0])])
    act = _activation(silu, act)
    b, K, C = x.shape
    H, W = grid
    ph, pw = padding
    KH, KW = weight.shape[1:]
    dtype = torch.float64 if any(t is not None and t.dtype == torch.float64 for t in (x, weight, bias)) \
        else torch.float32
    full = x.to(dtype)                                                        # (b, L, C) when src is None
    if src is not None:
        idx = src.long()
        full = full.gather(1, idx.clamp(min=0)[..., None].expand(b, H * W, C))
        full = full.masked_fill((idx < 0)[..., None], 0.0)
    img = full.transpose(1, 2).reshape(b, C, H, W)
    w = weight.to(dtype)
    top, left = ph, pw                                   # tap (i, j) reads (r + i - top, col + j - left)
    if flip:                                             # tap (i, j) reads (r + ph - i, col + pw - j)
        w = w.flip(1, 2)
        top, left = KH - 1 - ph, KW - 1 - pw
    img = F.pad(img, (left, KW - 1 - left, top, KH - 1 - top))  # output H x W; negative pads crop
    y = F.conv2d(img, w[:, None], None if bias is None else bias.to(dtype), groups=C)
    y = y.reshape(b, C, H * W).transpose(1, 2)                                # (b, L, C)
    if act == "silu":
        y = F.silu(y)
    elif act == "gelu":
        y = F.gelu(y)
    if keep is not None:
        y = y.gather(1, keep.long()[..., None].expand(-1, -1, C))
    return y.to(x.dtype).contiguous()


def gather_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], grid: Tuple[int, int],
                padding: Tuple[int, int], keep: Optional[Tensor] = None, src: Optional[Tensor] = None,
                flip: bool = False, silu: bool = False, backend: Optional[str] = None,
                act: Optional[str] = None) -> Tensor:
    """The gather conv every model calls. CUDA tensors go to the Triton kernels, CPU tensors and float64 to the
    reference. `backend` ('auto', 'triton', 'reference', 'exact'), or else the scan's backend switch
    (`ops.scan_backend(...)` / $SSMPRUNE_SCAN_BACKEND), forces one: 'reference' and 'exact' both mean PyTorch."""
    H, W = (int(v) for v in grid)
    ph, pw = (int(v) for v in padding)
    _check(x, weight, bias, H, W, keep, src)
    act = _activation(silu, act)
    name = resolve_backend(backend, x)
    if torch.compiler.is_compiling():
        name = "reference"  # torch.compile traces the PyTorch form (inductor fuses its gathers itself)
    if name not in ("triton", "reference", "exact"):
        raise ValueError(f"unknown gather-conv backend {name!r}; choose one of auto, triton, reference, exact")
    if torch.jit.is_tracing():
        absent = x.new_empty(0)
        bias_, keep_, src_ = (absent if t is None else t for t in (bias, keep, src))
        return TracedGatherConv.apply(x, weight, bias_, keep_, src_, H, W, ph, pw, bool(flip), act, name)
    return _run(name, x, weight, bias, (H, W), (ph, pw), keep, src, bool(flip), act)


class TracedGatherConv(torch.autograd.Function):
    """While tracing (fvcore, torch.jit.trace) the op is this one node, `prim::PythonOp.TracedGatherConv`.
    Tensor inputs keep fixed positions: (x, weight, bias, keep, src), an absent one as an empty (0,) tensor;
    H, W, ph, pw, flip, act and the backend name are scalar arguments, not graph inputs."""

    @staticmethod
    def forward(ctx, x, weight, bias, keep, src, H, W, ph, pw, flip, act, name):
        bias, keep, src = (None if t.shape == (0,) else t for t in (bias, keep, src))
        return _run(name, x, weight, bias, (H, W), (ph, pw), keep, src, flip, act)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("the traced gather conv is for counting and export; train without torch.jit tracing")


def gather_conv_flop_jit(inputs: List[Any], outputs: List[Any]) -> Counter:
    """fvcore handle for `TracedGatherConv` (GATHER_CONV_OP): inputs (x, weight, bias, keep, src), weight
    (C, KH, KW) or (G, C, KH, KW); output (b, M, C) or (G, b, M, C). One multiply-add per output element and tap:
    [G*]b*M*C*KH*KW (bias and SiLU not counted, as fvcore's own conv handle leaves out the bias)."""
    outputs_n = 1
    for n in outputs[0].type().sizes():
        outputs_n *= n
    kh, kw = inputs[1].type().sizes()[-2:]
    return Counter({"gather_conv": outputs_n * kh * kw})


def _run(name, x, weight, bias, grid, padding, keep, src, flip, act) -> Tensor:
    with op_range("ssmprune::gather_conv"):
        return _dispatch(name, x, weight, bias, grid, padding, keep, src, flip, act)


def _dispatch(name, x, weight, bias, grid, padding, keep, src, flip, act) -> Tensor:
    float64 = any(t is not None and t.dtype == torch.float64 for t in (x, weight, bias))
    if name == "triton" and not float64:
        return kernel_module("gather_conv").gather_conv_triton(x, weight, bias, grid, padding, keep, src, flip, act)
    return gather_conv_ref(x, weight, bias, grid, padding, keep, src, flip, act=act)


def _activation(silu: bool, act: Optional[str]) -> Optional[str]:
    """The one activation asked for: `act`, or 'silu' from the shorthand flag."""
    if act not in (None, "silu", "gelu"):
        raise ValueError(f"unknown gather-conv activation {act!r}; choose 'silu' or 'gelu'")
    if silu and act not in (None, "silu"):
        raise ValueError(f"silu=True and act={act!r} ask for two activations")
    return "silu" if silu else act


def _check(x, weight, bias, H, W, keep, src) -> None:
    """Shape checks only (values would need a device sync): out-of-range keep / src values are undefined."""
    grouped = x.dim() == 4
    if grouped and (weight.dim() != 4 or tuple(weight.shape[:2]) != (x.shape[0], x.shape[3])):
        raise ValueError(f"grouped gather_conv needs x (G, b, K, C) and weight (G, C, KH, KW); got {tuple(x.shape)} "
                         f"and {tuple(weight.shape)}")
    if not grouped and (x.dim() != 3 or weight.dim() != 3 or weight.shape[0] != x.shape[2]):
        raise ValueError(f"gather_conv needs x (b, K, C) and weight (C, KH, KW); got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != tuple(x.shape[:1] if grouped else ()) + (x.shape[-1],):
        want = f"({x.shape[0]}, {x.shape[-1]})" if grouped else f"({x.shape[-1]},)"
        raise ValueError(f"bias must be {want}, got {tuple(bias.shape)}")
    x = x[0] if grouped else x  # the maps are per image, shared by the groups
    if keep is not None and (keep.dim() != 2 or keep.shape[0] != x.shape[0]):
        raise ValueError(f"keep must be (b, M) with b = {x.shape[0]}, got {tuple(keep.shape)}")
    if src is None and x.shape[1] != H * W:
        raise ValueError(f"without src, x must hold all {H}x{W} = {H * W} positions, got {x.shape[1]} rows")
    if src is not None and tuple(src.shape) != (x.shape[0], H * W):
        raise ValueError(f"src must be (b, L) = ({x.shape[0]}, {H * W}), got {tuple(src.shape)}")
    for t in (keep, src):
        if t is not None and t.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"keep and src must be int32 or int64, got {t.dtype}")
