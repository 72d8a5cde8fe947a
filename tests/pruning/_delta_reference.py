"""An independent Δ̂: the mean Δ each mixer's scan actually receives, taken at the scan call itself.

`measure_delta_hat` listens to the mixers' `delta_probe`; this reference does not. It wraps the dense scan that
every mixer calls (`models/layers/ssm.selective_scan`), computes softplus(delta + delta_bias) from the scan's own
arguments, and averages it over images and tokens per mixer, direction and channel, in float64. A mixer that
stacks its directions into one call (PlainMamba) is split back along the batch.
"""

from typing import Iterable, List

import torch
import torch.nn.functional as F

from ssmprune_cli.models.layers import ssm


@torch.no_grad()
def reference_delta_hat(model, batches: Iterable[torch.Tensor], monkeypatch) -> List[torch.Tensor]:
    mixers = model.mixers()
    calls = {i: [] for i in range(len(mixers))}
    current = {}
    scan = ssm.selective_scan

    def recording_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, *rest, **kw):
        assert delta_softplus, "every mixer's scan applies softplus to Δ"
        calls[current["mixer"]].append(F.softplus(delta.double() + delta_bias.double()[:, None]))
        return scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, *rest, **kw)

    def enter(i):
        def pre_hook(module, args):
            current["mixer"] = i
        return pre_hook

    monkeypatch.setattr(ssm, "selective_scan", recording_scan)
    handles = [m.register_forward_pre_hook(enter(i)) for i, m in enumerate(mixers)]
    sums = [torch.zeros(m.n_directions, m.default_delta_hat().shape[-1], dtype=torch.float64) for m in mixers]
    counts = [0] * len(mixers)
    try:
        for x in batches:
            for i in calls:
                calls[i].clear()
            model(x)
            for i, m in enumerate(mixers):
                got = calls[i]
                per_direction = (got if len(got) == m.n_directions
                                 else list(torch.cat(got).chunk(m.n_directions, dim=0)))
                assert len(per_direction) == m.n_directions
                for d, delta in enumerate(per_direction):
                    sums[i][d] += delta.sum(dim=(0, 2))
                counts[i] += per_direction[0].shape[0] * per_direction[0].shape[2]
    finally:
        for h in handles:
            h.remove()
        monkeypatch.setattr(ssm, "selective_scan", scan)
    return [s / c for s, c in zip(sums, counts)]
