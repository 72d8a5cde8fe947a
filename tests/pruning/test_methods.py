"""The peers' methods at a prune point (pruning/methods.py): token merging (R-MeeTo / Famba-V), EViT-style fusion and
MTR's Δ score, each held to its defining behaviour on hand-made tensors, then inside real (tiny) models against
independent per-image references, with equal FLOPs at equal schedules and a save/load round trip."""

import json
import math

import pytest
import torch

from ssmprune_cli.errors import BadInputError, RecipeError
from ssmprune_cli.io.load import load_checkpoint
from ssmprune_cli.io.safetensors_io import save_model
from ssmprune_cli.models import create_model
from ssmprune_cli.models.layers.token_layout import TokenLayout
from ssmprune_cli.pruning.importance import mtr_score, token_scores
from ssmprune_cli.pruning.methods import Step, check_options, fuse_tokens, merge_tokens
from ssmprune_cli.pruning.plan import (
    PrunePoint,
    PruningSpec,
    dense_macs,
    merge_layer_sites,
    schedule_macs,
    solve_merge_ratio,
    tokens_per_block,
    validate_method,
)
from ssmprune_cli.pruning.pruned_model import PrunedModel

T = lambda rows: torch.tensor(rows, dtype=torch.float64)[None]  # noqa: E731  (one image)


# ---------------------------------------------------------------------------------------------- merge, by hand
def _merge_inputs():
    # rows 0..6, row 3 protected; free rows 0 1 2 4 5 6 → sources 0 2 5, destinations 1 4 6
    x = T([[1, 0], [1, 0.1], [0, 1], [5, 5], [0.1, 1], [1, 0.8], [-1, 0]])
    res = T([[i, 10 * i] for i in range(7)])
    sizes = torch.tensor([[1.0, 2, 1, 1, 1, 1, 1]])
    return x, res, sizes, torch.tensor([[3]])


def test_merge_averages_by_size_and_keeps_destination_positions():
    x, res, sizes, prot = _merge_inputs()
    out = merge_tokens(Step((x, res), keep=5, protected=prot, sizes=sizes))
    # the two most similar sources (0 → 1, 2 → 4: cosine 0.995 each) merge; source 5 (best 0.84, to 1) stays
    assert out.rows.tolist() == [[1, 3, 4, 5, 6]]
    want_x = T([[(1 + 2 * 1) / 3, (0 + 2 * 0.1) / 3], [5, 5], [(0 + 0.1) / 2, 1], [1, 0.8], [-1, 0]])
    want_res = T([[(0 + 2 * 1) / 3, (0 + 2 * 10) / 3], [3, 30], [3, 30], [5, 50], [6, 60]])
    torch.testing.assert_close(out.tensors[0], want_x, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.tensors[1], want_res, rtol=0, atol=1e-12)
    assert out.sizes.tolist() == [[3.0, 1.0, 2.0, 1.0, 1.0]]


def test_merge_mean_weighting_and_window():
    x, res, sizes, prot = _merge_inputs()
    mean = merge_tokens(Step((x,), keep=5, protected=prot, sizes=sizes), weighting="mean")
    torch.testing.assert_close(mean.tensors[0][0, 0], torch.tensor([1.0, 0.05], dtype=torch.float64))
    # three merges: without a window source 5 goes to its most similar destination anywhere (row 1) ...
    anywhere = merge_tokens(Step((res,), keep=4, protected=prot, sizes=torch.ones(1, 7)))
    assert anywhere.rows.tolist() == [[1, 3, 4, 6]]
    torch.testing.assert_close(anywhere.tensors[0][0, 0], torch.tensor([2.0, 20.0], dtype=torch.float64))
    # ... within one place of it in the sequence, only rows 4 and 6 are its neighbours: it joins row 4
    near = merge_tokens(Step((x, res), keep=4, protected=prot, sizes=torch.ones(1, 7)), window=1)
    assert near.rows.tolist() == [[1, 3, 4, 6]]
    torch.testing.assert_close(near.tensors[1][0, 2], torch.tensor([11 / 3, 110 / 3], dtype=torch.float64))


def test_merge_refuses_more_than_half():
    x, res, sizes, prot = _merge_inputs()
    with pytest.raises(ValueError, match="at most 3"):
        merge_tokens(Step((x,), keep=3, protected=prot, sizes=sizes))


