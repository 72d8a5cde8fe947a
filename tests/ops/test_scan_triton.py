"""Triton scan kernels against the float64 loop, forward and every gradient, for every combination of any three
options (a covering array of the option product).

On a machine without CUDA, tests/conftest.py sets TRITON_INTERPRET=1 before this module imports the kernels, so
they run on the CPU; shapes stay tiny. Every buffer the kernels must fill is poisoned with NaN first.
"""

import itertools

import pytest
import torch
from _scan_inputs import NAMES, grads, leaves, make_inputs, rel

from ssmprune_cli.errors import BadInputError
from ssmprune_cli.kernels import SCAN_FUNCTION_NAME, SelectiveScanFn, selective_scan_triton
from ssmprune_cli.kernels import selective_scan_fn as fn_mod
from ssmprune_cli.ops import aligned_scan, aligned_scan_ref, selective_scan, selective_scan_ref

pytestmark = pytest.mark.slow  # every test runs a kernel under the Triton interpreter

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (1e-2, 1e-2)}  # (output, gradients) relative to float64


@pytest.fixture(autouse=True)
def poisoned(monkeypatch):
    monkeypatch.setattr(fn_mod, "_empty", lambda shape, dtype, device: torch.full(shape, float("nan"),
                                                                                  dtype=dtype, device=device))


@pytest.fixture
def small_blocks(monkeypatch):
    """Several channel blocks per row even at tiny widths, so block edges and masks are exercised."""
    monkeypatch.setitem(fn_mod.LAUNCH, "fwd", {"BE": 8, "num_warps": 1})
    monkeypatch.setitem(fn_mod.LAUNCH, "bwd", {"BE": 8, "num_warps": 1})


def check(args, act_dtype, backward=True):
    """Run kernel and float64 reference on the same (rounded) inputs; compare output and all gradients."""
    out_tol, grad_tol = TOL[act_dtype]
    mine = leaves(args)
    ref = leaves(args, dtype=torch.float64, device="cpu")
    out = selective_scan_triton(*mine)
    expect = selective_scan_ref(*ref)
    assert out.dtype == act_dtype and out.shape == args[0].shape
    assert rel(out, expect) < out_tol
    if not backward:
        return
    dout = torch.randn(expect.shape, dtype=torch.float64)
    out.backward(dout.to(device=out.device, dtype=out.dtype))
    expect.backward(dout.to(act_dtype).double())
    got, want = grads(mine), grads(ref)
    assert set(got) == set(want) - {"gap"}
    for name in want:
        if name == "gap":
            continue
        assert got[name].dtype == mine[NAMES.index(name)].dtype
        assert got[name].shape == want[name].shape
        assert rel(got[name], want[name]) < grad_tol, name


def covering(factors, strength):
    """Rows of the product of `factors` that together hold every combination of values of any `strength` factors
    (a greedy covering array, deterministic). The options are constexpr branches of the kernels: a bug needs a
    few of them together to show, and every such combination is here at a fraction of the product's cases."""
    rows = list(itertools.product(*factors))
    groups = list(itertools.combinations(range(len(factors)), strength))
    cells = lambda r: {(g, tuple(r[i] for i in g)) for g in groups}  # noqa: E731
    need, chosen = set().union(*map(cells, rows)), []
    while need:
        best = max(rows, key=lambda r: len(cells(r) & need))
        chosen.append(best)
        need -= cells(best)
    return chosen


FACTORS = ([False, True], [False, True], [False, True], [False, True], [None, "shared", "batch"], [False, True])
OPTIONS = covering(FACTORS, 3)   # every three options together (D, z, bias, softplus, B_bias, gap)
PAIRS = covering(FACTORS, 2)     # every two


def test_option_sets_cover_what_they_claim():
    full = list(itertools.product(*FACTORS))
    for rows, k in ((OPTIONS, 3), (PAIRS, 2)):
        for g in itertools.combinations(range(len(FACTORS)), k):
            assert {tuple(r[i] for i in g) for r in rows} == {tuple(r[i] for i in g) for r in full}
    assert len(OPTIONS) < len(full) // 3 and len(PAIRS) < len(OPTIONS)


@pytest.mark.parametrize("D,z,bias,softplus,B_bias,gap", OPTIONS)
def test_every_option_float32(D, z, bias, softplus, B_bias, gap, small_blocks):
    args = make_inputs(1, 11, 3, 11, D=D, z=z, bias=bias, softplus=softplus, B_bias=B_bias, gap=gap,
                       device=DEVICE)
    if not softplus:
        args[1] = args[1].abs() * 0.3  # Δ used as given: keep it a positive step size
    check(args, torch.float32)


