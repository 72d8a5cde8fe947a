"""PlainMamba (Yang et al., 2024): a plain vision SSM with four zig-zag scans over the 2-D patch grid.

Reproduces the official classifier (ChenhongyiYang/PlainMamba: mmcls backbone `PlainMamba` + `CustomAveragePooling`
neck + `LinearClsHead`), quirks included: docs/models/plainmamba.md lists them. Token pruning pairs scan steps
with tokens as written down in docs/plainmamba-scan-pairing.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmprune_cli.errors import BadInputError, CheckpointError
from ssmprune_cli.ops.fused_norm import add_norm

from ._base import PrunableModel
from ._registry import Family, register_family, register_model
from .layers import mamba_core as core
from .layers.token_layout import TokenLayout

FAMILY = "plainmamba"

N_DIRECTIONS = 4
# Official direction codes of `get_permute_order`: the move that arrived at a scan step (0 at the first step).
_START, _RIGHT, _LEFT, _UP, _DOWN = 0, 1, 2, 3, 4
_MOVE_CODE = {(0, 1): _RIGHT, (0, -1): _LEFT, (-1, 0): _UP, (1, 0): _DOWN}


@dataclass
class PlainMambaConfig:
    embed_dim: int = 192
    depth: int = 24
    d_state: int = 16
    expand: float = 2
    dt_rank: Optional[int] = None     # None: ceil(embed_dim / 16), the official "auto"
    conv_size: int = 7                # depthwise conv of every mixer, padding conv_size // 2
    patch_size: int = 16              # stride-2 stem, then a (patch/2)-strided projection
    stem_channels: int = 64
    num_convs_patch_embed: int = 1    # extra 3x3 conv + BN + ReLU units after the stem
    layers_with_dwconv: List[int] = field(default_factory=list)  # L1: [0], DWConv3x3-BN-GELU after the residual
    num_classes: int = 1000           # 0: no head, forward returns pooled features
    img_size: Union[int, List[int]] = 224  # sets the pos_embed grid; other input sizes resize it (bicubic)
    in_chans: int = 3
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])

    def __post_init__(self):
        if self.dt_rank is None:
            self.dt_rank = math.ceil(self.embed_dim / 16)
        if not isinstance(self.img_size, int):
            self.img_size = [int(s) for s in self.img_size]  # JSON-friendly (tuples come back as lists)
        self.layers_with_dwconv = [int(i) for i in self.layers_with_dwconv]
        self.mean = [float(m) for m in self.mean]
        self.std = [float(s) for s in self.std]

    @property
    def d_inner(self) -> int:
        return int(self.expand * self.embed_dim)

    @property
    def img_hw(self) -> Tuple[int, int]:
        s = self.img_size
        return (s, s) if isinstance(s, int) else (s[0], s[1])

    @property
    def grid(self) -> Tuple[int, int]:
        """Patch grid of the pos_embed, computed as the official `init_out_size` (floor of img/2, corner pad)."""
        s = self.patch_size // 2
        h, w = (-(-(n // 2) // s) for n in self.img_hw)
        return h, w


# ----------------------------------------------------------------------------------------------- scan orders
def _snake(n_lines: int, line_len: int, lines_reversed: bool, first_forward: bool) -> List[Tuple[int, int]]:
    """(line, position) pairs of a snake walk: lines in order (or reversed), alternating direction."""
    lines = range(n_lines - 1, -1, -1) if lines_reversed else range(n_lines)
    path, forward = [], first_forward
    for a in lines:
        positions = range(line_len) if forward else range(line_len - 1, -1, -1)
        path += [(a, p) for p in positions]
        forward = not forward
    return path


def _move_codes(path: Sequence[Tuple[int, int]]) -> List[int]:
    return [_START] + [_MOVE_CODE[(i1 - i0, j1 - j0)] for (i0, j0), (i1, j1) in zip(path[:-1], path[1:])]


@lru_cache(maxsize=64)
def zigzag_orders(H: int, W: int) -> Tuple[Tuple[Tuple[int, ...], ...], Tuple[Tuple[int, ...], ...]]:
    """The four continuous scans of an H x W grid: (orders, direction codes), each 4 tuples of length H*W.

    orders[k][t] is the raster index visited at step t of scan k; codes[k][t] the move that arrived there.
    1: rows snaking from the top-left going right. 2: rows snaking upward from the bottom row (bottom-right going
    left when H is odd, bottom-left going right when even). 3: columns snaking from the top-left going down.
    4: columns snaking leftward from the right column (bottom-right going up when W is odd, top-right going down
    when even).
    """
    paths = [
        _snake(H, W, lines_reversed=False, first_forward=True),
        _snake(H, W, lines_reversed=True, first_forward=H % 2 == 0),
        [(i, j) for j, i in _snake(W, H, lines_reversed=False, first_forward=True)],
        [(i, j) for j, i in _snake(W, H, lines_reversed=True, first_forward=W % 2 == 0)],
    ]
    orders = tuple(tuple(i * W + j for i, j in p) for p in paths)
    codes = tuple(tuple(_move_codes(p)) for p in paths)
    return orders, codes


class ScanOrders(NamedTuple):
    order: Tensor    # (4, L) raster index read at each step
    inverse: Tensor  # (4, L) step at which each raster index is read
    codes: Tensor    # (4, L) direction code of each step (row of direction_Bs)


@lru_cache(maxsize=64)
def _scan_orders_cpu(H: int, W: int) -> ScanOrders:
    orders, codes = zigzag_orders(H, W)
    order = torch.tensor(orders, dtype=torch.long)
    return ScanOrders(order, order.argsort(dim=1), torch.tensor(codes, dtype=torch.long))


@torch.compiler.disable  # traced, the cached lookups would become tensors made from host data in every call
def scan_orders(hw: Tuple[int, int], device: Optional[torch.device] = None) -> ScanOrders:
    o = _scan_orders_cpu(int(hw[0]), int(hw[1]))
    return _scan_orders_on(int(hw[0]), int(hw[1]), torch.device(device)) if device is not None else o


@lru_cache(maxsize=64)
def _scan_orders_on(H: int, W: int, device: torch.device) -> ScanOrders:
    # copied to the device once: a forward pass makes no host-to-device copies (CUDA graphs capture it whole)
    with torch.inference_mode(False):
        return ScanOrders(*(t.to(device) for t in _scan_orders_cpu(H, W)))


# ----------------------------------------------------------------------------------------------- helpers
def resize_pos_embed(pos_embed: Tensor, src_hw: Tuple[int, int], dst_hw: Tuple[int, int],
                     mode: str = "bicubic") -> Tensor:
    """(1, Hs*Ws, C) raster-order position embedding → (1, Hd*Wd, C), as mmcls `resize_pos_embed` with no extra
    tokens (F.interpolate, align_corners=False). Returned unchanged when the grids are equal."""
    if tuple(src_hw) == tuple(dst_hw):
        return pos_embed
    _, L, C = pos_embed.shape
    if L != src_hw[0] * src_hw[1]:
        raise ValueError(f"pos_embed holds {L} tokens, not a {src_hw[0]}x{src_hw[1]} grid")
    grid = pos_embed.reshape(1, src_hw[0], src_hw[1], C).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(dst_hw), mode=mode, align_corners=False)
    return grid.flatten(2).transpose(1, 2)


def _conv_fill_kind(layout: TokenLayout) -> str:
    """What a 2-D convolution reads at pruned positions: nearest kept token ('hold') or zero."""
    if layout.conv_fill == "packed":
        raise ValueError("conv_fill 'packed' is for 1-D convolutions; PlainMamba's are 2-D: use 'hold' or 'zero'")
    return "grid" if layout.conv_fill == "hold" else "zero"


def _tokens_to_map(x: Tensor, hw: Tuple[int, int]) -> Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], hw[0], hw[1])


def _map_to_tokens(x: Tensor) -> Tensor:
    return x.flatten(2).transpose(1, 2)


# ----------------------------------------------------------------------------------------------- blocks
class ConvPatchEmbed(nn.Module):
    """Conv7x7/2 + BN + ReLU stem, `num_convs` x (Conv3x3 + BN + ReLU), then a (patch/2)-strided projection
    after bottom-right zero padding to a multiple of the stride (mmcv AdaptivePadding 'corner')."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, stem_channels: int, num_convs: int):
        super().__init__()
        c = stem_channels
        self.stem = nn.Sequential(nn.Conv2d(in_chans, c, 7, 2, 3, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        units = [[nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU()] for _ in range(num_convs)]
        self.convs = nn.Sequential(*[m for u in units for m in u]) if num_convs > 0 else None
        self.stride = patch_size // 2
        self.projection = nn.Conv2d(c, embed_dim, self.stride, self.stride)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        x = self.stem(x)
        if self.convs is not None:
            x = self.convs(x)
        pad_h, pad_w = ((-n) % self.stride for n in x.shape[-2:])  # kernel == stride: pad to a multiple
        x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.projection(x)
        return _map_to_tokens(x), (x.shape[2], x.shape[3])


class PlainMamba2D(nn.Module):
    """The mixer: in_proj → depthwise conv2d + SiLU on the grid → x_proj/dt_proj → four zig-zag scans sharing
    one parameter set → sum · silu(z) → out_proj. Official quirks kept (docs/models/plainmamba.md)."""

    n_directions = N_DIRECTIONS

    def __init__(self, d_model: int, d_state: int, d_inner: int, dt_rank: int, conv_size: int):
        super().__init__()
        E, N, R = d_inner, d_state, dt_rank
        self.d_state, self.dt_rank = N, R
        self.in_proj = nn.Linear(d_model, 2 * E)
        self.conv2d = nn.Conv2d(E, E, conv_size, padding=conv_size // 2, groups=E)
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E)
        self.A_log = nn.Parameter(torch.empty(E, N))
        self.D = nn.Parameter(torch.empty(E))
        self.out_proj = nn.Linear(E, d_model)
        self.direction_Bs = nn.Parameter(torch.empty(N_DIRECTIONS + 1, N))  # rows: start, right, left, up, down
        self.register_buffer("delta_hat", None)
        self.delta_probe = None
        self._init_ssm()

    def _init_ssm(self, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4) -> None:
        """Official init: dt weights U(±R^-0.5), softplus(dt bias) log-uniform in [dt_min, dt_max], S4D-real A."""
        E, N = self.A_log.shape
        std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(E) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            self.A_log.copy_(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).expand(E, N))
            self.D.fill_(1.0)
        nn.init.trunc_normal_(self.direction_Bs, std=0.02)

    def default_delta_hat(self) -> Tensor:
        """(4, E) 'bias' fill: softplus of the effective dt bias, which the official scan adds twice."""
        return F.softplus(2 * self.dt_proj.bias).unsqueeze(0).expand(N_DIRECTIONS, -1)

    def forward(self, x: Tensor, hw: Tuple[int, int], orders: ScanOrders,
                layout: Optional[TokenLayout] = None) -> Tensor:
        """x (b, K, D) kept tokens in raster order → (b, K, D)."""
        E = self.D.shape[0]
        xz = self.in_proj(x)
        xs, z = xz[..., :E], xz[..., E:]                                # (b, K, E) column views
        # Δ, B and C of every raster position: the official scan pairs step t with raster token t
        x_conv = core.depthwise_conv(xs, self.conv2d, hw, layout, full_grid=True, act="silu")        # (b, L, E)
        dt_low, B, C = self.x_proj(x_conv).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = self.dt_proj(dt_low)                                       # bias once here, once more in the scan
        L = hw[0] * hw[1]
        y = None
        core.prepare_orders(layout, [(orders.order[k], False, f"{FAMILY}.{k}") for k in range(N_DIRECTIONS)])
        for k in range(N_DIRECTIONS):
            plan = core.scan_plan(layout, L, orders.order[k], key=f"{FAMILY}.{k}", pairing=True)
            # the four orders sum at each token, then one gate: the last scan applies silu(z) to the sum
            y = core.scan(self, k, x_conv, dt, self.A_log, B, C, self.D, self.dt_proj.bias, plan, layout,
                          B_bias=self.direction_Bs[orders.codes[k]], z=z if k == N_DIRECTIONS - 1 else None,
                          acc=y)
        return self.out_proj(y)


class PlainMambaLayer(nn.Module):
    """x + mixer(LayerNorm(x)); with `with_dwconv` (L1 layer 0) the sum is then *replaced* by DWConv3x3-BN-GELU
    on the grid, with no residual around it."""

    def __init__(self, dim: int, mixer: PlainMamba2D, with_dwconv: bool):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.dw = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False, groups=dim), nn.BatchNorm2d(dim),
                                nn.GELU()) if with_dwconv else None
        self.mamba = mixer

    def forward(self, x: Tensor, hw: Tuple[int, int], orders: ScanOrders,
                layout: Optional[TokenLayout] = None) -> Tensor:
        # LayerNorm and the cast to the matmuls' dtype in one kernel on the GPU
        normed, _ = add_norm(x, None, self.norm.weight, self.norm.bias, self.norm.eps, "layer",
                             out_dtype=core.activation_dtype(x))
        x = x + self.mamba(normed, hw, orders, layout)
        if self.dw is None:
            return x
        full = x if layout is None else layout.scatter(x, _conv_fill_kind(layout))
        full = _map_to_tokens(self.dw(_tokens_to_map(full, hw)))
        return full if layout is None else layout.gather(full)


