"""Several bias-free linear maps, one per channel group, as one batched matmul.

GroupMamba runs four small SS2D mixers side by side, each with its own in_proj and out_proj. As separate
nn.Linear calls those are eight matmul launches per layer (plus autocast's weight casts in eager mode), each too
small to fill the GPU at batch 1; as two `bmm`s they are two. The weights stay where the official key layout puts
them (`mamba_g1.in_proj.weight`, ...): the stacked (G, out, in) copy is made once per weight version for
inference (ssmprune_cli/param_cache.py, so a CUDA graph replays no stacking), and stacked differentiably at every call
while the weights are trained.

    grouped_linear(x, weights)   x (G, M, in), any strides; weights G tensors (out, in) → (G, M, out),
                                 out[g] = x[g] @ weights[g].T
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ssmprune_cli.param_cache import derived_from


def stacked(weights: Sequence[Tensor]) -> Tensor:
    """(G, ...): G per-group parameters of one shape stacked (projection weights here; GroupMamba also stacks its
    conv taps and norm weights so); cached per parameter version unless they take part in autograd."""
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and any(w.requires_grad for w in weights)):
        return torch.stack(list(weights))
    return derived_from(weights, "grouped_linear", lambda ws: torch.stack(list(ws)))


def grouped_linear(x: Tensor, weights: Sequence[Tensor]) -> Tensor:
    """x (G, M, in) → (G, M, out) with out[g] = x[g] @ weights[g].T (bias-free), as one batched matmul."""
    if x.dim() != 3 or x.shape[0] != len(weights):
        raise ValueError(f"grouped_linear: x {tuple(x.shape)} must be (G, M, in) with G = {len(weights)} weights")
    return torch.bmm(x, stacked(weights).transpose(1, 2))
