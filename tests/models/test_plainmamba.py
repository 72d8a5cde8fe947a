"""PlainMamba: sizes, official checkpoint layout, forward semantics (float64 against a loop re-implementation of
the official code), pruned forward (DESIGN 2.3 and docs/plainmamba-scan-pairing.md) and the cost model."""

import json
import math
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssmprune_cli.errors import BadInputError, CheckpointError
from ssmprune_cli.models import create_model, get_family, list_models
from ssmprune_cli.models.layers import TokenLayout, alignment_reference
from ssmprune_cli.ops.gather_conv import GATHER_CONV_OP, gather_conv_flop_jit
from ssmprune_cli.models.plainmamba import (
    PlainMamba,
    PlainMambaConfig,
    checkpoint_filter_fn,
    config_from_state_dict,
    resize_pos_embed,
    zigzag_orders,
)
from ssmprune_cli.ops import selective_scan_ref

F64 = torch.float64


# ---------------------------------------------------------------------------------------------- helpers
def official_orders(H, W):
    """The four scans written as the official get_permute_order walks them: (orders, direction codes)."""
    def walk(i, j, along_rows, step, turn):
        # along_rows: move within a row (j += step) and turn by i += turn; else within a column.
        path, codes, move = [], [], 0
        while 0 <= i < H and 0 <= j < W:
            path.append(i * W + j)
            codes.append(move)
            if along_rows:
                if 0 <= j + step < W:
                    j, move = j + step, 1 if step > 0 else 2
                else:
                    i, step, move = i + turn, -step, 4 if turn > 0 else 3
            else:
                if 0 <= i + step < H:
                    i, move = i + step, 4 if step > 0 else 3
                else:
                    j, step, move = j + turn, -step, 1 if turn > 0 else 2
        return path, codes

    scans = [
        walk(0, 0, True, 1, 1),
        walk(H - 1, W - 1, True, -1, -1) if H % 2 else walk(H - 1, 0, True, 1, -1),
        walk(0, 0, False, 1, 1),
        walk(H - 1, W - 1, False, -1, -1) if W % 2 else walk(0, W - 1, False, 1, -1),
    ]
    return [s[0] for s in scans], [s[1] for s in scans]