# ---------------------------------------------------------------------------------------------- fuse, by hand
def test_fuse_keeps_top_and_fuses_rest_at_best_or_last():
    x = T([[i, i * i] for i in range(6)])
    scores = torch.tensor([[5.0, 1, 3, 0, 4, 2]], dtype=torch.float64)
    best = fuse_tokens(Step((x,), keep=3, scores=scores), at="best")
    # top-2: rows 0 and 4; rows 1 2 3 5 fuse with weights 1 3 0 2 (/6), at row 2 (the best of them)
    assert best.rows.tolist() == [[0, 2, 4]]
    fused = [(1 * 1 + 3 * 2 + 2 * 5) / 6, (1 * 1 + 3 * 4 + 2 * 25) / 6]
    torch.testing.assert_close(best.tensors[0], T([[0, 0], fused, [4, 16]]), rtol=0, atol=1e-12)
    last = fuse_tokens(Step((x,), keep=3, scores=scores), at="last")
    assert last.rows.tolist() == [[0, 4, 5]]
    torch.testing.assert_close(last.tensors[0], T([[0, 0], [4, 16], fused]), rtol=0, atol=1e-12)


def test_fuse_protects_and_falls_back_to_uniform():
    x = T([[i, 1] for i in range(5)])
    scores = torch.tensor([[-1.0, 2, -3, -2, -5]], dtype=torch.float64)
    out = fuse_tokens(Step((x,), keep=3, protected=torch.tensor([[4]]), scores=scores))
    # row 4 is protected, row 1 the top; rows 0 2 3 have no positive score: their plain mean, at row 0
    assert out.rows.tolist() == [[0, 1, 4]]
    torch.testing.assert_close(out.tensors[0][0, 0], torch.tensor([5 / 3, 1.0], dtype=torch.float64))


# ---------------------------------------------------------------------------------------------- MTR, by hand
def test_mtr_is_delta_max_pooled_over_channels_averaged_over_directions():
    delta = torch.tensor([[[[0.1, 0.7, 0.2], [0.5, 0.1, 0.1]],
                           [[0.3, 0.3, 0.3], [0.0, 0.9, 0.0]]]], dtype=torch.float64)  # (b=1, K=2, D=2, E=3)
    torch.testing.assert_close(mtr_score(delta), torch.tensor([[0.6, 0.6]], dtype=torch.float64))
    torch.testing.assert_close(token_scores("mtr", delta[:, :1]), torch.tensor([[0.6]], dtype=torch.float64))


def test_options_are_checked():
    assert check_options("merge", {}) == {"weighting": "size", "window": 0}
    assert check_options("fuse", {"at": "last"}) == {"at": "last"}
    with pytest.raises(RecipeError, match="unknown method 'tome'"):
        check_options("tome", {})
    with pytest.raises(RecipeError, match="fuse.at must be one of best, last"):
        PruningSpec([PrunePoint("1", 9)], method="fuse", options={"at": "end"})
    with pytest.raises(RecipeError, match="no option"):
        check_options("prune", {"window": 1})


# ---------------------------------------------------------------------------------------------- in a model
def _cos(a, b):
    return float(a @ b) / (float(a.norm()) * float(b.norm()))


def reference_hook(model, points, method, options, captured):
    """Per-image Python loops, written from the papers' descriptions, on the model's own hook interface."""
    keep = {p.site: p.keep for p in points}
    state = {"sizes": None}

    def hook(site, tensors, layout):
        if site not in keep:
            return tensors, layout
        L, grid, protected = model.site_tokens(site)
        b, n = tensors[0].shape[:2]
        if layout is None:
            layout = TokenLayout.full(b, L, grid=grid if grid[0] * grid[1] == L else None, conv_fill="hold",
                                      delta_fill="bias")
            state["sizes"] = [[1.0] * n for _ in range(b)]
        rank = layout.rank()
        rows_all, outs = [], [[] for _ in tensors]
        new_sizes = []
        for i in range(b):
            prot = [int(rank[i, p]) for p in protected]
            free = [j for j in range(n) if j not in prot]
            size = state["sizes"][i]
            if method == "merge":
                src, dst = free[0::2], free[1::2]
                m = tensors[0][i]
                best = []
                for si, s in enumerate(src):
                    cands = [(_cos(m[s], m[d]), -dj) for dj, d in enumerate(dst)]
                    c, neg = max(cands)
                    best.append((c, si, dst[-neg]))
                best.sort(key=lambda t: (-t[0], t[1]))
                merged = best[: n - keep[site]]
                rows = sorted(prot + dst + [src[t[1]] for t in best[n - keep[site]:]])
                into = {}
                for _, si, d in merged:
                    into.setdefault(d, []).append(src[si])
                for k, t in enumerate(tensors):
                    vals = t[i].clone()
                    for d, ss in into.items():
                        w = [size[j] if options.get("weighting", "size") == "size" else 1.0 for j in [d] + ss]
                        vals[d] = sum(wj * t[i][j] for wj, j in zip(w, [d] + ss)) / sum(w)
                    outs[k].append(vals[rows])
                sz = list(size)
                for d, ss in into.items():
                    sz[d] = size[d] + sum(size[j] for j in ss)
                new_sizes.append([sz[j] for j in rows])
            else:  # fuse, clip scores
                s = captured[site][i].clamp(min=0).sum(-1)
                order = sorted(free, key=lambda j: -float(s[j]))
                top = order[: keep[site] - 1 - len(prot)]
                rest = [j for j in range(n) if j not in top and j not in prot]
                at = max(rest, key=lambda j: float(s[j])) if options.get("at", "best") == "best" else max(rest)
                w = torch.stack([s[j] for j in rest])
                w = w / w.sum()
                rows = sorted(prot + top + [at])
                for k, t in enumerate(tensors):
                    vals = t[i].clone()
                    vals[at] = sum(wj * t[i][j] for wj, j in zip(w, rest))
                    outs[k].append(vals[rows])
                new_sizes.append([1.0] * len(rows))
            rows_all.append(rows)
        state["sizes"] = new_sizes
        idx = torch.tensor(rows_all)
        return tuple(torch.stack(o) for o in outs), layout.select(idx)

    return hook


