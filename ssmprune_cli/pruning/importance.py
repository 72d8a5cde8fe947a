"""Token importance at a prune point (DESIGN 2.2): a name → function table, pure tensor code.

Each function maps the tensor it reads to scores (b, K). Most read the tensor the layer's output projection
consumes, o (b, K, C); `mtr` reads the block's selective-scan step sizes instead (`reads_delta`): Δ (b, K, D, E),
post-softplus, one row of E channels per scan direction D, at each kept token.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
from torch import Tensor

from ssmprune_cli.ops.token_select import clip_scores, select_top


def clip_score(o: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """The paper's metric: channels clipped at zero, then summed (negative extremes stop dominating); one kernel
    on the GPU."""
    return clip_scores(o)


def l1_score(o: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    return o.abs().sum(dim=-1)


def l2_score(o: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    return o.pow(2).sum(dim=-1).sqrt()


def noclip_score(o: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    return o.sum(dim=-1)


def random_score(o: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Ablation baseline; seeded through `generator` so the same seed prunes the same tokens."""
    return torch.rand(o.shape[:-1], generator=generator, device=o.device, dtype=torch.float32).to(o.dtype)


def mtr_score(delta: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """MTR's training-free, Mamba-structure-aware score, as reconstructed in docs/pruning.md (the paper's code is
    not public): a token matters as much as the selective scan lets it into the state. Δ_t scales both the
    token's input (Δ_t·B_t·u_t) and how much of the earlier state it forgets (exp(Δ_t·A)), so the score is Δ
    max-pooled over the channels, averaged over the block's scan directions. delta: (b, K, D, E) → (b, K)."""
    return delta.max(dim=-1).values.mean(dim=-1)


SCORES: Dict[str, Callable[..., Tensor]] = {
    "clip": clip_score,
    "l1": l1_score,
    "l2": l2_score,
    "noclip": noclip_score,
    "random": random_score,
    "mtr": mtr_score,
}
DELTA_SCORES = ("mtr",)  # scores that read the scan's Δ instead of the output projection's input


def reads_delta(name: str) -> bool:
    """True when the score reads Δ (b, K, D, E) rather than o (b, K, C)."""
    return name in DELTA_SCORES


def token_scores(name: str, o: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    if name not in SCORES:
        raise ValueError(f"unknown score {name!r}; choose one of {', '.join(SCORES)}")
    return SCORES[name](o.detach(), generator)


def select_tokens(scores: Tensor, keep: int, protected: Optional[Tensor] = None) -> Tensor:
    """Indices (b, keep) of the kept tokens in ascending original order; `protected` (b, P) are always kept. Equal
    scores keep the lower index (ops/token_select.py; one kernel on the GPU)."""
    return select_top(scores, keep, protected)
