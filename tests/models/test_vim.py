"""Vim: sizes, official checkpoint layout, the official forward, and pruning with alignment.

The references here are written from the official semantics (hustvl/Vim models_mamba.py, mamba_simple.py), not
from the model code: per-image loops over explicit scan orders, the backward direction as the reversed order,
pruned positions handled the way DESIGN 2.3 defines them (conv input filled, u = 0 and Δ = Δ̂ in the scan).
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from ssmprune_cli.errors import BadInputError, CheckpointError, RecipeError
from ssmprune_cli.models import create_model, get_family, list_models
from ssmprune_cli.models.layers import CONV_FILLS, DELTA_FILLS, TokenLayout, alignment_reference
from ssmprune_cli.models.vim import (
    PatchEmbed,
    VimConfig,
    VisionMamba,
    checkpoint_filter_fn,
    config_from_state_dict,
    resize_pos_embed,
)

# hustvl/Vim README (params) and reference/architectures.md §1.3 (derived params, GMACs linear+conv / scan).
PUBLISHED = {
    "vim_tiny": (7, 7.148, 197, 1.29, 0.53),
    "vim_small": (26, 25.797, 197, 4.85, 1.06),
    "vim_base": (98, 97.598, 197, 18.77, 2.12),
    "vim_tiny_plus": (7, 7.250, 730, 4.79, 1.96),
    "vim_small_plus": (26, 26.001, 730, 17.98, 3.93),
}
PLAN = {"1": 12, "3": 7}  # vim_test has 17 tokens: prune after blocks 1 and 3


# ------------------------------------------------------------------------------------------------ helpers
def _randomize(model):
    """Random weights at scales that keep a float64 forward well conditioned."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("_log"):
                p.uniform_(-1.0, 1.5)                       # A in [-4.5, -0.37]
            elif "dt_proj" in name and name.endswith("bias"):
                p.uniform_(-4.0, -1.0)                      # softplus: dt ~ 0.02 .. 0.3
            elif name.endswith("norm.weight") or name == "norm_f.weight":
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif p.dim() >= 2 and name not in ("pos_embed", "cls_token"):
                p.copy_(torch.randn_like(p) / math.sqrt(p[0].numel()))
            else:
                p.copy_(0.5 * torch.randn_like(p))
    return model


def _model(cfg=None, **kw):
    m = VisionMamba(cfg) if cfg is not None else create_model("vim_test", **kw)
    return _randomize(m.double().eval())


def _image(model, b=2):
    c, h, w = model.input_size()
    return torch.randn(b, c, h, w, dtype=torch.float64)