# ----------------------------------------------------------------------------------------------- model
class PlainMamba(PrunableModel):
    family = FAMILY

    def __init__(self, cfg: PlainMambaConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.embed_dim
        self.patch_embed = ConvPatchEmbed(cfg.in_chans, D, cfg.patch_size, cfg.stem_channels,
                                          cfg.num_convs_patch_embed)
        self.grid = cfg.grid
        self.pos_embed = nn.Parameter(torch.empty(1, self.grid[0] * self.grid[1], D))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.layers = nn.ModuleList(
            PlainMambaLayer(D, PlainMamba2D(D, cfg.d_state, cfg.d_inner, cfg.dt_rank, cfg.conv_size),
                            with_dwconv=i in cfg.layers_with_dwconv)
            for i in range(cfg.depth))
        self.ln1 = nn.LayerNorm(D, eps=1e-6)  # mmcv name of the final norm (postfix 1)
        self.head = nn.Linear(D, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()

    # --- description ---------------------------------------------------------------------------
    def input_size(self) -> Tuple[int, int, int]:
        return (self.cfg.in_chans, *self.cfg.img_hw)

    # --- forward -------------------------------------------------------------------------------
    def forward_features(self, x: Tensor, hook: Optional[Any] = None) -> Tensor:
        x, hw = self.patch_embed(x)
        x = x + resize_pos_embed(self.pos_embed, self.grid, hw)
        orders = scan_orders(hw, x.device)
        layout: Optional[TokenLayout] = None
        for i, layer in enumerate(self.layers):
            x = layer(x, hw, orders, layout)
            if hook is not None:
                tensors, layout = hook(str(i + 1), (x,), layout)
                x = tensors[0]
                if layout is not None and layout.length != hw[0] * hw[1]:
                    raise ValueError(f"layout of {layout.length} tokens for a {hw[0]}x{hw[1]} grid")
        return self.ln1(x).mean(dim=1)  # no class token: mean over the (kept) tokens

    def forward_head(self, x: Tensor) -> Tensor:
        return self.head(x)

    def forward(self, x: Tensor, hook: Optional[Any] = None) -> Tensor:
        return self.forward_head(self.forward_features(x, hook))

    # --- pruning surface -----------------------------------------------------------------------
    def prune_sites(self) -> List[str]:
        return [str(i + 1) for i in range(self.cfg.depth)]

    def _layer_at(self, site: str) -> PlainMambaLayer:
        if site not in self.prune_sites():
            raise BadInputError(f"unknown prune site {site!r}; PlainMamba sites are 1..{self.cfg.depth}")
        return self.layers[int(site) - 1]

    def site_tokens(self, site: str) -> Tuple[int, Tuple[int, int], List[int]]:
        self._layer_at(site)
        H, W = self.grid
        return H * W, (H, W), []

    def score_module(self, site: str) -> nn.Module:
        return self._layer_at(site).mamba.out_proj

    def mixers(self) -> List[nn.Module]:
        return [layer.mamba for layer in self.layers]

    def block_costs(self) -> List[Dict[str, Any]]:
        """MACs per block at the config's grid (DESIGN 3). Per kept token: in_proj, out_proj and the four scans,
        9·E·N + E per step each (the D term; the z gate is applied outside the scan, once, after the sum, so it
        is an uncounted elementwise product, as in report/flops.py and the published numbers). Fixed: the
        depthwise conv, x_proj and dt_proj, which a pruned layer still runs on the whole grid, and L1's
        DWConv3x3. Norms, activations, elementwise products and biases are not counted."""
        c = self.cfg
        H, W = self.grid
        L, D, E, N, R, k = H * W, c.embed_dim, c.d_inner, c.d_state, c.dt_rank, c.conv_size
        per_token = 2 * D * E + E * D + N_DIRECTIONS * (9 * E * N + 2 * E)  # DESIGN 3 scan convention
        fixed = L * (E * k * k + E * (R + 2 * N) + R * E)
        return [{"site": str(i + 1), "stage": 0, "tokens": L, "per_token": per_token,
                 "fixed": fixed + (L * D * 9 if i in c.layers_with_dwconv else 0)} for i in range(c.depth)]

    def fixed_macs(self) -> int:
        """Patch embedding (stem, convs, projection) and head; BN, ReLU, pos_embed, ln1 and pooling ignored."""
        c = self.cfg
        h1, w1 = ((n + 2 * 3 - 7) // 2 + 1 for n in c.img_hw)
        H, W = self.grid
        ch = c.stem_channels
        stem = h1 * w1 * ch * c.in_chans * 49
        convs = c.num_convs_patch_embed * h1 * w1 * ch * ch * 9
        proj = H * W * c.embed_dim * ch * (c.patch_size // 2) ** 2
        return stem + convs + proj + c.embed_dim * c.num_classes


# ----------------------------------------------------------------------------------------------- checkpoints
def checkpoint_filter_fn(state_dict: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Official mmcls keys → ours. Wrappers ({'state_dict': ...}) are unwrapped by the io layer before this."""
    out: Dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("module."):  # saved from a DataParallel / DDP wrapper
            key = key[len("module."):]
        if key.startswith("ema_"):  # mmcv EMACheckpointHook buffers (raw weights; the parameters hold the EMA)
            continue
        if key.startswith("backbone."):
            key = key[len("backbone."):]
        elif key.startswith("head.fc."):  # LinearClsHead.fc
            key = "head." + key[len("head.fc."):]
        out[key] = value
    return out


def _detect(state_dict: Mapping[str, Tensor]) -> bool:
    return any(k.endswith("layers.0.mamba.direction_Bs") for k in state_dict)


def _count(sd: Mapping[str, Tensor], fmt: str, step: int = 1) -> int:
    """How many consecutive indices 0, step, 2·step, ... have `fmt` keys."""
    n = 0
    while fmt.format(n * step) in sd:
        n += 1
    return n


def config_from_state_dict(state_dict: Mapping[str, Tensor], **overrides: Any) -> PlainMambaConfig:
    """Every size from tensor shapes; `overrides` (any config field) settle the rest, e.g. img_size for a
    non-square pos_embed grid, mean/std."""
    names = {f.name for f in fields(PlainMambaConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise BadInputError(f"unknown PlainMamba config field(s): {', '.join(unknown)}")
    sd = checkpoint_filter_fn(state_dict)
    for key in ("pos_embed", "layers.0.mamba.A_log", "patch_embed.stem.0.weight", "patch_embed.projection.weight"):
        if key not in sd:
            raise CheckpointError(f"not a PlainMamba checkpoint: {key!r} is missing")
    depth = _count(sd, "layers.{}.mamba.A_log")
    E, N = sd["layers.0.mamba.A_log"].shape
    D = sd["pos_embed"].shape[-1]
    stem = sd["patch_embed.stem.0.weight"].shape
    cfg: Dict[str, Any] = dict(
        embed_dim=D, depth=depth, d_state=N, expand=E // D if E % D == 0 else E / D,
        dt_rank=sd["layers.0.mamba.dt_proj.weight"].shape[1],
        conv_size=sd["layers.0.mamba.conv2d.weight"].shape[-1],
        patch_size=2 * sd["patch_embed.projection.weight"].shape[-1],
        stem_channels=stem[0], in_chans=stem[1],
        num_convs_patch_embed=_count(sd, "patch_embed.convs.{}.weight", step=3),  # conv, BN, ReLU per unit
        layers_with_dwconv=[i for i in range(depth) if f"layers.{i}.dw.0.weight" in sd],
        num_classes=sd["head.weight"].shape[0] if "head.weight" in sd else 0,
    )
    cfg.update(overrides)
    cfg["img_size"] = _infer_img_size(sd["pos_embed"].shape[1], cfg["patch_size"], overrides.get("img_size"))
    return PlainMambaConfig(**cfg)


def _infer_img_size(tokens: int, patch_size: int, img_size: Any) -> Union[int, List[int]]:
    if img_size is None:
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise CheckpointError(f"pos_embed has {tokens} tokens, not a square grid: give img_size (H, W)")
        return side * patch_size
    grid = PlainMambaConfig(img_size=img_size, patch_size=patch_size).grid
    if grid[0] * grid[1] != tokens:
        raise CheckpointError(f"img_size {img_size} gives a {grid[0]}x{grid[1]} grid, "
                              f"but pos_embed holds {tokens} tokens")
    return img_size


# ----------------------------------------------------------------------------------------------- variants
_VARIANTS: Dict[str, Dict[str, Any]] = {
    # ChenhongyiYang/PlainMamba arch_zoo; README top-1 77.9 / 81.6 / 82.3, 7.3M / 25.7M / 50.5M (backbone).
    "plainmamba_l1": dict(embed_dim=192, depth=24, num_convs_patch_embed=1, layers_with_dwconv=[0]),
    "plainmamba_l2": dict(embed_dim=384, depth=24, num_convs_patch_embed=2),
    "plainmamba_l3": dict(embed_dim=448, depth=36, num_convs_patch_embed=2),
    # Tiny, for tests: 4x4 grid at 64 px, every code path (convs, L1-style dwconv layer) present.
    "plainmamba_test": dict(embed_dim=32, depth=3, d_state=8, stem_channels=16, num_convs_patch_embed=1,
                            layers_with_dwconv=[0], num_classes=10, img_size=64),
}


def _create(variant: str, **kwargs: Any) -> PlainMamba:
    return PlainMamba(PlainMambaConfig(**{**_VARIANTS[variant], **kwargs}))


@register_model
def plainmamba_l1(**kwargs: Any) -> PlainMamba:
    return _create("plainmamba_l1", **kwargs)


@register_model
def plainmamba_l2(**kwargs: Any) -> PlainMamba:
    return _create("plainmamba_l2", **kwargs)


@register_model
def plainmamba_l3(**kwargs: Any) -> PlainMamba:
    return _create("plainmamba_l3", **kwargs)


@register_model
def plainmamba_test(**kwargs: Any) -> PlainMamba:
    return _create("plainmamba_test", **kwargs)


register_family(Family(name=FAMILY, detect=_detect, filter_fn=checkpoint_filter_fn,
                       config_from_state_dict=config_from_state_dict, build=PlainMamba,
                       config_cls=PlainMambaConfig))
