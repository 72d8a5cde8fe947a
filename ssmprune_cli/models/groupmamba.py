"""GroupMamba (Amshaker/GroupMamba), official key layout, with aligned token pruning inside each stage.

Structure (official classification model): a conv stem, then 4 stages of `Block_mamba`
(x + GroupMambaLayer(x); x + PVT2FFN(norm2(x))), stride-2 conv downsampling between stages, and a `ClassBlock`
that updates one pooled token. A GroupMambaLayer splits the normalised channels into 4 groups, each scanned by its
own one-direction SS2D (row-major, column-major, and both reversed), multiplies the concatenation by
`skip_scale · x` and by the channel-affinity gate (CAM), then applies the *same* LayerNorm again and `proj`.

Pruning (DESIGN 2.3, docs/models/groupmamba.md): sites "s.j" follow block j of stage s. Inside a stage, blocks run
projections and norms on kept tokens, the 3×3 depthwise convs on the full grid with pruned positions filled by
`conv_fill` ('hold' = nearest kept token on the grid), and every group's scan over the kept steps of its own order.
At the stage end the grid is refilled with the pruned tokens' features from their prune point.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmprune_cli.errors import BadInputError, CheckpointError
from ssmprune_cli.ops.fused_norm import add_norm
from ssmprune_cli.ops.grouped_linear import grouped_linear, stacked

from ._base import PrunableModel
from ._registry import Family, register_family, register_model
from .layers import mamba_core as core
from .layers.grid_orders import grid_order
from .layers.token_layout import TokenLayout

FAMILY = "groupmamba"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# One scan order per channel group: official CrossScan_1..4 (mamba_g1..mamba_g4).
GROUP_ORDERS = ("row", "col", "row_rev", "col_rev")


@dataclass
class GroupMambaConfig:
    img_size: int = 224                      # no position embedding: only the grid sizes depend on it
    in_chans: int = 3
    num_classes: int = 1000
    stem_hidden_dim: int = 32
    embed_dims: List[int] = field(default_factory=lambda: [64, 128, 348, 448])  # each divisible by 4 (groups)
    depths: List[int] = field(default_factory=lambda: [3, 4, 9, 3])
    mlp_ratios: List[float] = field(default_factory=lambda: [8, 8, 4, 4])  # the ClassBlock uses the last one
    d_state: int = 1
    ssm_ratio: float = 1.0                   # official `expand`
    d_conv: int = 3
    dt_ranks: Optional[List[int]] = None     # per stage; None = official "auto": ceil((C / 4) / 16)
    reduction: int = 16                      # CAM bottleneck C // reduction
    distillation: bool = True                # dist_head present (the released weights have it)
    drop_path_rate: float = 0.0              # official training used 0.05
    mean: List[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: List[float] = field(default_factory=lambda: list(IMAGENET_STD))

    def __post_init__(self):
        if any(c % 4 for c in self.embed_dims):
            raise BadInputError(f"GroupMamba widths must be divisible by 4 (channel groups), got {self.embed_dims}")
        if self.dt_ranks is None:
            self.dt_ranks = [math.ceil(c // 4 / 16) for c in self.embed_dims]


# ============================================================================================ helpers
def scan_order(kind: str, H: int, W: int, device=None) -> Tensor:
    """(L,) raster position read at each scan step of one group's order (CrossScan_1..4), int32, made once per grid
    and device (models/layers/grid_orders.py)."""
    return grid_order(kind, H, W, device)


def _drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


# ============================================================================================ blocks
class SS2D(nn.Module):
    """One group's mixer: the official k_group=1 SS2D (forward_type v2) with a single scan order.

    in_proj → (x, z=SiLU(z)); x → depthwise conv 3×3 → SiLU → scan (D inside, no z) in `order` → back to raster
    → out_norm → · z → out_proj.
    """

    n_directions = 1
    # weights this module passes to F.linear itself: inference graphs hand them to autocast already cast
    matmul_parameters = ("x_proj_weight", "dt_projs_weight")

    def __init__(self, d_model: int, d_state: int = 1, ssm_ratio: float = 1.0, d_conv: int = 3,
                 dt_rank: Optional[int] = None, order: str = "row"):
        super().__init__()
        d_inner = int(ssm_ratio * d_model)
        dt_rank = math.ceil(d_model / 16) if dt_rank is None else dt_rank
        self.order, self.d_state, self.dt_rank = order, d_state, dt_rank
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=True)
        self.x_proj_weight = nn.Parameter(torch.empty(1, dt_rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(1, d_inner, dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(1, d_inner))
        self.A_logs = nn.Parameter(torch.empty(d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(d_inner))
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        self.register_buffer("delta_hat", None)
        self.delta_probe = None
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
        """Mamba's initialisation (softplus(dt bias) log-uniform in [dt_min, dt_max], S4D-real A, D = 1)."""
        d_inner = self.Ds.shape[0]
        nn.init.uniform_(self.x_proj_weight, -d_inner ** -0.5, d_inner ** -0.5)
        nn.init.uniform_(self.dt_projs_weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        dt = torch.exp(torch.rand_like(self.dt_projs_bias) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=1e-4)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_logs.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=self.A_logs.dtype,
                                                 device=self.A_logs.device)).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def default_delta_hat(self) -> Tensor:
        """(1, E): softplus of the dt bias, the 'bias' Δ̂."""
        return F.softplus(self.dt_projs_bias)

    def scan_spec(self, hw: Tuple[int, int], device) -> Tuple[Optional[Tensor], bool, str]:
        """(order, reverse, key) of this group's scan for `core.scan_plan`. row: raster order; row_rev: reversed in
        place; the column orders read rows through an index stream, and every order writes back to raster rows
        (the official CrossMerge)."""
        order = None if self.order in ("row", "row_rev") else scan_order(self.order, hw[0], hw[1], device)
        return order, self.order == "row_rev", f"{FAMILY}:{self.order}"

    def forward(self, x: Tensor, hw: Tuple[int, int], layout: Optional[TokenLayout] = None) -> Tensor:
        """x (b, K, d) tokens in raster order (K = H·W when dense) → (b, K, d), raster order."""
        return self.out_proj(self.mix(self.in_proj(x), hw, layout))

    def mix(self, xz: Tensor, hw: Tuple[int, int], layout: Optional[TokenLayout] = None) -> Tensor:
        """Between the projections: in_proj's output xz (b, K, 2E) → the gated, normed scan output (b, K, E)."""
        E = self.Ds.shape[0]
        xs, z = xz[..., :E], xz[..., E:]
        u = core.depthwise_conv(xs, self.conv2d, hw, layout, act="silu")    # (b, K, E)
        dt_low, B, C = F.linear(u, self.x_proj_weight[0]).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt_low, self.dt_projs_weight[0])
        return self.scan_and_norm(u, dt, B, C, z, hw, layout)

    def scan_and_norm(self, u: Tensor, dt: Tensor, B: Tensor, C: Tensor, z: Tensor, hw: Tuple[int, int],
                      layout: Optional[TokenLayout]) -> Tensor:
        """The scan in this group's order (raster rows in and out) → out_norm → · SiLU(z); (b, K, ·) each."""
        y = self.scan(u, dt, B, C, hw, layout)
        n = self.out_norm  # out_norm(y) · silu(z), the silu too in one kernel on the GPU
        return add_norm(y, None, n.weight, n.bias, n.eps, "layer", out_dtype=core.activation_dtype(y), gate=z,
                        gate_act="silu")[0]

    def scan(self, u: Tensor, dt: Tensor, B: Tensor, C: Tensor, hw: Tuple[int, int],
             layout: Optional[TokenLayout]) -> Tensor:
        """The scan in this group's order, raster rows in and out, (b, K, E)."""
        order, reverse, key = self.scan_spec(hw, u.device)
        plan = core.scan_plan(layout, hw[0] * hw[1], order, reverse=reverse, key=key)
        return core.scan(self, 0, u, dt, self.A_logs, B, C, self.Ds, self.dt_projs_bias[0], plan, layout)


