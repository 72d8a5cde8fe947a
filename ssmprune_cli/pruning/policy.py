"""`--auto`: how candidate policies are scored against the dense model, and when one replaces the default.

Pure tensor code. A candidate's score is its mean KL divergence from the dense model's predictions over the
held-out images, KL(p_dense ‖ p_candidate) per image (nats; 0 = the same output distribution), with its
standard error. Top-1 agreement is reported beside it for people, but it is coarse (one image of 128 moves it by
0.8 points) and does not decide.

A candidate replaces the default policy only when it is better beyond its noise: the mean of its paired per-image
differences to the default, d_i = KL_i(candidate) − KL_i(default), must lie more than z standard errors below 0,
with z chosen for a one-sided 5 % chance that *any* of the m candidates passes by luck when none is better
(Bonferroni: z = Φ⁻¹(1 − 0.05 / m), 2.9 for the 26 alternatives of the built-in grid). Among those that pass,
the lowest mean KL wins. Otherwise the default is kept, and the report says it was kept for lack of evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import List, Optional, Tuple

import torch
from torch import Tensor

ALPHA = 0.05  # chance of replacing the default when no candidate is better, over all candidates together
MEASURE = "mean KL(dense ‖ candidate) of the output distributions per held-out image, nats (lower is closer)"


def kl_per_image(dense_logits: Tensor, logits: Tensor) -> Tensor:
    """(n,) KL(softmax(dense) ‖ softmax(candidate)) per image, float64."""
    p_log = torch.log_softmax(dense_logits.double(), dim=-1)
    q_log = torch.log_softmax(logits.double(), dim=-1)
    return (p_log.exp() * (p_log - q_log)).sum(dim=-1).clamp(min=0.0)


def mean_se(x: Tensor) -> Tuple[float, float]:
    """Mean and its standard error (sample standard deviation / √n) of a 1-D sample; n ≥ 2."""
    x = x.double()
    n = x.numel()
    if n < 2:
        raise ValueError("a standard error needs at least two values")
    return float(x.mean()), float(x.std(unbiased=True)) / math.sqrt(n)


def z_threshold(alternatives: int, alpha: float = ALPHA) -> float:
    """One-sided z a paired difference must exceed, Bonferroni-corrected over `alternatives` candidates."""
    return NormalDist().inv_cdf(1.0 - alpha / max(1, alternatives))


@dataclass
class Score:
    kl: float
    kl_se: float
    agreement: float       # top-1 agreement with the dense model, fraction
    agreement_se: float
    diff: float            # mean paired KL difference to the default (0 for the default)
    diff_se: float
    better: bool           # lower than the default beyond z standard errors


@dataclass
class Decision:
    scores: List[Score]
    chosen: int
    default: int
    z: float
    kept_default: bool


def decide(dense_logits: Tensor, candidate_logits: List[Tensor], default: int = 0,
           alpha: float = ALPHA) -> Decision:
    """Score every candidate (logits (n, classes) on the same held-out images) and pick one (module docstring)."""
    dense_pred = dense_logits.argmax(dim=-1)
    kls = [kl_per_image(dense_logits, lg) for lg in candidate_logits]
    z = z_threshold(len(candidate_logits) - 1, alpha)
    scores = []
    for i, (lg, kl) in enumerate(zip(candidate_logits, kls)):
        agree = (lg.argmax(dim=-1) == dense_pred).double()
        diff, diff_se = (0.0, 0.0) if i == default else mean_se(kl - kls[default])
        scores.append(Score(*mean_se(kl), *mean_se(agree), diff, diff_se,
                            better=i != default and diff + z * diff_se < 0))
    winners = [i for i, s in enumerate(scores) if s.better]
    chosen: Optional[int] = min(winners, key=lambda i: scores[i].kl) if winners else None
    return Decision(scores, default if chosen is None else chosen, default, z, chosen is None)
