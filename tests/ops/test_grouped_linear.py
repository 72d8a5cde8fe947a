"""Per-group linear maps as one batched matmul (ops/grouped_linear.py): equal to the separate nn.Linear calls in
float64, forward and backward, on the strided group views GroupMamba passes; the stacked weights made once per
weight version for inference and followed through in-place updates; kept alive for a CUDA graph that read them."""

import pytest
import torch
import torch.nn.functional as F

from ssmprune_cli import param_cache
from ssmprune_cli.ops.grouped_linear import grouped_linear, stacked

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _groups_view(x, G):
    """(b, K, C) → (G, b·K, C/G): group g's channels of every token, a strided view (no copy)."""
    b, K, C = x.shape
    return x.reshape(b * K, G, C // G).transpose(0, 1)


@pytest.mark.parametrize("G,c_in,c_out", [(4, 5, 7), (2, 8, 3), (1, 6, 6)])
def test_equals_separate_linears_forward_and_backward(G, c_in, c_out):
    g = torch.Generator().manual_seed(G * 100 + c_in)
    x = torch.randn(3, 11, G * c_in, dtype=torch.float64, generator=g).to(DEVICE).requires_grad_()
    ws = [torch.randn(c_out, c_in, dtype=torch.float64, generator=g).to(DEVICE).requires_grad_() for _ in range(G)]
    xg = _groups_view(x, G)
    assert not xg.is_contiguous() or G == 1
    got = grouped_linear(xg, ws)
    want = torch.stack([F.linear(x[..., k * c_in:(k + 1) * c_in].reshape(-1, c_in), w) for k, w in enumerate(ws)])
    assert got.shape == (G, 33, c_out)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    dout = torch.randn(got.shape, dtype=torch.float64, generator=g).to(DEVICE)
    grads = torch.autograd.grad(got, [x, *ws], dout)
    grads_want = torch.autograd.grad(want, [x, *ws], dout)
    for a, b in zip(grads, grads_want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_stacked_weights_made_once_per_version_and_recorded():
    param_cache.clear()
    ws = [torch.nn.Parameter(torch.randn(4, 3, device=DEVICE)) for _ in range(3)]
    x = torch.randn(3, 5, 3, device=DEVICE)
    with torch.no_grad():
        first = stacked(ws)
        assert stacked(ws) is first                        # served again while no weight changed
        torch.testing.assert_close(first, torch.stack([w.detach() for w in ws]), rtol=0, atol=0)
        ws[1].mul_(2.0)                                    # an optimizer step on one group's weight
        second = stacked(ws)
        assert second is not first
        torch.testing.assert_close(second[1], ws[1].detach(), rtol=0, atol=0)
        with param_cache.recording() as served:            # what a CUDA graph captured meanwhile would read
            out = grouped_linear(x, ws)
        assert len(served) == 1 and served[0] is second
        torch.testing.assert_close(out, torch.einsum("gmi,goi->gmo", x, second), rtol=1e-6, atol=1e-6)
    # being trained: stacked anew at every call, and the gradient reaches each weight
    again = stacked(ws)
    assert again.requires_grad and again is not second
    grouped_linear(x, ws).sum().backward()
    for k, w in enumerate(ws):
        torch.testing.assert_close(w.grad, x[k].sum(0).expand(4, 3), rtol=1e-5, atol=1e-5)


def test_shape_errors():
    ws = [torch.randn(4, 3) for _ in range(2)]
    with pytest.raises(ValueError, match="must be \\(G, M, in\\) with G = 2"):
        grouped_linear(torch.randn(3, 5, 3), ws)
    with pytest.raises(ValueError, match="must be \\(G, M, in\\)"):
        grouped_linear(torch.randn(5, 3), ws)
