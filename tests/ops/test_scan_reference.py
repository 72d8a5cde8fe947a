"""The PyTorch references: the chunked CPU path equals the exact loop, and the aligned (two-stream) scan equals its
scatter -> dense scan -> gather definition; all in float64 on fresh random inputs."""

import pytest
import torch
from _scan_inputs import make_inputs, rel

from ssmprune_cli.ops import (
    aligned_scan,
    aligned_scan_ref,
    scan_backend,
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
)
from ssmprune_cli.ops.aligned_scan import gaps_from_steps


def _f64(args):
    return [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]


@pytest.mark.parametrize("l,chunk", [(1, 16), (16, 16), (37, 16), (37, 5), (64, 7)])
@pytest.mark.parametrize("opts", [{}, {"D": False, "z": False, "bias": False, "B_bias": None, "gap": False},
                                  {"softplus": False, "B_bias": "batch"}])
def test_chunked_equals_loop(l, chunk, opts):
    args = _f64(make_inputs(2, 6, 5, l, **opts))
    if not args[8]:
        args[1] = torch.nn.functional.softplus(args[1])  # keep Δ positive without the softplus
    ref = selective_scan_ref(*args)
    out = selective_scan_chunked(*args, chunk=chunk)
    assert out.dtype == torch.float64 and out.shape == (2, 6, l)
    assert rel(out, ref) < 1e-12


def test_chunked_equals_loop_with_huge_delta():
    # Δ up to ~50 and |A| up to ~20: products of decays underflow to exactly 0 inside a chunk. A chunked form that
    # divided cumulative decays would produce inf/NaN here; the summed segments must not.
    args = _f64(make_inputs(2, 8, 4, 45, big_delta=True))
    args[2] = -torch.rand(8, 4, dtype=torch.float64) * 20.0 - 0.1
    assert args[1].max() > 20 and (args[1].double() + args[7][:, None]).max() > 20  # the linear softplus branch
    ref = selective_scan_ref(*args)
    out = selective_scan_chunked(*args, chunk=16)
    assert torch.isfinite(out).all()
    assert rel(out, ref) < 1e-12


def test_loop_matches_hand_recurrence():
    # one channel, one state, no options: h_t = exp(dt A) h + dt B u, y = C h, written out by hand
    u, d, B, C = (torch.randn(1, 1, 6, dtype=torch.float64) for _ in range(4))
    A = torch.tensor([[-0.7]], dtype=torch.float64)
    dt = torch.nn.functional.softplus(d)[0, 0]
    h, ys = 0.0, []
    for t in range(6):
        h = torch.exp(dt[t] * A[0, 0]) * h + dt[t] * B[0, 0, t] * u[0, 0, t]
        ys.append(C[0, 0, t] * h)
    out = selective_scan_ref(u, d, A, B.reshape(1, 1, 6), C.reshape(1, 1, 6))
    assert rel(out[0, 0], torch.stack(ys)) < 1e-14


def _kept_steps(b, L, K):
    return torch.stack([torch.randperm(L)[:K].sort().values for _ in range(b)])


@pytest.mark.parametrize("bias_kind", [None, "shared", "batch"])
def test_aligned_scan_equals_definition(bias_kind):
    b, e, n, L, K = 3, 5, 4, 23, 9
    steps = _kept_steps(b, L, K)
    steps[0] = torch.arange(L - K, L)  # first steps pruned, the rest contiguous
    args = _f64(make_inputs(b, e, n, K, B_bias=bias_kind, gap=False))
    fill = torch.rand(e, dtype=torch.float64) * 0.3
    kw = dict(zip(("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "delta_softplus", "B_bias"), args[:10]))
    ref = aligned_scan_ref(**kw, steps=steps, length=L, delta_fill=fill)
    out = aligned_scan(**kw, steps=steps, delta_fill=fill, backend="exact")
    assert out.shape == (b, e, K)
    assert rel(out, ref) < 1e-12
    # the pruned positions really decay the state: without the fill the answer changes
    packed = aligned_scan(**kw, steps=steps, delta_fill=None, backend="exact")
    assert rel(packed, ref) > 1e-3


def test_gaps_from_steps():
    steps = torch.tensor([[0, 1, 5, 9], [2, 3, 4, 8]])
    assert gaps_from_steps(steps).tolist() == [[0, 0, 3, 3], [2, 0, 0, 3]]


def test_aligned_reference_without_steps_is_dense():
    args = _f64(make_inputs(2, 3, 4, 7, gap=False))
    assert rel(aligned_scan_ref(*args[:10]), selective_scan_ref(*args[:10])) < 1e-15


def test_backend_switch():
    args = _f64(make_inputs(1, 3, 2, 9))
    with scan_backend("exact"):
        exact = selective_scan(*args)
    with scan_backend("reference"):
        chunked = selective_scan(*args)
    assert rel(chunked, exact) < 1e-12 and rel(exact, selective_scan_ref(*args)) == 0.0
    with pytest.raises(ValueError, match="unknown scan backend"):
        with scan_backend("cuda-please"):
            pass


def test_importing_the_package_does_not_import_triton(triton_after_import):
    # a fresh interpreter (tests/ops/conftest.py) imports ssmprune_cli, ssmprune_cli.ops, ssmprune_cli.kernels
    assert triton_after_import["SCAN_FUNCTION_NAME"] == "SelectiveScanFn"
    for name in ("ssmprune_cli", "ssmprune_cli.ops", "ssmprune_cli.kernels"):
        assert triton_after_import[name] is False, name


def test_chunked_masks_cached_in_inference_mode_still_train():
    """A first call under inference_mode (bench) must not poison the mask cache for a later backward."""
    from ssmprune_cli.ops.selective_scan import _tri_masks

    _tri_masks.cache_clear()
    u, delta = torch.randn(1, 3, 11), torch.randn(1, 3, 11)
    A, B, C = -torch.rand(3, 2), torch.randn(1, 2, 11), torch.randn(1, 2, 11)
    with torch.inference_mode():
        selective_scan_chunked(u, delta, A, B, C, chunk=4)
    u.requires_grad_(True)
    y = selective_scan_chunked(u, delta, A, B, C, chunk=4)
    y.sum().backward()
    ref = torch.autograd.grad(selective_scan_ref(u, delta, A, B, C).sum(), u)[0]
    torch.testing.assert_close(u.grad, ref, rtol=1e-4, atol=1e-5)
