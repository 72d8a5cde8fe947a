"""The scan call every mixer makes: dense, aligned (efficient), or aligned (reference, for tests)."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from ssmprune_cli.ops import aligned_scan, aligned_scan_ref, selective_scan

from .reference_mode import reference_active


def scan_kept(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
              z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None, B_bias: Optional[Tensor] = None,
              steps: Optional[Tensor] = None, length: Optional[int] = None,
              delta_fill: Optional[Tensor] = None) -> Tensor:
    """Inputs at the kept steps of one scan order, (b, E, K); `steps` (b, K) their step indices (None = dense).

    delta_fill (E,) is Δ̂ after softplus; None means pruned steps do not decay the state (the packed scan).
    """
    if steps is None:
        return selective_scan(u, delta, A, B, C, D, z, delta_bias, True, B_bias)
    if reference_active():
        return aligned_scan_ref(u, delta, A, B, C, D, z, delta_bias, True, B_bias, steps=steps, length=length,
                                delta_fill=delta_fill)
    return aligned_scan(u, delta, A, B, C, D, z, delta_bias, True, B_bias, steps=steps, delta_fill=delta_fill)
