"""Schedules: prune points with keep counts, their analytic cost, and the solver behind `--ratio`.

A schedule is a list of (site, keep) where `keep` is the number of tokens of the stage's sequence that survive
the prune point, protected tokens (Vim's class token) included. Costs use the model's analytic cost model
(`block_costs()` / `fixed_macs()`, DESIGN 3): MACs for projections and convolutions, 9·L·E·N + 2·L·E per scan
direction.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ssmprune_cli.errors import RecipeError
from ssmprune_cli.models.layers.token_layout import CONV_FILLS, DELTA_FILLS

from .methods import DEFAULT_METHOD, check_options, merge_capacity

ALIGNS = ("aligned", "none")
SPLITS = {"uniform": 0.0, "early": 1.0, "late": -1.0}  # tilt of the per-point keep rates


@dataclass
class PrunePoint:
    site: str
    keep: int


@dataclass
class PruningSpec:
    """Everything needed to rebuild a pruned model (stored in the safetensors metadata).

    `method` is what happens at each prune point (pruning/methods.py: prune, merge, fuse) and `options` its
    options. The default method writes neither field, so its description is what it was before methods existed
    (and files that lack them load as `prune`)."""

    points: List[PrunePoint]
    score: str = "clip"
    align: str = "aligned"
    conv_fill: str = "hold"
    delta_fill: str = "calib"
    seed: int = 0
    extra: Dict[str, Any] = field(default_factory=dict)
    method: str = DEFAULT_METHOD
    options: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.options = check_options(self.method, self.options)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        if self.method == DEFAULT_METHOD:
            d.pop("method")
            d.pop("options")
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "PruningSpec":
        d = dict(d)
        d["points"] = [PrunePoint(str(p["site"]), int(p["keep"])) for p in d["points"]]
        return cls(**d)


def resolve_fills(model, align: str, conv_fill: Optional[str], delta_fill: Optional[str]) -> Tuple[str, str]:
    """`align` is a preset: aligned → (hold, calib); none → naive packing (packed or zero conv, no decay).
    Explicit conv_fill / delta_fill override the preset."""
    if align not in ALIGNS:
        raise RecipeError(f"align must be one of {ALIGNS}, got {align!r}")
    two_d = is_two_d(model)
    if align == "aligned":
        cf, df = "hold", "calib"
    else:
        cf, df = ("zero" if two_d else "packed"), "zero"
    cf = conv_fill or cf
    df = delta_fill or df
    if cf not in CONV_FILLS:
        raise RecipeError(f"conv_fill must be one of {CONV_FILLS}, got {cf!r}")
    if df not in DELTA_FILLS:
        raise RecipeError(f"delta_fill must be one of {DELTA_FILLS}, got {df!r}")
    if cf == "packed" and two_d:
        raise RecipeError(f"conv_fill 'packed' is defined for 1-D scans only; {model.family} uses 2-D convolutions"
                          " (use 'hold' or 'zero')")
    return cf, df


def is_two_d(model) -> bool:
    site = model.prune_sites()[0]
    L, grid, _ = model.site_tokens(site)
    return grid is not None and grid[0] * grid[1] == L


# ----------------------------------------------------------------------------------------------- cost model
def tokens_per_block(model, points: Sequence[PrunePoint]) -> List[int]:
    """Kept tokens entering each block, in execution order."""
    keep = {p.site: p.keep for p in points}
    out, current, stage = [], None, None
    for blk in model.block_costs():
        if blk["stage"] != stage:  # a new stage starts whole (hierarchical models refill)
            stage, current = blk["stage"], blk["tokens"]
        out.append(current)
        if blk["site"] in keep:
            current = keep[blk["site"]]
    return out


def schedule_macs(model, points: Sequence[PrunePoint]) -> int:
    blocks = model.block_costs()
    counts = tokens_per_block(model, points)
    return int(model.fixed_macs() + sum(b["fixed"] + b["per_token"] * k for b, k in zip(blocks, counts)))


def dense_macs(model) -> int:
    return schedule_macs(model, [])


def validate_points(model, points: Sequence[PrunePoint]) -> None:
    sites = model.prune_sites()
    order = {s: i for i, s in enumerate(sites)}
    last = -1
    for p in points:
        if p.site not in order:
            raise RecipeError(f"unknown prune point {p.site!r} for {model.family}; valid: "
                              f"{_summarise(sites)}")
        if order[p.site] <= last:
            raise RecipeError("prune points must be distinct and in execution order "
                              f"(got {', '.join(q.site for q in points)})")
        last = order[p.site]
    counts = tokens_per_block(model, points)
    blocks = model.block_costs()
    index = {b["site"]: i for i, b in enumerate(blocks)}
    for p in points:
        L, _, protected = model.site_tokens(p.site)
        before = counts[index[p.site]]
        if not (len(protected) + 1 <= p.keep <= before):
            raise RecipeError(f"keep at {p.site} must be between {len(protected) + 1} and {before} tokens, "
                              f"got {p.keep}")


def _summarise(sites: Sequence[str]) -> str:
    return ", ".join(sites) if len(sites) <= 8 else f"{sites[0]} … {sites[-1]} ({len(sites)} sites)"


# ----------------------------------------------------------------------------------------------- solvers
def keep_from_rates(model, sites: Sequence[str], rates: Sequence[float]) -> List[PrunePoint]:
    """Progressive rates: each point keeps round(rate · current patch tokens) patch tokens (≥ 1) + protected."""
    points: List[PrunePoint] = []
    for site, rate in zip(sites, rates):
        if not (0.0 < rate <= 1.0):
            raise RecipeError(f"keep rate at {site} must be in (0, 1], got {rate}")
        current = tokens_per_block(model, points + [PrunePoint(site, 10**9)])
        before = current[_block_index(model, site)]
        protected = len(model.site_tokens(site)[2])
        patches = before - protected
        points.append(PrunePoint(site, protected + max(1, int(math.floor(patches * rate + 0.5)))))
    return points


def _block_index(model, site: str) -> int:
    for i, b in enumerate(model.block_costs()):
        if b["site"] == site:
            return i
    raise RecipeError(f"unknown prune point {site!r}")


def _split_rates(rho: float, n: int, split: str) -> List[float]:
    tilt = SPLITS[split]
    if n == 1 or tilt == 0.0:
        return [rho] * n
    # weights average to 1: 'early' prunes harder at the first point, 'late' at the last
    w = [1.0 + tilt * (1.0 - 2.0 * i / (n - 1)) * 0.5 for i in range(n)]
    return [min(1.0, rho ** wi) for wi in w]


def solve_ratio(model, sites: Sequence[str], ratio: float, split: str = "uniform") -> List[PrunePoint]:
    """Keep counts at `sites` so the pruned model costs at most (1 - ratio) of the dense one, as close as
    the token granularity allows (no single token can be added at any point without crossing the target)."""
    if not (0.0 < ratio < 1.0):
        raise RecipeError(f"--ratio must be in (0, 1), got {ratio}")
    if split not in SPLITS:
        raise RecipeError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not sites:
        raise RecipeError("--ratio needs at least one prune point (recipe `at:` or --at)")
    dense = dense_macs(model)
    target = (1.0 - ratio) * dense
    minimal = [PrunePoint(s, len(model.site_tokens(s)[2]) + 1) for s in sites]
    if schedule_macs(model, minimal) > target:
        best = 1.0 - schedule_macs(model, minimal) / dense
        raise RecipeError(f"ratio {ratio:g} is unreachable with prune points {', '.join(sites)}: "
                          f"they can save at most {best:.1%} of the FLOPs; prune earlier or at more points")
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        pts = keep_from_rates(model, sites, [max(r, 1e-6) for r in _split_rates(mid, len(sites), split)])
        if schedule_macs(model, pts) <= target:
            lo = mid
        else:
            hi = mid
    points = keep_from_rates(model, sites, [max(r, 1e-6) for r in _split_rates(lo, len(sites), split)])
    if schedule_macs(model, points) > target:
        points = minimal
    return _fill_slack(model, points, target)


def _fill_slack(model, points: List[PrunePoint], target: float) -> List[PrunePoint]:
    """Greedy: add single tokens (last point first) while the schedule stays within the target."""
    points = [PrunePoint(p.site, p.keep) for p in points]
    changed = True
    while changed:
        changed = False
        for i in reversed(range(len(points))):
            limit = tokens_per_block(model, points[:i] + [PrunePoint(points[i].site, 10**9)])
            before = limit[_block_index(model, points[i].site)]
            trial = [PrunePoint(p.site, p.keep) for p in points]
            trial[i].keep += 1
            if trial[i].keep <= before and _monotone(model, trial) and schedule_macs(model, trial) <= target:
                points = trial
                changed = True
    return points


def _monotone(model, points: Sequence[PrunePoint]) -> bool:
    counts = tokens_per_block(model, points)
    for p in points:
        if p.keep > counts[_block_index(model, p.site)]:
            return False
    return True


# ----------------------------------------------------------------------------------------------- methods
MERGE_LAYERS = ("points", "all", "alternate", "lower", "upper")


def _tokens_before(model, points: Sequence[PrunePoint], site: str) -> int:
    """Tokens entering the prune point `site` after the earlier `points`."""
    return tokens_per_block(model, list(points) + [PrunePoint(site, 10**9)])[_block_index(model, site)]


def validate_method(model, points: Sequence[PrunePoint], method: str) -> None:
    """What a method cannot do with a valid schedule: one bipartite merge removes at most half of the free
    tokens (methods.merge_capacity)."""
    if method != "merge":
        return
    for i, p in enumerate(points):
        before = _tokens_before(model, points[:i], p.site)
        protected = len(model.site_tokens(p.site)[2])
        cap = merge_capacity(before, protected)
        if before - p.keep > cap:
            raise RecipeError(f"merge at {p.site}: {before} → {p.keep} tokens merges {before - p.keep}, more than "
                              f"one bipartite merge can ({cap}, half of the {before - protected} free tokens); "
                              "spread the reduction over more points (e.g. --merge-layers alternate) or reduce less")


def merge_layer_sites(model, layers: str, boundary: float = 0.5) -> List[str]:
    """Famba-V's cross-layer strategies as prune points: merge after every block ('all'), after every second
    block ('alternate', also R-MeeTo's merge_interval 2), or only in the lower / upper `boundary` fraction of the
    blocks ('lower' / 'upper'). Plain models skip the last block (nothing runs after it)."""
    if layers not in MERGE_LAYERS or layers == "points":
        raise RecipeError(f"merge layers must be one of {', '.join(MERGE_LAYERS[1:])} here, got {layers!r}")
    if not (0.0 < boundary < 1.0):
        raise RecipeError(f"merge boundary must be in (0, 1), got {boundary}")
    sites = model.prune_sites()
    if not getattr(model, "hierarchical", False):
        sites = sites[:-1]
    if layers == "all":
        return list(sites)
    if layers == "alternate":
        return list(sites[1::2])
    k = min(len(sites) - 1, max(1, int(round(boundary * len(sites)))))
    return list(sites[:k]) if layers == "lower" else list(sites[k:])


def _merge_points(model, sites: Sequence[str], merges: Sequence[int]) -> List[PrunePoint]:
    """Points that merge `merges[i]` tokens at `sites[i]`, each capped at what one merge can remove."""
    points: List[PrunePoint] = []
    for site, r in zip(sites, merges):
        before = _tokens_before(model, points, site)
        cap = merge_capacity(before, len(model.site_tokens(site)[2]))
        points.append(PrunePoint(site, before - min(max(0, r), cap)))
    return points


def solve_merge_ratio(model, sites: Sequence[str], ratio: float) -> List[PrunePoint]:
    """Merge counts for `--ratio` with the merging method: the same number r of tokens merged at every point (the
    ToMe / Famba-V / R-MeeTo convention), the smallest r within the target, then one merge taken back at each
    point (last point first) where the schedule stays within it: every point merges r or r - 1 tokens. Each point
    merges at most half of its free tokens."""
    if not (0.0 < ratio < 1.0):
        raise RecipeError(f"--ratio must be in (0, 1), got {ratio}")
    if not sites:
        raise RecipeError("--ratio needs at least one prune point (recipe `at:` or --at)")
    dense = dense_macs(model)
    target = (1.0 - ratio) * dense
    most = max(model.site_tokens(s)[0] for s in sites)
    cost = lambda rs: schedule_macs(model, _merge_points(model, sites, rs))  # noqa: E731
    if cost([most] * len(sites)) > target:
        best = 1.0 - cost([most] * len(sites)) / dense
        raise RecipeError(f"ratio {ratio:g} is unreachable by merging at {_summarise(list(sites))}: each merge "
                          f"removes at most half of its tokens, so they can save at most {best:.1%} of the FLOPs; "
                          "merge at more points (--merge-layers all)")
    lo, hi = 0, most  # cost(hi) <= target
    while lo < hi:
        mid = (lo + hi) // 2
        if cost([mid] * len(sites)) <= target:
            hi = mid
        else:
            lo = mid + 1
    points = _merge_points(model, sites, [lo] * len(sites))
    merges = [_tokens_before(model, points[:i], p.site) - p.keep for i, p in enumerate(points)]
    for i in reversed(range(len(merges))):
        if merges[i] > 0:
            trial = merges[:i] + [merges[i] - 1] + merges[i + 1:]
            if cost(trial) <= target:
                merges = trial
    return _merge_points(model, sites, merges)
