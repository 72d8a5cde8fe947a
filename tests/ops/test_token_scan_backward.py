"""The token-major scan's training path (`kernels/token_scan_bwd.TokenScanFn`: fused forward that saves states,
fused backward through the index streams) against float64 autograd through `token_scan_ref`, for every input's
gradient and every index form and option; and a small pruned model that trains the same on both paths.

On a machine without CUDA, tests/conftest.py sets TRITON_INTERPRET=1 before the kernels are imported, so they run
on the CPU: shapes stay tiny (b ≤ 2, E ≤ 20, N ≤ 4, S ≤ 9). Every buffer the kernels must fill starts as NaN.
"""

import functools

import pytest
import torch
from test_token_scan import _case, _double, _on_device, rel

from ssmprune_cli.kernels import token_scan as ts
from ssmprune_cli.kernels import token_scan_bwd as tb
from ssmprune_cli.ops.token_scan import token_scan, token_scan_ref

GRAD_TOL = 1e-5  # float32 kernels against float64 autograd, relative (norm of the difference / norm)


@pytest.fixture(autouse=True)
def poisoned(monkeypatch):
    monkeypatch.setattr(ts, "_empty", lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype,
                                                                              device=device))


@pytest.fixture
def small_blocks(monkeypatch):
    """Several channel blocks in the backward and step tiles in the one-state forward, even at tiny sizes: dB and
    dC are then summed over blocks, and the N = 1 forward saves states across whole tiles and its shorter tail
    tiles (4 and 2 steps)."""
    monkeypatch.setitem(tb.LAUNCH, "bwd", {"BE": 8, "num_warps": 1})
    monkeypatch.setitem(ts.LAUNCH, "one_state", {"BT": 8, "BE": 16, "num_warps": 1, "tail_warps_per_sm": 0})


def _leaves(kw, dtype=None, device=None):
    """Copies of every floating input that requires a gradient (gap excepted: a count of positions)."""
    out = {}
    for k, v in kw.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and k != "gap":
            out[k] = v.detach().to(device=device or v.device, dtype=dtype or v.dtype).requires_grad_(True)
    return out


def check(kw, a_is_log=False, grad_of=None, out_tol=1e-5, grad_tol=GRAD_TOL):
    """The fused path on kw's tensors against float64 autograd through the reference: output and the gradients
    of every input in grad_of (default: all)."""
    kw = dict(kw)
    if a_is_log:
        kw["A"] = torch.log(-kw["A"])
    mine = {k: v for k, v in _leaves(_on_device(kw)).items() if grad_of is None or k in grad_of}
    ref = {k: v for k, v in _leaves(_double(kw)).items() if grad_of is None or k in grad_of}
    out = token_scan(**{**_on_device(kw), **mine}, a_is_log=a_is_log, backend="triton")
    assert type(out.grad_fn).__name__ == "TokenScanFnBackward"
    want = token_scan_ref(**{**_double(kw), **ref}, a_is_log=a_is_log, backend="exact")
    assert out.shape == want.shape and out.dtype == kw["u"].dtype
    assert rel(out, want) < out_tol
    dout = torch.randn(want.shape, dtype=torch.float64)
    out.backward(dout.to(device=out.device, dtype=out.dtype))
    want.backward(dout.to(kw["u"].dtype).double())
    assert set(mine) == set(ref)
    for k in ref:
        got = mine[k].grad
        assert got is not None, k
        assert got.dtype == mine[k].dtype and got.shape == ref[k].shape, k
        assert rel(got, ref[k].grad) < grad_tol, k
    return out