@pytest.mark.parametrize("method,options", [("merge", {}), ("merge", {"weighting": "mean"}), ("fuse", {}),
                                            ("fuse", {"at": "last"})])
def test_pruned_model_equals_independent_reference(method, options):
    model = create_model("vim_test").double().eval()
    points = [PrunePoint("1", 12), PrunePoint("2", 8)]  # 17 → 12 → 8 tokens, class token kept
    pm = PrunedModel(model, PruningSpec(points, delta_fill="bias", method=method, options=options))
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    captured = {}
    handles = [model.score_module(p.site).register_forward_pre_hook(
        lambda mod, args, site=p.site: captured.__setitem__(site, args[0])) for p in points]
    with torch.no_grad():
        ours = pm(x)
        theirs = model(x, hook=reference_hook(model, points, method, options, captured))
    for h in handles:
        h.remove()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)


def test_mtr_keeps_the_tokens_of_largest_delta():
    """Vim and PlainMamba: the kept tokens at a dense prune point are the top by Δ read through the calibration
    probe (scan order, an independent path), max over channels, mean over directions."""
    for name, site, keep, shape in (("vim_test", "1", 9, (2, 3, 16, 16)), ("plainmamba_test", "1", 7, (2, 3, 64, 64))):
        model = create_model(name).double().eval()
        pm = PrunedModel(model, PruningSpec([PrunePoint(site, keep)], score="mtr", delta_fill="bias"))
        mixer = model.mixers()[0]
        seen = {}
        mixer.delta_probe = lambda d, delta: seen.__setitem__(d, delta)
        kept = {}
        inner = pm.prune_hook

        def recording(s, tensors, layout):
            tensors, new = inner(s, tensors, layout)
            if s == site:
                kept["rows"] = new.keep
            return tensors, new

        pm.prune_hook = recording
        with torch.no_grad():
            pm(torch.randn(*shape, dtype=torch.float64))
        mixer.delta_probe = None
        per_dir = []
        for d, delta in sorted(seen.items()):  # (b, E, L) in scan order; Vim's direction 1 runs reversed
            delta = delta.flip(-1) if name == "vim_test" and d == 1 else delta
            per_dir.append(delta.max(dim=1).values)
        score = torch.stack(per_dir).mean(0)
        protected = model.site_tokens(site)[2]
        score[:, protected] = math.inf
        want = score.topk(keep, dim=1).indices.sort(dim=1).values
        assert torch.equal(kept["rows"], want), name


def test_equal_schedule_equal_flops_for_every_method():
    from ssmprune_cli.report.flops import count_flops

    model = create_model("vim_test").eval()
    points = [PrunePoint("1", 12), PrunePoint("2", 8)]
    counts = {}
    for method, score in (("prune", "clip"), ("merge", "clip"), ("fuse", "clip"), ("prune", "mtr")):
        pm = PrunedModel(model, PruningSpec(points, score=score, delta_fill="bias", method=method))
        fc = count_flops(pm, batch=2)
        pm.detach()
        assert fc.unsupported == {}, (method, fc.unsupported)
        counts[(method, score)] = fc.macs
    assert len(set(counts.values())) == 1, counts
    assert counts[("prune", "clip")] == schedule_macs(model, points)


