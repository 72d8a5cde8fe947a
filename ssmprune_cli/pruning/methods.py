"""Token reduction methods at a prune point: a name → function table beside the score table, pure tensor code.

A method turns the n tokens present at a prune point into the `keep` tokens that go on. Every method keeps the
tokens it returns at original positions (ascending), so the model's aligned layers (Δ̂ decay over the gaps, conv
fills) apply to all of them; `--align none` packs them instead. The table (docs/pruning.md §1b):

    prune   (ours, DESIGN 2.2)  the top-`keep` tokens by score; the rest are dropped
    merge   (R-MeeTo, Famba-V)  bipartite soft matching in scan order: the free tokens alternate between a source
                                and a destination set, each source finds its most similar destination (cosine of the
                                first tensor: Vim's mixer output, the block output elsewhere), and the n - keep most
                                similar sources merge into their destinations by a size-weighted average; a merged
                                token sits at its destination's position
    fuse    (EViT)              the top-(keep - 1) tokens by score, plus one token that fuses the rest by a
                                score-weighted average, placed at the position of the best pruned token ('best') or
                                of the last pruned one in the sequence ('last')

Each function takes a `Step` and the method's options and returns a `Reduced`. Options are validated once by
`check_options`; `merge_capacity` is the most tokens one merge step can remove.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from ssmprune_cli.errors import RecipeError

from .importance import select_tokens

DEFAULT_METHOD = "prune"


@dataclass
class Step:
    """The tokens present at one prune point, in ascending position."""

    tensors: Tuple[Tensor, ...]            # each (b, n, C): Vim (hidden, residual), others (block output,)
    keep: int                              # tokens that go on, protected ones included
    protected: Optional[Tensor] = None     # (b, P) rows never removed nor merged (Vim's class token)
    scores: Optional[Tensor] = None        # (b, n) importance, for the methods that rank by score
    sizes: Optional[Tensor] = None         # (b, n) float: original tokens each row stands for (merging)


@dataclass
class Reduced:
    rows: Tensor                           # (b, keep) ascending indices into the n rows: whose positions go on
    tensors: Tuple[Tensor, ...]            # each (b, keep, C)
    sizes: Optional[Tensor] = None         # (b, keep)


# ------------------------------------------------------------------------------------------------ helpers
def _take(x: Tensor, idx: Tensor) -> Tensor:
    """Rows of (b, n, ...) `x` at (b, m) `idx`."""
    return x.gather(1, idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand(*idx.shape, *x.shape[2:]))


def _work_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def free_rows(n: int, protected: Optional[Tensor], batch: int, device) -> Tensor:
    """(b, n - P) the rows that are not protected, ascending."""
    ar = torch.arange(n, device=device).expand(batch, n)
    if protected is None or not protected.numel():
        return ar
    is_prot = torch.zeros(batch, n, dtype=torch.bool, device=device).scatter(
        1, protected, torch.ones_like(protected, dtype=torch.bool))
    order = torch.where(is_prot, ar + n, ar).sort(dim=1).values
    return order[:, : n - protected.shape[1]]


def merge_capacity(n: int, protected: int) -> int:
    """Most tokens one bipartite merge can remove from n tokens of which `protected` never merge: half the free
    ones, rounded down (each destination may take several sources, but only sources merge)."""
    return max(0, (n - protected) // 2)


# ------------------------------------------------------------------------------------------------ methods
def prune_tokens(step: Step) -> Reduced:
    """Ours (DESIGN 2.2): each image keeps its top-`keep` tokens, in original order."""
    rows = select_tokens(step.scores, step.keep, step.protected)
    sizes = None if step.sizes is None else step.sizes.gather(1, rows)
    return Reduced(rows, tuple(_take(t, rows) for t in step.tensors), sizes)


def merge_tokens(step: Step, weighting: str = "size", window: int = 0) -> Reduced:
    """R-MeeTo's ordered bipartite merge (NUS-HPC-AI-Lab/R-MeeTo, image_task/R_MeeTo/merge.py), in scan order.

    The free (unprotected) rows alternate source / destination: sources are the 1st, 3rd, ... free rows. Each
    source's most similar destination is the one of highest cosine similarity of the first tensor (with `window`
    > 0, only destinations within `window` places of it in the current sequence); the n - keep sources with the
    most similar destinations merge. A destination that receives sources becomes their average weighted by
    `sizes` ('size', R-MeeTo) or unweighted ('mean', Famba-V's ToMe call), and keeps its position; every tensor
    is merged with the same weights. Unmerged sources and all destinations go on, in their original order.
    """
    x0 = step.tensors[0]
    b, n, _ = x0.shape
    device = x0.device
    r = n - step.keep
    P = 0 if step.protected is None else step.protected.shape[1]
    if r > merge_capacity(n, P):
        raise ValueError(f"one merge can remove at most {merge_capacity(n, P)} of {n} tokens, asked for {r}")
    rows = free_rows(n, step.protected, b, device)
    src, dst = rows[:, 0::2], rows[:, 1::2]                                  # (b, ns), (b, nd)
    with torch.no_grad():
        metric = x0.detach().to(_work_dtype(x0))
        metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        # Euclidean distance between unit vectors, ‖a - b‖² = 2 - 2·cos: the nearest is the most cosine-similar.
        # (cdist, not a matmul, so that matching counts as bookkeeping and not as model FLOPs.)
        dist = torch.cdist(_take(metric, src), _take(metric, dst))           # (b, ns, nd)
        if window > 0:
            i = torch.arange(src.shape[1], device=device)[:, None] * 2       # sequence slot of source i
            j = torch.arange(dst.shape[1], device=device)[None, :] * 2 + 1   # ... of destination j
            dist = dist.masked_fill((i - j).abs() > window, float("inf"))
        best, target = dist.min(dim=-1)                                      # each source's nearest destination
        order = best.argsort(dim=-1, stable=True)                            # most similar first
        merged, unmerged = order[:, :r], order[:, r:]
        src_rows = src.gather(1, merged)                                     # (b, r) rows that merge away
        into = dst.gather(1, target.gather(1, merged))                       # (b, r) the rows they merge into
        keep_rows = torch.cat([src.gather(1, unmerged), dst] + ([step.protected] if P else []), dim=1)
        keep_rows = keep_rows.sort(dim=1).values
    sizes = step.sizes if step.sizes is not None else torch.ones(b, n, device=device)
    w = sizes if weighting == "size" else torch.ones_like(sizes)
    w_src = w.gather(1, src_rows)
    w_in = torch.zeros_like(w).scatter_add(1, into, w_src)                   # weight each row receives
    received = (w_in > 0)[..., None]
    out = []
    for t in step.tensors:
        wt = _work_dtype(t)
        tw = t.to(wt)
        gained = torch.zeros_like(tw).scatter_add(1, into[..., None].expand(-1, -1, t.shape[-1]),
                                                  _take(tw, src_rows) * w_src[..., None].to(wt))
        avg = (tw * w[..., None].to(wt) + gained) / (w + w_in)[..., None].to(wt)
        out.append(_take(torch.where(received, avg.to(t.dtype), t), keep_rows))
    new_sizes = (sizes + torch.zeros_like(sizes).scatter_add(1, into, sizes.gather(1, src_rows))).gather(1, keep_rows)
    return Reduced(keep_rows, tuple(out), new_sizes)


def fuse_tokens(step: Step, at: str = "best") -> Reduced:
    """EViT's inattentive-token fusion (youweiliang/evit, evit.py) for a position-dependent sequence.

    The top-(keep - 1) tokens by score go on as they are; the other ones become one token, their average
    weighted by max(score, 0) (uniform where every weight is 0), at the position of the pruned token with the
    highest score ('best') or of the last pruned token in the sequence ('last'). EViT weights by the class
    token's attention, which no SSM has; it appends the fused token at the end, which a position-keeping
    layout places at the last pruned position ('last')."""
    scores = step.scores.to(_work_dtype(step.scores))
    b, n = scores.shape
    device = scores.device
    top = select_tokens(step.scores, step.keep - 1, step.protected)          # (b, keep - 1) ascending
    pruned = torch.ones(b, n, dtype=torch.bool, device=device).scatter(
        1, top, torch.zeros_like(top, dtype=torch.bool))
    if at == "best":
        where = scores.masked_fill(~pruned, float("-inf")).argmax(dim=1)
    else:
        where = torch.arange(n, device=device).expand(b, n).masked_fill(~pruned, -1).argmax(dim=1)
    weight = scores.clamp(min=0).masked_fill(~pruned, 0.0)
    total = weight.sum(dim=1, keepdim=True)
    uniform = pruned.float() / pruned.float().sum(dim=1, keepdim=True)
    weight = torch.where(total > 0, weight / total.clamp_min(1e-30), uniform)            # (b, n), sums to 1
    rows = torch.cat([top, where[:, None]], dim=1).sort(dim=1).values                   # (b, keep)
    slot = (rows < where[:, None]).sum(dim=1, keepdim=True)                             # the fused row's place
    out = []
    for t in step.tensors:
        wt = _work_dtype(t)
        fused = (t.to(wt) * weight[..., None].to(wt)).sum(dim=1, keepdim=True).to(t.dtype)  # (b, 1, C)
        out.append(_take(t, rows).scatter(1, slot[..., None].expand(-1, -1, t.shape[-1]), fused))
    sizes = None
    if step.sizes is not None:
        fused_size = (step.sizes * pruned).sum(dim=1, keepdim=True)
        sizes = step.sizes.gather(1, rows).scatter(1, slot, fused_size)
    return Reduced(rows, tuple(out), sizes)


METHODS: Dict[str, Callable[..., Reduced]] = {
    "prune": prune_tokens,
    "merge": merge_tokens,
    "fuse": fuse_tokens,
}

# Each method's options: name → (default, allowed values or a check, what it means). The defaults are what the
# peers' released code does, where the option is theirs.
OPTIONS: Dict[str, Dict[str, Tuple[Any, Any, str]]] = {
    "prune": {},
    "merge": {
        "weighting": ("size", ("size", "mean"), "size: average weighted by the tokens each stands for (R-MeeTo); "
                      "mean: unweighted (Famba-V)"),
        "window": (0, "int>=0", "0: any destination (R-MeeTo, Famba-V); k: only destinations within k places"),
    },
    "fuse": {
        "at": ("best", ("best", "last"), "where the fused token sits: the best pruned token's position, or the "
               "last pruned position"),
    },
}

USES_SCORES = {"prune": True, "merge": False, "fuse": True}


def check_options(method: str, options: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The method's full options (defaults filled in), or RecipeError naming what is wrong."""
    if method not in METHODS:
        raise RecipeError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    options = dict(options or {})
    known = OPTIONS[method]
    unknown = sorted(set(options) - set(known))
    if unknown:
        allowed = ", ".join(known) or "none"
        raise RecipeError(f"method {method!r} has no option(s) {', '.join(unknown)} (its options: {allowed})")
    out = {}
    for name, (default, allowed, _) in known.items():
        value = options.get(name, default)
        if allowed == "int>=0":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise RecipeError(f"{method}.{name} must be an integer >= 0, got {value!r}")
        elif value not in allowed:
            raise RecipeError(f"{method}.{name} must be one of {', '.join(allowed)}, got {value!r}")
        out[name] = value
    return out


def reduce_tokens(method: str, step: Step, options: Dict[str, Any]) -> Reduced:
    return METHODS[method](step, **options)
