"""VMamba: official layout and sizes, official forward semantics (independent float64 re-implementation), pruning
inside stages with the four cross-scan directions aligned, costs, and `ssmprune prune` end to end."""

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

import ssmprune_cli
from ssmprune_cli.errors import BadInputError, CheckpointError
from ssmprune_cli.io.load import load_checkpoint, match_variant
from ssmprune_cli.models import create_model, get_family
from ssmprune_cli.models.layers import TokenLayout, alignment_reference
from ssmprune_cli.models.vmamba import checkpoint_filter_fn, config_from_state_dict
from ssmprune_cli.pruning.pruned_model import PrunedModel
from ssmprune_cli.report.flops import count_flops

# README (assets/performance.md): params (M) and FLOPs (G), rounded; then what the official code builds
# (MzeroMiko/VMamba @ 2ed52ea, classification/models/vmamba.py, run on the CPU): parameters, state-dict entries and
# VSSM.flops()'s fvcore count in MACs (its scan handle: 9·L·E·N + L·E per direction; LayerNorms 5 per element,
# the average pool 1 per element; GELU not counted).
PUBLISHED = {
    "vmamba_tiny": (30, 4.9, 30_249_064, 276, 4_905_609_984),          # [s1l8]
    "vmamba_small": (49, 8.6, 49_012_840, 492, 8_612_211_456),         # [s1l20]
    "vmamba_base": (87, 15.2, 86_614_504, 492, 15_220_859_904),        # [s1l20]
    "vmamba_tiny_s2l5": (31, 4.9, 30_705_832, 222, 4_857_742_080),
    "vmamba_small_s2l15": (50, 8.7, 50_147_752, 402, 8_715_774_720),
    "vmamba_base_s2l15": (89, 15.4, 88_557_800, 402, 15_358_944_256),
}
# a second small configuration: every size differs from the test variant's, state 2, ratio 2, a conv bias
OTHER = dict(img_size=32, num_classes=7, dims=[16, 32, 48, 64], depths=[1, 2, 2, 2], d_state=2, ssm_ratio=2.0,
             conv_bias=True, mlp_ratio=3.0, dt_ranks=[2, 1, 3, 2])


# ============================================================================== helpers
@torch.no_grad()
def randomize(model):
    """Random weights everywhere (not the init), so every path matters numerically."""
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            p.copy_(torch.randn_like(p) / math.sqrt(p[0].numel()))
        elif name.endswith(("weight", "Ds")):
            p.copy_(1.0 + 0.3 * torch.randn_like(p))
        else:
            p.copy_(0.3 * torch.randn_like(p))
    return model


def make_model(double=True, **kw):
    m = randomize(create_model("vmamba_test", **kw)).eval()
    return m.double() if double else m


def random_plan(model, b, sites_keep):
    """Absolute kept positions per site, nested within a stage, ascending, random per image."""
    plan, current = {}, {}
    for site, keep in sites_keep.items():
        stage = site.split(".")[0]
        L = model.site_tokens(site)[0]
        prev = current.get(stage, torch.arange(L).expand(b, L))
        pick = torch.stack([torch.randperm(prev.shape[1])[:keep] for _ in range(b)])
        plan[site] = prev.gather(1, pick).sort(dim=1).values
        current[stage] = plan[site]
    return plan


def make_hook(model, plan, conv_fill, delta_fill, log=None):
    """Prunes at the plan's sites as the pruning engine does, keeping refill features for the stage end."""
    def hook(site, tensors, layout):
        if log is not None:
            log.append(site)
        if site not in plan:
            return tensors, layout
        (x,) = tensors
        L, grid, _ = model.site_tokens(site)
        keep = plan[site]
        if layout is None:
            new = TokenLayout(keep, L, grid, conv_fill, delta_fill, refill=x)
            return (x.gather(1, keep[..., None].expand(-1, -1, x.shape[-1])),), new
        idx = layout.rank().gather(1, keep)
        return (layout.take(x, idx),), layout.select(idx, refill=layout.refilled(x))
    return hook


