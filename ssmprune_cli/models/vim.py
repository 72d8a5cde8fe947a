"""Vision Mamba "Vim" (hustvl/Vim), the released bimamba-v2 models with a middle class token.

Reproduces the official forward (vim/models_mamba.py + the fork's mamba_simple.py), quirks included:
the class token is inserted at index M // 2 of the M patch tokens and the position embedding is added after
the insertion; each block is "add → RMSNorm → mixer" with the residual carried separately at >= float32; the
mixer runs a forward scan and a backward scan over the flipped sequence (flipped z too) with separate
parameters, and averages them (the "div2") before the shared out_proj. See docs/models/vim.md.

Pruning (DESIGN 2.3): sites "1".."depth" (after that block); the hook sees (hidden, residual). With a layout,
projections and norms run on kept tokens, the convolutions read pruned positions through `conv_fill`, and each
direction scans its kept steps with pruned steps decaying the state by Δ̂ (`delta_fill`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmprune_cli.errors import BadInputError, CheckpointError, RecipeError
from ssmprune_cli.ops.fused_norm import add_norm

from ._base import PrunableModel
from ._registry import Family, register_family, register_model
from .layers import mamba_core as core
from .layers.token_layout import TokenLayout

FAMILY = "vim"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_DIRECTIONS = ("forward", "backward")


@dataclass
class VimConfig:
    img_size: int = 224
    patch_size: int = 16
    stride: int = 16               # the "+" models use 8: overlapping patches, 27x27 grid at 224
    in_chans: int = 3
    embed_dim: int = 192           # D
    depth: int = 24
    d_inner: Optional[int] = None  # E; None → 2·D (expand 2)
    d_state: int = 16              # N
    dt_rank: Optional[int] = None  # R; None → ceil(D / 16)
    d_conv: int = 4
    num_classes: int = 1000
    norm_eps: float = 1e-5
    drop_path_rate: float = 0.0    # training only; the official schedule is linear over blocks
    mean: List[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: List[float] = field(default_factory=lambda: list(IMAGENET_STD))

    def __post_init__(self):
        if self.d_inner is None:
            self.d_inner = 2 * self.embed_dim
        if self.dt_rank is None:
            self.dt_rank = math.ceil(self.embed_dim / 16)
        self.mean, self.std = [float(v) for v in self.mean], [float(v) for v in self.std]
        if self.img_size < self.patch_size:
            raise BadInputError(f"image size {self.img_size} is smaller than the patch size {self.patch_size}")

    @property
    def grid(self) -> Tuple[int, int]:
        g = (self.img_size - self.patch_size) // self.stride + 1
        return g, g

    @property
    def num_tokens(self) -> int:
        """Patch tokens plus the class token."""
        return self.grid[0] * self.grid[1] + 1


# ---------------------------------------------------------------------------------------------------- blocks
def _drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth per sample (timm's DropPath)."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


def _capturing(x: Tensor) -> bool:
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


class RMSNorm(nn.Module):
    """Weight-only RMSNorm, as mamba_ssm's Triton kernel computes it."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class PatchEmbed(nn.Module):
    def __init__(self, cfg: VimConfig):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.stride)

    def forward(self, x: Tensor) -> Tensor:
        """(b, C, H, W) -> (b, M, D), patches in raster order."""
        p = self.proj
        (kh, kw), (sh, sw) = p.kernel_size, p.stride
        if (kh, kw) != (sh, sw) or torch.jit.is_tracing():  # overlapping patches; FLOP counts see the conv
            return p(x).flatten(2).transpose(1, 2)
        # Non-overlapping patches are one matmul: cuDNN's strided conv took 0.83 ms of a 17.8 ms batch-128 Vim-S
        # forward on an H100 (bf16), the patch copy and matmul a small fraction of that (docs/benchmarks.md).
        x = x.to(core.activation_dtype(x))
        b, c, H, W = x.shape
        gh, gw = H // kh, W // kw
        patches = x[:, :, :gh * kh, :gw * kw].reshape(b, c, gh, kh, gw, kw).permute(0, 2, 4, 1, 3, 5)
        return F.linear(patches.reshape(b, gh * gw, c * kh * kw), p.weight.reshape(p.out_channels, -1), p.bias)


