"""An independent Δ̂: the mean Δ each mixer's scan actually receives, taken at the scan call itself.

`measure_delta_hat` listens to the mixers' `delta_probe`; this reference does not. It wraps the scan that every
mixer calls through the mixer core (`models/layers/mamba_core.token_scan`, told which mixer calls by the core's
`scan(mixer, ...)`), computes softplus(delta + delta_bias)
from the scan's own arguments, and averages it over images and tokens per mixer, direction and channel, in
float64. A dense scan reads every token's Δ once (delta is (b, tokens, E), token-major), in whatever order.
"""

from typing import Iterable, List

import torch
import torch.nn.functional as F

from ssmprune_cli.models.layers import mamba_core as ssm


@torch.no_grad()
def reference_delta_hat(model, batches: Iterable[torch.Tensor], monkeypatch) -> List[torch.Tensor]:
    mixers = model.mixers()
    calls = {i: [] for i in range(len(mixers))}
    current = {}
    scan = ssm.token_scan

    def recording_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, *rest, **kw):
        assert kw.get("delta_softplus", True), "every mixer's scan applies softplus to Δ"
        calls[current["mixer"]].append(F.softplus(delta.double() + delta_bias.double()))   # (b, tokens, E)
        return scan(u, delta, A, B, C, D, z, delta_bias, *rest, **kw)

    index = {id(m): i for i, m in enumerate(mixers)}
    core_scan = ssm.scan

    def tagging_scan(mixer, *args, **kw):  # which mixer the next token_scan call belongs to
        current["mixer"] = index[id(mixer)]
        return core_scan(mixer, *args, **kw)

    monkeypatch.setattr(ssm, "token_scan", recording_scan)
    monkeypatch.setattr(ssm, "scan", tagging_scan)
    sums = [torch.zeros(m.n_directions, m.default_delta_hat().shape[-1], dtype=torch.float64) for m in mixers]
    counts = [0] * len(mixers)
    try:
        for x in batches:
            for i in calls:
                calls[i].clear()
            model(x)
            for i, m in enumerate(mixers):
                per_direction = calls[i]
                assert len(per_direction) == m.n_directions
                for d, delta in enumerate(per_direction):
                    sums[i][d] += delta.sum(dim=(0, 1))
                counts[i] += per_direction[0].shape[0] * per_direction[0].shape[1]
    finally:
        monkeypatch.setattr(ssm, "token_scan", scan)
        monkeypatch.setattr(ssm, "scan", core_scan)
    return [s / c for s, c in zip(sums, counts)]
