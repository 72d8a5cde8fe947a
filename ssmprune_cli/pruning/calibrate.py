"""Δ̂ for `delta_fill: calib`: the dense model's mean Δ (after softplus) per mixer, direction and channel."""

from __future__ import annotations

from typing import Iterable, List

import torch
from torch import Tensor, nn


@torch.no_grad()
def measure_delta_hat(model: nn.Module, batches: Iterable[Tensor], progress=None) -> List[Tensor]:
    """Run the dense model over `batches` (already normalised image tensors) with Δ probes on every mixer."""
    mixers = model.mixers()
    sums: List[Tensor] = [None] * len(mixers)  # type: ignore[list-item]
    counts = [0] * len(mixers)

    def probe_for(i: int, n_dir: int):
        def probe(direction: int, dt: Tensor) -> None:
            s = dt.double().sum(dim=(0, 2))                       # (E,)
            if sums[i] is None:
                sums[i] = dt.new_zeros((n_dir, dt.shape[1]), dtype=torch.float64)
            sums[i][direction] += s
            if direction == 0:
                counts[i] += dt.shape[0] * dt.shape[2]
        return probe

    try:
        for i, m in enumerate(mixers):
            m.delta_probe = probe_for(i, m.n_directions)
        for x in batches:
            model(x)
            if progress is not None:
                progress(x.shape[0])
    finally:
        for m in mixers:
            m.delta_probe = None
    if any(s is None for s in sums):
        raise RuntimeError("some mixers never reported Δ during calibration")
    return [(s / max(c, 1)).float() for s, c in zip(sums, counts)]