def randomize(model, seed=0):
    """Random weights of a sensible scale, random BN statistics, a large direction bias (the quirk shows)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if name.endswith("A_log"):
                p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) * 2 - 1)
            elif name.endswith("dt_proj.bias"):
                p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) * 2 - 2.5)
            elif name.endswith("direction_Bs"):
                p.copy_(r)
            elif p.dim() >= 2:
                p.copy_(r / math.sqrt(p[0].numel()))
            elif "norm" in name or "ln1" in name or name.endswith((".1.weight", ".4.weight")):
                p.copy_(1 + 0.2 * r)
            else:
                p.copy_(0.3 * r)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model.eval()


def tiny(**kw):
    return randomize(create_model("plainmamba_test", **kw)).double()


def nearest_kept(H, W, kept):
    """2-D 'hold': nearest kept position by Euclidean distance, ties to the lowest raster index."""
    out = []
    for p in range(H * W):
        d = [((p // W - q // W) ** 2 + (p % W - q % W) ** 2, q) for q in kept]
        out.append(min(d)[1])
    return out


def fill_grid(vals, kept, H, W, conv_fill):
    """vals (K, C) at kept positions → (H*W, C) with pruned positions filled."""
    full = vals.new_zeros(H * W, vals.shape[1])
    rank = {q: r for r, q in enumerate(kept)}
    src = nearest_kept(H, W, kept) if conv_fill == "hold" else [p if p in rank else None for p in range(H * W)]
    for p, q in enumerate(src):
        if q is not None:
            full[p] = vals[rank[q]]
    return full


def ref_mixer(sd, pre, x, kept, H, W, cfg, conv_fill, fills):
    """One image. x (K, D) kept tokens at raster positions `kept`. fills[k]: Δ̂ (E,) at pruned steps or None."""
    E, N, R = cfg.d_inner, cfg.d_state, cfg.dt_rank
    xz = x @ sd[pre + "in_proj.weight"].T + sd[pre + "in_proj.bias"]
    xs, z = xz[:, :E], xz[:, E:]
    grid = fill_grid(xs, kept, H, W, conv_fill).T.reshape(1, E, H, W)
    conv = F.conv2d(grid, sd[pre + "conv2d.weight"], sd[pre + "conv2d.bias"], padding=cfg.conv_size // 2, groups=E)
    x_conv = F.silu(conv).reshape(E, H * W).T                                   # (L, E) raster
    x_dbl = x_conv @ sd[pre + "x_proj.weight"].T
    dt = x_dbl[:, :R] @ sd[pre + "dt_proj.weight"].T + sd[pre + "dt_proj.bias"]  # bias #1
    Bm, Cm = x_dbl[:, R:R + N], x_dbl[:, R + N:]
    A = -torch.exp(sd[pre + "A_log"])
    dB = sd[pre + "direction_Bs"]
    rank = {q: r for r, q in enumerate(kept)}
    out = x.new_zeros(len(kept), E)
    orders, codes = official_orders(H, W)
    for k, (o, d) in enumerate(zip(orders, codes)):
        L = H * W
        u, delta = x.new_zeros(E, L), x.new_zeros(E, L)
        Bk, Ck = x.new_zeros(N, L), x.new_zeros(N, L)
        for t in range(L):
            if o[t] in rank:  # kept step: u of token o[t]; Δ, B, C of raster token t
                u[:, t] = x_conv[o[t]]
                delta[:, t] = F.softplus(dt[t] + sd[pre + "dt_proj.bias"])      # bias #2
                Bk[:, t] = Bm[t] + dB[d[t]]
                Ck[:, t] = Cm[t]
            elif fills[k] is not None:
                delta[:, t] = fills[k]
        y = selective_scan_ref(u[None], delta[None], A, Bk[None], Ck[None], sd[pre + "D"],
                               delta_softplus=False)[0]
        for t in range(L):
            if o[t] in rank:
                out[rank[o[t]]] += y[:, t]
    y = out * F.silu(z)
    return y @ sd[pre + "out_proj.weight"].T + sd[pre + "out_proj.bias"]


def ref_bn(x, sd, pre, eps=1e-5):
    shape = (1, -1, 1, 1)
    return ((x - sd[pre + "running_mean"].view(shape)) / torch.sqrt(sd[pre + "running_var"].view(shape) + eps)
            * sd[pre + "weight"].view(shape) + sd[pre + "bias"].view(shape))


def ref_ln(x, sd, pre, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * sd[pre + "weight"] + sd[pre + "bias"]


def ref_forward(model, x, keeps=None, conv_fill="hold", delta_fill="zero"):
    """Official forward, written plainly; keeps = {site: (b, K) raster positions kept from that site on}."""
    cfg, sd = model.cfg, model.state_dict()
    keeps = keeps or {}
    h = F.relu(ref_bn(F.conv2d(x, sd["patch_embed.stem.0.weight"], stride=2, padding=3), sd, "patch_embed.stem.1."))
    for j in range(cfg.num_convs_patch_embed):
        w = sd[f"patch_embed.convs.{3 * j}.weight"]
        h = F.relu(ref_bn(F.conv2d(h, w, padding=1), sd, f"patch_embed.convs.{3 * j + 1}."))
    s = cfg.patch_size // 2
    h = F.pad(h, (0, -h.shape[3] % s, 0, -h.shape[2] % s))
    h = F.conv2d(h, sd["patch_embed.projection.weight"], sd["patch_embed.projection.bias"], stride=s)
    H, W = h.shape[2:]
    gh, gw = cfg.grid
    pos = sd["pos_embed"].reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
    pos = F.interpolate(pos, size=(H, W), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    tokens = h.flatten(2).transpose(1, 2) + pos
    feats = []
    for b in range(x.shape[0]):
        xb, kept = tokens[b], list(range(H * W))
        for i in range(cfg.depth):
            pre = f"layers.{i}."
            fills = [None] * 4
            if len(kept) < H * W and delta_fill == "bias":
                fills = [F.softplus(2 * sd[pre + "mamba.dt_proj.bias"])] * 4
            elif len(kept) < H * W and delta_fill == "calib":
                fills = list(model.layers[i].mamba.delta_hat)
            xb = xb + ref_mixer(sd, pre + "mamba.", ref_ln(xb, sd, pre + "norm.", 1e-5), kept, H, W, cfg,
                                conv_fill, fills)
            if i in cfg.layers_with_dwconv:
                grid = fill_grid(xb, kept, H, W, conv_fill).T.reshape(1, -1, H, W)
                grid = F.conv2d(grid, sd[pre + "dw.0.weight"], padding=1, groups=grid.shape[1])
                grid = F.gelu(ref_bn(grid, sd, pre + "dw.1.")).reshape(-1, H * W).T
                xb = grid[kept]
            if str(i + 1) in keeps:
                new = keeps[str(i + 1)][b].tolist()
                xb, kept = xb[[kept.index(p) for p in new]], new
        feats.append(ref_ln(xb, sd, "ln1.", 1e-6).mean(0))
    return torch.stack(feats) @ sd["head.weight"].T + sd["head.bias"]


def random_keeps(batch, L, counts, seed=0):
    """Nested random keep sets per image: {site: (b, K) ascending positions}."""
    g = torch.Generator().manual_seed(seed)
    keeps, current = {}, torch.arange(L).expand(batch, L)
    for site, k in counts.items():
        idx = torch.stack([torch.randperm(current.shape[1], generator=g)[:k].sort().values for _ in range(batch)])
        current = current.gather(1, idx)
        keeps[site] = current
    return keeps


def pruning_hook(keeps, grid, conv_fill, delta_fill):
    """Prune to the given keep sets: a new layout at the first site, `select` at later ones."""
    def hook(site, tensors, layout):
        if site not in keeps:
            return tensors, layout
        (x,) = tensors
        if layout is None:
            layout = TokenLayout(keeps[site], grid[0] * grid[1], grid, conv_fill, delta_fill)
            return (layout.gather(x),), layout
        idx = (layout.keep[:, :, None] == keeps[site][:, None, :]).float().argmax(dim=1)  # positions → kept index
        return (layout.take(x, idx),), layout.select(idx)
    return hook


# ---------------------------------------------------------------------------------------------- sizes
@pytest.mark.parametrize("name,published,derived,gmacs,keys", [
    ("plainmamba_l1", 7.3, 7.359, 3.0, 361),
    ("plainmamba_l2", 25.7, 25.761, 8.1, 361),
    ("plainmamba_l3", 50.5, 50.507, 14.4, 529),
])
def test_published_sizes(name, published, derived, gmacs, keys):
    with torch.device("meta"):
        m = create_model(name)
    backbone = sum(p.numel() for n, p in m.named_parameters() if not n.startswith("head."))
    assert math.floor(backbone / 1e5) / 10 == published  # the README truncates
    assert abs(backbone / 1e6 - derived) < 5e-4
    assert len(m.state_dict()) == keys  # official key count (parameters + BN buffers)
    L = 196
    assert m.prune_sites() == [str(i + 1) for i in range(m.cfg.depth)]
    assert all(m.site_tokens(s) == (L, (14, 14), []) for s in m.prune_sites())
    total = m.fixed_macs() + sum(c["fixed"] + c["tokens"] * c["per_token"] for c in m.block_costs())
    assert abs(total / 1e9 - gmacs) / gmacs < 0.01  # published 3.0 / 8.1 / 14.4 G (issue: within 3 %)


def test_registry_and_token_counts():
    assert list_models("plainmamba") == ["plainmamba_l1", "plainmamba_l2", "plainmamba_l3", "plainmamba_test"]
    with torch.device("meta"):
        m = create_model("plainmamba_l2", img_size=256)
    assert m.site_tokens("24") == (256, (16, 16), [])
    assert m.input_size() == (3, 256, 256)
    assert m.normalization() == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    with pytest.raises(BadInputError):
        m.site_tokens("25")
    t = create_model("plainmamba_test")
    assert t.site_tokens("1") == (16, (4, 4), [])
    assert t.score_module("2") is t.layers[1].mamba.out_proj
    assert len(t.mixers()) == 3 and all(mx.n_directions == 4 and mx.delta_hat is None for mx in t.mixers())


# ---------------------------------------------------------------------------------------------- scan orders
@pytest.mark.parametrize("hw", [(1, 1), (1, 4), (4, 1), (2, 3), (3, 2), (3, 5), (4, 4), (4, 6), (5, 5), (14, 14)])
def test_zigzag_orders_match_official_walk(hw):
    orders, codes = zigzag_orders(*hw)
    ref_orders, ref_codes = official_orders(*hw)
    assert [list(o) for o in orders] == ref_orders
    assert [list(c) for c in codes] == ref_codes
    assert all(sorted(o) == list(range(hw[0] * hw[1])) for o in orders)


def test_zigzag_orders_by_hand():
    orders, codes = zigzag_orders(2, 3)
    assert orders == ((0, 1, 2, 5, 4, 3), (3, 4, 5, 2, 1, 0), (0, 3, 4, 1, 2, 5), (5, 2, 1, 4, 3, 0))
    assert codes == ((0, 1, 1, 4, 2, 2), (0, 1, 1, 3, 2, 2), (0, 4, 1, 3, 1, 4), (0, 3, 2, 4, 2, 3))


# ---------------------------------------------------------------------------------------------- checkpoints
def official_layout(sd):
    return {("head.fc." + k[5:] if k.startswith("head.") else "backbone." + k): v for k, v in sd.items()}


@pytest.mark.parametrize("cfg_kw", [
    {},  # the test variant as registered
    dict(embed_dim=48, depth=2, d_state=4, conv_size=5, patch_size=8, stem_channels=8, num_convs_patch_embed=2,
         layers_with_dwconv=[1], num_classes=7, img_size=48),  # 6x6 grid, other sizes everywhere
])
def test_official_checkpoint_loads_and_infers_config(cfg_kw):
    src = randomize(PlainMamba(PlainMambaConfig(**{**asdict(create_model("plainmamba_test").cfg), **cfg_kw})))
    official = official_layout(src.state_dict())
    official["ema_backbone_pos_embed"] = torch.zeros(1)  # mmcv EMA hook buffer
    for sd in (official, {"module." + k: v for k, v in official.items()}):
        cfg = config_from_state_dict(sd)
        assert asdict(cfg) == asdict(src.cfg)
        family = get_family("plainmamba")
        assert family.detect(checkpoint_filter_fn(sd)) and family.detect(sd)
        model = family.build(cfg)
        model.load_state_dict(checkpoint_filter_fn(sd), strict=True)
        x = torch.randn(2, 3, *cfg.img_hw)
        out = model.eval()(x)
        assert out.shape == (2, cfg.num_classes) and torch.isfinite(out).all()
        assert torch.equal(out, src(x))
    assert PlainMambaConfig(**json.loads(json.dumps(src.config_dict()))) == src.cfg


def test_non_square_checkpoint_needs_img_size():
    src = create_model("plainmamba_test", img_size=[48, 80])  # 3x5 grid
    sd = official_layout(src.state_dict())
    with pytest.raises(CheckpointError):
        config_from_state_dict(sd)
    with pytest.raises(CheckpointError):
        config_from_state_dict(sd, img_size=64)
    cfg = config_from_state_dict(sd, img_size=(48, 80), mean=[0.5] * 3)
    assert cfg.grid == (3, 5) and cfg.mean == [0.5] * 3
    PlainMamba(cfg).load_state_dict(checkpoint_filter_fn(sd), strict=True)
    with pytest.raises(BadInputError):
        config_from_state_dict(sd, img_size=(48, 80), depht=3)
    with pytest.raises(CheckpointError):
        config_from_state_dict({"pos_embed": torch.zeros(1, 4, 8)})
    assert not get_family("plainmamba").detect({"layers.0.mixer.A_log": torch.zeros(1)})


def test_resize_pos_embed():
    rows = torch.arange(4, dtype=F64).repeat_interleave(4)  # value = row index on a 4x4 grid
    pe = rows[None, :, None].expand(1, 16, 3)
    out = resize_pos_embed(pe, (4, 4), (4, 7))  # width only: each row keeps its value
    assert out.shape == (1, 28, 3)
    torch.testing.assert_close(out[0, :, 0], torch.arange(4, dtype=F64).repeat_interleave(7), rtol=0, atol=1e-12)
    cols = torch.arange(4, dtype=F64).repeat(4)
    out = resize_pos_embed(cols[None, :, None], (4, 4), (6, 4))  # height only: columns keep their value
    torch.testing.assert_close(out[0, :, 0], torch.arange(4, dtype=F64).repeat(6), rtol=0, atol=1e-12)
    const = torch.full((1, 16, 2), 0.7, dtype=F64)
    assert torch.allclose(resize_pos_embed(const, (4, 4), (3, 5)), torch.full((1, 15, 2), 0.7, dtype=F64))
    assert resize_pos_embed(pe, (4, 4), (4, 4)) is pe


# ---------------------------------------------------------------------------------------------- dense forward
@pytest.mark.parametrize("img_size,input_hw", [(64, (64, 64)), (64, (48, 80)), ([48, 80], (48, 80)),
                                               ([80, 48], (96, 64))])
def test_dense_forward_matches_official_semantics(img_size, input_hw):
    model = tiny(img_size=img_size)
    x = torch.randn(2, 3, *input_hw, dtype=F64)
    torch.testing.assert_close(model(x), ref_forward(model, x), rtol=1e-10, atol=1e-10)


def test_dt_bias_applied_twice_and_delta_probe():
    model = tiny()
    mixer = model.layers[1].mamba
    with torch.no_grad():
        mixer.dt_proj.weight.zero_()  # Δ = softplus(0 + b + b) everywhere
    seen = []
    mixer.delta_probe = lambda k, dt: seen.append((k, dt))
    model(torch.randn(2, 3, 64, 64, dtype=F64))
    assert [k for k, _ in seen] == [0, 1, 2, 3]
    expected = F.softplus(2 * mixer.dt_proj.bias)
    for _, dt in seen:
        assert dt.shape == (2, 32 * 2, 16)
        torch.testing.assert_close(dt, expected[None, :, None].expand_as(dt), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mixer.default_delta_hat(), expected.expand(4, -1))


# ---------------------------------------------------------------------------------------------- pruned forward
def with_delta_hat(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    for mx in model.mixers():
        mx.delta_hat = 0.05 + torch.rand(4, mx.D.shape[0], generator=g, dtype=F64)
    return model


@pytest.mark.parametrize("img_size,conv_fill,delta_fill", [
    *[(64, c, d) for c in ("hold", "zero") for d in ("calib", "bias", "zero")],
    ([48, 80], "hold", "calib"), ([48, 80], "zero", "bias"),  # non-square 3x5 grid, odd H and W
])
def test_pruned_forward_matches_definition(img_size, conv_fill, delta_fill):
    model = with_delta_hat(tiny(img_size=img_size))
    grid = model.cfg.grid
    L = grid[0] * grid[1]
    x = torch.randn(2, 3, *model.cfg.img_hw, dtype=F64)
    keeps = random_keeps(2, L, {"1": L - 5, "2": L - 9})
    hook = pruning_hook(keeps, grid, conv_fill, delta_fill)
    fast = model(x, hook=hook)
    with alignment_reference():
        reference = model(x, hook=hook)
    torch.testing.assert_close(fast, reference, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast, ref_forward(model, x, keeps, conv_fill, delta_fill), rtol=1e-10, atol=1e-10)


def test_keep_all_layout_equals_dense():
    model = with_delta_hat(tiny(img_size=[48, 80]))
    x = torch.randn(2, 3, 48, 80, dtype=F64)
    dense = model(x)
    keeps = {"1": torch.arange(15).expand(2, 15)}
    for conv_fill, delta_fill in (("hold", "calib"), ("zero", "bias"), ("hold", "zero")):
        out = model(x, hook=pruning_hook(keeps, (3, 5), conv_fill, delta_fill))
        assert (out - dense).abs().max() <= 1e-12


def test_aligned_differs_from_naive_and_packed_is_refused():
    model = with_delta_hat(tiny())
    x = torch.randn(2, 3, 64, 64, dtype=F64)
    keeps = random_keeps(2, 16, {"1": 9})
    aligned = model(x, hook=pruning_hook(keeps, (4, 4), "hold", "calib"))
    naive = model(x, hook=pruning_hook(keeps, (4, 4), "zero", "zero"))
    assert (aligned - naive).abs().max() > 1e-4
    with pytest.raises(BadInputError, match="packed"):
        model(x, hook=pruning_hook(keeps, (4, 4), "packed", "zero"))
    for mx in model.mixers():
        mx.delta_hat = None
    with pytest.raises(BadInputError):
        model(x, hook=pruning_hook(keeps, (4, 4), "hold", "calib"))


def test_score_module_sees_kept_tokens():
    model = tiny()
    seen = []
    model.score_module("3").register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape))
    model(torch.randn(2, 3, 64, 64, dtype=F64), hook=pruning_hook(random_keeps(2, 16, {"1": 7}), (4, 4), "hold",
                                                                   "bias"))
    assert seen == [torch.Size([2, 7, 64])]


# ---------------------------------------------------------------------------------------------- cost model
class _Hooked(nn.Module):
    def __init__(self, model, hook):
        super().__init__()
        self.model, self.hook = model, hook

    def forward(self, x):
        return self.model(x, hook=self.hook)


def _fvcore_linear_conv(module, x):
    """fvcore MACs per Linear / Conv2d module; a mixer's depthwise conv runs as the gather conv (one multiply-add
    per output and tap), counted under its conv2d module's name."""
    from fvcore.nn import FlopCountAnalysis

    fca = FlopCountAnalysis(module, (x,)).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    fca.set_op_handle(GATHER_CONV_OP, gather_conv_flop_jit)
    counts = fca.by_module()
    out = {name: counts[name] for name, m in module.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    for name in out:
        if name.endswith("mamba.conv2d"):
            out[name] = counts[name[: -len(".conv2d")]] - sum(
                counts[n] for n in counts if n.startswith(name[: -len("conv2d")]) and n.count(".") == name.count("."))
    return out


@pytest.mark.filterwarnings("ignore")
def test_block_costs_against_fvcore_dense_and_pruned():
    model = randomize(create_model("plainmamba_test"))
    c = model.cfg
    scan_per_step = 4 * (9 * c.d_inner * c.d_state + 2 * c.d_inner)  # four scans, DESIGN 3: 9·E·N + 2·E each
    x = torch.randn(1, 3, 64, 64)
    costs = model.block_costs()
    assert [b["site"] for b in costs] == ["1", "2", "3"] and all(b["tokens"] == 16 for b in costs)

    dense = _fvcore_linear_conv(model, x)
    total = model.fixed_macs() + sum(b["fixed"] + 16 * b["per_token"] for b in costs)
    assert total == sum(dense.values()) + c.depth * 16 * scan_per_step

    keeps = random_keeps(1, 16, {"1": 6})
    pruned = _fvcore_linear_conv(_Hooked(model, pruning_hook(keeps, (4, 4), "hold", "bias")), x)
    for i, b in enumerate(costs):
        K = 16 if i == 0 else 6
        block = sum(v for n, v in pruned.items() if n.startswith(f"model.layers.{i}."))
        assert block + K * scan_per_step == b["fixed"] + K * b["per_token"]
    # the full-length parts (conv, x_proj, dt_proj, L1-style dwconv) do not shrink
    fixed_names = ("mamba.conv2d", "mamba.x_proj", "mamba.dt_proj", "dw.0")
    for i in range(1, 3):
        fixed = sum(v for n, v in pruned.items() if n.startswith(f"model.layers.{i}.") and n.endswith(fixed_names))
        assert fixed == costs[i]["fixed"]