# (name, _case arguments): the index forms of the op's contract, and the options that change the backward
CASES = {
    "dense": dict(),
    "reverse": dict(reverse=True),
    "streams_per_image": dict(idx="perm"),
    "streams_shared": dict(idx="shared"),
    "u_idx_ne_p_idx": dict(idx="pair", T=12, acc=True, scale=0.5),
    "no_gap_no_options": dict(D=False, z=False, bias=False, gap=False),
    "acc_z_scale": dict(acc=True, scale=0.5, reverse=True),
    "acc_no_z": dict(acc=True, z=False, scale=2.0),
    "B_bias_shared": dict(B_bias="shared", idx="perm"),
    "B_bias_batch": dict(B_bias="batch", acc=True, reverse=True, strided=True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_gradients_match_reference(name):
    check(_case(b=2, E=8, N=4, S=9, seed=len(name), **CASES[name]))


def test_a_log_gradient():
    """With a_is_log the op takes A_log; its gradient is dA · A (A = -exp(A_log))."""
    check(_case(b=2, E=8, N=4, S=9, idx="perm", acc=True, seed=5), a_is_log=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sixteen_states_at_aligned_widths(dtype):
    """Vim's and PlainMamba's shape class: 16 states (the kernels' vector-load path for B/C rows) and a channel
    count divisible by 16, which Triton specialises on. The training forward stores the states as it scans; its
    output must equal the inference forward's and its gradients the reference's (on the GPU this once read B/C
    rows through the wrong threads' registers: a misaligned-address fault)."""
    kw = _case(b=2, E=64, N=16, S=9, T=11, idx="pair", acc=True, B_bias="shared", dtype=dtype, seed=21)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    out = check(kw, out_tol=tol, grad_tol=tol)
    with torch.no_grad():
        plain = token_scan(**_on_device(kw), backend="triton")
    assert rel(out, plain) < (1e-6 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("idx", ["none", "pair"])
def test_several_channel_blocks(idx, small_blocks):
    """20 channels over three backward blocks (the last one partial): dB, dC and B_bias's gradient are summed over
    blocks; states padded from N = 3 to 4."""
    check(_case(b=2, E=20, N=3, S=9, T=11, idx=idx, acc=True, B_bias="batch", seed=11))


@pytest.mark.parametrize("idx", ["none", "pair"])
def test_single_state(idx, small_blocks):
    """N = 1 (GroupMamba): the one-state forward (8-step tiles, then a 4- and a 2-step tile here) saves the states the shared backward reads."""
    check(_case(b=2, E=20, N=1, S=13, T=15, idx=idx, acc=True, reverse=idx == "none", B_bias="shared", seed=12))


def test_rows_read_twice_accumulate():
    """The contract lets u_idx and p_idx repeat rows (only o_idx must be a permutation): their gradients add up,
    and rows no step reads get zero."""
    kw = _case(b=2, E=8, N=4, S=9, T=12, idx="pair", acc=True, seed=13)
    kw["u_idx"] = torch.tensor([[0, 1, 1, 2, 3, 3, 3, 5, 0], [4, 4, 4, 4, 1, 2, 3, 0, 0]])
    kw["p_idx"] = torch.tensor([[0, 0, 1, 1, 2, 7, 7, 7, 0], [3, 3, 3, 1, 2, 2, 9, 9, 9]], dtype=torch.int32)
    check(kw)


def test_partial_gradients():
    """Only some inputs need a gradient (z and acc frozen: their stores are skipped)."""
    check(_case(b=2, E=8, N=4, S=9, idx="perm", acc=True, seed=14), grad_of={"u", "delta", "B", "delta_bias"})


def test_bfloat16_activations():
    """Activations in bfloat16 with float32 parameters, as under autocast: gradients in each input's dtype."""
    kw = _case(b=2, E=8, N=4, S=9, dtype=torch.bfloat16, acc=True, idx="shared", seed=15)
    check(kw, out_tol=1e-2, grad_tol=1e-2)


def test_backward_is_reproducible():
    """No cross-program atomics in the backward: two runs give bit-identical gradients."""
    kw = _on_device(_case(b=2, E=8, N=4, S=9, idx="perm", B_bias="shared", seed=16))
    runs = []
    for _ in range(2):
        leaves = _leaves(kw)
        out = token_scan(**{**kw, **leaves}, backend="triton")
        out.backward(torch.ones_like(out))
        runs.append({k: v.grad for k, v in leaves.items()})
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k


def test_dispatch_keeps_the_reference_where_it_must():
    """Float64, tracing and the reference backend take token_scan_ref even when a gradient is needed."""
    kw = _on_device(_case(b=1, E=8, N=4, S=5, seed=17))
    u = kw["u"].detach().requires_grad_(True)
    assert type(token_scan(**{**kw, "u": u}, backend="reference").grad_fn).__name__ != "TokenScanFnBackward"
    d64 = _leaves(_double(kw))
    assert type(token_scan(**{**_double(kw), **d64}, backend="triton").grad_fn).__name__ != "TokenScanFnBackward"


def test_torch_compile_keeps_the_fused_path_opaque():
    """Under torch.compile (fullgraph, AOTAutograd) training runs two custom ops, the fused forward and backward,
    tied by their registered autograd formula: gradients equal the eager fused path's bit for bit. Inference
    runs the forward op alone."""
    kw = _on_device(_case(b=2, E=8, N=4, S=9, idx="pair", T=11, acc=True, B_bias="shared", seed=18))
    scan = functools.partial(token_scan, backend="triton")
    compiled = torch.compile(scan, backend="aot_eager", fullgraph=True)
    runs = []
    for fn in (scan, compiled):
        leaves = _leaves(kw)
        out = fn(**{**kw, **leaves})
        out.backward(torch.ones_like(out))
        runs.append((out.detach(), {k: v.grad for k, v in leaves.items()}))
    assert type(out.grad_fn).__name__ == "CompiledFunctionBackward"
    assert torch.equal(runs[0][0], runs[1][0])
    for k in runs[0][1]:
        assert torch.equal(runs[0][1][k], runs[1][1][k]), k
    with torch.no_grad():
        assert torch.equal(compiled(**kw), runs[0][0])


# ---------------------------------------------------------------------------------------------- a model
def _pruned(family):
    from ssmprune_cli.models import create_model
    from ssmprune_cli.pruning.plan import PrunePoint, PruningSpec
    from ssmprune_cli.pruning.pruned_model import PrunedModel

    torch.manual_seed(0)
    # 16 scan channels (one program per image in the backward) and, for Vim, 12 px: 3 x 3 patches and the middle
    # class token, 10 tokens, 6 kept after block 1; the interpreter's time grows with both
    if family == "vim":
        model, point = create_model("vim_test", embed_dim=8, depth=2, d_state=4, img_size=12), PrunePoint("1", 6)
    else:
        model, point = create_model("plainmamba_test", img_size=32, embed_dim=8, depth=2), PrunePoint("1", 3)
    # 'bias' fill: Δ̂ = softplus(dt bias) is computed from a parameter, so its gradient reaches the dt bias
    return PrunedModel(model, PruningSpec([point], delta_fill="bias")).train()


def _train_grads(pm, x, y, fused, monkeypatch):
    """Gradients of every parameter after one loss.backward(), the mixers' scans on the fused path or not."""
    from ssmprune_cli.models.layers import mamba_core

    monkeypatch.setattr(mamba_core, "token_scan", functools.partial(token_scan, backend="triton") if fused
                        else functools.partial(token_scan, backend="reference"))
    pm.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(pm(x), y).backward()
    return {k: p.grad.clone() for k, p in pm.named_parameters() if p.grad is not None}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["vim", "plainmamba"])
def test_pruned_model_trains_the_same(family, monkeypatch):
    """A pruned model (one prune point, Δ̂ from the dt bias) gives the same parameter gradients with its scans on
    the fused training path as on the reference. PlainMamba's scans read u and Δ/B/C through different streams."""
    pm = _pruned(family).to("cuda" if torch.cuda.is_available() else "cpu")
    calls = []
    apply = tb.TokenScanFn.apply
    monkeypatch.setattr(tb.TokenScanFn, "apply", lambda *a: calls.append(1) or apply(*a))
    c, h, w = pm.model.input_size()
    x = torch.randn(2, c, h, w, device=next(pm.parameters()).device)
    y = torch.tensor([1, 3], device=x.device)
    want = _train_grads(pm, x, y, False, monkeypatch)
    assert not calls
    got = _train_grads(pm, x, y, True, monkeypatch)
    assert len(calls) == {"vim": 4, "plainmamba": 8}[family]   # every mixer direction took the fused path
    assert set(got) == set(want)
    for k in want:
        assert rel(got[k], want[k]) < 1e-5, k
