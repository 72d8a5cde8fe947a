"""GroupMamba: official layout, official forward semantics (independent float64 re-implementation), pruning."""

import math

import pytest
import torch
import torch.nn.functional as F

from ssmprune_cli.errors import BadInputError
from ssmprune_cli.models import create_model, get_family
from ssmprune_cli.models.groupmamba import GroupMamba, GroupMambaConfig, checkpoint_filter_fn, config_from_state_dict
from ssmprune_cli.models.layers import TokenLayout, alignment_reference
from ssmprune_cli.ops.gather_conv import GATHER_CONV_OP, gather_conv_flop_jit
from ssmprune_cli.ops import selective_scan_ref
from ssmprune_cli.ops.selective_scan import traced_scan_shapes_only

# README params 23M / 34M / 57M; with dist_head [derived] 23.36 / 34.78 / 57.15M; MACs [derived] ≈4.67/7.23/14.1 G
PUBLISHED = {
    "groupmamba_tiny": (23, 23.36, 1266, 4.67),
    "groupmamba_small": (34, 34.78, 1693, 7.23),
    "groupmamba_base": (57, 57.15, 2120, 14.1),
}


# ============================================================================== helpers
@torch.no_grad()
def randomize(model):
    """Random weights everywhere (not the init), so every path matters numerically."""
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            p.copy_(torch.randn_like(p) / math.sqrt(p[0].numel()))
        elif name.endswith(("weight", "skip_scale", "Ds")):
            p.copy_(1.0 + 0.3 * torch.randn_like(p))
        else:
            p.copy_(0.3 * torch.randn_like(p))
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(0.1 * torch.randn_like(b))
        elif name.endswith("running_var"):
            b.copy_(0.5 + torch.rand_like(b))
    return model


def make_model(double=True, **kw):
    m = randomize(create_model("groupmamba_test", **kw)).eval()
    return m.double() if double else m


def random_plan(model, b, sites_keep, generator=None):
    """Absolute kept positions per site, nested within a stage, ascending, random per image."""
    plan, current = {}, {}
    for site, keep in sites_keep.items():
        stage = site.split(".")[0]
        L = model.site_tokens(site)[0]
        prev = current.get(stage, torch.arange(L).expand(b, L))
        pick = torch.stack([torch.randperm(prev.shape[1], generator=generator)[:keep] for _ in range(b)])
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


# ============================================================================== independent reference
# Written from the official code: groupmamba.py (GroupMamba, Block_mamba, GroupMambaLayer, ClassBlock, Stem),
# ss2d.py (SS2Dv2.forwardv2 / forward_corev2) and csms6s.py (CrossScan_k / CrossMerge_k). With `prune`, it is
# DESIGN 2.3's definition on full-length tensors: pruned rows stay frozen, convs read filled inputs, the scan
# runs with u = 0 and Δ = Δ̂ at pruned steps.
def ln(x, P, pre, eps):
    return F.layer_norm(x, (x.shape[-1],), P[pre + "weight"], P[pre + "bias"], eps)


def lin(x, P, pre):
    return F.linear(x, P[pre + "weight"], P.get(pre + "bias"))


def cross_scan(x, k):
    """(B, d, H, W) → (B, d, L) in group k's order."""
    if k in (2, 4):
        x = x.transpose(2, 3)
    x = x.flatten(2)
    return x.flip(-1) if k in (3, 4) else x


def cross_merge(y, k, H, W):
    """Inverse of cross_scan: (B, d, L) in scan order → (B, d, L) raster."""
    if k in (3, 4):
        y = y.flip(-1)
    if k in (2, 4):
        y = y.reshape(y.shape[0], y.shape[1], W, H).transpose(2, 3).reshape(y.shape[0], y.shape[1], H * W)
    return y


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


def fill_grid(x, prune):
    """(B, L, c) → conv input with pruned positions filled ('hold': nearest kept token; 'zero': zeros)."""
    if prune is None:
        return x
    if prune["conv_fill"] == "zero":
        return x * prune["mask"][..., None]
    return x.gather(1, prune["nearest"][..., None].expand_as(x))


def dwconv(x, P, pre, H, W, prune):
    B, L, c = x.shape
    x = fill_grid(x, prune).transpose(1, 2).reshape(B, c, H, W)
    return F.conv2d(x, P[pre + "weight"], P[pre + "bias"], padding=1, groups=c).flatten(2).transpose(1, 2)


