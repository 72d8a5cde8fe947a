"""Token scores at the prune points, their statistics, importance.png and the tokens-per-block chart."""

import numpy as np
import pytest
import torch
from PIL import Image

from ssmprune_cli.models import create_model
from ssmprune_cli.pruning.plan import PruningSpec, keep_from_rates, tokens_per_block
from ssmprune_cli.pruning.pruned_model import PrunedModel
from ssmprune_cli.report.pictures import (
    CELL,
    PAD,
    colormap,
    importance_statistics,
    kept_cell,
    patch_index,
    render_importance,
    render_tokens_plot,
    site_scores,
)


def _pruned(name):
    model = create_model(name).eval()
    points = keep_from_rates(model, model.prune_sites()[:2], [0.6, 0.5])
    return model, PrunedModel(model, PruningSpec(points, delta_fill="bias")).eval()


def test_patch_index_skips_protected_positions():
    pos = torch.tensor([[0, 3, 7, 8, 9, 16]])
    expect = [[p - (p > 8) if p != 8 else -1 for p in row] for row in pos.tolist()]
    assert patch_index(pos, [8]).tolist() == expect


@pytest.mark.parametrize("name", ["vim_test", "plainmamba_test", "groupmamba_test"])
def test_scores_and_kept_tokens_at_each_prune_point(name):
    model, pruned = _pruned(name)
    x = torch.randn(3, *model.input_size())
    seen = {}

    def keep_input(site):
        def hook(module, args):
            seen[site] = args[0].detach().double()
        return hook

    handles = [model.score_module(p.site).register_forward_pre_hook(keep_input(p.site))
               for p in pruned.spec.points]
    try:
        rows = site_scores(pruned, x)
    finally:
        for h in handles:
            h.remove()
    assert [r.site for r in rows] == [p.site for p in pruned.spec.points]
    before = tokens_per_block(model, [])[0]
    for r, p in zip(rows, pruned.spec.points):
        ref = seen[r.site].clamp(min=0).sum(-1)  # the clip score in float64
        torch.testing.assert_close(r.scores.double(), ref, rtol=1e-5, atol=1e-5)
        assert r.positions.shape == (3, before) and r.kept.shape == (3, p.keep)
        for i in range(3):
            kept = set(r.kept[i].tolist())
            assert kept <= set(r.positions[i].tolist()) and set(r.protected) <= kept
            score = dict(zip(r.positions[i].tolist(), r.scores[i].tolist()))
            free_kept = [score[q] for q in kept if q not in r.protected]
            dropped = [score[q] for q in score if q not in kept]
            assert min(free_kept) >= max(dropped)  # the best-scoring tokens go on
        before = p.keep


def test_importance_statistics_against_numpy():
    model = create_model("plainmamba_test").eval()
    x = torch.randn(4, *model.input_size())
    stats = importance_statistics(model, [x])
    rows = site_scores(model, x)
    assert [s["site"] for s in stats] == model.prune_sites()
    for i, (st, r) in enumerate(zip(stats, rows)):
        s = r.scores.double().numpy()
        top = -np.sort(-s, axis=1)
        k25 = int(round(s.shape[1] * 0.25))
        assert st["top25_mass"] == pytest.approx(np.mean(top[:, :k25].sum(1) / s.sum(1)))
        assert st["mean"] == pytest.approx(s.mean())
        assert st["cv"] == pytest.approx(np.mean(s.std(1, ddof=1) / s.mean(1)))
        if i + 1 < len(rows):
            nxt = rows[i + 1].scores.double().numpy()
            ra, rb = s.argsort(1).argsort(1), nxt.argsort(1).argsort(1)
            corr = [np.corrcoef(a, b)[0, 1] for a, b in zip(ra, rb)]
            assert st["rank_corr_next"] == pytest.approx(np.mean(corr))


def test_colormap_ends_and_missing_values():
    rgb = colormap(np.array([0.0, 1.0, np.nan]))
    assert rgb[0].tolist() == [48, 18, 59] and rgb[1].tolist() == [253, 231, 37] and rgb[2].tolist() == [40] * 3


def test_kept_cell_darkens_pruned_patches_only():
    arr = np.random.default_rng(0).integers(0, 256, (CELL, CELL, 3), dtype=np.uint8)
    keep = np.array([[True, False], [False, True]])
    out = np.asarray(kept_cell(Image.fromarray(arr), keep))
    h = CELL // 2
    np.testing.assert_array_equal(out[:h, :h], arr[:h, :h])
    np.testing.assert_array_equal(out[:h, h:], arr[:h, h:] // 5)


def test_importance_png_and_tokens_plot(tmp_path):
    model, pruned = _pruned("vim_test")
    path = render_importance(pruned, torch.randn(5, *model.input_size()), tmp_path / "importance.png",
                             max_images=3)
    img = Image.open(path)
    assert img.size[0] == PAD + (1 + 2 * 2) * (CELL + PAD)  # input + (scores, kept) per prune point
    assert img.size[1] > 3 * CELL
    rows = [{"block": i + 1, "dense": d, "pruned": k} for i, (d, k) in
            enumerate(zip(tokens_per_block(model, []), tokens_per_block(model, pruned.spec.points)))]
    chart = Image.open(render_tokens_plot(rows, tmp_path / "tokens.png", size=(400, 200))).convert("RGB")
    assert chart.size == (400, 200)
    colours = {c for _, c in chart.getcolors(maxcolors=100000)}
    assert (40, 90, 200) in colours and (150, 150, 150) in colours
