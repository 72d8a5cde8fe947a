"""The token-major scan with index streams: the reference against a float64 loop written here from the definition,
and the Triton forward (interpreter on CPU) against the reference, for every option and index form.

Inputs are drawn fresh for every case; outputs are compared relative to a float64 computation.
"""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from ssmprune_cli.ops import selective_scan_ref
from ssmprune_cli.ops.token_scan import token_scan, token_scan_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _loop(u, delta, A, B, C, D, z, bias, B_bias, gap, fill, ui, pi, oi, reverse, acc, scale):
    """The definition, one image and one step at a time, in float64."""
    b, _, E = u.shape
    S = next((i.shape[-1] for i in (oi, ui, pi) if i is not None), u.shape[1])

    def row(idx, i, t):
        if idx is None:
            return S - 1 - t if reverse else t
        return int(idx[t] if idx.dim() == 1 else idx[i, t])

    out = torch.zeros(b, S, E, dtype=torch.float64)
    Ad = A.double()
    for i in range(b):
        h = torch.zeros(E, A.shape[1], dtype=torch.float64)
        for t in range(S):
            ru, rp, ro = row(ui, i, t), row(pi, i, t), row(oi, i, t)
            x = delta[i, rp].double() + (0 if bias is None else bias.double())
            dt = F.softplus(x)
            dtd = dt if gap is None else dt + float(gap[i, t]) * fill.double()
            Bv = B[i, rp].double()
            if B_bias is not None:
                Bv = Bv + (B_bias[rp] if B_bias.dim() == 2 else B_bias[i, rp]).double()
            uu = u[i, ru].double()
            h = torch.exp(dtd[:, None] * Ad) * h + (dt * uu)[:, None] * Bv[None, :]
            y = h @ C[i, rp].double() + (0 if D is None else D.double() * uu)
            if acc is not None:
                y = y + acc[i, ro].double()
            if z is not None:
                y = y * F.silu(z[i, ro].double())
            out[i, ro] = scale * y
    return out


def _perm(b, S, gen):
    return torch.stack([torch.randperm(S, generator=gen) for _ in range(b)])


