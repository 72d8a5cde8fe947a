"""Δ̂ for `delta_fill: calib` against an independent mean: what the scans receive, averaged by the test itself."""

import pytest
import torch

from _delta_reference import reference_delta_hat
from ssmprune_cli.models import create_model
from ssmprune_cli.pruning.calibrate import measure_delta_hat


@pytest.mark.parametrize("name", ["vim_test", "plainmamba_test", "groupmamba_test"])
def test_measure_delta_hat_is_the_mean_delta_each_scan_receives(name, monkeypatch):
    torch.manual_seed(0)
    model = create_model(name).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # away from the initialisation, where some families' Δ is almost their dt bias alone
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    # batches of unequal size: a mean of batch means would weigh the 1-image batch like the 2-image one
    batches = [torch.randn(b, *model.input_size(), generator=g) for b in (2, 1)]
    ours = measure_delta_hat(model, batches)
    ref = reference_delta_hat(model, batches, monkeypatch)
    assert len(ours) == len(ref) == len(model.mixers())
    for o, r, m in zip(ours, ref, model.mixers()):
        assert o.shape == r.shape == (m.n_directions, r.shape[1]) and o.dtype == torch.float32
        torch.testing.assert_close(o.double(), r, rtol=2e-6, atol=1e-9)
        assert not torch.allclose(r, m.default_delta_hat().double().expand_as(r), rtol=1e-3, atol=0)  # data moved it
