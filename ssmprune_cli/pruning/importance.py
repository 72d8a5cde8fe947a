"""Token importance at a prune point (DESIGN 2.2): a name → function table, pure tensor code.

Each function maps the tensor the layer's output projection consumes, o (b, K, C), to scores (b, K).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
from torch import Tensor


def clip_score(o: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """The paper's metric: channels clipped at zero, then summed (negative extremes stop dominating)."""
    return o.clamp(min=0).sum(dim=-1)


def l1_score(o: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    return o.abs().sum(dim=-1)


def l2_score(o: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    return o.pow(2).sum(dim=-1).sqrt()


def noclip_score(o: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    return o.sum(dim=-1)


def random_score(o: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Ablation baseline; seeded through `generator` so the same seed prunes the same tokens."""
    return torch.rand(o.shape[:-1], generator=generator, device=o.device, dtype=torch.float32).to(o.dtype)


SCORES: Dict[str, Callable[..., Tensor]] = {
    "clip": clip_score,
    "l1": l1_score,
    "l2": l2_score,
    "noclip": noclip_score,
    "random": random_score,
}


def token_scores(name: str, o: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    if name not in SCORES:
        raise ValueError(f"unknown score {name!r}; choose one of {', '.join(SCORES)}")
    return SCORES[name](o.detach(), generator)


def select_tokens(scores: Tensor, keep: int, protected: Optional[Tensor] = None) -> Tensor:
    """Indices (b, keep) of the kept tokens in ascending original order; `protected` (b, P) are always kept."""
    s = scores.float().clone()
    if protected is not None and protected.numel():
        s.scatter_(1, protected, float("inf"))
    idx = s.topk(keep, dim=1, sorted=False).indices
    return idx.sort(dim=1).values