def _rms(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def _causal_conv_silu(seq, w, bias):
    """seq (T, E) in scan order; out[s] = bias + sum_j w[:, j] * seq[s - (k-1) + j], zero before the start."""
    T, k = seq.shape[0], w.shape[-1]
    out = bias.expand(T, -1).clone()
    for j in range(k):
        shift = k - 1 - j
        out[shift:] += w[:, 0, j] * seq[: T - shift]
    return F.silu(out)


def _mixer_ref(P, pre, h, mask, conv_fill, dhat, record=None):
    """One bimamba-v2 mixer on full-length (b, L, D) tokens; pruned positions per DESIGN 2.3."""
    E = P[pre + "D"].shape[0]
    N = P[pre + "A_log"].shape[1]
    R = P[pre + "dt_proj.weight"].shape[1]
    xz = h @ P[pre + "in_proj.weight"].T
    x, z = xz[..., :E], xz[..., E:]
    b, L, _ = h.shape
    y = torch.zeros(b, L, E, dtype=h.dtype)
    for d, (a_name, sfx) in enumerate((("A_log", ""), ("A_b_log", "_b"))):
        A = -torch.exp(P[pre + a_name])
        cw, cb = P[pre + f"conv1d{sfx}.weight"], P[pre + f"conv1d{sfx}.bias"]
        xw, dw, db, Dv = (P[pre + f"x_proj{sfx}.weight"], P[pre + f"dt_proj{sfx}.weight"],
                          P[pre + f"dt_proj{sfx}.bias"], P[pre + f"D{sfx}"])
        order = list(range(L)) if d == 0 else list(range(L - 1, -1, -1))  # backward = the flipped sequence
        for i in range(b):
            kept = [t for t in order if mask[i, t]]
            if conv_fill == "packed":
                u_of = dict(zip(kept, _causal_conv_silu(x[i, kept], cw, cb)))
            else:
                seq, last = [], None
                for t in order:
                    last = t if mask[i, t] else last
                    src = t if mask[i, t] else (last if conv_fill == "hold" else None)
                    seq.append(x[i, src] if src is not None else torch.zeros(E, dtype=h.dtype))
                u_of = dict(zip(order, _causal_conv_silu(torch.stack(seq), cw, cb)))
            state = torch.zeros(E, N, dtype=h.dtype)
            for s, t in enumerate(order):
                if not mask[i, t]:  # u = 0, Δ = Δ̂ (no decay at all for the 'zero' fill)
                    if dhat is not None:
                        state = torch.exp(dhat[d][:, None] * A) * state
                    continue
                u = u_of[t]
                dbl = xw @ u
                dt = F.softplus(dw @ dbl[:R] + db)
                if record is not None:
                    record.setdefault(d, torch.zeros(b, E, L, dtype=h.dtype))[i, :, s] = dt
                state = torch.exp(dt[:, None] * A) * state + (dt * u)[:, None] * dbl[None, R:R + N]
                y[i, t] += (state @ dbl[R + N:] + Dv * u) * F.silu(z[i, t])
    return (y / 2) @ P[pre + "out_proj.weight"].T


def _ref_forward(model, x, keeps=None, conv_fill="hold", dhat=None, record=None):
    """The official forward from the state dict; keeps {block: (b, K) kept positions after that block}."""
    cfg = model.cfg
    P = {k: v.detach() for k, v in model.state_dict().items()}
    t = F.conv2d(x, P["patch_embed.proj.weight"], P["patch_embed.proj.bias"], stride=cfg.stride)
    t = t.flatten(2).transpose(1, 2)
    b, M, D = t.shape
    c = M // 2
    h = torch.cat([t[:, :c], P["cls_token"].expand(b, 1, D), t[:, c:]], dim=1) + P["pos_embed"]
    mask = torch.ones(b, M + 1, dtype=torch.bool)
    hidden, residual = h, None
    for i in range(cfg.depth):
        residual = hidden if residual is None else residual + hidden
        normed = _rms(residual, P[f"layers.{i}.norm.weight"], cfg.norm_eps)
        hidden = _mixer_ref(P, f"layers.{i}.mixer.", normed, mask, conv_fill, None if dhat is None else dhat[i],
                            None if (record is None or i > 0) else record)
        if keeps and i + 1 in keeps:
            mask = torch.zeros_like(mask).scatter(1, keeps[i + 1], True)
    out = _rms(residual + hidden, P["norm_f.weight"], cfg.norm_eps)[:, c]
    return out @ P["head.weight"].T + P["head.bias"]


def _pruning_hook(model, plan, conv_fill, delta_fill, seed=0, keeps=None):
    """Prunes random tokens to a fixed count per image at the planned sites; the class token stays."""
    gen = torch.Generator().manual_seed(seed)

    def hook(site, tensors, layout):
        if site not in plan:
            return tensors, layout
        L, _, protected = model.site_tokens(site)
        b = tensors[0].shape[0]
        if layout is None:
            layout = TokenLayout.full(b, L, conv_fill=conv_fill, delta_fill=delta_fill)
        scores = torch.rand(b, layout.num_kept, generator=gen, dtype=torch.float64)
        for p in protected:
            scores[torch.arange(b), layout.rank()[:, p]] = 2.0
        idx = scores.topk(plan[site], dim=1).indices.sort(dim=1).values
        new = layout.select(idx)
        if keeps is not None:
            keeps[int(site)] = new.keep.clone()
        return tuple(layout.take(t, idx) for t in tensors), new

    return hook


def _set_random_delta_hat(model):
    for m in model.mixers():
        m.delta_hat = torch.rand(2, m.D.shape[0], dtype=torch.float64) * 0.5 + 0.01


def _test_dhat(model, delta_fill):
    """Δ̂ per layer, computed here from the parameters."""
    if delta_fill == "zero":
        return None
    if delta_fill == "calib":
        return [m.delta_hat for m in model.mixers()]
    return [F.softplus(torch.stack([m.dt_proj.bias, m.dt_proj_b.bias])).detach() for m in model.mixers()]


def _close(a, b, tol=1e-10):
    scale = max(1.0, b.abs().max().item())
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= tol * scale, (a - b).abs().max().item()


# ------------------------------------------------------------------------------------------------ sizes
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_sizes(name):
    published, derived, tokens, gmacs_lin, gmacs_scan = PUBLISHED[name]
    with torch.device("meta"):
        m = create_model(name)
    n = sum(p.numel() for p in m.parameters())
    assert round(n / 1e6) == published
    assert abs(n / 1e6 - derived) < 5e-4
    sd = m.state_dict()
    assert len(sd) == 415 and not list(m.buffers())  # official: 415 tensors, no buffers
    g = math.isqrt(tokens - 1)
    assert m.site_tokens("1") == (tokens, (g, g), [(tokens - 1) // 2])
    assert m.prune_sites() == [str(i) for i in range(1, 25)]
    assert m.input_size() == (3, 224, 224)
    total = m.fixed_macs() + sum(c["fixed"] + c["tokens"] * c["per_token"] for c in m.block_costs())
    assert abs(total / 1e9 - (gmacs_lin + gmacs_scan)) < 0.011


def test_registry_and_config_roundtrip():
    assert set(list_models("vim")) == {"vim_tiny", "vim_small", "vim_base", "vim_tiny_plus", "vim_small_plus",
                                       "vim_test"}
    fam = get_family("vim")
    m = create_model("vim_test", img_size=24)
    d = json.loads(json.dumps(m.config_dict()))
    cfg = fam.config_cls(**d)
    assert cfg == m.cfg and cfg.img_size == 24 and cfg.num_tokens == 37
    assert isinstance(fam.build(cfg), VisionMamba)
    assert m.normalization() == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    with pytest.raises(BadInputError):
        create_model("vim_test", no_such_option=1)


# ------------------------------------------------------------------------------------------------ checkpoints
CONFIGS = [
    VimConfig(img_size=16, patch_size=4, stride=4, embed_dim=32, depth=4, d_state=8, num_classes=10),
    # CIFAR-style small Vim (65 tokens), narrow to stay fast
    VimConfig(img_size=32, patch_size=4, stride=4, embed_dim=16, depth=12, d_state=4, num_classes=10),
    VimConfig(img_size=24, patch_size=8, stride=8, embed_dim=48, depth=3, d_state=4, num_classes=7),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["test", "cifar", "odd"])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_official_layout_loads_strict(cfg, prefix):
    src = _randomize(VisionMamba(cfg).eval())
    official = {prefix + k: v.clone() for k, v in src.state_dict().items()}  # official names = ours
    fam = get_family("vim")
    sd = fam.filter_fn(official)
    assert fam.detect(sd)
    inferred = config_from_state_dict(sd)
    assert inferred == cfg
    m = fam.build(inferred).eval()
    m.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, cfg.img_size, cfg.img_size)
    y = m(x)
    assert y.shape == (2, cfg.num_classes) and torch.isfinite(y).all()
    assert torch.equal(y, src(x))


def test_config_inference_stride_and_overrides():
    with torch.device("meta"):
        plus = create_model("vim_tiny_plus").state_dict()
        small_plus = create_model("vim_small_plus").state_dict()
        tiny = create_model("vim_tiny").state_dict()
    assert (config_from_state_dict(plus).stride, config_from_state_dict(plus).img_size) == (8, 224)
    assert config_from_state_dict(small_plus).stride == 8 and config_from_state_dict(small_plus).embed_dim == 384
    cfg = config_from_state_dict(tiny, img_size=None, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    assert (cfg.stride, cfg.img_size, cfg.dt_rank, cfg.d_inner, cfg.num_classes) == (16, 224, 12, 384, 1000)
    assert cfg.mean == [0.5, 0.5, 0.5]
    assert config_from_state_dict(tiny, img_size=384).grid == (24, 24)
    assert config_from_state_dict(plus, img_size=448).stride == 8
    # Not a registered shape: stride = patch unless told; a stride override keeps the checkpoint's grid.
    sd = _randomize(VisionMamba(CONFIGS[0])).state_dict()
    cfg = config_from_state_dict(sd, stride=2)
    assert (cfg.stride, cfg.img_size, cfg.grid) == (2, 10, (4, 4))
    with pytest.raises(CheckpointError):
        config_from_state_dict(sd, embed_dim=64)
    with pytest.raises(BadInputError):
        config_from_state_dict(sd, colour="blue")
    v1 = {k: v for k, v in sd.items() if not any(s in k for s in ("conv1d_b", "x_proj_b", "dt_proj_b", "D_b"))}
    with pytest.raises(CheckpointError, match="v1"):
        config_from_state_dict(v1)
    with pytest.raises(CheckpointError):
        config_from_state_dict({k: v for k, v in sd.items() if k != "pos_embed"})
    assert not get_family("vim").detect({"backbone.pos_embed": sd["pos_embed"]})


def test_resize_pos_embed():
    pe = torch.randn(1, 17, 8, dtype=torch.float64)  # 4x4 grid, class entry at 8
    assert torch.equal(resize_pos_embed(pe, (4, 4)), pe)
    out = resize_pos_embed(pe, (6, 6))
    assert out.shape == (1, 37, 8)
    assert torch.equal(out[:, 18], pe[:, 8])  # class entry moved to the new middle, unchanged
    grid = torch.cat([pe[:, :8], pe[:, 9:]], 1).reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    expect = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    _close(torch.cat([out[:, :18], out[:, 19:]], 1), expect.reshape(1, 36, 8), 1e-14)
    # Loading a 16-px checkpoint into a 24-px model resizes on the fly.
    src = _model()
    sd = checkpoint_filter_fn({"module." + k: v for k, v in src.state_dict().items()})
    cfg = config_from_state_dict(sd, img_size=24)
    m = VisionMamba(cfg).double().eval()
    m.load_state_dict(sd, strict=True)
    assert torch.equal(m.pos_embed, resize_pos_embed(src.pos_embed, (6, 6)))
    assert torch.equal(m.cls_token, src.cls_token)
    assert torch.isfinite(m(_image(m))).all()


def test_delta_hat_in_state_dict_loads():
    src = _model()
    _set_random_delta_hat(src)
    sd = src.state_dict()
    assert "layers.0.mixer.delta_hat" in sd
    m = create_model("vim_test").double()
    m.load_state_dict(sd, strict=True)
    assert torch.equal(m.layers[2].mixer.delta_hat, src.layers[2].mixer.delta_hat)


# ------------------------------------------------------------------------------------------------ dense forward
@pytest.mark.parametrize("kw", [{}, {"patch_size": 4, "stride": 2, "img_size": 12}], ids=["test", "overlap"])
def test_dense_forward_matches_reference(kw):
    m = _model(**kw)  # "overlap": 5x5 grid, class token at 12 of 26, like the stride-8 models
    x = _image(m)
    y = m(x)
    assert y.shape == (2, 10)
    _close(y, _ref_forward(m, x))


@pytest.mark.parametrize("size,patch,stride", [(16, 4, 4), (18, 4, 4), (12, 4, 2)],
                         ids=["whole", "remainder-cropped", "overlap-conv"])
def test_patch_embed_equals_the_official_conv(size, patch, stride):
    """Non-overlapping patches run as one matmul over the patch pixels; it must equal the official strided conv
    (rows and columns past the last whole patch ignored), in float64 on fresh random weights and images."""
    torch.manual_seed(size * 7 + stride)
    embed = PatchEmbed(VimConfig(img_size=size, patch_size=patch, stride=stride, embed_dim=24, in_chans=3)).double()
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    want = F.conv2d(x, embed.proj.weight, embed.proj.bias, stride=stride).flatten(2).transpose(1, 2)
    got = embed(x)
    assert got.shape == want.shape == (3, ((size - patch) // stride + 1) ** 2, 24)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_wrong_input_size():
    m = create_model("vim_test")
    with pytest.raises(BadInputError):
        m(torch.randn(1, 3, 20, 20))


def test_delta_probe_reports_post_softplus_delta():
    m = _model()
    x = _image(m)
    seen = {}
    m.mixers()[0].delta_probe = lambda d, dt: seen.setdefault(d, dt)
    m(x)
    ref = {}
    _ref_forward(m, x, record=ref)
    assert set(seen) == {0, 1}
    for d in (0, 1):
        assert seen[d].shape == (2, 64, 17)
        _close(seen[d], ref[d], 1e-12)  # (b, E, l) in each direction's scan order
    assert m.mixers()[0].default_delta_hat().shape == (2, 64)


# ------------------------------------------------------------------------------------------------ pruning
@pytest.mark.parametrize("conv_fill", CONV_FILLS)
@pytest.mark.parametrize("delta_fill", DELTA_FILLS)
def test_pruned_forward_efficient_equals_reference(conv_fill, delta_fill):
    m = _model()
    _set_random_delta_hat(m)
    x = _image(m)
    keeps = {}
    fast = m(x, _pruning_hook(m, PLAN, conv_fill, delta_fill, keeps=keeps))
    with alignment_reference():
        ref = m(x, _pruning_hook(m, PLAN, conv_fill, delta_fill))
    _close(fast, ref)
    assert keeps[1].shape == (2, 12) and keeps[3].shape == (2, 7)
    assert (keeps[3] == m.cls_pos).any(dim=1).all()
    _close(fast, _ref_forward(m, x, keeps, conv_fill, _test_dhat(m, delta_fill)))


def test_keep_all_layout_equals_dense():
    m = _model()
    _set_random_delta_hat(m)
    x = _image(m)
    dense = m(x)

    combos = [(cf, "calib") for cf in CONV_FILLS] + [("hold", df) for df in DELTA_FILLS if df != "calib"]
    for conv_fill, delta_fill in combos:
        def hook(site, tensors, layout, cf=conv_fill, df=delta_fill):
            if site == "1":
                return tensors, TokenLayout.full(2, 17, conv_fill=cf, delta_fill=df)
            return tensors, layout
        _close(m(x, hook), dense, 1e-12)
    _close(m(x, _pruning_hook(m, {"2": 17}, "hold", "calib")), dense, 1e-12)  # select() of every token


def test_aligned_and_naive_differ():
    m = _model()
    _set_random_delta_hat(m)
    x = _image(m)
    aligned = m(x, _pruning_hook(m, PLAN, "hold", "calib"))
    naive = m(x, _pruning_hook(m, PLAN, "packed", "zero"))
    assert (aligned - naive).abs().max() > 1e-4


def test_calib_without_delta_hat_is_an_error():
    m = _model()
    with pytest.raises(RecipeError):
        m(_image(m), _pruning_hook(m, PLAN, "hold", "calib"))


def test_score_module_and_sites():
    m = _model()
    x = _image(m)
    assert m.score_module("2") is m.layers[1].mixer.out_proj
    inputs = []
    handle = m.score_module("3").register_forward_pre_hook(lambda mod, args: inputs.append(args[0]))
    m(x, _pruning_hook(m, PLAN, "hold", "bias"))
    handle.remove()
    assert inputs[0].shape == (2, 12, 64)  # block 3 sees the 12 tokens kept after block 1
    with pytest.raises(BadInputError):
        m.score_module("5")
    with pytest.raises(BadInputError):
        m.site_tokens("0")


def test_block_costs_match_counted_macs():
    """Linear/conv MACs counted from the actual calls + the scan by hand == the cost model, dense and pruned."""
    m = _model()
    x = _image(m)
    counted = [0]

    def count(mod, args, out):
        if isinstance(mod, torch.nn.Linear):
            counted[0] += out.numel() // out.shape[-1] * mod.in_features * mod.out_features
        elif isinstance(mod, torch.nn.Conv1d):  # depthwise
            counted[0] += out.numel() * mod.kernel_size[0]
        elif isinstance(mod, PatchEmbed):  # its conv runs as a matmul over the patches: (b, M, D) out
            conv = mod.proj
            counted[0] += out.numel() * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]

    handles = [mod.register_forward_hook(count) for mod in m.modules()
               if isinstance(mod, (torch.nn.Linear, torch.nn.Conv1d, PatchEmbed))]
    c = m.cfg
    # Per token, both directions: the scan, dt_proj (applied functionally: its bias enters the scan) and the
    # depthwise conv (a kernel reading taps through the fill map, at kept tokens only).
    by_hand = 2 * (9 * c.d_inner * c.d_state + 2 * c.d_inner + c.dt_rank * c.d_inner + c.d_inner * c.d_conv)
    costs = m.block_costs()
    for plan, tokens in (({}, [17, 17, 17, 17]), (PLAN, [17, 12, 12, 7])):
        counted[0] = 0
        m(x, _pruning_hook(m, plan, "hold", "bias"))
        model_total = m.fixed_macs() + sum(cb["fixed"] + k * cb["per_token"] for cb, k in zip(costs, tokens))
        assert counted[0] // x.shape[0] + by_hand * sum(tokens) == model_total
    for h in handles:
        h.remove()
    assert [cb["site"] for cb in costs] == m.prune_sites() and all(cb["tokens"] == 17 for cb in costs)


def test_drop_path_and_gradients():
    m = _model(drop_path_rate=0.3)
    plain = _model()
    plain.load_state_dict(m.state_dict())
    x = _image(m)
    assert torch.equal(m(x), plain(x))  # drop path is off in eval mode
    m.train()
    y = m(x, _pruning_hook(m, PLAN, "hold", "bias"))
    assert not torch.allclose(y, plain(x, _pruning_hook(plain, PLAN, "hold", "bias")))
    y.square().sum().backward()
    mixer = m.layers[3].mixer  # after both prune points
    for p in (mixer.in_proj.weight, mixer.dt_proj_b.bias, mixer.A_b_log, m.pos_embed):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