def ref_ss2d(x, P, pre, k, H, W, prune, dhat):
    B, L, _ = x.shape
    x, z = lin(x, P, pre + "in_proj.").chunk(2, dim=-1)
    z = F.silu(z)
    x = F.silu(dwconv(x, P, pre + "conv2d.", H, W, prune)).transpose(1, 2)       # (B, E, L) raster
    xs = cross_scan(x.reshape(B, -1, H, W), k)
    R = P[pre + "dt_projs_weight"].shape[-1]
    N = P[pre + "A_logs"].shape[-1]
    x_dbl = torch.einsum("bdl,cd->bcl", xs, P[pre + "x_proj_weight"][0])
    dts, Bs, Cs = torch.split(x_dbl, [R, N, N], dim=1)
    dts = torch.einsum("brl,dr->bdl", dts, P[pre + "dt_projs_weight"][0])
    A = -torch.exp(P[pre + "A_logs"])
    bias = P[pre + "dt_projs_bias"][0]
    if prune is None:
        y = selective_scan_ref(xs, dts, A, Bs, Cs, P[pre + "Ds"], None, bias, True)
    else:
        kept = cross_scan(prune["mask"].to(x.dtype)[:, None].reshape(B, 1, H, W), k)   # (B, 1, L)
        dt = torch.where(kept > 0, F.softplus(dts + bias[:, None]), dhat[:, None])
        y = selective_scan_ref(xs * kept, dt, A, Bs, Cs, P[pre + "Ds"], None, None, False)
    y = cross_merge(y, k, H, W).transpose(1, 2)                                    # (B, L, E)
    return lin(ln(y, P, pre + "out_norm.", 1e-5) * z, P, pre + "out_proj.")


def ref_layer(x, P, pre, H, W, prune=None, dhats=None):
    x = ln(x, P, pre + "norm.", 1e-5)
    if prune is None:
        mean = x.mean(dim=1)
    else:
        m = prune["mask"].to(x.dtype)[..., None]
        mean = (x * m).sum(1) / m.sum(1)
    gate = torch.sigmoid(lin(torch.relu(lin(mean, P, pre + "fc1.")), P, pre + "fc2."))
    ys = [ref_ss2d(xg, P, f"{pre}mamba_g{k}.", k, H, W, prune, None if dhats is None else dhats[k - 1])
          for k, xg in zip(range(1, 5), x.chunk(4, dim=-1))]
    y = torch.cat(ys, dim=-1) * P[pre + "skip_scale"] * x
    y = y * gate[:, None]
    return lin(ln(y, P, pre + "norm.", 1e-5), P, pre + "proj.")


def ref_block(x, P, pre, H, W, prune=None, dhats=None):
    x = x + ref_layer(x, P, pre + "attn.", H, W, prune, dhats)
    h = F.gelu(dwconv(lin(ln(x, P, pre + "norm2.", 1e-6), P, pre + "mlp.fc1."), P, pre + "mlp.dwconv.dwconv.",
                      H, W, prune))
    return x + lin(h, P, pre + "mlp.fc2.")


def ref_forward(P, img, depths, plan=None, conv_fill="hold", dhat_of=None):
    """Official GroupMamba.forward in eval mode; `plan` (site → absolute kept positions) prunes as DESIGN 2.3."""
    x = img
    for i in range(3):
        x = F.conv2d(x, P[f"patch_embed1.conv.{3 * i}.weight"], stride=2 if i == 0 else 1, padding=3 if i == 0 else 1)
        pre = f"patch_embed1.conv.{3 * i + 1}."
        x = torch.relu(F.batch_norm(x, P[pre + "running_mean"], P[pre + "running_var"], P[pre + "weight"],
                                    P[pre + "bias"], False, 0.0, 1e-5))
    for s in range(1, len(depths) + 1):
        pre = "patch_embed1." if s == 1 else f"patch_embed{s}."
        x = F.conv2d(x, P[pre + "proj.weight"], P[pre + "proj.bias"], stride=2, padding=1)
        B, C, H, W = x.shape
        x = ln(x.flatten(2).transpose(1, 2), P, pre + "norm.", 1e-5)
        prune = None
        for j in range(depths[s - 1]):
            bpre = f"block{s}.{j}."
            dhats = None if prune is None else [dhat_of(f"{bpre}attn.mamba_g{k}.") for k in range(1, 5)]
            new = ref_block(x, P, bpre, H, W, prune, dhats)
            x = new if prune is None else torch.where(prune["mask"][..., None], new, x)  # pruned rows frozen
            site = f"{s}.{j + 1}"
            if plan is not None and site in plan:
                mask = torch.zeros(B, H * W, dtype=torch.bool).scatter(1, plan[site], True)
                prune = dict(mask=mask, conv_fill=conv_fill, nearest=nearest_kept(mask, H, W))
        if s < len(depths):
            x = ln(x, P, f"norm{s}.", 1e-6).reshape(B, H, W, C).permute(0, 3, 1, 2)
    cls = x.mean(dim=1, keepdim=True)
    cls = cls + ln(ref_layer(cls, P, "post_network.0.attn.", 1, 1), P, "post_network.0.norm1.", 1e-6)
    h = F.gelu(lin(ln(cls, P, "post_network.0.norm2.", 1e-6), P, "post_network.0.mlp.fc1."))
    cls = (cls + lin(h, P, "post_network.0.mlp.fc2."))[:, 0]
    cls = ln(cls, P, f"norm{len(depths)}.", 1e-6)
    return (lin(cls, P, "head.") + lin(cls, P, "dist_head.")) / 2