class VimMixer(nn.Module):
    """Bidirectional Mamba ("bimamba v2"): shared in_proj / out_proj, separate conv, projections, A, D per
    direction; the backward direction runs on the flipped sequence. Tokens are (b, T, C) throughout."""

    n_directions = 2

    def __init__(self, cfg: VimConfig):
        super().__init__()
        D, E, N, R, k = cfg.embed_dim, cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv
        self.d_state, self.dt_rank = N, R
        # Registration order follows the official module, so state dicts list keys in the same order.
        self.in_proj = nn.Linear(D, 2 * E, bias=False)
        # Causal depthwise convs; the official modules pad k-1 on both sides and cut the tail, here the input is
        # padded on the left only (same result, and a FLOP counter sees exactly L outputs).
        self.conv1d = nn.Conv1d(E, E, k, groups=E)
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E)
        self.A_log = nn.Parameter(torch.empty(E, N))
        self.D = nn.Parameter(torch.empty(E))
        self.A_b_log = nn.Parameter(torch.empty(E, N))
        self.conv1d_b = nn.Conv1d(E, E, k, groups=E)
        self.x_proj_b = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj_b = nn.Linear(R, E)
        self.D_b = nn.Parameter(torch.empty(E))
        self.out_proj = nn.Linear(E, D, bias=False)
        self.register_buffer("delta_hat", None)  # (2, E) Δ̂ per direction, set by calibration
        self.delta_probe: Optional[Callable[[int, Tensor], None]] = None
        self._init_parameters(cfg.depth)

    @torch.no_grad()
    def _init_parameters(self, depth: int) -> None:
        """Mamba's initialisation (S4D-real A, dt in [1e-3, 0.1], out_proj scaled by 1/sqrt(depth))."""
        E, N = self.A_log.shape
        std = self.dt_rank ** -0.5
        for dt_proj, A_log, D in ((self.dt_proj, self.A_log, self.D), (self.dt_proj_b, self.A_b_log, self.D_b)):
            nn.init.uniform_(dt_proj.weight, -std, std)
            dt = torch.exp(torch.rand(E) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            A_log.copy_(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).expand(E, N))
            D.fill_(1.0)
        nn.init.kaiming_uniform_(self.out_proj.weight, a=math.sqrt(5))
        self.out_proj.weight.div_(math.sqrt(depth))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A pruned checkpoint carries the calibrated Δ̂; make room for it so a strict load accepts it.
        key = prefix + "delta_hat"
        if self.delta_hat is None and key in state_dict:
            self.delta_hat = torch.empty_like(state_dict[key], device=self.A_log.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --------------------------------------------------------------------------- Δ̂
    def _params(self, d: int) -> Tuple[nn.Conv1d, nn.Linear, nn.Linear, Tensor, Tensor]:
        if d == 0:
            return self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D
        return self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b

    def default_delta_hat(self) -> Tensor:
        """(2, E) softplus of each direction's dt bias: the 'bias' fill."""
        return F.softplus(torch.stack([self.dt_proj.bias, self.dt_proj_b.bias]))

    # --------------------------------------------------------------------------- forward
    def forward(self, h: Tensor, layout: Optional[TokenLayout] = None) -> Tensor:
        """h (b, K, D) in position order (kept tokens when pruned) → (b, K, D)."""
        E = self.D.shape[0]
        xz = self.in_proj(h)
        x, z = xz[..., :E], xz[..., E:]                                  # (b, K, E) column views
        L = layout.length if layout is not None else h.shape[1]
        core.prepare_orders(layout, [(None, False, None), (None, True, None)])  # both directions' maps, one launch
        y = None
        for d in (0, 1):
            conv, x_proj, dt_proj, A_log, D = self._params(d)
            # the backward direction reads the sequence in reverse, in place: no flipped copies
            u = core.depthwise_conv(x, conv, (1, L), layout, causal=True, reverse=d == 1, act="silu")
            dt_low, B, C = x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
            dt = F.linear(dt_low, dt_proj.weight)                       # the bias enters once, in the scan
            plan = core.scan_plan(layout, L, reverse=d == 1)
            # forward: y_f; backward: (y_f + y_b) · silu(z) / 2, the official "div2" with one shared gate
            y = core.scan(self, d, u, dt, A_log, B, C, D, dt_proj.bias, plan, layout,
                          z=z if d == 1 else None, acc=y, out_scale=0.5 if d == 1 else 1.0)
        return self.out_proj(y)


class VimBlock(nn.Module):
    """Add → RMSNorm → mixer; returns (mixer output, residual) as the official fused block does."""

    def __init__(self, cfg: VimConfig, drop_path: float = 0.0):
        super().__init__()
        self.mixer = VimMixer(cfg)
        self.norm = RMSNorm(cfg.embed_dim, cfg.norm_eps)
        self.drop_path = drop_path  # applies to the incoming mixer output, as in the official Block

    def forward(self, hidden: Tensor, residual: Optional[Tensor], layout: Optional[TokenLayout] = None
                ) -> Tuple[Tensor, Tensor]:
        # one fused kernel on the GPU: residual add (float32 stream), RMSNorm, cast to the hidden dtype
        res_dtype = torch.promote_types(hidden.dtype, torch.float32)
        if residual is not None:
            hidden = _drop_path(hidden, self.drop_path, self.training)
            res_dtype = torch.promote_types(res_dtype, residual.dtype)
        normed, residual = add_norm(hidden, residual, self.norm.weight, None, self.norm.eps, "rms",
                                    out_dtype=hidden.dtype, residual_dtype=res_dtype)
        return self.mixer(normed, layout), residual


# ---------------------------------------------------------------------------------------------------- model
def resize_pos_embed(pos_embed: Tensor, new_grid: Tuple[int, int],
                     old_grid: Optional[Tuple[int, int]] = None) -> Tensor:
    """Resize a (1, M+1, D) Vim position embedding whose class entry sits at M // 2 to `new_grid`.

    The class entry is taken out, the 2-D grid resized bicubically and the class entry put back at the new
    middle (M' // 2). The official `--finetune` path treated index 0 as the class entry instead: not repeated.
    """
    M = pos_embed.shape[1] - 1
    old_grid = tuple(old_grid) if old_grid is not None else _square_grid(M)
    new_grid = tuple(new_grid)
    if old_grid == new_grid:
        return pos_embed
    c = M // 2
    cls = pos_embed[:, c:c + 1]
    grid = torch.cat([pos_embed[:, :c], pos_embed[:, c + 1:]], dim=1)
    grid = grid.reshape(1, *old_grid, -1).permute(0, 3, 1, 2)            # (1, D, gh, gw)
    work = torch.promote_types(grid.dtype, torch.float32)  # bicubic is not implemented for every half type
    grid = F.interpolate(grid.to(work), size=new_grid, mode="bicubic", align_corners=False).to(grid.dtype)
    grid = grid.permute(0, 2, 3, 1).flatten(1, 2)                          # (1, M', D)
    c_new = grid.shape[1] // 2
    return torch.cat([grid[:, :c_new], cls, grid[:, c_new:]], dim=1)


def _square_grid(num_patches: int) -> Tuple[int, int]:
    g = math.isqrt(num_patches)
    if g * g != num_patches:
        raise CheckpointError(f"pos_embed holds {num_patches} patch tokens, not a square grid")
    return g, g


class VisionMamba(PrunableModel):
    family = FAMILY

    def __init__(self, cfg: VimConfig):
        super().__init__()
        self.cfg = cfg
        self.grid = cfg.grid
        self.cls_pos = self.grid[0] * self.grid[1] // 2  # token_position = M // 2
        D = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, D))
        self.head = nn.Linear(D, cfg.num_classes)
        # Official drop-path schedule: block i drops the previous block's output with rate [0, linspace...][i],
        # the final add with the full rate.
        step = cfg.drop_path_rate / max(cfg.depth - 1, 1)  # python floats: also builds on the meta device
        rates = [0.0] + [i * step for i in range(cfg.depth)]
        self.layers = nn.ModuleList(VimBlock(cfg, rates[i]) for i in range(cfg.depth))
        self.norm_f = RMSNorm(D, cfg.norm_eps)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        nn.init.zeros_(self.patch_embed.proj.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint trained at another image size: resize its position embedding around the class token.
        key = prefix + "pos_embed"
        pe = state_dict.get(key)
        if pe is not None and pe.dim() == 3 and pe.shape[1] != self.pos_embed.shape[1] \
                and pe.shape[2] == self.pos_embed.shape[2]:
            state_dict[key] = resize_pos_embed(pe, self.grid)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --------------------------------------------------------------------------- description
    def input_size(self) -> Tuple[int, int, int]:
        return self.cfg.in_chans, self.cfg.img_size, self.cfg.img_size

    def prune_sites(self) -> List[str]:
        return [str(i + 1) for i in range(self.cfg.depth)]

    def site_tokens(self, site: str) -> Tuple[int, Tuple[int, int], List[int]]:
        self._block_index(site)
        return self.cfg.num_tokens, self.grid, [self.cls_pos]

    def _block_index(self, site: str) -> int:
        if site not in self.prune_sites():
            raise BadInputError(f"unknown prune site {site!r} for Vim; sites are 1..{self.cfg.depth}")
        return int(site) - 1

    def score_module(self, site: str) -> nn.Module:
        return self.layers[self._block_index(site)].mixer.out_proj

    def mixers(self) -> List[nn.Module]:
        return [layer.mixer for layer in self.layers]

    def block_costs(self) -> List[Dict[str, Any]]:
        """MACs per block (DESIGN 3). Norms, the conv bias/SiLU, the residual add and the /2 are not counted.

        Per kept token: in_proj, both directions' depthwise conv, x_proj, dt_proj and scan (9·E·N + 2·E each),
        out_proj. The convs run on kept tokens only (their taps read pruned positions through the fill map).
        """
        c = self.cfg
        D, E, N, R, L = c.embed_dim, c.d_inner, c.d_state, c.dt_rank, c.num_tokens
        direction = E * c.d_conv + E * (R + 2 * N) + R * E + 9 * E * N + 2 * E
        per_token = D * 2 * E + 2 * direction + E * D
        return [{"site": str(i + 1), "stage": 0, "tokens": L, "per_token": per_token, "fixed": 0}
                for i in range(c.depth)]

    def fixed_macs(self) -> int:
        """Patch embedding and the head (which reads the class token only)."""
        c = self.cfg
        M = self.grid[0] * self.grid[1]
        return M * c.embed_dim * c.in_chans * c.patch_size ** 2 + c.embed_dim * c.num_classes

    # --------------------------------------------------------------------------- forward
    def _embed(self, x: Tensor) -> Tensor:
        size = (self.cfg.img_size, self.cfg.img_size)
        if tuple(x.shape[-2:]) != size:
            raise BadInputError(f"input is {x.shape[-2]}x{x.shape[-1]}, this model expects {size[0]}x{size[1]}")
        x = self.patch_embed(x)                                            # (b, M, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([x[:, :self.cls_pos], cls, x[:, self.cls_pos:]], dim=1)
        return x + self.pos_embed                                          # added after the cls insertion

    def forward_features(self, x: Tensor, hook: Optional[Any] = None) -> Tensor:
        """(b, C, H, W) → (b, D): the normalised class token."""
        hidden, residual, layout = self._embed(x), None, None
        for i, layer in enumerate(self.layers):
            hidden, residual = layer(hidden, residual, layout)
            if hook is not None:
                (hidden, residual), layout = hook(str(i + 1), (hidden, residual), layout)
        b = hidden.shape[0]
        if layout is None:
            idx = torch.full((b,), self.cls_pos, dtype=torch.long, device=hidden.device)
        else:
            idx = layout.rank()[:, self.cls_pos]  # where the class token sits among the kept tokens
            # A custom hook could drop the class token (PrunedModel never does); the check reads a value back
            # from the device, so it is skipped under torch.compile and while a CUDA graph is captured.
            if not (torch.compiler.is_compiling() or _capturing(hidden)) and bool((idx < 0).any()):
                raise RecipeError("the class token was pruned; it must stay protected")
        rows = torch.arange(b, device=hidden.device)
        # The final add + norm is per token, so only the class token's is computed.
        out = residual[rows, idx] + _drop_path(hidden[rows, idx], self.cfg.drop_path_rate, self.training)
        return self.norm_f(out).to(hidden.dtype)

    def forward(self, x: Tensor, hook: Optional[Any] = None) -> Tensor:
        return self.head(self.forward_features(x, hook))


# ---------------------------------------------------------------------------------------------------- checkpoints
def checkpoint_filter_fn(sd: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Official Vim state dict → ours. The released files (hustvl/Vim-*-midclstok, under 'model' / 'model_ema')
    already use our names; a DistributedDataParallel save adds 'module.'."""
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def _detect(sd: Mapping[str, Tensor]) -> bool:
    keys = set(checkpoint_filter_fn(sd))
    return {"cls_token", "pos_embed", "norm_f.weight", "layers.0.mixer.x_proj_b.weight"} <= keys


def _shape(sd: Mapping[str, Tensor], key: str) -> Tuple[int, ...]:
    if key not in sd:
        if key.endswith("_b.weight") and "layers.0.mixer.A_b_log" in sd:
            raise CheckpointError("bimamba v1 Vim checkpoints are not supported (only the released v2 models)")
        raise CheckpointError(f"not a Vim state dict: {key!r} is missing")
    return tuple(sd[key].shape)


def _shape_fields(sd: Mapping[str, Tensor]) -> Dict[str, int]:
    """Every size the tensors tell."""
    D, C, p, p2 = _shape(sd, "patch_embed.proj.weight")
    if p != p2:
        raise CheckpointError(f"patch kernel {p}x{p2} is not square")
    depth = 0
    while f"layers.{depth}.mixer.in_proj.weight" in sd:
        depth += 1
    if depth == 0:
        raise CheckpointError("not a Vim state dict: no layers.N.mixer weights")
    m = "layers.0.mixer."
    _shape(sd, m + "conv1d_b.weight")
    E = _shape(sd, m + "in_proj.weight")[0] // 2
    return {
        "embed_dim": D, "in_chans": C, "patch_size": p, "depth": depth, "d_inner": E,
        "d_state": _shape(sd, m + "A_log")[1], "dt_rank": _shape(sd, m + "dt_proj.weight")[1],
        "d_conv": _shape(sd, m + "conv1d.weight")[2], "num_classes": _shape(sd, "head.weight")[0],
    }


def _matching_variant(shapes: Dict[str, int], tokens: int) -> Optional[VimConfig]:
    """A registered variant whose every shape (the class count aside) equals the state dict's."""
    for cfg in _VARIANTS.values():
        same = all(getattr(cfg, k) == v for k, v in shapes.items() if k != "num_classes")
        if same and cfg.num_tokens == tokens:
            return cfg
    return None


def config_from_state_dict(sd: Mapping[str, Tensor], **overrides: Any) -> VimConfig:
    """Infer the config from tensor shapes (keys in our layout, i.e. after checkpoint_filter_fn).

    Stride and image size are invisible in shapes: a state dict shaped exactly like a registered variant takes
    that variant's; otherwise stride = patch and the image size that gives the checkpoint's grid. Overrides
    (`img_size`, `stride`, `mean`, `std`, ...) win; a new image size resizes pos_embed when loading.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    known = {f.name for f in fields(VimConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise BadInputError(f"unknown Vim option(s): {', '.join(unknown)}")
    shapes = _shape_fields(sd)
    for k in sorted(set(shapes) & set(overrides)):
        if overrides[k] != shapes[k]:
            raise CheckpointError(f"{k}={overrides[k]} contradicts the checkpoint ({k}={shapes[k]})")
    tokens = _shape(sd, "pos_embed")[1]
    g = _square_grid(tokens - 1)[0]
    variant = _matching_variant(shapes, tokens)
    p = shapes["patch_size"]
    stride = overrides.get("stride", variant.stride if variant is not None else p)
    if "img_size" in overrides:
        img = overrides["img_size"]
    elif variant is not None and "stride" not in overrides:
        img = variant.img_size
    else:
        img = (g - 1) * stride + p  # the image size whose grid is the checkpoint's
    rest = {k: v for k, v in overrides.items() if k not in shapes and k not in ("img_size", "stride")}
    return VimConfig(img_size=img, stride=stride, **shapes, **rest)


# ---------------------------------------------------------------------------------------------------- variants
_VARIANTS: Dict[str, VimConfig] = {
    # hustvl/Vim README: Vim-Ti 7M 76.1 %, Vim-S 26M 80.5 %, Vim-B 98M 81.9 % (197 tokens at 224).
    "vim_tiny": VimConfig(embed_dim=192),
    "vim_small": VimConfig(embed_dim=384),
    "vim_base": VimConfig(embed_dim=768),
    # Fine-tuned at stride 8 (27x27 + 1 = 730 tokens): Vim-Ti+ 78.3 %, Vim-S+ 81.6 %.
    "vim_tiny_plus": VimConfig(embed_dim=192, stride=8),
    "vim_small_plus": VimConfig(embed_dim=384, stride=8),
    # Tiny, for tests: 4x4 patches + class token = 17 tokens.
    "vim_test": VimConfig(img_size=16, patch_size=4, stride=4, embed_dim=32, depth=4, d_state=8, num_classes=10),
}


def _create(variant: str, **kwargs: Any) -> VisionMamba:
    if "embed_dim" in kwargs:  # derived widths follow a new width unless given
        kwargs.setdefault("d_inner", None)
        kwargs.setdefault("dt_rank", None)
    try:
        cfg = replace(_VARIANTS[variant], **kwargs)
    except TypeError as e:
        raise BadInputError(f"bad option for {variant}: {e}") from None
    return VisionMamba(cfg)


@register_model
def vim_tiny(**kwargs: Any) -> VisionMamba:
    return _create("vim_tiny", **kwargs)


@register_model
def vim_small(**kwargs: Any) -> VisionMamba:
    return _create("vim_small", **kwargs)


@register_model
def vim_base(**kwargs: Any) -> VisionMamba:
    return _create("vim_base", **kwargs)


@register_model
def vim_tiny_plus(**kwargs: Any) -> VisionMamba:
    return _create("vim_tiny_plus", **kwargs)


@register_model
def vim_small_plus(**kwargs: Any) -> VisionMamba:
    return _create("vim_small_plus", **kwargs)


@register_model
def vim_test(**kwargs: Any) -> VisionMamba:
    return _create("vim_test", **kwargs)


register_family(Family(name=FAMILY, detect=_detect, filter_fn=checkpoint_filter_fn,
                       config_from_state_dict=config_from_state_dict, build=VisionMamba, config_cls=VimConfig))