@pytest.mark.parametrize("D,z,bias,softplus,B_bias,gap", PAIRS)
def test_options_bfloat16(D, z, bias, softplus, B_bias, gap):
    # mixed dtypes as under autocast: activations bf16, A / D / biases float32; a whole and a partial tile of steps
    args = make_inputs(2, 6, 5, 11, D=D, z=z, bias=bias, softplus=softplus, B_bias=B_bias, gap=gap,
                       act_dtype=torch.bfloat16, device=DEVICE)
    if not softplus:
        args[1] = (args[1].float().abs() * 0.3).to(torch.bfloat16)
    check(args, torch.bfloat16)


@pytest.mark.parametrize("b,e,n,l", [(2, 20, 1, 9), (1, 3, 16, 1), (1, 17, 5, 8), (3, 4, 2, 27), (2, 6, 4, 16)])
def test_shapes_default_launch(b, e, n, l):
    # default block sizes (one partial block), states padded from n to a power of two, lengths around a tile;
    # (2, 6, 4, 16) needs no padding at all, where the B/C copies must still come out contiguous
    check(make_inputs(b, e, n, l, device=DEVICE), torch.float32)


def test_large_delta(small_blocks):
    args = make_inputs(2, 9, 4, 21, big_delta=True, device=DEVICE)
    args[2] = -torch.rand(9, 4, device=DEVICE) * 20.0 - 0.1
    check(args, torch.float32)


@pytest.fixture
def one_channel_per_thread(monkeypatch):
    """The inference forward for 16-bit activations at any grid size (normally only for grids that fill the GPU),
    with calls counted so that a test can tell which forward ran."""
    monkeypatch.setitem(fn_mod.LAUNCH, "fwd_tpc", {"BE": 32, "num_warps": 1, "min_warps_per_sm": 0})
    calls = []
    real = fn_mod.K._fwd_kernel_tpc

    class Counted:
        def __getitem__(self, grid):
            calls.append(grid)
            return real[grid]

    monkeypatch.setattr(fn_mod.K, "_fwd_kernel_tpc", Counted())
    return calls


@pytest.mark.parametrize("D,z,bias,softplus,B_bias,gap", OPTIONS)
def test_inference_forward_one_channel_per_thread(D, z, bias, softplus, B_bias, gap, one_channel_per_thread):
    # 16-bit activations without a backward: one thread per channel, two blocks of 32 (e = 40: the second one
    # partial), an odd length over two tiles of 8 steps (the second one partial)
    args = make_inputs(2, 40, 16 if D else 5, 13, D=D, z=z, bias=bias, softplus=softplus, B_bias=B_bias, gap=gap,
                       act_dtype=torch.bfloat16, device=DEVICE)
    if not softplus:  # Δ used as given: keep Δ + bias a positive step size (negative ones grow past float32)
        args[1] = (args[1].float().abs() * 0.3).to(torch.bfloat16)
        args[7] = None if args[7] is None else args[7].abs()
    with torch.no_grad():
        out = selective_scan_triton(*args)
    assert len(one_channel_per_thread) == 1
    assert out.dtype == torch.bfloat16 and out.shape == args[0].shape
    assert rel(out, selective_scan_ref(*leaves(args, torch.float64, "cpu"))) < TOL[torch.bfloat16][0]


def test_which_forward_serves(one_channel_per_thread, monkeypatch):
    bf16 = make_inputs(2, 40, 16, 9, act_dtype=torch.bfloat16, device=DEVICE)
    with torch.no_grad():
        selective_scan_triton(*bf16)
    assert len(one_channel_per_thread) == 1
    selective_scan_triton(*leaves(bf16))                       # states saved for a backward: the general kernel
    with torch.no_grad():
        selective_scan_triton(*make_inputs(2, 40, 16, 9, device=DEVICE))      # float32: the general kernel
    assert len(one_channel_per_thread) == 1
    # a grid too small to give every SM its warps
    monkeypatch.setitem(fn_mod.LAUNCH, "fwd_tpc", {"BE": 32, "num_warps": 1, "min_warps_per_sm": 10 ** 6})
    with torch.no_grad():
        selective_scan_triton(*bf16)
    assert len(one_channel_per_thread) == 1


def test_inference_forward_matches_training_forward():
    args = make_inputs(2, 7, 3, 15, device=DEVICE)
    with torch.no_grad():
        plain = selective_scan_triton(*args)
    trained = selective_scan_triton(*leaves(args))
    # the same arithmetic, compiled twice: the GPU compiler may fuse different multiply-adds in each
    assert rel(plain, trained) < 1e-6
    assert rel(plain, selective_scan_ref(*leaves(args, torch.float64, "cpu"))) < 1e-5


