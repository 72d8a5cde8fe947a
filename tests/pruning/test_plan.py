"""Schedules: cost model bookkeeping and the --ratio solver, on a small synthetic cost model."""

import random

import pytest

from ssmprune_cli.errors import RecipeError
from ssmprune_cli.pruning.plan import (
    PrunePoint,
    dense_macs,
    keep_from_rates,
    schedule_macs,
    solve_ratio,
    tokens_per_block,
    validate_points,
)


class FakePlain:
    """A 12-block plain model with a middle class token; random per-block costs."""

    family = "fake"

    def __init__(self, seed, depth=12, L=65, stages=None):
        rng = random.Random(seed)
        self.L = L
        self.stages = stages
        self.blocks = []
        for i in range(depth):
            stage = 0 if stages is None else stages[i]
            self.blocks.append({"site": str(i + 1) if stages is None else f"{stage}.{i + 1}", "stage": stage,
                                "tokens": L, "per_token": rng.randint(1000, 5000), "fixed": rng.randint(0, 500)})

    def prune_sites(self):
        return [b["site"] for b in self.blocks]

    def site_tokens(self, site):
        return self.L, (8, 8), [32] if self.stages is None else []

    def block_costs(self):
        return self.blocks

    def fixed_macs(self):
        return 12345


def independent_cost(model, points):
    keep = {p.site: p.keep for p in points}
    total, cur, stage = model.fixed_macs(), None, None
    for b in model.blocks:
        if b["stage"] != stage:
            stage, cur = b["stage"], b["tokens"]
        total += b["fixed"] + b["per_token"] * cur
        cur = keep.get(b["site"], cur)
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ratio", [0.3, 0.4])
def test_ratio_hits_target_within_one_token_per_point(seed, ratio):
    m = FakePlain(seed)
    sites = ["3", "6", "9"]
    pts = solve_ratio(m, sites, ratio)
    target = (1 - ratio) * dense_macs(m)
    cost = schedule_macs(m, pts)
    assert cost == independent_cost(m, pts)
    assert cost <= target
    # one token's worth at a point = its per-token cost summed over the blocks it feeds
    worth = 0
    counts = tokens_per_block(m, pts)
    for p in pts:
        i = sites.index(p.site)
        end = int(sites[i + 1]) if i + 1 < len(sites) else len(m.blocks)
        worth += sum(b["per_token"] for b in m.blocks[int(p.site):end])
    assert target - cost <= worth
    assert [p.keep for p in pts] == sorted([p.keep for p in pts], reverse=True)
    assert all(c >= 2 for c in counts)


@pytest.mark.parametrize("split", ["early", "late"])
def test_splits_tilt_the_rates(split):
    m = FakePlain(0)
    pts = solve_ratio(m, ["3", "6", "9"], 0.4, split=split)
    first_rate = pts[0].keep / m.L
    last_rate = pts[2].keep / pts[1].keep
    assert (first_rate < last_rate) if split == "early" else (first_rate > last_rate)
    assert schedule_macs(m, pts) <= 0.6 * dense_macs(m)


def test_unreachable_ratio_is_refused():
    m = FakePlain(0)
    with pytest.raises(RecipeError, match="unreachable"):
        solve_ratio(m, ["11"], 0.5)
    with pytest.raises(RecipeError, match=r"\(0, 1\)"):
        solve_ratio(m, ["3"], 1.2)


def test_keep_from_rates_counts_patches_and_protected():
    m = FakePlain(0)
    pts = keep_from_rates(m, ["3", "6"], [0.5, 0.5])
    assert [p.keep for p in pts] == [1 + 32, 1 + 16]
    assert tokens_per_block(m, pts) == [65] * 3 + [33] * 3 + [17] * 6


def test_validation_messages():
    m = FakePlain(0)
    with pytest.raises(RecipeError, match="unknown prune point"):
        validate_points(m, [PrunePoint("99", 10)])
    with pytest.raises(RecipeError, match="execution order"):
        validate_points(m, [PrunePoint("6", 40), PrunePoint("3", 30)])
    with pytest.raises(RecipeError, match="between 2 and"):
        validate_points(m, [PrunePoint("3", 1)])
    with pytest.raises(RecipeError, match="between"):
        validate_points(m, [PrunePoint("3", 30), PrunePoint("6", 31)])


def test_hierarchical_stages_start_whole():
    m = FakePlain(0, depth=6, stages=[1, 1, 1, 2, 2, 2])
    pts = [PrunePoint("1.1", 20)]
    assert tokens_per_block(m, pts) == [65, 20, 20, 65, 65, 65]
    assert schedule_macs(m, pts) == independent_cost(m, pts)