class GroupMambaLayer(nn.Module):
    """Modulated group Mamba: norm → 4 one-direction SS2D groups · skip_scale · x · CAM → the same norm → proj."""

    def __init__(self, dim: int, cfg: GroupMambaConfig, dt_rank: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim // cfg.reduction)
        self.fc2 = nn.Linear(dim // cfg.reduction, dim)
        self.norm = nn.LayerNorm(dim)                       # eps 1e-5, used twice (official)
        for g, order in enumerate(GROUP_ORDERS, start=1):
            setattr(self, f"mamba_g{g}", SS2D(dim // 4, cfg.d_state, cfg.ssm_ratio, cfg.d_conv, dt_rank, order))
        self.proj = nn.Linear(dim, dim)
        self.skip_scale = nn.Parameter(torch.ones(1))

    def groups(self) -> List[SS2D]:
        return [self.mamba_g1, self.mamba_g2, self.mamba_g3, self.mamba_g4]

    def forward(self, x: Tensor, hw: Tuple[int, int], layout: Optional[TokenLayout] = None) -> Tensor:
        n = self.norm  # one Triton kernel on the GPU, in the dtype the matmuls take (torch's ran in float32)
        dtype = core.activation_dtype(x)
        x, _ = add_norm(x, None, n.weight, n.bias, n.eps, "layer", out_dtype=dtype)
        # CAM: mean over the tokens present (kept tokens only when pruned, docs/models/groupmamba.md)
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=1)))))
        groups = self.groups()
        core.prepare_orders(layout, [m.scan_spec(hw, x.device) for m in groups])
        y = self._groups(x, hw, layout, groups)                                                # (G, b·K, C/G)
        # skip_scale · x · CAM as one (b, K, C) factor; the product takes the factor's token-major layout, so the
        # groups' outputs land back in channel order without a copy (x is token-major already on the GPU)
        b, K, C = x.shape
        G = len(groups)
        factor = (x * (self.skip_scale * gate)[:, None].to(dtype)).contiguous().view(b * K, G, C // G)
        y = (factor * y.transpose(0, 1)).view(b, K, C)
        return self.proj(add_norm(y, None, n.weight, n.bias, n.eps, "layer", out_dtype=dtype)[0])

    def _groups(self, x: Tensor, hw: Tuple[int, int], layout: Optional[TokenLayout], groups: List[SS2D]) -> Tensor:
        """Every group's SS2D (`SS2D.forward` on its quarter of the channels), (G, b·K, C/G). What runs per token runs
        for the four groups at once: in_proj, x_proj, dt_proj and out_proj as batched matmuls
        (ops/grouped_linear.py), the 3×3 convs and the out_norms as one grouped launch each; the scans (four orders)
        per group."""
        b, K, C = x.shape
        G, g0 = len(groups), groups[0]
        E, R, N = g0.Ds.shape[0], g0.dt_rank, g0.d_state
        xz = grouped_linear(x.reshape(b * K, G, C // G).transpose(0, 1), [m.in_proj.weight for m in groups])
        xz = xz.view(G, b, K, 2 * E)
        taps = stacked([m.conv2d.weight.view(E, *m.conv2d.weight.shape[2:]) for m in groups])      # (G, E, 3, 3)
        bias = stacked([m.conv2d.bias for m in groups])                                               # (G, E)
        u = core.depthwise_conv_weights(xz[..., :E], taps, bias, hw, layout, tuple(g0.conv2d.padding), act="silu")
        x_dbl = grouped_linear(u.view(G, b * K, E), [m.x_proj_weight[0] for m in groups])           # (G, b·K, R+2N)
        dt = grouped_linear(x_dbl[..., :R], [m.dt_projs_weight[0] for m in groups]).view(G, b, K, E)
        x_dbl = x_dbl.view(G, b, K, R + 2 * N)
        B, C_, z = x_dbl[..., R:R + N], x_dbl[..., R + N:], xz[..., E:]
        norms = [m.out_norm for m in groups]
        if torch.is_grad_enabled() and (u.requires_grad or norms[0].weight.requires_grad):
            # training: per-group out_norms, whose fused kernel has a backward
            ys = torch.stack([m.scan_and_norm(u[g], dt[g], B[g], C_[g], z[g], hw, layout)
                              for g, m in enumerate(groups)])
        else:
            ys = torch.stack([m.scan(u[g], dt[g], B[g], C_[g], hw, layout) for g, m in enumerate(groups)])
            # the four out_norms · SiLU(z) in one launch, each group's rows with its own weights (ops/fused_norm.py)
            ys = add_norm(ys, None, stacked([n.weight for n in norms]), stacked([n.bias for n in norms]),
                          norms[0].eps, "layer", out_dtype=core.activation_dtype(ys), gate=z, gate_act="silu")[0]
        return grouped_linear(ys.view(G, b * K, E), [m.out_proj.weight for m in groups])


class PVT2FFN(nn.Module):
    """fc1 → depthwise 3×3 conv on the grid → GELU → fc2 (keys `dwconv.dwconv.*`, official); the GELU runs inside the
    conv's kernel on the GPU."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Module()
        self.dwconv.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=True)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, hw: Tuple[int, int], layout: Optional[TokenLayout] = None) -> Tensor:
        x = core.depthwise_conv(self.fc1(x), self.dwconv.dwconv, hw, layout, act="gelu")  # kept tokens only
        return self.fc2(x)


class FFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Official `Block_mamba`: x + attn(x) (attn normalises inside); x + mlp(norm2(x))."""

    def __init__(self, dim: int, mlp_ratio: float, cfg: GroupMambaConfig, dt_rank: int, drop_path: float = 0.0):
        super().__init__()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = GroupMambaLayer(dim, cfg, dt_rank)
        self.mlp = PVT2FFN(dim, int(dim * mlp_ratio))
        self.drop_path = drop_path

    def forward(self, x: Tensor, hw: Tuple[int, int], layout: Optional[TokenLayout] = None) -> Tensor:
        a = _drop_path(self.attn(x, hw, layout), self.drop_path, self.training)
        n = self.norm2  # the residual add and norm2 in one kernel on the GPU
        h, x = add_norm(a, x, n.weight, n.bias, n.eps, "layer", out_dtype=core.activation_dtype(x),
                        residual_dtype=x.dtype)
        return x + _drop_path(self.mlp(h, hw, layout), self.drop_path, self.training)


class ClassBlock(nn.Module):
    """Post network on the pooled token only: cls + norm1(attn(cls)) (post-norm, official), cls + mlp(norm2(cls))."""

    def __init__(self, dim: int, mlp_ratio: float, cfg: GroupMambaConfig, dt_rank: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = GroupMambaLayer(dim, cfg, dt_rank)
        self.mlp = FFN(dim, int(dim * mlp_ratio))

    def forward(self, cls: Tensor) -> Tensor:
        cls = cls + self.norm1(self.attn(cls, (1, 1)))     # the SS2D convs and scans see a 1×1 map
        return cls + self.mlp(self.norm2(cls))


def _embed_norm(norm: nn.LayerNorm, x: Tensor) -> Tensor:
    """`norm(x)` for the token grids entering and leaving a stage, as the fused norm kernel on the GPU. The output is
    at least float32, as torch's LayerNorm gives under autocast: it starts the stage's residual stream."""
    return add_norm(x, None, norm.weight, norm.bias, norm.eps, "layer",
                    out_dtype=torch.promote_types(x.dtype, torch.float32))[0]


class Stem(nn.Module):
    """conv7×7 s2 + BN + ReLU, 2 × (conv3×3 + BN + ReLU), proj conv3×3 s2, flatten, LayerNorm."""

    def __init__(self, in_chans: int, hidden: int, dim: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_chans, hidden, 7, 2, 3, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, 1, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, 1, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
        )
        self.proj = nn.Conv2d(hidden, dim, 3, 2, 1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        if x.is_cuda:  # cuDNN's NHWC kernels; the flattened output is then token-major without a copy
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.proj(self.conv(x))
        hw = (x.shape[2], x.shape[3])
        return _embed_norm(self.norm, x.flatten(2).transpose(1, 2)), hw


class DownSample(nn.Module):
    """Official `DownSamples`: conv3×3 s2 p1 → flatten → LayerNorm."""

    def __init__(self, dim_in: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(dim_in, dim, 3, 2, 1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        x = self.proj(x)
        hw = (x.shape[2], x.shape[3])
        return _embed_norm(self.norm, x.flatten(2).transpose(1, 2)), hw


# ============================================================================================ model
class GroupMamba(PrunableModel):
    family = FAMILY
    hierarchical = True  # the pruning engine keeps refill features for the stage ends

    def __init__(self, cfg: GroupMambaConfig):
        super().__init__()
        self.cfg = cfg
        dims, depths = cfg.embed_dims, cfg.depths
        n = sum(depths)
        dpr = [cfg.drop_path_rate * i / max(n - 1, 1) for i in range(n)]  # stochastic depth, linear in depth
        cur = 0
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            embed = Stem(cfg.in_chans, cfg.stem_hidden_dim, dim) if i == 0 else DownSample(dims[i - 1], dim)
            blocks = nn.ModuleList(Block(dim, cfg.mlp_ratios[i], cfg, cfg.dt_ranks[i], dpr[cur + j])
                                   for j in range(depth))
            cur += depth
            setattr(self, f"patch_embed{i + 1}", embed)
            setattr(self, f"block{i + 1}", blocks)
            setattr(self, f"norm{i + 1}", nn.LayerNorm(dim, eps=1e-6))
        self.post_network = nn.ModuleList([ClassBlock(dims[-1], cfg.mlp_ratios[-1], cfg, cfg.dt_ranks[-1])])
        self.head = nn.Linear(dims[-1], cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        if cfg.distillation:
            self.dist_head = nn.Linear(dims[-1], cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    @property
    def num_stages(self) -> int:
        return len(self.cfg.depths)

    # ------------------------------------------------------------------ forward
    def forward_features(self, x: Tensor, hook: Optional[Any] = None) -> Tensor:
        b = x.shape[0]
        for i in range(self.num_stages):
            x, hw = getattr(self, f"patch_embed{i + 1}")(x)               # (b, L, C), a whole grid
            layout = None
            for j, blk in enumerate(getattr(self, f"block{i + 1}")):
                x = blk(x, hw, layout)
                if hook is not None:
                    (x,), layout = hook(f"{i + 1}.{j + 1}", (x,), layout)
            if layout is not None:
                x = layout.refilled(x)  # pruned positions get their features from their prune point
            if i != self.num_stages - 1:
                x = _embed_norm(getattr(self, f"norm{i + 1}"), x)
                x = x.reshape(b, hw[0], hw[1], -1).permute(0, 3, 1, 2)
        cls = self.post_network[0](x.mean(dim=1, keepdim=True))[:, 0]      # stage 4 has no norm before pooling
        return getattr(self, f"norm{self.num_stages}")(cls)

    def forward_head(self, x: Tensor):
        if not self.cfg.distillation:
            return self.head(x)
        out, dist = self.head(x), self.dist_head(x)
        # training returns both heads (the distillation loss uses dist_head); eval averages them (official)
        return (out, dist) if self.training else (out + dist) / 2

    def forward(self, x: Tensor, hook: Optional[Any] = None):
        return self.forward_head(self.forward_features(x, hook))

    # ------------------------------------------------------------------ description
    def input_size(self) -> Tuple[int, int, int]:
        return (self.cfg.in_chans, self.cfg.img_size, self.cfg.img_size)

    def stage_grids(self) -> List[Tuple[int, int]]:
        """(H, W) of each stage's token grid at cfg.img_size."""
        s = _conv_out(_conv_out(self.cfg.img_size, 7, 2, 3), 3, 2, 1)
        grids = [(s, s)]
        for _ in range(self.num_stages - 1):
            s = _conv_out(s, 3, 2, 1)
            grids.append((s, s))
        return grids

    def _block(self, site: str) -> Tuple[int, int]:
        m = re.fullmatch(r"(\d+)\.(\d+)", str(site))
        s, j = (int(m[1]), int(m[2])) if m else (0, 0)
        if not (1 <= s <= self.num_stages and 1 <= j <= self.cfg.depths[s - 1]):
            raise BadInputError(f"unknown GroupMamba site {site!r}; sites are 'stage.block', e.g. '1.2'")
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
        return getattr(self, f"block{s}")[j - 1].attn.proj

    def mixers(self) -> List[nn.Module]:
        """Every SS2D group, blocks in execution order (g1..g4 each), then the ClassBlock's four."""
        layers = [blk.attn for i in range(self.num_stages) for blk in getattr(self, f"block{i + 1}")]
        layers.append(self.post_network[0].attn)
        return [g for layer in layers for g in layer.groups()]

    # ------------------------------------------------------------------ cost model (MACs, DESIGN 3)
    def block_costs(self) -> List[Dict[str, Any]]:
        """LayerNorms, activations and elementwise products (a few ops per element) are not counted."""
        out = []
        for s, ((H, W), dim, depth) in enumerate(zip(self.stage_grids(), self.cfg.embed_dims, self.cfg.depths),
                                                  start=1):
            L = H * W
            for j in range(1, depth + 1):
                blk = getattr(self, f"block{s}")[j - 1]
                per_attn, fixed_attn = _layer_macs(blk.attn)
                hidden = blk.mlp.fc1.out_features
                out.append({"site": f"{s}.{j}", "stage": s, "tokens": L,
                            "per_token": per_attn + 2 * dim * hidden + 9 * hidden,  # the FFN's 3×3 dwconv too
                            "fixed": fixed_attn})
        return out

    def fixed_macs(self) -> int:
        """Stem, downsampling convs, ClassBlock (one token) and the heads."""
        cfg, grids = self.cfg, self.stage_grids()
        s1 = _conv_out(cfg.img_size, 7, 2, 3)
        h = cfg.stem_hidden_dim
        macs = 49 * cfg.in_chans * h * s1 * s1 + 2 * 9 * h * h * s1 * s1
        macs += 9 * h * cfg.embed_dims[0] * grids[0][0] * grids[0][1]
        for i in range(1, self.num_stages):
            macs += 9 * cfg.embed_dims[i - 1] * cfg.embed_dims[i] * grids[i][0] * grids[i][1]
        cb = self.post_network[0]
        per, fixed = _layer_macs(cb.attn)
        macs += per + fixed + 2 * cb.mlp.fc1.in_features * cb.mlp.fc1.out_features
        heads = [m for m in (self.head, getattr(self, "dist_head", None)) if isinstance(m, nn.Linear)]
        return int(macs + sum(m.in_features * m.out_features for m in heads))


def _conv_out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def _layer_macs(layer: GroupMambaLayer) -> Tuple[int, int]:
    """(per-token, fixed) MACs of one GroupMambaLayer (per kept token, and once per image)."""
    dim = layer.proj.in_features
    per = dim * dim                                              # proj
    fixed = 2 * layer.fc1.in_features * layer.fc1.out_features   # CAM, once per image
    for g in layer.groups():
        d, E, N, R = g.in_proj.in_features, g.Ds.shape[0], g.d_state, g.dt_rank
        per += d * 2 * E + E * (R + 2 * N) + R * E + E * d      # in_proj, x_proj, dt_proj, out_proj
        # one scan direction, DESIGN 3's convention: 9·E·N + 2·E per token (D skip and z gate)
        per += 9 * E * N + 2 * E
        per += g.conv2d.kernel_size[0] * g.conv2d.kernel_size[1] * E   # depthwise conv, at kept tokens only
    return per, fixed


@torch.no_grad()
def _init_weights(m: nn.Module) -> None:
    # Official init: trunc-normal linears, fan-out normal convs, unit LayerNorms (SS2D parameters set in SS2D).
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        m.weight.normal_(0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            m.bias.zero_()


# ============================================================================================ checkpoints
def checkpoint_filter_fn(sd: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Official keys → ours. The release is a bare EMA state dict whose keys are already ours; DDP-saved
    training states carry `module.`."""
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def detect(sd: Mapping[str, Tensor]) -> bool:
    return "patch_embed1.conv.0.weight" in sd and "block1.0.attn.mamba_g1.A_logs" in sd


def config_from_state_dict(sd: Mapping[str, Tensor], **overrides: Any) -> GroupMambaConfig:
    """Every size from shapes; `img_size`, `mean`, `std`, `drop_path_rate` come from overrides (or defaults)."""
    def need(key: str) -> Tensor:
        if key not in sd:
            raise CheckpointError(f"not a GroupMamba state dict: missing {key!r}")
        return sd[key]

    stages = sorted(int(m[1]) for k in sd if (m := re.fullmatch(r"patch_embed(\d+)\.proj\.weight", k)))
    if not stages or stages != list(range(1, len(stages) + 1)):
        raise CheckpointError("not a GroupMamba state dict: no patch_embed{i}.proj.weight sequence")
    dims = [int(need(f"patch_embed{s}.proj.weight").shape[0]) for s in stages]
    depths = [len({k.split(".")[1] for k in sd if k.startswith(f"block{s}.")}) for s in stages]
    if 0 in depths:
        raise CheckpointError(f"GroupMamba state dict has an empty stage (depths {depths})")
    mlp_ratios = [_ratio(need(f"block{s}.0.mlp.fc1.weight").shape[0], d) for s, d in zip(stages, dims)]
    g = [f"block{s}.0.attn.mamba_g1." for s in stages]
    A = need(g[0] + "A_logs")
    cams = [(d, int(need(f"block{s}.0.attn.fc1.weight").shape[0])) for s, d in zip(stages, dims)]
    cams.append((dims[-1], int(need("post_network.0.attn.fc1.weight").shape[0])))
    head = sd.get("head.weight")
    kw: Dict[str, Any] = dict(
        in_chans=int(need("patch_embed1.conv.0.weight").shape[1]),
        num_classes=0 if head is None else int(head.shape[0]),
        stem_hidden_dim=int(need("patch_embed1.conv.0.weight").shape[0]),
        embed_dims=dims, depths=depths, mlp_ratios=mlp_ratios,
        d_state=int(A.shape[1]),
        ssm_ratio=_ratio(A.shape[0], dims[0] // 4),
        d_conv=int(need(g[0] + "conv2d.weight").shape[-1]),
        dt_ranks=[int(need(p + "dt_projs_weight").shape[-1]) for p in g],
        reduction=_reduction(cams),
        distillation="dist_head.weight" in sd,
    )
    kw.update(overrides)
    return GroupMambaConfig(**kw)


def _reduction(cams: Sequence[Tuple[int, int]]) -> int:
    """The CAM reduction r with C // r == bottleneck width in every stage (official 16 when it fits)."""
    for r in [16, *range(1, max(c for c, _ in cams) + 1)]:
        if all(c // r == m for c, m in cams):
            return r
    raise CheckpointError(f"GroupMamba CAM widths {[m for _, m in cams]} fit no single reduction of "
                          f"{[c for c, _ in cams]}")


def _ratio(num: int, den: int):
    return num // den if num % den == 0 else num / den


def build(cfg: GroupMambaConfig) -> GroupMamba:
    return GroupMamba(cfg)


# ============================================================================================ variants
_VARIANTS: Dict[str, Dict[str, Any]] = {
    # README: 23M / 34M / 57M parameters, top-1 83.3 / 83.9 / 84.5 (224², ImageNet-1k)
    "groupmamba_tiny": dict(stem_hidden_dim=32, embed_dims=[64, 128, 348, 448], depths=[3, 4, 9, 3]),
    "groupmamba_small": dict(stem_hidden_dim=64, embed_dims=[64, 128, 348, 512], depths=[3, 4, 16, 3]),
    "groupmamba_base": dict(stem_hidden_dim=64, embed_dims=[96, 192, 424, 512], depths=[3, 6, 21, 3]),
    # tiny, for tests: 32² input → 8², 4², 2², 1² grids
    "groupmamba_test": dict(img_size=32, num_classes=10, stem_hidden_dim=8, embed_dims=[16, 32, 48, 64],
                            depths=[3, 2, 2, 1], mlp_ratios=[2, 2, 2, 2]),
}


def _create(name: str, **kwargs: Any) -> GroupMamba:
    known = {f.name for f in fields(GroupMambaConfig)}
    unknown = set(kwargs) - known
    if unknown:
        raise BadInputError(f"unknown option(s) for {name}: {', '.join(sorted(unknown))}")
    return GroupMamba(GroupMambaConfig(**{**_VARIANTS[name], **kwargs}))


@register_model
def groupmamba_tiny(**kwargs: Any) -> GroupMamba:
    return _create("groupmamba_tiny", **kwargs)


@register_model
def groupmamba_small(**kwargs: Any) -> GroupMamba:
    return _create("groupmamba_small", **kwargs)


@register_model
def groupmamba_base(**kwargs: Any) -> GroupMamba:
    return _create("groupmamba_base", **kwargs)


@register_model
def groupmamba_test(**kwargs: Any) -> GroupMamba:
    return _create("groupmamba_test", **kwargs)


register_family(Family(name=FAMILY, detect=detect, filter_fn=checkpoint_filter_fn,
                       config_from_state_dict=config_from_state_dict, build=build, config_cls=GroupMambaConfig))