def set_random_delta_hat(m):
    for op in m.mixers():
        op.delta_hat = 0.05 + torch.rand(4, op.d_inner, dtype=op.Ds.dtype)


def dhat_of(m, delta_fill):
    """(4, E) Δ̂ of the SS2D at `prefix`, as the fill defines it."""
    mods = dict(m.named_modules())

    def get(prefix):
        op = mods[prefix.rstrip(".")]
        if delta_fill == "calib":
            return op.delta_hat
        if delta_fill == "bias":
            return F.softplus(op.dt_projs_bias)
        return torch.zeros_like(op.dt_projs_bias)
    return get


# ============================================================================== independent reference
# Written from the official code, channel-first as it runs: vmamba.py (VSSM with patch embed v2, downsample v3,
# LayerNorm2d, Linear2d; VSSBlock; SS2Dv2.forwardv2 / forward_corev2 with forward type v05_noz), csm_triton.py
# (cross_scan_fwd / cross_merge_fwd, scans=0) and csms6s.py (selective_scan_torch). With `prune` it is DESIGN
# 2.3's definition on full grids: pruned rows stay frozen, the conv reads filled inputs, each direction's scan
# runs with u = 0 and Δ = Δ̂ at pruned steps.
def ln2d(x, P, pre):
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), P[pre + "weight"], P[pre + "bias"],
                        1e-5).permute(0, 3, 1, 2)


def linear2d(x, P, pre):
    y = torch.einsum("bchw,oc->bohw", x, P[pre + "weight"])
    return y if pre + "bias" not in P else y + P[pre + "bias"][:, None, None]


def cross_scan(x):
    """(B, E, H, W) → (B, 4, E, L): raster, column-major (transpose, flatten), and both flipped."""
    rows, cols = x.flatten(2), x.transpose(2, 3).flatten(2)
    return torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)


def cross_merge(ys, H, W):
    """(B, 4, E, L) in scan orders → (B, E, L) raster: each direction back at its tokens, summed."""
    B, _, E, L = ys.shape
    rows = ys[:, 0] + ys[:, 2].flip(-1)
    cols = ys[:, 1] + ys[:, 3].flip(-1)
    return rows + cols.reshape(B, E, W, H).transpose(2, 3).reshape(B, E, L)


def scan_loop(u, delta, A, Bs, Cs, D):
    """selective_scan_torch for one direction: u, delta (B, E, L) (delta after softplus), A (E, N),
    Bs, Cs (B, N, L), D (E)."""
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[-1]):
        h = torch.exp(delta[:, :, t, None] * A) * h + delta[:, :, t, None] * Bs[:, None, :, t] * u[:, :, t, None]
        ys.append((h * Cs[:, None, :, t]).sum(-1) + D * u[:, :, t])
    return torch.stack(ys, dim=-1)