# ============================================================================== published variants
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_sizes_and_tokens(name):
    readme, derived, n_keys, gmacs = PUBLISHED[name]
    with torch.device("meta"):
        m = create_model(name)
    n = sum(p.numel() for p in m.parameters())
    assert int(n / 1e6) == readme and abs(n / 1e6 - derived) < 0.005  # the README truncates
    sd = m.state_dict()
    assert len(sd) == n_keys
    assert sum(1 for k in sd if "running_" in k or "num_batches" in k) == 9  # the 3 stem BatchNorms
    assert [m.site_tokens(f"{s}.1")[:2] for s in range(1, 5)] == [
        (3136, (56, 56)), (784, (28, 28)), (196, (14, 14)), (49, (7, 7))]
    assert len(m.prune_sites()) == sum(m.cfg.depths) - 4 and len(m.mixers()) == 4 * (sum(m.cfg.depths) + 1)
    total = m.fixed_macs() + sum(b["fixed"] + b["per_token"] * b["tokens"] for b in m.block_costs())
    assert abs(total / 1e9 - gmacs) < 0.01 * gmacs


def test_official_tiny_shapes():
    """Spot checks of the official layout (reference/architectures.md §3.4)."""
    with torch.device("meta"):
        sd = create_model("groupmamba_tiny").state_dict()
    g = "block3.0.attn.mamba_g1."
    assert sd[g + "in_proj.weight"].shape == (174, 87) and sd[g + "x_proj_weight"].shape == (1, 8, 87)
    assert sd[g + "dt_projs_weight"].shape == (1, 87, 6) and sd[g + "A_logs"].shape == (87, 1)
    assert sd["block1.0.mlp.dwconv.dwconv.weight"].shape == (512, 1, 3, 3)
    assert sd["block3.0.attn.fc1.weight"].shape == (21, 348) and sd["block3.0.attn.skip_scale"].shape == (1,)
    assert sd["patch_embed1.proj.weight"].shape == (64, 32, 3, 3) and sd["dist_head.weight"].shape == (1000, 448)
    assert sd["post_network.0.mlp.fc1.weight"].shape == (1792, 448)


# ============================================================================== loading
@pytest.mark.parametrize("cfg_kw", [
    {},  # the test variant
    dict(img_size=48, stem_hidden_dim=12, embed_dims=[20, 24, 36, 40], depths=[1, 2, 1, 1], mlp_ratios=[3, 2, 4, 4],
         num_classes=7, d_state=2, dt_ranks=[2, 1, 3, 1]),
])
def test_official_layout_loads_and_infers_config(cfg_kw):
    if cfg_kw:
        src = randomize(GroupMamba(GroupMambaConfig(**cfg_kw))).eval()
    else:
        src = make_model(double=False)
    # the released file is a bare state dict in these key names; DDP training states prefix `module.`
    official = {"module." + k: v.clone() for k, v in src.state_dict().items()}
    fam = get_family("groupmamba")
    sd = fam.filter_fn(official)
    assert fam.detect(sd)
    cfg = fam.config_from_state_dict(sd, img_size=src.cfg.img_size)
    assert cfg == src.cfg
    model = fam.build(cfg)
    model.load_state_dict(sd, strict=True)
    model.eval()
    x = torch.randn(2, 3, cfg.img_size, cfg.img_size)
    out = model(x)
    assert out.shape == (2, cfg.num_classes) and torch.isfinite(out).all()
    assert torch.equal(out, src(x))
    assert checkpoint_filter_fn(dict(sd)).keys() == sd.keys()


def test_config_round_trip_and_errors():
    m = create_model("groupmamba_test")
    assert GroupMambaConfig(**m.config_dict()) == m.cfg
    with pytest.raises(BadInputError):
        config_from_state_dict({"head.weight": torch.zeros(2, 2)})
    with pytest.raises(BadInputError):
        create_model("groupmamba_test", embed_dims=[18, 32, 48, 64])


