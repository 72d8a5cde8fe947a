"""Schedule planning: from a recipe's `prune` section to prune points and a spec, and `--auto`'s choice among
policies.

Pure tensor code, like the rest of pruning/: images arrive as decoded batches, progress as a callable.
`check_prune` validates the section's score, method and method options together; `make_points` turns
`at`/`at_fraction` (or merge's layer strategy) + `ratio` or `keep` into PrunePoints; `make_spec` adds the fills,
score, method and its options; `policy_candidates` lists the `--auto` grid at the same FLOPs budget;
`choose_policy` scores them against the dense model (policy.py says how) and keeps the default unless one is
better beyond its noise.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ssmprune_cli.errors import RecipeError

from . import policy
from . import recipe as recipes
from .importance import SCORES
from .methods import DEFAULT_METHOD, USES_SCORES, check_options
from .plan import (
    PrunePoint,
    PruningSpec,
    is_two_d,
    keep_from_rates,
    merge_layer_sites,
    resolve_fills,
    schedule_macs,
    solve_merge_ratio,
    solve_ratio,
    validate_method,
    validate_points,
)
from .pruned_model import PrunedModel


def method_options(prune: Dict[str, Any], method: str) -> Dict[str, Any]:
    """The method's options from the recipe's `prune.<method>` mapping (merge's `layers` / `boundary` choose the
    prune points and are not options of the prune step)."""
    opts = dict(prune.get(method) or {})
    if method == "merge":
        opts.pop("layers", None)
        opts.pop("boundary", None)
    return opts


def _merge_layers(prune: Dict[str, Any]) -> str:
    return (prune.get("merge") or {}).get("layers", "points")


def check_prune(prune: Dict[str, Any], at_given: bool = False, score_given: bool = False) -> None:
    """The `prune` section's score, method and method options agree (`at_given` / `score_given`: the command line
    named prune points / a score, which a merge layer strategy / merging cannot use)."""
    if prune["score"] not in SCORES:
        raise RecipeError(f"unknown score {prune['score']!r}; choose one of {', '.join(SCORES)}")
    method = prune.get("method", DEFAULT_METHOD)
    check_options(method, method_options(prune, method))
    layers = _merge_layers(prune)
    if layers != "points" and method != "merge":
        raise RecipeError(f"merge layers {layers!r} need --method merge (the method is {method!r})")
    for other in ("merge", "fuse"):
        given = {k: v for k, v in (prune.get(other) or {}).items() if not (k == "layers" and v == "points")}
        if other != method and given:
            raise RecipeError(f"recipe sets prune.{other} options ({', '.join(sorted(given))}) but the method is "
                              f"{method!r}; use --method {other} or remove them")
    if layers != "points" and at_given:
        raise RecipeError(f"give either --at or --merge-layers {layers}, not both (the strategy picks the points)")
    if method == "merge" and score_given:
        raise RecipeError("--method merge pairs tokens by similarity and reads no --score; leave --score out")


def plan_from_recipe(model, recipe: Dict[str, Any]) -> PruningSpec:
    """The pruning spec a resolved recipe asks for (points, score, fills, method, seed), or RecipeError saying why
    there is none: everything `prune` decides from the recipe before it sees an image."""
    prune = recipe["prune"]
    check_prune(prune)
    points = make_points(model, prune)
    conv_fill, delta_fill = resolve_fills(model, prune["align"], prune.get("conv_fill"), prune.get("delta_fill"))
    return make_spec(points, prune, conv_fill, delta_fill, int(recipe.get("seed", 0)))


def make_points(model, prune: Dict[str, Any], split: Optional[str] = None) -> List[PrunePoint]:
    """The prune points of a recipe's `prune` section: its sites (or merge's layer strategy's) with keep counts
    solved for `ratio` (split uniform / early / late; merging solves its own), or taken from `keep` (rates in
    (0, 1] or token counts)."""
    method = prune.get("method", DEFAULT_METHOD)
    merge = prune.get("merge") or {}
    if method == "merge" and _merge_layers(prune) != "points":
        sites = merge_layer_sites(model, merge["layers"], float(merge.get("boundary", 0.5)))
    else:
        sites = recipes.resolve_sites(model, prune)
    if not sites:
        raise RecipeError("no prune points: give --at (or `prune.at` / `prune.at_fraction` in a recipe)")
    if prune.get("ratio") is not None and method == "merge":
        return solve_merge_ratio(model, sites, float(prune["ratio"]))
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
    validate_method(model, points, method)
    return points


def make_spec(points: Sequence[PrunePoint], prune: Dict[str, Any], conv_fill: str, delta_fill: str, seed: int
              ) -> PruningSpec:
    """The spec of a checked `prune` section at `points`: score (merging reads none), alignment, fills, method and
    its options; merge's layer strategy is kept in `extra` for the report."""
    method = prune.get("method", DEFAULT_METHOD)
    layers = _merge_layers(prune)
    extra = {"merge_layers": layers} if method == "merge" and layers != "points" else {}
    return PruningSpec(list(points), score=prune["score"] if USES_SCORES[method] else "clip", align=prune["align"],
                       conv_fill=conv_fill, delta_fill=delta_fill, seed=seed, extra=extra, method=method,
                       options=method_options(prune, method))


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


def _spec(spec: PruningSpec, c: Dict[str, Any], **changes: Any) -> PruningSpec:
    """`spec` with candidate `c`'s keep counts and fills; method, options and the rest carry over."""
    keep = dict(zip([p.site for p in spec.points], c["keep"]))
    return replace(spec, points=[PrunePoint(s, keep[s]) for s in keep], conv_fill=c["conv_fill"],
                   delta_fill=c["delta_fill"], **changes)


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
    chosen = _spec(spec, best, extra={**spec.extra, "split": best["split"]})
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
