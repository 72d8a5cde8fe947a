"""VMamba v2 (MzeroMiko/VMamba), official key layout, with aligned token pruning inside each stage.

Structure (official `VSSM` with `norm_layer="ln2d"`, `patchembed_version="v2"`, `downsample_version="v3"`,
`forward_type="v05_noz"`): a two-conv stem (3×3 s2 → LN → GELU → 3×3 s2 → LN), 4 stages of `VSSBlock`
(x + SS2D(norm(x)); x + MLP(norm2(x))), a 3×3 s2 conv + LN between stages, then LN → mean over the grid → head.
SS2D: in_proj (no z branch) → depthwise conv → SiLU → four scans with their own x_proj / dt_proj / A / D (the
k_group = 4 parameter stacks) over the raster order, the column order and both reversed, summed back at each
token's position (the official cross-merge) → out_norm → out_proj. The official model runs channel-first
(LayerNorm2d, Linear2d as 1×1 convs); both are per-token operations, so this file runs token-major (b, L, C)
and computes the same function. See docs/models/vmamba.md.

Pruning (DESIGN 2.3): sites "s.j" follow block j of stage s. Inside a stage, blocks run projections, norms and
the MLP on kept tokens, the 3×3 depthwise conv at the kept tokens with pruned taps read through `conv_fill`
('hold' = nearest kept token on the grid), and each of the four scans over the kept steps of its own order.
At the stage end the grid is refilled with the pruned tokens' features from their prune point.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmprune_cli.errors import BadInputError, CheckpointError
from ssmprune_cli.ops.fused_norm import add_norm

from ._base import PrunableModel
from ._registry import Family, register_family, register_model
from .layers import mamba_core as core
from .layers.grid_orders import grid_order
from .layers.token_layout import TokenLayout

FAMILY = "vmamba"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The official cross-scan's four sequences, in parameter-stack order k = 0..3 (csm_triton.cross_scan_fwd).
DIRECTIONS = ("row", "col", "row_rev", "col_rev")


@dataclass
class VMambaConfig:
    img_size: int = 224                     # no position embedding: only the grid sizes depend on it
    in_chans: int = 3
    num_classes: int = 1000
    patch_size: int = 4                     # patch embed v2: two convs of stride patch/2, kernel stride+1
    dims: Union[int, List[int]] = 96        # an int d means [d, 2d, 4d, 8d] (official)
    depths: List[int] = field(default_factory=lambda: [2, 2, 8, 2])
    d_state: int = 1                        # N
    ssm_ratio: float = 1.0                  # E = int(ssm_ratio · C)
    dt_ranks: Optional[List[int]] = None    # per stage; None = official "auto": ceil(C / 16)
    d_conv: int = 3
    conv_bias: bool = False                 # the released v2 models have none
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0             # official training used 0.2 / 0.3 / 0.5-0.6 (T / S / B)
    mean: List[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: List[float] = field(default_factory=lambda: list(IMAGENET_STD))

    def __post_init__(self):
        if isinstance(self.dims, int):
            self.dims = [self.dims * 2 ** i for i in range(len(self.depths))]
        self.dims = [int(d) for d in self.dims]
        if len(self.dims) != len(self.depths) or not self.depths or min(self.depths) < 1:
            raise BadInputError(f"VMamba needs one width per stage and at least one block a stage, got widths "
                                f"{self.dims} and depths {self.depths}")
        if self.patch_size < 2 or self.patch_size % 2:
            raise BadInputError(f"VMamba's patch embedding needs an even patch size ≥ 2, got {self.patch_size}")
        if self.dt_ranks is None:
            self.dt_ranks = [math.ceil(d / 16) for d in self.dims]
        if len(self.dt_ranks) != len(self.dims):
            raise BadInputError(f"VMamba needs one dt rank per stage, got {self.dt_ranks}")


# ============================================================================================ helpers
def _drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


def _conv_out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def _layer_norm(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    out, _ = add_norm(x, None, norm.weight, norm.bias, norm.eps, "layer", out_dtype=core.activation_dtype(x))
    return out


def _norm_channels(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    """The official LayerNorm2d: a LayerNorm over the channels of a (b, C, H, W) map."""
    return F.layer_norm(x.permute(0, 2, 3, 1), norm.normalized_shape, norm.weight, norm.bias,
                        norm.eps).permute(0, 3, 1, 2)


# ============================================================================================ blocks
class SS2D(nn.Module):
    """The official SS2D, forward type v05_noz (no z branch), four cross-scan directions with their own parameters.

    in_proj → depthwise conv (bias per config) → SiLU → for k = 0..3: x_proj[k] → (dt, B, C), dt_proj[k], a scan
    (D inside, dt bias + softplus, A = −exp(A_logs[k])) in direction k, written back at each token's raster
    position and summed over k → out_norm → out_proj.
    """

    n_directions = 4
    # weights this module passes to F.linear itself: inference graphs hand them to autocast already cast
    matmul_parameters = ("x_proj_weight", "dt_projs_weight")

    def __init__(self, d_model: int, d_state: int = 1, ssm_ratio: float = 1.0, dt_rank: Optional[int] = None,
                 d_conv: int = 3, conv_bias: bool = False):
        super().__init__()
        d_inner = int(ssm_ratio * d_model)
        self.d_inner, self.d_state = d_inner, d_state
        self.dt_rank = math.ceil(d_model / 16) if dt_rank is None else dt_rank
        K, R = self.n_directions, self.dt_rank
        self.in_proj = nn.Linear(d_model, d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner,
                                bias=conv_bias)
        self.x_proj_weight = nn.Parameter(torch.empty(K, R + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(K, d_inner, R))
        self.dt_projs_bias = nn.Parameter(torch.empty(K, d_inner))
        self.A_logs = nn.Parameter(torch.empty(K * d_inner, d_state))   # direction k: rows k·E … (k+1)·E
        self.Ds = nn.Parameter(torch.empty(K * d_inner))
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        self.register_buffer("delta_hat", None)
        self.delta_probe = None
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
        """The official "v0" initialisation (Mamba's): softplus(dt bias) log-uniform in [dt_min, dt_max],
        S4D-real A, D = 1, x_proj as nn.Linear's default."""
        E, R = self.d_inner, self.dt_rank
        nn.init.uniform_(self.x_proj_weight, -E ** -0.5, E ** -0.5)
        nn.init.uniform_(self.dt_projs_weight, -R ** -0.5, R ** -0.5)
        dt = torch.exp(torch.rand_like(self.dt_projs_bias) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=1e-4)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_logs.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=self.A_logs.dtype,
                                                 device=self.A_logs.device)).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def default_delta_hat(self) -> Tensor:
        """(4, E): softplus of each direction's dt bias, the 'bias' Δ̂."""
        return F.softplus(self.dt_projs_bias)

    def _spec(self, k: int, hw: Tuple[int, int], device) -> Tuple[Optional[Tensor], bool, Optional[str]]:
        """(order, reverse, key) of direction k for `core.scan_plan`: the raster order, or the same walked
        backwards, needs no index stream."""
        kind = DIRECTIONS[k]
        if kind.startswith("row"):
            return None, kind == "row_rev", None
        return grid_order(kind, hw[0], hw[1], device), False, f"{FAMILY}:{kind}"

    def forward(self, x: Tensor, hw: Tuple[int, int], layout: Optional[TokenLayout] = None) -> Tensor:
        """x (b, K, C) tokens in raster order (K = H·W when dense) → (b, K, C), raster order."""
        E, N, R = self.d_inner, self.d_state, self.dt_rank
        u = core.depthwise_conv(self.in_proj(x), self.conv2d, hw, layout, act="silu")       # (b, K, E)
        # x_proj of all four directions in one matmul: it is per token, so the scan order does not matter here
        x_dbl = F.linear(u, self.x_proj_weight.reshape(-1, E))                                  # (b, K, 4·(R+2N))
        b, L = u.shape[:2]
        per_k = x_dbl.view(b * L, self.n_directions, R + 2 * N).transpose(0, 1)                   # (4, b·K, R+2N)
        # dt_proj of the four directions as one batched matmul over strided views: one launch instead of four
        dts = torch.bmm(per_k[..., :R], self.dt_projs_weight.transpose(1, 2))                   # (4, b·K, E)
        A_log = self.A_logs.view(self.n_directions, E, N)   # the core takes log A: the kernel exponentiates once
        D = self.Ds.view(self.n_directions, E)
        y = None
        specs = [self._spec(k, hw, x.device) for k in range(self.n_directions)]
        core.prepare_orders(layout, specs)
        for k in range(self.n_directions):
            B, C = per_k[k, :, R:].view(b, L, 2 * N).split([N, N], dim=-1)
            dt = dts[k].view(b, L, E)
            order, reverse, key = specs[k]
            plan = core.scan_plan(layout, hw[0] * hw[1], order, reverse=reverse, key=key)
            # out[o] = acc[o] + y: the official cross-merge sums the four directions at each raster position
            y = core.scan(self, k, u, dt, A_log[k], B, C, D[k], self.dt_projs_bias[k], plan, layout, acc=y)
        return self.out_proj(_layer_norm(y, self.out_norm))


