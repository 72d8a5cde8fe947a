"""Aligned scan for pruned token sets (DESIGN 2.3).

A pruned layer scans only its kept steps. Each pruned position still decays the state by exp(dhat * A) and
adds nothing. `aligned_scan` is the efficient form (two Δ streams through `gap`), `aligned_scan_ref` is the
definition: scatter to full length, u = 0 and Δ = dhat at pruned steps, dense scan, gather.

`steps` (b, K) are the scan-step indices of the kept steps, ascending; inputs are given at those steps.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .selective_scan import selective_scan, selective_scan_ref


def gaps_from_steps(steps: Tensor) -> Tensor:
    """Number of pruned steps just before each kept step: steps_j - steps_{j-1} - 1 (steps_{-1} = -1)."""
    prev = torch.cat([steps.new_full((steps.shape[0], 1), -1), steps[:, :-1]], dim=1)
    return steps - prev - 1


def aligned_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True, B_bias=None,
                 steps: Optional[Tensor] = None, delta_fill: Optional[Tensor] = None,
                 backend: Optional[str] = None) -> Tensor:
    gap = None
    if steps is not None and delta_fill is not None:
        # float32 at least: a bf16 gap would round counts above 256
        gap = gaps_from_steps(steps).to(torch.float64 if u.dtype == torch.float64 else torch.float32)
    return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, B_bias, gap, delta_fill,
                          backend=backend)


def aligned_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True, B_bias=None,
                     steps: Optional[Tensor] = None, length: Optional[int] = None,
                     delta_fill: Optional[Tensor] = None) -> Tensor:
    """Scatter kept steps into a full-length scan with u = 0 and Δ = delta_fill (post-softplus) elsewhere."""
    if steps is None:
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, B_bias)
    b, e, K = u.shape
    L = int(length)
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    fill = torch.zeros(e, dtype=dtype, device=u.device) if delta_fill is None else delta_fill.to(dtype)
    idx_e = steps[:, None, :].expand(b, e, K)
    dt_full = fill[None, :, None].expand(b, e, L).clone().scatter(2, idx_e, dt)
    u_full = u.new_zeros((b, e, L), dtype=dtype).scatter(2, idx_e, u.to(dtype))
    z_full = None if z is None else z.new_zeros((b, e, L), dtype=dtype).scatter(2, idx_e, z.to(dtype))
    n = A.shape[1]
    idx_n = steps[:, None, :].expand(b, n, K)
    Bk = B.to(dtype) if B_bias is None else B.to(dtype) + B_bias.to(dtype)
    B_full = B.new_zeros((b, n, L), dtype=dtype).scatter(2, idx_n, Bk.expand(b, n, K))
    C_full = C.new_zeros((b, n, L), dtype=dtype).scatter(2, idx_n, C.to(dtype))
    y = selective_scan_ref(u_full, dt_full, A, B_full, C_full, D, z_full, None, False)
    return y.gather(2, idx_e).to(u.dtype)