def nearest_kept(mask, H, W):
    """(B, L) raster index of the nearest kept position on the grid (Euclidean, ties to the lowest index)."""
    B, L = mask.shape
    out = torch.empty(B, L, dtype=torch.long)
    for b in range(B):
        kept = [q for q in range(L) if mask[b, q]]
        for p in range(L):
            py, px = divmod(p, W)
            out[b, p] = min(kept, key=lambda q: ((q // W - py) ** 2 + (q % W - px) ** 2, q))
    return out


def fill(x, prune):
    """(B, E, H, W) conv input with pruned positions filled ('hold': nearest kept token; 'zero': zeros)."""
    if prune is None:
        return x
    B, E, H, W = x.shape
    if prune["conv_fill"] == "zero":
        return x * prune["mask"].to(x.dtype).view(B, 1, H, W)
    flat = x.flatten(2)
    return flat.gather(2, prune["nearest"][:, None].expand_as(flat)).view(B, E, H, W)


def ref_ss2d(x, P, pre, prune=None, dhat=None):
    """x (B, C, H, W), already normalised → (B, C, H, W)."""
    B, C, H, W = x.shape
    xi = linear2d(x, P, pre + "in_proj.")                                      # no z branch (_noz)
    E = xi.shape[1]
    xi = F.silu(F.conv2d(fill(xi, prune), P[pre + "conv2d.weight"], P.get(pre + "conv2d.bias"),
                         padding=P[pre + "conv2d.weight"].shape[-1] // 2, groups=E))
    xs = cross_scan(xi)                                                        # (B, 4, E, L)
    N = P[pre + "A_logs"].shape[1]
    R = P[pre + "dt_projs_weight"].shape[2]
    ys = []
    for k in range(4):
        x_dbl = torch.einsum("bel,ce->bcl", xs[:, k], P[pre + "x_proj_weight"][k])   # grouped conv1d, group k
        dts, Bs, Cs = torch.split(x_dbl, [R, N, N], dim=1)
        dts = torch.einsum("brl,er->bel", dts, P[pre + "dt_projs_weight"][k])
        delta = F.softplus(dts + P[pre + "dt_projs_bias"][k][:, None])
        u = xs[:, k]
        if prune is not None:
            kept = cross_scan(prune["mask"].to(x.dtype).view(B, 1, H, W))[:, k]     # (B, 1, L) in order k
            delta = torch.where(kept > 0, delta, dhat[k][:, None])
            u = u * kept
        A = -torch.exp(P[pre + "A_logs"][k * E:(k + 1) * E])
        ys.append(scan_loop(u, delta, A, Bs, Cs, P[pre + "Ds"][k * E:(k + 1) * E]))
    y = cross_merge(torch.stack(ys, dim=1), H, W).view(B, E, H, W)
    return linear2d(ln2d(y, P, pre + "out_norm."), P, pre + "out_proj.")


def ref_block(x, P, pre, prune=None, dhat=None):
    x = x + ref_ss2d(ln2d(x, P, pre + "norm."), P, pre + "op.", prune, dhat)
    h = F.gelu(linear2d(ln2d(x, P, pre + "norm2."), P, pre + "mlp.fc1."))
    return x + linear2d(h, P, pre + "mlp.fc2.")


def ref_forward(P, img, depths, plan=None, conv_fill="hold", dhat=None):
    """Official VSSM.forward in eval mode; `plan` (site → absolute kept positions) prunes as DESIGN 2.3."""
    k = P["patch_embed.0.weight"].shape[-1]
    x = F.conv2d(img, P["patch_embed.0.weight"], P["patch_embed.0.bias"], stride=k - 1, padding=1)
    x = F.gelu(ln2d(x, P, "patch_embed.2."))
    x = ln2d(F.conv2d(x, P["patch_embed.5.weight"], P["patch_embed.5.bias"], stride=k - 1, padding=1), P,
             "patch_embed.7.")
    for s in range(len(depths)):
        B, C, H, W = x.shape
        prune = None
        for j in range(depths[s]):
            pre = f"layers.{s}.blocks.{j}."
            new = ref_block(x, P, pre, prune, None if prune is None else dhat(pre + "op."))
            if prune is None:
                x = new
            else:  # pruned rows frozen
                x = torch.where(prune["mask"].view(B, 1, H, W), new, x)
            site = f"{s + 1}.{j + 1}"
            if plan is not None and site in plan:
                mask = torch.zeros(B, H * W, dtype=torch.bool).scatter(1, plan[site], True)
                prune = dict(mask=mask, conv_fill=conv_fill, nearest=nearest_kept(mask, H, W))
        if s < len(depths) - 1:  # downsample v3: conv 3×3 s2 → LN2d (the grid is whole again)
            x = ln2d(F.conv2d(x, P[f"layers.{s}.downsample.1.weight"], P[f"layers.{s}.downsample.1.bias"],
                              stride=2, padding=1), P, f"layers.{s}.downsample.3.")
    x = ln2d(x, P, "classifier.norm.").mean(dim=(2, 3))                       # norm → avgpool → flatten
    return F.linear(x, P["classifier.head.weight"], P["classifier.head.bias"])


# ============================================================================== published variants
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_sizes_and_flops(name):
    readme_params, readme_gflops, official_params, official_keys, official_macs = PUBLISHED[name]
    with torch.device("meta"):
        m = create_model(name)
    n = sum(p.numel() for p in m.parameters())
    assert n == official_params and len(m.state_dict()) == official_keys  # what the official code builds
    assert abs(n / 1e6 - readme_params) <= 0.5                             # the README rounds to millions
    assert [m.site_tokens(f"{s}.1")[:2] for s in range(1, 5)] == [
        (3136, (56, 56)), (784, (28, 28)), (196, (14, 14)), (49, (7, 7))]
    assert len(m.prune_sites()) == sum(m.cfg.depths) - 4 and len(m.mixers()) == sum(m.cfg.depths)
    costs = m.block_costs()
    ours = m.fixed_macs() + sum(b["fixed"] + b["per_token"] * b["tokens"] for b in costs)
    # DESIGN 3's count (scan 9·L·E·N + 2·L·E per direction, norms not counted) is within 3 % of the README ...
    assert abs(ours / 1e9 / readme_gflops - 1) < 0.03
    # ... and, moved to the official convention (one L·E less per direction, LayerNorms and the pool added), it
    # is the official code's own fvcore count to the multiply-add
    blocks = [blk for stage in m.layers for blk in stage.blocks]
    c, grids = m.cfg, m.stage_grids()
    g1 = (c.img_size + 2 - 3) // 2 + 1
    norms = 5 * (c.dims[0] // 2) * g1 * g1 + 5 * c.dims[0] * grids[0][0] * grids[0][1]     # patch embed
    for s, ((H, W), d) in enumerate(zip(grids, c.dims)):
        norms += sum(5 * H * W * (2 * d + blk.op.d_inner) for blk in m.layers[s].blocks)  # norm, norm2, out_norm
        norms += 5 * H * W * d if s > 0 else 0                                             # downsample's LN
    last = grids[-1][0] * grids[-1][1] * c.dims[-1]
    official = ours - sum(4 * blk.op.d_inner * b["tokens"] for blk, b in zip(blocks, costs)) + norms + 6 * last
    assert official == official_macs


def test_official_tiny_layout():
    """Spot checks of vmamba_tiny's keys and shapes (the official VSSM: vmamba_tiny_s1l8)."""
    with torch.device("meta"):
        sd = create_model("vmamba_tiny").state_dict()
    op = "layers.2.blocks.7.op."
    assert sd[op + "in_proj.weight"].shape == (384, 384) and sd[op + "conv2d.weight"].shape == (384, 1, 3, 3)
    assert op + "conv2d.bias" not in sd and sd[op + "x_proj_weight"].shape == (4, 24 + 2, 384)
    assert sd[op + "dt_projs_weight"].shape == (4, 384, 24) and sd[op + "dt_projs_bias"].shape == (4, 384)
    assert sd[op + "A_logs"].shape == (4 * 384, 1) and sd[op + "Ds"].shape == (4 * 384,)
    assert sd[op + "out_norm.weight"].shape == (384,) and sd[op + "out_proj.weight"].shape == (384, 384)
    assert sd["layers.2.blocks.7.mlp.fc1.weight"].shape == (1536, 384)
    assert {k for k in sd if k.startswith("patch_embed.")} == {
        f"patch_embed.{i}.{w}" for i in (0, 2, 5, 7) for w in ("weight", "bias")}
    assert sd["patch_embed.0.weight"].shape == (48, 3, 3, 3) and sd["layers.0.downsample.1.weight"].shape == (
        192, 96, 3, 3)
    assert not any(k.startswith("layers.3.downsample") for k in sd)
    assert sd["classifier.norm.weight"].shape == (768,) and sd["classifier.head.weight"].shape == (1000, 768)


# ============================================================================== loading
@pytest.mark.parametrize("cfg_kw", [{}, OTHER])
def test_official_layout_loads_and_infers_config(cfg_kw):
    src = make_model(double=False, **cfg_kw)
    # DDP training states prefix `module.`; older code saved the Linear2d weights conv-shaped (out, in, 1, 1)
    official = {"module." + k: v.clone() for k, v in src.state_dict().items()}
    official["module.layers.0.blocks.0.op.in_proj.weight"] = official[
        "module.layers.0.blocks.0.op.in_proj.weight"][..., None, None]
    fam = get_family("vmamba")
    sd = fam.filter_fn(official)
    assert fam.detect(sd)
    cfg = fam.config_from_state_dict(sd, img_size=32)
    assert cfg == src.cfg
    model = fam.build(cfg)
    model.load_state_dict(sd, strict=True)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, cfg.num_classes) and torch.isfinite(out).all()
    assert torch.equal(out, src(x))
    assert checkpoint_filter_fn(dict(sd)).keys() == sd.keys()


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_variant_detected_from_shapes(name):
    with torch.device("meta"):
        sd = create_model(name).state_dict()
    cfg = config_from_state_dict(sd)
    assert match_variant("vmamba", dataclasses.asdict(cfg)) == name


def test_release_file_loads_strictly(tmp_path):
    """The training script's file: {'model', 'model_ema', 'config' (a yacs CfgNode), ...}; DDP keys."""
    src = make_model(double=False)
    ema = make_model(double=False)
    wrap = lambda m: {"module." + k: v for k, v in m.state_dict().items()}  # noqa: E731
    state = {"model": wrap(src), "model_ema": wrap(ema), "epoch": 263, "max_accuracy": 82.6}
    try:
        from yacs.config import CfgNode
    except ImportError:  # fvcore brings yacs; without it, a plain dict stands in
        CfgNode = dict
    config = CfgNode()
    config["MODEL"] = CfgNode({"NAME": "vssm1_tiny_0230s", "NUM_CLASSES": 10})
    state["config"] = config
    path = tmp_path / "vssm1_tiny_0230s_ckpt_epoch_264.pth"
    torch.save(state, path)
    x = torch.randn(2, 3, 32, 32)
    for use_ema, want in ((False, src), (True, ema)):
        loaded = load_checkpoint(path, ema=use_ema, img_size=32)
        assert loaded.family == "vmamba" and loaded.variant == "vmamba_test"
        assert loaded.weights == ("model_ema" if use_ema else "model")
        with torch.no_grad():
            assert torch.equal(loaded.model(x), want(x))


def test_unsupported_layouts_are_refused():
    sd = make_model(double=False).state_dict()
    v0 = {k: v for k, v in sd.items() if not k.startswith("patch_embed.5")}
    with pytest.raises(CheckpointError, match="vanilla"):
        config_from_state_dict(v0)
    z = dict(sd)
    w = z["layers.0.blocks.0.op.in_proj.weight"]
    z["layers.0.blocks.0.op.in_proj.weight"] = torch.cat([w, w])   # an in_proj with a z branch (forward type v2)
    with pytest.raises(CheckpointError, match="v05_noz"):
        config_from_state_dict(z)
    v2 = {k: v for k, v in sd.items() if not k.startswith("layers.0.downsample")}
    v2["layers.0.downsample.1.weight"] = torch.zeros(24, 16, 2, 2)     # downsample v2: conv 2×2
    with pytest.raises(CheckpointError, match="downsample v3"):
        config_from_state_dict(v2)
    with pytest.raises(BadInputError, match="expects 32x32"):
        make_model()(torch.randn(1, 3, 64, 64, dtype=torch.float64))
    with pytest.raises(BadInputError):
        create_model("vmamba_test", widths=[1])


# ============================================================================== dense forward
@pytest.mark.parametrize("cfg_kw", [{}, OTHER])
def test_dense_forward_matches_official_semantics(cfg_kw):
    m = make_model(**cfg_kw)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    ref = ref_forward(dict(m.state_dict()), x, m.cfg.depths)
    torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-10)


def test_hook_sites_and_score_module():
    m = make_model()
    log = []
    m(torch.randn(1, 3, 32, 32, dtype=torch.float64), hook=make_hook(m, {}, "hold", "bias", log))
    assert log == ["1.1", "1.2", "2.1", "2.2", "3.1", "3.2", "3.3", "4.1"]
    assert m.prune_sites() == ["1.1", "2.1", "3.1", "3.2"]
    assert m.score_module("3.2") is m.layers[2].blocks[1].op.out_proj
    with pytest.raises(BadInputError, match="3.2"):
        m.site_tokens("5.1")


# ============================================================================== pruning
SCHEDULE = {"1.1": 40, "2.1": 9, "3.1": 3, "3.2": 2}


@pytest.mark.parametrize("direction", range(4))
def test_each_direction_pruned_equals_reference(direction):
    """One SS2D with only direction k contributing (the others' B rows and D are zero): the efficient form, the
    core's reference mode and the independent definition agree on the kept tokens."""
    m = make_model()
    op = m.layers[0].blocks[1].op
    set_random_delta_hat(m)
    E, N, R = op.d_inner, op.d_state, op.dt_rank
    with torch.no_grad():
        for k in range(4):
            if k != direction:
                op.x_proj_weight[k, R:R + N] = 0.0
                op.Ds[k * E:(k + 1) * E] = 0.0
    b, (H, W) = 3, (8, 8)
    x = torch.randn(b, H * W, op.in_proj.in_features, dtype=torch.float64)
    keep = random_plan(m, b, {"1.1": 37})["1.1"]
    layout = TokenLayout(keep, H * W, (H, W), "hold", "calib")
    kept = layout.gather(x)
    fast = op(kept, (H, W), layout)
    with alignment_reference():
        slow = op(kept, (H, W), layout)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)
    mask = torch.zeros(b, H * W, dtype=torch.bool).scatter(1, keep, True)
    prune = dict(mask=mask, conv_fill="hold", nearest=nearest_kept(mask, H, W))
    P = {"op." + k: v for k, v in op.state_dict().items()}
    ref = ref_ss2d(x.transpose(1, 2).reshape(b, -1, H, W), P, "op.", prune, op.delta_hat)
    torch.testing.assert_close(fast, layout.gather(ref.flatten(2).transpose(1, 2)), rtol=1e-10, atol=1e-10)
    dense = op(x, (H, W))
    assert (layout.gather(dense) - fast).abs().max() > 1e-6   # pruning changed this direction's output


@pytest.mark.parametrize("conv_fill", ["hold", "zero"])
@pytest.mark.parametrize("delta_fill", ["calib", "bias", "zero"])
def test_pruned_efficient_equals_reference(conv_fill, delta_fill):
    m = make_model()
    set_random_delta_hat(m)
    b = 2
    x = torch.randn(b, 3, 32, 32, dtype=torch.float64)
    plan = random_plan(m, b, SCHEDULE)
    fast = m(x, hook=make_hook(m, plan, conv_fill, delta_fill))
    with alignment_reference():
        slow = m(x, hook=make_hook(m, plan, conv_fill, delta_fill))
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)
    # and both equal DESIGN 2.3's definition written independently on full grids
    ref = ref_forward(dict(m.state_dict()), x, m.cfg.depths, plan, conv_fill, dhat_of(m, delta_fill))
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(fast, m(x), atol=1e-6)  # pruning changed something


def test_keep_everything_is_dense():
    m = make_model()
    set_random_delta_hat(m)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    plan = random_plan(m, 2, {"1.1": 64, "2.1": 16, "3.1": 4, "3.2": 4})
    out = m(x, hook=make_hook(m, plan, "hold", "calib"))
    assert (out - m(x)).abs().max() <= 1e-12


def test_aligned_and_naive_differ():
    m = make_model()
    set_random_delta_hat(m)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    plan = random_plan(m, 2, SCHEDULE)
    aligned = m(x, hook=make_hook(m, plan, "hold", "calib"))
    naive = m(x, hook=make_hook(m, plan, "zero", "zero"))
    assert (aligned - naive).abs().max() > 1e-6


def test_pruning_errors():
    m = make_model()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    plan = random_plan(m, 1, {"1.1": 30})
    with pytest.raises(BadInputError, match="packed"):
        m(x, hook=make_hook(m, plan, "packed", "bias"))
    with pytest.raises(BadInputError, match="calib"):
        m(x, hook=make_hook(m, plan, "hold", "calib"))  # no Δ̂ measured


def test_delta_probe_and_default_delta_hat():
    m = make_model()
    seen = {}
    op = m.layers[1].blocks[1].op
    op.delta_probe = lambda d, dt: seen.setdefault(d, dt)
    m(torch.randn(2, 3, 32, 32, dtype=torch.float64))
    assert sorted(seen) == [0, 1, 2, 3]
    assert all(v.shape == (2, op.d_inner, 16) and (v > 0).all() for v in seen.values())
    assert op.default_delta_hat().shape == (4, op.d_inner)
    torch.testing.assert_close(op.default_delta_hat(), F.softplus(op.dt_projs_bias))


# ============================================================================== costs
def test_costs_equal_fvcore_dense_and_pruned():
    """The analytic cost model equals fvcore with the project's handles, op by op, dense and pruned."""
    from ssmprune_cli.pruning.plan import PrunePoint, PruningSpec

    m = make_model(double=False)
    fc = count_flops(m)
    assert fc.macs == fc.analytic_macs and not fc.unsupported
    assert [b["tokens"] for b in fc.blocks] == [64, 64, 16, 16, 4, 4, 4, 1]
    assert all(b["macs"] == b["analytic_macs"] for b in fc.blocks)
    assert fc.blocks[4]["module"] == "layers.2.blocks.0"
    # the scans by hand: 4 directions × (9·E·N + 2·E) per token
    scans = sum(4 * (9 * op.d_inner * op.d_state + 2 * op.d_inner) * b["tokens"]
                for op, b in zip(m.mixers(), fc.blocks))
    assert fc.by_operator["selective_scan"] == scans
    pm = PrunedModel(m, PruningSpec([PrunePoint("1.1", 40), PrunePoint("2.1", 9), PrunePoint("3.2", 2)],
                                    delta_fill="bias"))
    pfc = count_flops(pm)
    assert pfc.macs == pfc.analytic_macs < fc.macs and not pfc.unsupported
    assert [b["tokens"] for b in pfc.blocks] == [64, 40, 16, 9, 4, 4, 2, 1]
    assert all(b["macs"] == b["analytic_macs"] for b in pfc.blocks)


# ============================================================================== the CLI, end to end
# A small VMamba for CIFAR-10 at 32 px (grids 8², 4², 2², 1²) whose recipe points (2.1, 3.1, 3.2) can reach 30 %.
E2E = dict(num_classes=10, dims=[16, 32, 64, 64], depths=[1, 3, 4, 1], mlp_ratio=2.0)


def test_prune_ratio_end_to_end_on_cifar(cifar_test_dir, tmp_path):
    from typer.testing import CliRunner

    from ssmprune_cli import cli

    torch.manual_seed(0)
    sd = create_model("vmamba_test", **E2E).state_dict()
    ckpt = tmp_path / "vmamba_cifar.pth"
    torch.save({"model": {"module." + k: v for k, v in sd.items()}, "epoch": 1}, ckpt)
    cfg = tmp_path / "cifar.yaml"  # what the weights cannot tell: the input size and normalisation
    cfg.write_text("img_size: 32\nmean: [0.4914, 0.4822, 0.4465]\nstd: [0.247, 0.2435, 0.2616]\n")
    out = tmp_path / "out"
    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()
    res = runner.invoke(cli.app, [str(a) for a in (
        "prune", ckpt, "--ratio", "0.3", "--calib", cifar_test_dir, "--calib-images", "16", "--model-config", cfg,
        "-o", out, "--json", "--no-progress")])
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["source"]["family"] == "vmamba"
    assert [p["site"] for p in report["pruning"]["points"]] == ["2.1", "3.1", "3.2"]   # the built-in recipe's
    assert report["pruning"]["conv_fill"] == "hold" and report["pruning"]["delta_fill"] == "calib"
    assert 0.3 <= report["flops"]["reduction"] < 0.4
    model = ssmprune_cli.load(out / "model.safetensors")
    assert isinstance(model, PrunedModel) and model.input_size() == (3, 32, 32)
    assert all(op.delta_hat is not None and op.delta_hat.shape == (4, op.d_inner) for op in model.mixers())
    with torch.no_grad():
        y = model(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 10) and torch.isfinite(y).all()