class Mlp(nn.Module):
    """fc1 → GELU → fc2 (the official Mlp with Linear2d: per-token linears)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class VSSBlock(nn.Module):
    """Official `VSSBlock` (pre-norm): x + op(norm(x)); x + mlp(norm2(x))."""

    def __init__(self, dim: int, cfg: VMambaConfig, dt_rank: int, drop_path: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.op = SS2D(dim, cfg.d_state, cfg.ssm_ratio, dt_rank, cfg.d_conv, cfg.conv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))
        self.drop_path = drop_path

    def forward(self, x: Tensor, hw: Tuple[int, int], layout: Optional[TokenLayout] = None) -> Tensor:
        a = _drop_path(self.op(_layer_norm(x, self.norm), hw, layout), self.drop_path, self.training)
        n = self.norm2  # the residual add and norm2 in one kernel on the GPU
        h, x = add_norm(a, x, n.weight, n.bias, n.eps, "layer", out_dtype=core.activation_dtype(x),
                        residual_dtype=x.dtype)
        return x + _drop_path(self.mlp(h), self.drop_path, self.training)


class PatchEmbed(nn.Sequential):
    """Patch embed v2, channel-first: conv (C/2) → LN2d → GELU → conv (C) → LN2d. Keys 0, 2, 5, 7 as in the
    official nn.Sequential (its permutes are identities in the channel-first models)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int):
        stride = patch_size // 2
        super().__init__(
            nn.Conv2d(in_chans, dim // 2, stride + 1, stride, 1), nn.Identity(), nn.LayerNorm(dim // 2),
            nn.Identity(), nn.GELU(), nn.Conv2d(dim // 2, dim, stride + 1, stride, 1), nn.Identity(),
            nn.LayerNorm(dim),
        )

    def forward(self, x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        x = self[5](F.gelu(_norm_channels(self[0](x), self[2])))
        hw = (x.shape[2], x.shape[3])
        return _layer_norm(x.flatten(2).transpose(1, 2), self[7]), hw


class Downsample(nn.Sequential):
    """Downsample v3: conv 3×3 s2 p1 → LN2d. Keys 1, 3 as in the official nn.Sequential."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__(nn.Identity(), nn.Conv2d(dim, out_dim, 3, 2, 1), nn.Identity(), nn.LayerNorm(out_dim))

    def forward(self, x: Tensor, hw: Tuple[int, int]) -> Tuple[Tensor, Tuple[int, int]]:
        b, L, C = x.shape
        x = self[1](x.transpose(1, 2).reshape(b, C, hw[0], hw[1]))
        hw = (x.shape[2], x.shape[3])
        return _layer_norm(x.flatten(2).transpose(1, 2), self[3]), hw


class Stage(nn.Module):
    """Official `layers.i`: an nn.Sequential(blocks=..., downsample=...)."""

    def __init__(self, blocks: List[VSSBlock], downsample: Optional[Downsample]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample if downsample is not None else nn.Identity()


class Classifier(nn.Module):
    """Official `classifier`: norm (LN2d) → permute (identity) → avgpool → flatten → head."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.head(_layer_norm(x, self.norm).mean(dim=1))


# ============================================================================================ model
class VMamba(PrunableModel):
    family = FAMILY
    hierarchical = True  # the pruning engine keeps refill features for the stage ends

    def __init__(self, cfg: VMambaConfig):
        super().__init__()
        self.cfg = cfg
        dims, depths = cfg.dims, cfg.depths
        n = sum(depths)
        dpr = [cfg.drop_path_rate * i / max(n - 1, 1) for i in range(n)]  # official: linspace(0, rate, n)
        self.patch_embed = PatchEmbed(cfg.in_chans, dims[0], cfg.patch_size)
        self.layers = nn.ModuleList()
        cur = 0
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            blocks = [VSSBlock(dim, cfg, cfg.dt_ranks[i], dpr[cur + j]) for j in range(depth)]
            cur += depth
            down = Downsample(dim, dims[i + 1]) if i < len(dims) - 1 else None
            self.layers.append(Stage(blocks, down))
        self.classifier = Classifier(dims[-1], cfg.num_classes)
        self.apply(_init_weights)

    @property
    def num_stages(self) -> int:
        return len(self.cfg.depths)

    # ------------------------------------------------------------------ forward
    def forward_features(self, x: Tensor, hook: Optional[Any] = None) -> Tensor:
        """(b, C, H, W) → (b, L, C) tokens of the last stage, before the classifier's norm."""
        size = (self.cfg.img_size, self.cfg.img_size)
        if tuple(x.shape[-2:]) != size:
            raise BadInputError(f"input is {x.shape[-2]}x{x.shape[-1]}, this model expects {size[0]}x{size[1]} "
                                "(set img_size to change it)")
        x, hw = self.patch_embed(x)                                       # (b, L, C), a whole grid
        for i, stage in enumerate(self.layers):
            layout = None
            for j, blk in enumerate(stage.blocks):
                x = blk(x, hw, layout)
                if hook is not None:
                    (x,), layout = hook(f"{i + 1}.{j + 1}", (x,), layout)
            if layout is not None:
                x = layout.refilled(x)  # pruned positions get their features from their prune point
            if i < self.num_stages - 1:
                x, hw = stage.downsample(x, hw)
        return x

    def forward_head(self, x: Tensor) -> Tensor:
        return self.classifier(x)

    def forward(self, x: Tensor, hook: Optional[Any] = None) -> Tensor:
        return self.forward_head(self.forward_features(x, hook))

    # ------------------------------------------------------------------ description
    def input_size(self) -> Tuple[int, int, int]:
        return (self.cfg.in_chans, self.cfg.img_size, self.cfg.img_size)

    def stage_grids(self) -> List[Tuple[int, int]]:
        """(H, W) of each stage's token grid at cfg.img_size."""
        k, s = self.cfg.patch_size // 2 + 1, self.cfg.patch_size // 2
        g = _conv_out(_conv_out(self.cfg.img_size, k, s, 1), k, s, 1)
        grids = [(g, g)]
        for _ in range(self.num_stages - 1):
            g = _conv_out(g, 3, 2, 1)
            grids.append((g, g))
        return grids

    def _block(self, site: str) -> Tuple[int, int]:
        m = re.fullmatch(r"(\d+)\.(\d+)", str(site))
        s, j = (int(m[1]), int(m[2])) if m else (0, 0)
        if not (1 <= s <= self.num_stages and 1 <= j <= self.cfg.depths[s - 1]):
            raise BadInputError(f"unknown VMamba site {site!r}; sites are 'stage.block', e.g. '3.2'")
        return s, j

    def prune_sites(self) -> List[str]:
        # After the last block of a stage the grid is refilled at once, so pruning there would save nothing.
        return [f"{s}.{j}" for s, depth in enumerate(self.cfg.depths, start=1) for j in range(1, depth)]

    def site_tokens(self, site: str) -> Tuple[int, Tuple[int, int], List[int]]:
        s, _ = self._block(site)
        H, W = self.stage_grids()[s - 1]
        return H * W, (H, W), []

    def score_module(self, site: str) -> nn.Module:
        s, j = self._block(site)
        return self.layers[s - 1].blocks[j - 1].op.out_proj

    def mixers(self) -> List[nn.Module]:
        return [blk.op for stage in self.layers for blk in stage.blocks]

    # ------------------------------------------------------------------ cost model (MACs, DESIGN 3)
    def block_costs(self) -> List[Dict[str, Any]]:
        """Per kept token: in_proj, the depthwise conv, four × (x_proj, dt_proj, scan 9·E·N + 2·E), out_proj
        and the MLP. LayerNorms, activations, the residual adds and the pooling are not counted."""
        out = []
        for s, ((H, W), depth) in enumerate(zip(self.stage_grids(), self.cfg.depths), start=1):
            for j in range(1, depth + 1):
                blk = self.layers[s - 1].blocks[j - 1]
                op = blk.op
                C, E, N, R = op.in_proj.in_features, op.d_inner, op.d_state, op.dt_rank
                kh, kw = op.conv2d.kernel_size
                direction = E * (R + 2 * N) + R * E + 9 * E * N + 2 * E
                per_token = C * E + kh * kw * E + op.n_directions * direction + E * C
                per_token += 2 * C * blk.mlp.fc1.out_features
                out.append({"site": f"{s}.{j}", "stage": s, "tokens": H * W, "per_token": per_token, "fixed": 0})
        return out

    def fixed_macs(self) -> int:
        """Patch embedding, downsampling convs and the head (conv biases are not counted, as fvcore does)."""
        cfg, grids = self.cfg, self.stage_grids()
        k, s = cfg.patch_size // 2 + 1, cfg.patch_size // 2
        g1 = _conv_out(cfg.img_size, k, s, 1)
        c0 = cfg.dims[0]
        macs = k * k * cfg.in_chans * (c0 // 2) * g1 * g1 + k * k * (c0 // 2) * c0 * grids[0][0] * grids[0][1]
        for i in range(1, self.num_stages):
            macs += 9 * cfg.dims[i - 1] * cfg.dims[i] * grids[i][0] * grids[i][1]
        head = self.classifier.head
        if isinstance(head, nn.Linear):
            macs += head.in_features * head.out_features
        return int(macs)


@torch.no_grad()
def _init_weights(m: nn.Module) -> None:
    # Official VSSM._init_weights: trunc-normal linears with zero biases, unit LayerNorms (SS2D's own in SS2D).
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# ============================================================================================ checkpoints
_LINEAR2D = re.compile(r".*\.(op\.in_proj|op\.out_proj|mlp\.fc1|mlp\.fc2)\.weight")


def checkpoint_filter_fn(sd: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Official keys → ours. The released files ({'model', 'model_ema', ...}, unwrapped by io) already use our
    names; a DDP training state prefixes `module.`. Linear2d weights saved conv-shaped (out, in, 1, 1) are
    viewed as (out, in), as the official Linear2d._load_from_state_dict does."""
    out = {}
    for k, v in sd.items():
        if k.startswith("module."):
            k = k[len("module."):]
        if v.dim() == 4 and v.shape[2:] == (1, 1) and _LINEAR2D.fullmatch(k):
            v = v.reshape(v.shape[0], v.shape[1])
        out[k] = v
    return out


_OP_KEY = re.compile(r"layers\.\d+\.blocks\.\d+\.op\.A_logs")


def detect(sd: Mapping[str, Tensor]) -> bool:
    """Any VMamba release (unsupported layouts are refused with a reason by config_from_state_dict)."""
    return any(_OP_KEY.fullmatch(k) for k in sd)


def config_from_state_dict(sd: Mapping[str, Tensor], **overrides: Any) -> VMambaConfig:
    """Every size from shapes; `img_size`, `mean`, `std`, `drop_path_rate` come from overrides (or defaults)."""
    def need(key: str) -> Tensor:
        if key not in sd:
            raise CheckpointError(f"not a VMamba v2 state dict: missing {key!r}")
        return sd[key]

    if "patch_embed.5.weight" not in sd:
        raise CheckpointError("only VMamba v2 checkpoints (the vmambav2 / vmambav2v configs: patch embed v2, "
                              "LayerNorm2d) are supported; this looks like a vanilla (v0) VMamba")
    stages = sorted({int(m[1]) for k in sd if (m := re.match(r"layers\.(\d+)\.blocks\.\d+\.", k))})
    if not stages or stages != list(range(len(stages))):
        raise CheckpointError("not a VMamba state dict: no layers.{i}.blocks sequence")
    depths = [len({k.split(".")[3] for k in sd if k.startswith(f"layers.{s}.blocks.")}) for s in stages]
    dims = [int(need(f"layers.{s}.blocks.0.norm.weight").shape[0]) for s in stages]
    ops = [f"layers.{s}.blocks.0.op." for s in stages]
    A = need(ops[0] + "A_logs")
    xw = need(ops[0] + "x_proj_weight")
    if xw.shape[0] != 4:
        raise CheckpointError(f"VMamba SS2D with {xw.shape[0]} scan directions is not supported (the v2 models "
                              "have 4)")
    d_inner = [int(need(p + "Ds").shape[0]) // 4 for p in ops]
    for p, d, e in zip(ops, dims, d_inner):
        rows = int(need(p + "in_proj.weight").shape[0])
        if rows != e:
            raise CheckpointError(f"VMamba in_proj gives {rows} channels for d_inner {e}: only forward type "
                                  "v05_noz (no z branch, the released v2 models) is supported")
    ratios = {e / d for d, e in zip(dims, d_inner)}
    if len(ratios) != 1:
        raise CheckpointError(f"VMamba stages use different ssm ratios ({sorted(ratios)})")
    for s in stages[:-1]:
        w = need(f"layers.{s}.downsample.1.weight")
        if tuple(w.shape) != (dims[s + 1], dims[s], 3, 3):
            raise CheckpointError(f"layers.{s}.downsample.1.weight is {tuple(w.shape)}: only downsample v3 "
                                  "(conv 3×3 stride 2) is supported")
    pe = need("patch_embed.0.weight")
    mlp = [int(need(f"layers.{s}.blocks.0.mlp.fc1.weight").shape[0]) for s in stages]
    mlp_ratios = {m / d for m, d in zip(mlp, dims)}
    if len(mlp_ratios) != 1:
        raise CheckpointError(f"VMamba stages use different MLP ratios ({sorted(mlp_ratios)})")
    head = sd.get("classifier.head.weight")
    kw: Dict[str, Any] = dict(
        in_chans=int(pe.shape[1]),
        num_classes=0 if head is None else int(head.shape[0]),
        patch_size=2 * (int(pe.shape[-1]) - 1),
        dims=dims, depths=depths,
        d_state=int(A.shape[1]),
        ssm_ratio=float(ratios.pop()),
        dt_ranks=[int(need(p + "dt_projs_weight").shape[-1]) for p in ops],
        d_conv=int(need(ops[0] + "conv2d.weight").shape[-1]),
        conv_bias=ops[0] + "conv2d.bias" in sd,
        mlp_ratio=float(mlp_ratios.pop()),
    )
    kw.update(overrides)
    return VMambaConfig(**kw)


def build(cfg: VMambaConfig) -> VMamba:
    return VMamba(cfg)


# ============================================================================================ variants
_VARIANTS: Dict[str, Dict[str, Any]] = {
    # README (assets/performance.md), 224², ImageNet-1k: params / FLOPs (official fvcore count) / top-1
    "vmamba_tiny": dict(dims=96, depths=[2, 2, 8, 2], ssm_ratio=1.0),            # [s1l8] 30M 4.9G 82.6
    "vmamba_small": dict(dims=96, depths=[2, 2, 20, 2], ssm_ratio=1.0),          # [s1l20] 49M 8.6G 83.3
    "vmamba_base": dict(dims=128, depths=[2, 2, 20, 2], ssm_ratio=1.0),          # [s1l20] 87M 15.2G 83.8
    "vmamba_tiny_s2l5": dict(dims=96, depths=[2, 2, 5, 2], ssm_ratio=2.0),       # 31M 4.9G 82.5
    "vmamba_small_s2l15": dict(dims=96, depths=[2, 2, 15, 2], ssm_ratio=2.0),    # 50M 8.7G 83.6
    "vmamba_base_s2l15": dict(dims=128, depths=[2, 2, 15, 2], ssm_ratio=2.0),    # 89M 15.4G 83.9
    # tiny, for tests: 32² input → 8², 4², 2², 1² grids
    "vmamba_test": dict(img_size=32, num_classes=10, dims=[16, 24, 32, 40], depths=[2, 2, 3, 1],
                        mlp_ratio=2.0),
}


def _create(name: str, **kwargs: Any) -> VMamba:
    known = {f.name for f in fields(VMambaConfig)}
    unknown = set(kwargs) - known
    if unknown:
        raise BadInputError(f"unknown option(s) for {name}: {', '.join(sorted(unknown))}")
    base = dict(_VARIANTS[name])
    if "dims" in kwargs:  # derived widths follow new widths unless given
        kwargs.setdefault("dt_ranks", None)
    return VMamba(VMambaConfig(**{**base, **kwargs}))


@register_model
def vmamba_tiny(**kwargs: Any) -> VMamba:
    return _create("vmamba_tiny", **kwargs)


@register_model
def vmamba_small(**kwargs: Any) -> VMamba:
    return _create("vmamba_small", **kwargs)


@register_model
def vmamba_base(**kwargs: Any) -> VMamba:
    return _create("vmamba_base", **kwargs)


@register_model
def vmamba_tiny_s2l5(**kwargs: Any) -> VMamba:
    return _create("vmamba_tiny_s2l5", **kwargs)


@register_model
def vmamba_small_s2l15(**kwargs: Any) -> VMamba:
    return _create("vmamba_small_s2l15", **kwargs)


@register_model
def vmamba_base_s2l15(**kwargs: Any) -> VMamba:
    return _create("vmamba_base_s2l15", **kwargs)


@register_model
def vmamba_test(**kwargs: Any) -> VMamba:
    return _create("vmamba_test", **kwargs)


register_family(Family(name=FAMILY, detect=detect, filter_fn=checkpoint_filter_fn,
                       config_from_state_dict=config_from_state_dict, build=build, config_cls=VMambaConfig))
