"""Which tokens a prune point keeps: dispatch point plus the PyTorch definitions.

    clip_scores(o)                          the paper's score: channels clipped at zero, summed; (b, K, C) -> (b, K)
                                            in o's dtype (as `o.clamp(min=0).sum(-1)` rounds it)
    select_top(scores, keep, protected)     (b, keep) int64 rows, ascending: the `keep` highest scores per image

`select_top`'s order is total, so the kept set never depends on a sort's whims: protected rows (`protected` (b, P),
P ≤ keep) first whatever their score, then higher score first (compared in float32, NaN as -inf), equal scores by
lower row.

On CUDA each is one kernel launch (kernels/token_select.py) where the PyTorch forms take two (clip, sum) and five
to seven (cast, protect, sort or top-k, sort); a prune point's launches are what batch-1 latency pays for. CPU
tensors, tracing and torch.compile take the PyTorch forms; tests hold the two equal.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._kernels import kernel_module
from .selective_scan import index_kernel_applies
from .profiling import op_range

RANGE = "ssmprune::token_select"  # `bench --stages` files it under "pruning / index"
MAX_ROWS = 4096  # the most rows the selection kernel sorts in one program (kernels/token_select.py)


def clip_scores(o: Tensor, backend: Optional[str] = None) -> Tensor:
    """(b, K, C) -> (b, K): sum of the channels clipped at zero, in o's dtype."""
    if o.dim() == 3 and o.shape[-1] and index_kernel_applies(o, backend):
        with op_range(RANGE):
            return kernel_module("token_select").clip_scores(o)
    return clip_scores_ref(o)


def clip_scores_ref(o: Tensor) -> Tensor:
    return o.clamp(min=0).sum(dim=-1)


def select_top(scores: Tensor, keep: int, protected: Optional[Tensor] = None, backend: Optional[str] = None
               ) -> Tensor:
    """(b, keep) int64 rows of the `keep` highest scores of each image, ascending (module docstring)."""
    b, K = scores.shape
    if not 0 <= keep <= K:
        raise ValueError(f"cannot keep {keep} of {K} tokens")
    if protected is not None and protected.numel() == 0:
        protected = None
    if protected is not None and protected.shape[-1] > keep:
        raise ValueError(f"{protected.shape[-1]} protected tokens do not fit in {keep}")
    if 0 < keep and K <= MAX_ROWS and index_kernel_applies(scores, backend):
        with op_range(RANGE):
            return kernel_module("token_select").select_top(scores, int(keep), protected)
    return select_top_ref(scores, keep, protected)


def select_top_ref(scores: Tensor, keep: int, protected: Optional[Tensor] = None) -> Tensor:
    s = scores.float().nan_to_num(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    order = torch.sort(s, dim=1, descending=True, stable=True).indices       # ties: the lower row first
    if protected is not None and protected.numel():
        flag = torch.zeros_like(s, dtype=torch.int8).scatter(1, protected.long(), 1).gather(1, order)
        order = order.gather(1, torch.sort(flag, dim=1, descending=True, stable=True).indices)  # protected first
    return order[:, :keep].sort(dim=1).values