def test_merge_trains_through_the_merge():
    model = create_model("vim_test").train()
    pm = PrunedModel(model, PruningSpec([PrunePoint("1", 10)], delta_fill="bias", method="merge"))
    pm(torch.randn(2, 3, 16, 16)).logsumexp(-1).sum().backward()
    assert model.layers[0].mixer.in_proj.weight.grad.abs().sum() > 0  # before the merge point, through it


# ---------------------------------------------------------------------------------------------- files
def test_save_load_round_trip_and_versions(tmp_path):
    model = create_model("vim_test").eval()
    x = torch.randn(2, 3, 16, 16)
    merged = PrunedModel(model, PruningSpec([PrunePoint("2", 10)], delta_fill="bias", method="merge",
                                            options={"window": 2}))
    with torch.no_grad():
        want = merged(x)
    save_model(merged, tmp_path / "m" / "model.safetensors")
    doc = json.loads((tmp_path / "m" / "config.json").read_text())
    assert doc["format_version"] == 2 and doc["pruning"]["method"] == "merge"
    loaded = load_checkpoint(tmp_path / "m" / "model.safetensors").model
    assert loaded.spec.method == "merge" and loaded.spec.options == {"weighting": "size", "window": 2}
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), want, rtol=0, atol=0)
    # the default method writes what it always wrote: version 1, no method field (older files load as 'prune')
    merged.detach()
    plain = PrunedModel(model, PruningSpec([PrunePoint("2", 10)], delta_fill="bias"))
    save_model(plain, tmp_path / "p" / "model.safetensors")
    doc = json.loads((tmp_path / "p" / "config.json").read_text())
    assert doc["format_version"] == 1 and "method" not in doc["pruning"] and "options" not in doc["pruning"]
    assert load_checkpoint(tmp_path / "p" / "model.safetensors").model.spec.method == "prune"
    # a file naming a method this build lacks: one clear error, exit code 2
    doc["format_version"], doc["pruning"]["method"] = 2, "tome"
    (tmp_path / "p" / "config.json").write_text(json.dumps(doc))
    from safetensors.torch import load_file, save_file

    save_file(load_file(tmp_path / "p" / "model.safetensors"), tmp_path / "bad.safetensors",
              metadata={"ssmprune": json.dumps(doc)})
    with pytest.raises(BadInputError, match="unknown method 'tome'"):
        load_checkpoint(tmp_path / "bad.safetensors")


# ---------------------------------------------------------------------------------------------- schedules
def test_merge_strategies_choose_points():
    model = create_model("vim_test", depth=12)
    assert merge_layer_sites(model, "all") == [str(i) for i in range(1, 12)]
    assert merge_layer_sites(model, "alternate") == ["2", "4", "6", "8", "10"]
    assert merge_layer_sites(model, "lower") == [str(i) for i in range(1, 7)]
    assert merge_layer_sites(model, "upper", 0.25) == [str(i) for i in range(4, 12)]
    with pytest.raises(RecipeError, match="merge layers"):
        merge_layer_sites(model, "middle")


def test_merge_ratio_constant_r_within_target_and_capacity():
    model = create_model("vim_test", depth=12, img_size=32)  # 65 tokens, the class token never merges
    sites = merge_layer_sites(model, "alternate")

    def merging(counts):  # a plain model: each point starts from the previous point's tokens
        out, cur = [], 65
        for site, m in zip(sites, counts):
            cur -= m
            out.append(PrunePoint(site, cur))
        return out

    def constant(r):  # r merges at every point, or half of the free tokens where that is less
        counts, cur = [], 65
        for _ in sites:
            counts.append(min(r, (cur - 1) // 2))
            cur -= counts[-1]
        return counts

    for ratio in (0.2, 0.3, 0.4):
        target = (1 - ratio) * dense_macs(model)
        r = next(r for r in range(65) if schedule_macs(model, merging(constant(r))) <= target)
        base = constant(r)
        points = solve_merge_ratio(model, sites, ratio)
        merges = [b.keep - p.keep for b, p in zip([PrunePoint("", 65)] + points[:-1], points)]
        assert all(c - 1 <= m <= c for m, c in zip(merges, base))  # r everywhere, one taken back at some points
        assert target * 0.99 <= schedule_macs(model, points) <= target  # equal FLOPs within 1 %
        for i, (m, c) in enumerate(zip(merges, base)):  # where r is still merged, taking one back crosses it
            assert m < c or schedule_macs(model, merging(merges[:i] + [m - 1] + merges[i + 1:])) > target
    validate_method(model, points, "merge")
    with pytest.raises(RecipeError, match="merges .* more than one bipartite merge can"):
        validate_method(model, [PrunePoint("2", 20)], "merge")
    with pytest.raises(RecipeError, match="unreachable by merging"):
        solve_merge_ratio(model, ["10"], 0.5)