def _case(b=2, E=37, N=16, S=11, T=None, *, D=True, z=True, bias=True, B_bias=None, gap=True, acc=False,
          idx="none", reverse=False, scale=1.0, dtype=torch.float32, strided=False, seed=0):
    """Arguments of token_scan. idx: 'none' (identity), 'perm' (o = u = p, per image), 'shared' (one (S,) order),
    'pair' (u rows of a longer tensor, p rows = step positions, o a permutation: PlainMamba's pairing)."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    T = T or S
    Tu = Tp = S
    ui = pi = oi = None
    if idx == "perm":
        ui = pi = oi = _perm(b, S, gen)
    elif idx == "shared":
        ui = pi = oi = torch.randperm(S, generator=gen)
    elif idx == "pair":
        Tu = Tp = T
        steps = torch.stack([torch.randperm(T, generator=gen)[:S].sort().values for _ in range(b)])
        ui = torch.stack([torch.randperm(T, generator=gen)[:S] for _ in range(b)])
        pi, oi = steps, _perm(b, S, gen)
    width = 2 * E if strided else E
    u = r(b, Tu, width)[..., :E].to(dtype)
    delta = (r(b, Tp, width) - 1.0)[..., :E].to(dtype)
    xdbl = r(b, Tp, 2 * N + 3).to(dtype)                  # B, C as column slices, as x_proj gives them
    B, C = xdbl[..., 3:3 + N], xdbl[..., 3 + N:]
    A = -torch.exp(r(E, N) * 0.5 + 0.5)
    Bb = None
    if B_bias == "shared":
        Bb = r(Tp, N) * 0.3
    elif B_bias == "batch":
        Bb = r(b, Tp, N) * 0.3
    return dict(
        u=u, delta=delta, A=A, B=B, C=C, D=r(E) if D else None, z=r(b, S, E).to(dtype) if z else None,
        delta_bias=r(E) * 0.5 if bias else None, B_bias=Bb,
        gap=torch.randint(0, 4, (b, S), generator=gen).float() if gap else None,
        delta_fill=torch.rand(E, generator=gen) * 0.3 + 0.01 if gap else None,
        u_idx=ui, p_idx=pi, o_idx=oi, reverse=reverse, acc=r(b, S, E).to(dtype) if acc else None, out_scale=scale)


def _loop_of(kw):
    return _loop(kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"], kw["D"], kw["z"], kw["delta_bias"], kw["B_bias"],
                 kw["gap"], kw["delta_fill"], kw["u_idx"], kw["p_idx"], kw["o_idx"], kw["reverse"], kw["acc"],
                 kw["out_scale"])


def _double(kw):
    return {k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in kw.items()}


@pytest.mark.parametrize("idx,reverse", [("none", False), ("none", True), ("perm", False), ("shared", False),
                                         ("pair", False)])
@pytest.mark.parametrize("extras", [dict(), dict(acc=True, scale=0.5), dict(D=False, z=False, bias=False, gap=False),
                                    dict(B_bias="shared"), dict(B_bias="batch", acc=True)])
def test_reference_matches_definition(idx, reverse, extras):
    kw = _case(idx=idx, reverse=reverse, T=15, **extras)
    got = token_scan_ref(**_double(kw), backend="exact")
    assert got.dtype == torch.float64 and got.shape == (2, 11, 37)
    assert rel(got, _loop_of(kw)) < 1e-12


def test_dense_identity_equals_selective_scan():
    kw = _case(D=True, z=True, gap=False)
    kw = _double(kw)
    got = token_scan_ref(**kw, backend="exact")
    t = lambda x: x.transpose(1, 2)  # noqa: E731
    want = selective_scan_ref(t(kw["u"]), t(kw["delta"]), kw["A"], t(kw["B"]), t(kw["C"]), kw["D"], t(kw["z"]),
                              kw["delta_bias"])
    assert rel(got, t(want)) < 1e-13


def _on_device(kw):
    return {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


CASES = [dict(idx=i, reverse=r) for i, r in (("none", False), ("none", True), ("perm", False), ("shared", False),
                                             ("pair", False))]
EXTRAS = [dict(), dict(acc=True, scale=0.5), dict(D=False, z=False, bias=False, gap=False),
          dict(B_bias="shared", strided=True), dict(B_bias="batch", acc=True, strided=True)]


@pytest.mark.slow
@pytest.mark.parametrize("case,extras", list(itertools.product(range(len(CASES)), range(len(EXTRAS)))))
def test_triton_forward_matches_reference(case, extras):
    # 20 channels: one partial block of 32 (the channel mask on every load and store); several blocks are
    # test_triton_forward_bf16_and_several_channel_blocks' (and the backward tests'). The interpreter's time
    # grows with the blocks, and this product has 25 cases.
    kw = _case(**CASES[case], **EXTRAS[extras], T=15, E=20, seed=case * 10 + extras)
    out = token_scan(**_on_device(kw), backend="triton")
    want = _loop_of(kw)
    assert out.shape == want.shape and out.dtype == torch.float32
    assert rel(out, want) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("N,dtype", [(1, torch.float32), (5, torch.float32), (1, torch.bfloat16)])
def test_triton_forward_small_state(N, dtype):
    """GroupMamba scans one state, reading B and C in place (column slices of x_proj's output, in the activation
    dtype: no float32 copy without a backward to follow); other sizes are padded to a power of two."""
    kw = _case(N=N, E=20, idx="shared", seed=N, dtype=dtype)
    assert kw["B"].stride(1) == 2 * N + 3 and kw["B"].dtype == dtype
    assert rel(token_scan(**_on_device(kw), backend="triton"), _loop_of(kw)) < (1e-5 if dtype == torch.float32
                                                                                 else 1e-2)


@pytest.fixture
def small_tiles(monkeypatch):
    """Several step tiles and channel blocks per row for the one-state kernel, even at tiny sizes."""
    from ssmprune_cli.kernels import token_scan as ts

    monkeypatch.setitem(ts.LAUNCH, "one_state", {"BT": 8, "BE": 16, "num_warps": 1, "tail_warps_per_sm": 10 ** 6})


@pytest.mark.slow
@pytest.mark.parametrize("case", range(len(CASES)))
def test_one_state_kernel_across_tiles(case, small_tiles):
    """d_state = 1 runs a parallel prefix per tile of steps and carries the state across tiles: 29 steps over
    four tiles (the last one partial), 20 channels over two blocks (the second one partial), with every index form
    and option."""
    kw = _case(N=1, S=29, T=33, E=20, acc=True, B_bias="batch", **CASES[case], seed=40 + case)
    out = token_scan(**_on_device(kw), backend="triton")
    assert rel(out, _loop_of(kw)) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("split", [True, False], ids=["full-gpu", "small-grid"])
@pytest.mark.parametrize("S", [24, 25, 26, 28, 29, 31])
def test_one_state_kernel_tail_tiles(S, split, monkeypatch):
    """After its whole tiles (BT = 8 here) the one-state kernel finishes on one tile of BT/4, BT/2 or BT: none (24
    steps), a quarter (25, 26), a half (28), a whole tile (29 on a small grid, 31); on a full GPU 29 steps end on a
    half and a quarter. The state carries through each, and the steps past S stay unwritten (the output buffer is
    NaN-poisoned)."""
    from ssmprune_cli.kernels import token_scan as ts

    monkeypatch.setitem(ts.LAUNCH, "one_state", {"BT": 8, "BE": 16, "num_warps": 1,
                                                 "tail_warps_per_sm": 0 if split else 10 ** 6})
    monkeypatch.setattr(ts, "_empty", lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype,
                                                                              device=device))
    # 12 channels, one partial block: the tiles are along the steps, and the interpreter's time grows with blocks
    kw = _case(N=1, S=S, T=S + 3, E=12, acc=True, idx="pair" if S % 2 else "none", reverse=S == 26, seed=S)
    out = token_scan(**_on_device(kw), backend="triton")
    assert out.shape == (2, S, 12) and torch.isfinite(out).all()
    assert rel(out, _loop_of(kw)) < 1e-5


@pytest.mark.slow
def test_a_log_form_matches():
    """With a_is_log the op takes the parameter A_log (A = -exp(A_log)); the kernel caches its copy of it."""
    kw = _case(idx="perm", E=20, seed=7)  # six launches: one partial channel block each
    A_log = torch.log(-kw["A"])
    kw_log = dict(kw, A=A_log)
    want = _loop_of(kw)
    assert rel(token_scan(**_on_device(kw_log), a_is_log=True, backend="triton"), want) < 1e-5
    exact = _loop_of(dict(kw, A=-torch.exp(A_log.double())))   # A as the float64 reference derives it
    assert rel(token_scan_ref(**_double(kw_log), a_is_log=True, backend="exact"), exact) < 1e-12
    # a changed parameter (an in-place update bumps its version) is not served from the cache
    with torch.no_grad():
        A_log.add_(0.3)
    kw2 = dict(kw, A=-torch.exp(A_log))
    assert rel(token_scan(**_on_device(dict(kw_log, A=A_log)), a_is_log=True, backend="triton"), _loop_of(kw2)) < 1e-5
    # nor is a new tensor that the allocator placed where a freed one lived (same address, version 0)
    for shift in (0.5, -0.4, 0.2):
        fresh = (A_log + shift).to(DEVICE)
        got = token_scan(**_on_device(dict(kw_log, A=fresh)), a_is_log=True, backend="triton")
        assert rel(got, _loop_of(dict(kw, A=-torch.exp(A_log + shift)))) < 1e-5
        del fresh
    # an inference tensor (what a compiled graph hands over under inference mode) has no version counter
    with torch.inference_mode():
        made = (A_log + 0.1).to(DEVICE)
        got = token_scan(**_on_device(dict(kw_log, A=made)), a_is_log=True, backend="triton")
    assert rel(got, _loop_of(dict(kw, A=-torch.exp(A_log + 0.1)))) < 1e-5


def test_a_log_cache_follows_views_of_a_parameter():
    """VMamba hands the scan a new view of its stacked A_logs every forward: the cached A · log2(e) is found again
    through the viewed parameter, each direction gets its own rows, and an update of the parameter is seen."""
    from ssmprune_cli.kernels import token_scan as ts

    base = torch.nn.Parameter(torch.randn(4 * 6, 2, dtype=torch.float32))
    view = lambda k: base.view(4, 6, 2)[k]  # noqa: E731
    want = lambda k: (-torch.exp(base.detach()[6 * k:6 * (k + 1)].double()) / math.log(2.0)).t()  # noqa: E731
    first = ts._scaled_a(view(0), True)
    assert first.shape == (2, 6) and first.is_contiguous()
    assert ts._scaled_a(view(0), True) is first          # a fresh view of the same rows: served from the cache
    second = ts._scaled_a(view(1), True)
    assert rel(first, want(0)) < 1e-6 and rel(second, want(1)) < 1e-6 and rel(second, want(0)) > 1e-3
    with torch.no_grad():
        base.mul_(0.5)                                   # an optimizer step: the version the views share moves
    again = ts._scaled_a(view(0), True)
    assert again is not first and rel(again, want(0)) < 1e-6


@pytest.mark.slow
def test_triton_forward_bf16_and_several_channel_blocks():
    kw = _case(E=70, dtype=torch.bfloat16, acc=True, z=True, reverse=True, seed=3)
    out = token_scan(**_on_device(kw), backend="triton")
    assert out.dtype == torch.bfloat16
    assert rel(out, _loop_of(kw)) < 1e-2


def test_gradients_use_the_differentiable_path():
    """With a gradient needed the dispatcher's default runs the reference form on the CPU and the fused training path
    on CUDA (tests/ops/test_token_scan_backward.py tests that one in detail); gradients match float64 autograd."""
    kw = _case(idx="perm", acc=True, B_bias="shared")
    leaves = {k: v.clone().requires_grad_(True) for k, v in kw.items()
              if isinstance(v, torch.Tensor) and v.is_floating_point() and k not in ("gap",)}
    out = token_scan(**{**kw, **leaves})
    d64 = {k: v.double().detach().requires_grad_(True) for k, v in leaves.items()}
    ref = token_scan_ref(**{**_double(kw), **d64}, backend="exact")
    g = torch.randn_like(ref)
    out.backward(g.float())
    ref.backward(g)
    for k in leaves:
        assert rel(leaves[k].grad, d64[k].grad) < 1e-5, k