# ============================================================================== dense forward
def test_dense_forward_matches_official_semantics():
    m = make_model()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    P = dict(m.state_dict())
    ref = ref_forward(P, x, m.cfg.depths)
    out = m(x)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    # training returns both heads; with the BNs frozen their mean is the eval output
    m.train()
    for bn in m.patch_embed1.conv:
        bn.eval()
    head, dist = m(x)
    torch.testing.assert_close((head + dist) / 2, out, rtol=0, atol=1e-13)
    assert not torch.allclose(head, dist)


def test_hook_sites_skip_class_block():
    m = make_model()
    log = []
    m(torch.randn(1, 3, 32, 32, dtype=torch.float64), hook=make_hook(m, {}, "hold", "bias", log))
    assert log == ["1.1", "1.2", "1.3", "2.1", "2.2", "3.1", "3.2", "4.1"]
    assert m.prune_sites() == ["1.1", "1.2", "2.1", "3.1"]
    assert m.score_module("2.1") is m.block2[0].attn.proj


# ============================================================================== pruning
SCHEDULE = {"1.1": 40, "1.2": 23, "2.1": 9, "3.1": 2}


def set_random_delta_hat(m):
    for g in m.mixers():
        g.delta_hat = 0.05 + torch.rand(1, g.Ds.shape[0], dtype=g.Ds.dtype)


def dhat_lookup(m, delta_fill):
    mods = dict(m.named_modules())

    def get(prefix):
        g = mods[prefix.rstrip(".")]
        if delta_fill == "calib":
            return g.delta_hat[0]
        if delta_fill == "bias":
            return F.softplus(g.dt_projs_bias[0])
        return torch.zeros_like(g.Ds)
    return get


@pytest.mark.parametrize("conv_fill", ["hold", "zero"])
@pytest.mark.parametrize("delta_fill", ["calib", "bias", "zero"])
def test_pruned_efficient_equals_reference(conv_fill, delta_fill):
    m = make_model()
    set_random_delta_hat(m)
    b = 3
    x = torch.randn(b, 3, 32, 32, dtype=torch.float64)
    plan = random_plan(m, b, SCHEDULE)
    fast = m(x, hook=make_hook(m, plan, conv_fill, delta_fill))
    with alignment_reference():
        slow = m(x, hook=make_hook(m, plan, conv_fill, delta_fill))
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)
    # and both equal DESIGN 2.3's definition written independently on full-length tensors
    ref = ref_forward(dict(m.state_dict()), x, m.cfg.depths, plan, conv_fill, dhat_lookup(m, delta_fill))
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(fast, m(x), atol=1e-6)  # pruning changed something


def test_keep_everything_is_dense():
    m = make_model()
    set_random_delta_hat(m)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    plan = random_plan(m, 2, {"1.1": 64, "1.2": 64, "2.1": 16, "3.1": 4})
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
    g = m.block2[1].attn.mamba_g2
    g.delta_probe = lambda d, dt: seen.setdefault(d, dt)
    m(torch.randn(2, 3, 32, 32, dtype=torch.float64))
    assert seen[0].shape == (2, g.Ds.shape[0], 16) and (seen[0] > 0).all()
    assert g.default_delta_hat().shape == (1, g.Ds.shape[0])
    torch.testing.assert_close(g.default_delta_hat(), F.softplus(g.dt_projs_bias))


