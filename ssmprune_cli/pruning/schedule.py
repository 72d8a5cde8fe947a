"""Schedule planning: from a recipe's `prune` section to prune points, and `--auto`'s choice among policies.

Pure tensor code, like the rest of pruning/: images arrive as decoded batches, progress as a callable.
`make_points` turns `at`/`at_fraction` + `ratio` or `keep` into PrunePoints; `policy_candidates` lists the
`--auto` grid at the same FLOPs budget; `choose_policy` scores them against the dense model (policy.py says how)
and keeps the default unless one is better beyond its noise.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ssmprune_cli.errors import RecipeError

from . import policy
from . import recipe as recipes
from .importance import SCORES
from .plan import (PrunePoint, PruningSpec, is_two_d, keep_from_rates, resolve_fills, schedule_macs, solve_ratio,
                   validate_points)
from .pruned_model import PrunedModel


def plan_from_recipe(model, recipe: Dict[str, Any]) -> PruningSpec:
    """The pruning spec a resolved recipe asks for (points, score, fills, seed), or RecipeError saying why
    there is none: everything `prune` decides from the recipe before it sees an image."""
    prune = recipe["prune"]
    points = make_points(model, prune)
    conv_fill, delta_fill = resolve_fills(model, prune["align"], prune.get("conv_fill"), prune.get("delta_fill"))
    if prune["score"] not in SCORES:
        raise RecipeError(f"unknown score {prune['score']!r}; choose {', '.join(SCORES)}")
    return PruningSpec(points, score=prune["score"], align=prune["align"], conv_fill=conv_fill,
                       delta_fill=delta_fill, seed=int(recipe.get("seed", 0)))


def make_points(model, prune: Dict[str, Any], split: Optional[str] = None) -> List[PrunePoint]:
    """The prune points of a recipe's `prune` section: its sites with keep counts solved for `ratio` (split
    uniform / early / late), or taken from `keep` (rates in (0, 1] or token counts)."""
    sites = recipes.resolve_sites(model, prune)
    if not sites:
        raise RecipeError("no prune points: give --at (or `prune.at` / `prune.at_fraction` in a recipe)")
    if prune.get("ratio") is not None:
        return solve_ratio(model, sites, float(prune["ratio"]), split or prune.get("split", "uniform"))
    keep = prune.get("keep")
    if not keep:
        raise RecipeError("no schedule: give --ratio R or --keep (rates or token counts) for the prune points")
    if len(keep) != len(sites):
        raise RecipeError(f"{len(keep)} keep values for {len(sites)} prune points ({', '.join(sites)})")
    values = [float(k) for k in keep]
    if all(v <= 1.0 for v in values):
        points = keep_from_rates(model, sites, values)
    elif all(v > 1.0 and v == int(v) for v in values):
        points = [PrunePoint(s, int(v)) for s, v in zip(sites, values)]
    else:
        raise RecipeError("keep values are either all rates in (0, 1] or all token counts (integers > 1)")
    validate_points(model, points)
    return points


def policy_candidates(model, spec: PruningSpec, prune: Dict[str, Any], auto: Dict[str, Any]
                      ) -> List[Dict[str, Any]]:
    """The --auto grid (conv_fill × delta_fill × split; splits only with a --ratio target), the default policy
    (the recipe's and the flags') first, whether or not the grid lists it. `packed` only for 1-D models."""
    two_d = is_two_d(model)
    by_ratio = prune.get("ratio") is not None
    default = {"conv_fill": spec.conv_fill, "delta_fill": spec.delta_fill, "split": prune.get("split", "uniform")}
    grid = [{"conv_fill": cf, "delta_fill": df, "split": sp}
            for cf in auto["conv_fill"] if not (cf == "packed" and two_d)
            for df in auto["delta_fill"]
            for sp in (list(auto["split"]) if by_ratio else [default["split"]])]
    out = [default] + [c for c in grid if c != default]
    for c in out:
        points = make_points(model, prune, c["split"]) if by_ratio else spec.points
        c.update(keep=[p.keep for p in points], macs=schedule_macs(model, points))
    return out


@torch.no_grad()
def _logits(model, batches: Sequence[Tensor]) -> Tensor:
    out = [model(x) for x in batches]
    return torch.cat([o[0] if isinstance(o, (tuple, list)) else o for o in out]).float().cpu()


def _spec(spec: PruningSpec, c: Dict[str, Any], **extra: Any) -> PruningSpec:
    keep = dict(zip([p.site for p in spec.points], c["keep"]))
    return PruningSpec([PrunePoint(s, keep[s]) for s in keep], spec.score, spec.align, c["conv_fill"],
                       c["delta_fill"], spec.seed, **extra)


def choose_policy(model, spec: PruningSpec, prune: Dict[str, Any], auto: Dict[str, Any], batches: Sequence[Tensor],
                  delta_hat: Optional[Tensor] = None, progress: Optional[Callable[[int], None]] = None
                  ) -> Tuple[PruningSpec, Dict[str, Any]]:
    """--auto: score every candidate (same FLOPs budget) by its output distributions' closeness to the dense
    model's on the held-out `batches` (no labels) and keep the default unless one is better beyond its noise.
    Returns the chosen spec and the record the report keeps (every candidate's scores and the decision)."""
    n = sum(x.shape[0] for x in batches)
    dense = _logits(model, batches)
    candidates = policy_candidates(model, spec, prune, auto)
    logits = []
    for c in candidates:
        pm = PrunedModel(model, _spec(spec, c))
        if c["delta_fill"] == "calib" and delta_hat is not None:
            pm.set_delta_hat(delta_hat)
        try:
            logits.append(_logits(pm, batches))
        finally:
            pm.detach()
        if progress is not None:
            progress(1)
    decision = policy.decide(dense, logits, default=0)
    for c, sc in zip(candidates, decision.scores):
        c.update(kl=sc.kl, kl_se=sc.kl_se, agreement=sc.agreement, agreement_se=sc.agreement_se,
                 kl_vs_default=sc.diff, kl_vs_default_se=sc.diff_se, better_than_default=sc.better)
    best = candidates[decision.chosen]
    chosen = _spec(spec, best, extra={"split": best["split"]})
    return chosen, {"holdout_images": n, "measure": policy.MEASURE, "alpha": policy.ALPHA, "z": decision.z,
                    "default": candidates[0], "chosen": best, "kept_default": decision.kept_default,
                    "decision": decision_text(decision, candidates, n), "candidates": candidates}


def _policy_name(c: Dict[str, Any]) -> str:
    return f"conv_fill={c['conv_fill']} delta_fill={c['delta_fill']} split={c['split']}"


def decision_text(decision: policy.Decision, candidates: List[Dict[str, Any]], n: int) -> str:
    """The report's one-sentence account of the --auto decision."""
    if decision.kept_default:
        return (f"kept the default ({_policy_name(candidates[0])}) for lack of evidence: no candidate's mean KL "
                f"to the dense model was lower by more than {decision.z:.2f} standard errors of its paired "
                f"difference on {n} held-out images")
    c = candidates[decision.chosen]
    return (f"chose {_policy_name(c)}: its mean KL to the dense model is lower than the default's "
            f"({_policy_name(candidates[0])}) by {-c['kl_vs_default']:.4g} ± {c['kl_vs_default_se']:.2g} "
            f"(paired standard error) on {n} held-out images, more than the {decision.z:.2f} standard errors "
            "needed")
