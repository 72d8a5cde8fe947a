"""--ratio on every family's published variants and test variants: the achieved cost is within the target and
no single token could be added at any prune point without crossing it (one token's worth per point)."""

import pytest

from ssmprune_cli.io.load import _variant_model
from ssmprune_cli.pruning import recipe as recipes
from ssmprune_cli.pruning.plan import PrunePoint, dense_macs, schedule_macs, solve_ratio, tokens_per_block

VARIANTS = ["vim_small", "vim_tiny", "vim_base", "plainmamba_l1", "plainmamba_l2", "plainmamba_l3",
            "groupmamba_tiny", "groupmamba_small", "groupmamba_base", "vim_test"]


def _family(name):
    return name.split("_")[0]


def _meta_model(name):
    """The registered variant on the meta device (the cost model needs shapes only): the one `ssmprune models` lists,
    built once a process (tests/models/test_registry.py builds every variant's when it is collected). Nothing here
    changes a model, and a full-size GroupMamba takes a second or two to build."""
    model = _variant_model(name)
    assert next(model.parameters()).is_meta
    return model


@pytest.mark.parametrize("ratio", [0.3, 0.4])
@pytest.mark.parametrize("name", VARIANTS)
def test_ratio_within_one_token_per_point(name, ratio):
    model = _meta_model(name)
    variant = name if not name.endswith("_test") else None
    prune = recipes.resolve(variant, _family(name))["prune"]
    sites = recipes.resolve_sites(model, prune)
    points = solve_ratio(model, sites, ratio)
    target = (1 - ratio) * dense_macs(model)
    cost = schedule_macs(model, points)
    assert cost <= target
    counts = tokens_per_block(model, points)
    blocks = model.block_costs()
    index = {b["site"]: i for i, b in enumerate(blocks)}
    for i, p in enumerate(points):
        more = [PrunePoint(q.site, q.keep + (q.site == p.site)) for q in points]
        before = counts[index[p.site]]
        if p.keep + 1 <= before and all(q.keep <= counts[index[q.site]] for q in more):
            assert schedule_macs(model, more) > target, f"a token more at {p.site} still fits the target"
    # and the slack is below one token's worth summed over the points
    worth = sum(schedule_macs(model, [PrunePoint(q.site, q.keep + (q.site == p.site)) for q in points]) - cost
                for p in points)
    assert target - cost <= worth


def test_vim_small_recipe_is_the_paper_schedule():
    model = _meta_model("vim_small")
    prune = recipes.resolve("vim_small", "vim")["prune"]
    assert recipes.resolve_sites(model, prune) == ["5", "10", "15"] and prune["keep"] == [157, 125, 101]
    pts = [PrunePoint(s, k) for s, k in zip(["5", "10", "15"], prune["keep"])]
    counts = tokens_per_block(model, pts)
    assert counts[:5] == [197] * 5 and counts[5:10] == [157] * 5 and counts[10:15] == [125] * 5
    assert counts[15:] == [101] * 9
    reduction = 1 - schedule_macs(model, pts) / dense_macs(model)
    assert 0.28 < reduction < 0.31  # about 29% fewer FLOPs (3.60 G quoted for the paper's count)


def test_groupmamba_recipe_sites_skip_stage_one():
    tiny = _meta_model("groupmamba_tiny")
    prune = recipes.resolve("groupmamba_tiny", "groupmamba")["prune"]
    assert recipes.resolve_sites(tiny, prune) == ["2.1", "3.1", "3.4"]
    # and it reaches the usual --ratio range
    for ratio in (0.2, 0.3, 0.4):
        pts = solve_ratio(tiny, recipes.resolve_sites(tiny, prune), ratio)
        assert abs(1 - schedule_macs(tiny, pts) / dense_macs(tiny) - ratio) < 0.01


def test_plainmamba_recipe_sites():
    l3, l1 = _meta_model("plainmamba_l3"), _meta_model("plainmamba_l1")
    prune = recipes.resolve("plainmamba_l3", "plainmamba")["prune"]
    assert recipes.resolve_sites(l3, prune) == ["6", "12", "18"]
    assert recipes.resolve_sites(l1, prune) == ["4", "8", "12"]