# ============================================================================== costs
def fvcore_macs(model, x, hook=None):
    """Linear + conv + gather-conv MACs as fvcore counts them (the scan is added by hand). The traced scan only
    makes a tensor of its output's shape, as in `count_flops`: no count depends on its values (the kept tokens
    come from the plan), and computing it while tracing took most of this test's time."""
    from fvcore.nn import FlopCountAnalysis

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, inp):
            return self.m(inp, hook=hook)

    fca = FlopCountAnalysis(Wrap(), x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    # the depthwise convs run as the gather conv: one multiply-add per output and tap
    fca.set_op_handle(GATHER_CONV_OP, gather_conv_flop_jit)
    with traced_scan_shapes_only():
        ops = fca.by_operator()
    # the four groups' in_proj and out_proj run as one batched matmul each (ops/grouped_linear.py)
    return ops["linear"] + ops["bmm"] + ops["conv"] + ops["gather_conv"]


def scan_macs(model, tokens_per_block):
    """9·K·E·N + K·E (D) per SS2D group by hand, z being applied outside the scan; the ClassBlock scans one token."""
    blocks = [blk for s in range(1, 5) for blk in getattr(model, f"block{s}")]
    per_group = lambda g: 9 * g.Ds.shape[0] * g.d_state + 2 * g.Ds.shape[0]  # noqa: E731
    total = sum(k * per_group(g) for blk, k in zip(blocks, tokens_per_block) for g in blk.attn.groups())
    return total + sum(per_group(g) for g in model.post_network[0].attn.groups())


def test_costs_match_fvcore_dense_and_pruned():
    m = make_model(double=False)
    set_random_delta_hat(m)
    costs = m.block_costs()
    x = torch.randn(1, 3, 32, 32)
    dense_tokens = [c["tokens"] for c in costs]
    assert dense_tokens == [64, 64, 64, 16, 16, 4, 4, 1]
    model_total = m.fixed_macs() + sum(c["fixed"] + c["per_token"] * c["tokens"] for c in costs)
    assert model_total == fvcore_macs(m, x) + scan_macs(m, dense_tokens)

    keep = {"1.1": 40, "1.2": 23, "2.1": 9}
    plan = random_plan(m, 1, keep)
    tokens = [64, 40, 23, 16, 9, 4, 4, 1]   # entering each block
    pruned_total = m.fixed_macs() + sum(c["fixed"] + c["per_token"] * k for c, k in zip(costs, tokens))
    assert pruned_total < model_total
    assert pruned_total == fvcore_macs(m, x, make_hook(m, plan, "hold", "calib")) + scan_macs(m, tokens)


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "pruned"])
@pytest.mark.parametrize("shape", [dict(), dict(ssm_ratio=2.0, d_state=4)], ids=["official", "wider"])
def test_layer_runs_its_groups_together_as_each_group_alone(pruned, grad, shape):
    """GroupMambaLayer runs its four SS2D groups together (batched projections, one grouped conv, for inference
    one grouped out_norm): the same as each group's own module forward on its quarter of the channels, in
    float64, dense and over a pruned layout."""
    from ssmprune_cli.models.groupmamba import GroupMambaLayer

    torch.manual_seed(3)
    cfg = GroupMambaConfig(embed_dims=[24, 32, 48, 64], depths=[1, 1, 1, 1], **shape)
    layer = randomize(GroupMambaLayer(24, cfg, dt_rank=2)).double().eval()
    b, (H, W) = 2, (4, 5)
    L = H * W
    layout = None
    if pruned:
        keep = torch.stack([torch.randperm(L)[:13].sort().values for _ in range(b)])
        layout = TokenLayout(keep, L, (H, W), "hold", "bias")
    x = torch.randn(b, 13 if pruned else L, 24, dtype=torch.float64)
    groups = layer.groups()
    n = layer.norm
    xn = F.layer_norm(x, (24,), n.weight, n.bias, n.eps)
    want = torch.cat([m(xg, (H, W), layout) for m, xg in zip(groups, xn.chunk(4, dim=-1))], dim=-1)
    with torch.set_grad_enabled(grad):
        got = layer._groups(xn, (H, W), layout, groups)                    # (G, b·K, C/G)
    assert got.requires_grad == grad
    got = got.view(4, b, x.shape[1], 6).permute(1, 2, 0, 3).reshape(b, x.shape[1], 24)
    torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11)


@pytest.mark.slow
def test_training_gradients_through_the_kernels_equal_the_reference():
    """A training step's gradients with the Triton kernels (the grouped conv and the batched projections stacked
    differentiably at every call) equal the PyTorch reference's, parameter by parameter (float32, relative to
    each gradient's norm)."""
    from ssmprune_cli.ops.selective_scan import scan_backend

    torch.manual_seed(4)
    m = make_model(double=False, depths=[1, 1, 1, 1]).train()
    for bn in m.patch_embed1.conv:
        bn.eval()  # the stem's BatchNorms use their running statistics, as when fine-tuning
    x = torch.randn(2, 3, 32, 32)
    grads = {}
    for backend in ("reference", "triton"):
        m.zero_grad()
        with scan_backend(backend):
            head, dist = m(x)
        (head.square().sum() + dist.sum()).backward()
        grads[backend] = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    assert grads["triton"].keys() == grads["reference"].keys()
    assert any("mamba_g3.conv2d.weight" in n for n in grads["triton"])
    for n, g in grads["reference"].items():
        rel = ((grads["triton"][n] - g).norm() / g.norm().clamp(min=1e-12)).item()  # CAM fc1 may be dead: 0
        # a scalar's gradient (skip_scale) is one float32 sum over every element of its layer, with cancellation
        assert rel < (1e-2 if g.numel() == 1 else 1e-4), (n, rel)