def test_strided_inputs():
    # channel-major views (last axis contiguous) are read in place; a non-contiguous last axis is copied
    args = make_inputs(2, 6, 3, 10, device=DEVICE)
    wide = torch.randn(2, 12, 10, device=DEVICE)
    args[0] = wide[:, ::2]
    args[6] = torch.randn(2, 10, 6, device=DEVICE).transpose(1, 2)
    check(args, torch.float32)


def _strided_state_inputs(act_dtype, A_dtype=torch.float32):
    """A as a column-major (e, n) view, B, C and a batch B_bias with the state axis contiguous: all read in place."""
    args = make_inputs(2, 19, 5, 13, B_bias="batch", act_dtype=act_dtype, device=DEVICE)
    args[2] = args[2].t().contiguous().t().to(A_dtype)
    for i in (3, 4, 9):
        args[i] = args[i].transpose(1, 2).contiguous().transpose(1, 2)
    assert args[2].stride() == (1, 19) and args[3].stride()[1:] == (1, 5)
    return args


def test_strided_state_parameters(small_blocks):
    check(_strided_state_inputs(torch.float32), torch.float32)


def test_strided_state_parameters_one_channel_per_thread(one_channel_per_thread):
    args = _strided_state_inputs(torch.bfloat16, A_dtype=torch.bfloat16)
    with torch.no_grad():
        out = selective_scan_triton(*args)
    assert len(one_channel_per_thread) == 1
    assert rel(out, selective_scan_ref(*leaves(args, torch.float64, "cpu"))) < TOL[torch.bfloat16][0]


def test_aligned_scan_through_kernel(small_blocks):
    # the efficient pruned form (two Δ streams) against its definition, gradients into both streams
    b, e, n, L, K = 2, 10, 4, 19, 8
    steps = torch.stack([torch.randperm(L)[:K].sort().values for _ in range(b)]).to(DEVICE)
    base = make_inputs(b, e, n, K, gap=False, device=DEVICE)
    fill = torch.rand(e, device=DEVICE) * 0.4
    mine = leaves(base[:10]) + [fill.clone().requires_grad_()]
    ref = leaves(base[:10], torch.float64, "cpu") + [fill.detach().double().cpu().requires_grad_()]
    out = aligned_scan(*mine[:10], steps=steps, delta_fill=mine[10], backend="triton")
    expect = aligned_scan_ref(*ref[:10], steps=steps.cpu(), length=L, delta_fill=ref[10])
    assert rel(out, expect) < 1e-5
    dout = torch.randn(expect.shape, dtype=torch.float64)
    out.backward(dout.to(out.device, torch.float32))
    expect.backward(dout)
    for i, name in enumerate(NAMES[:10] + ("delta_fill",)):
        if isinstance(mine[i], torch.Tensor):
            assert rel(mine[i].grad, ref[i].grad) < 1e-4, name


def test_dispatch_and_float64_fallback():
    args = make_inputs(1, 4, 3, 6, device=DEVICE)
    ref = selective_scan_ref(*leaves(args, torch.float64, "cpu"))
    assert rel(selective_scan(*args, backend="triton"), ref) < 1e-5
    # float64 keeps float64 precision: the dispatcher sends it to the PyTorch reference, not the float32 kernel,
    # and the kernel itself refuses it
    out64 = selective_scan(*leaves(args, torch.float64), backend="triton")
    assert out64.dtype == torch.float64 and rel(out64, ref) < 1e-12
    with pytest.raises(BadInputError, match="float32"):
        selective_scan_triton(*leaves(args, torch.float64))


def test_exported_name_is_the_function_class():
    # the report's FLOP handle is keyed on prim::PythonOp.<class name>
    assert SelectiveScanFn.__name__ == SCAN_FUNCTION_NAME == "SelectiveScanFn"


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:`torch.jit.trace` is deprecated")
def test_traced_name_is_the_exported_one():
    args = make_inputs(1, 3, 2, 5, z=False, B_bias=None, gap=False, device=DEVICE)
    graph = torch.jit.trace(lambda u, d: selective_scan_triton(u, d, *args[2:]), (args[0], args[1])).graph
    kinds = {node.kind() + "." + node.pyname() for node in graph.nodes() if node.kind() == "prim::PythonOp"}
    assert kinds == {f"prim::PythonOp.{SCAN_FUNCTION_NAME}"}
