"""Gather conv: the reference against a loop written from the definition, the Triton kernels against the float64
reference (forward and the gradients of x, weight and bias), the maps the models build, and the traced op.

On a machine without CUDA, tests/conftest.py sets TRITON_INTERPRET=1 before this module imports the kernels, so
they run on the CPU; shapes stay tiny. Every buffer the kernels must fill is poisoned with NaN first.
"""

import pytest
import torch
import torch.nn.functional as F
from _scan_inputs import rel

from ssmprune_cli.kernels import gather_conv as gk
from ssmprune_cli.models.layers.token_layout import TokenLayout
from ssmprune_cli.ops.gather_conv import GATHER_CONV_OP, gather_conv, gather_conv_flop_jit, gather_conv_ref
from ssmprune_cli.report.flops import _fvcore_analysis

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}  # relative to float64, outputs and gradients alike


@pytest.fixture(autouse=True)
def poisoned(monkeypatch):
    monkeypatch.setattr(gk, "_empty", lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype,
                                                                              device=device))


@pytest.fixture
def small_blocks(monkeypatch):
    """Several token, channel and dweight row blocks per image even at tiny sizes, so block edges and masks are
    exercised."""
    for kind in gk.LAUNCH:
        monkeypatch.setitem(gk.LAUNCH, kind, {"TILE": 64, "BC": 8, "num_warps": 1, "ROWS": 12})


# ----------------------------------------------------------------------------------------------- inputs
def loop_definition(x, weight, bias, grid, padding, keep=None, src=None, flip=False, silu=False, gelu=False):
    """The docstring's formula, one output and one tap at a time, in float64."""
    b, K, C = x.shape
    H, W = grid
    ph, pw = padding
    KH, KW = weight.shape[1:]
    keep = torch.arange(H * W).expand(b, -1) if keep is None else keep
    out = torch.zeros(b, keep.shape[1], C, dtype=torch.float64)
    for n in range(b):
        for m, p in enumerate(keep[n].tolist()):
            r, col = divmod(p, W)
            acc = torch.zeros(C, dtype=torch.float64) if bias is None else bias.double().clone()
            for i in range(KH):
                for j in range(KW):
                    di, dj = (ph - i, pw - j) if flip else (i - ph, j - pw)
                    if not (0 <= r + di < H and 0 <= col + dj < W):
                        continue
                    q = (r + di) * W + col + dj
                    row = q if src is None else int(src[n, q])
                    if row >= 0:
                        acc += weight[:, i, j].double() * x[n, row].double()
            out[n, m] = acc * torch.sigmoid(acc) if silu else (0.5 * acc * (1 + torch.erf(acc / 2 ** 0.5))
                                                               if gelu else acc)
    return out


def random_keep(b, L, M, sort=True, dtype=torch.int64):
    keep = torch.stack([torch.randperm(L)[:M] for _ in range(b)])
    return (keep.sort(dim=1).values if sort else keep).to(dtype)


def layout_maps(b, grid, M, kind):
    """keep and the fill map the models build for a pruned layer (TokenLayout), M kept of H*W positions."""
    H, W = grid
    layout = TokenLayout(random_keep(b, H * W, M), H * W, grid=grid if H > 1 else None)
    return layout.keep, layout.fill_index(kind), layout


def many_to_one(b, L, K):
    """A map that sends several positions to the same row and some to -1 (zero)."""
    src = torch.randint(0, max(K // 2, 1), (b, L))
    return src.masked_fill(torch.rand(b, L) < 0.25, -1)


# ----------------------------------------------------------------------------------------------- reference
REF_CASES = {
    # name: grid, (KH, KW), padding, flip, silu, bias, keep, src
    "causal1d_hold": ((1, 13), (1, 4), (0, 3), False, True, True, "subset", "hold"),
    "causal1d_flip_zero": ((1, 13), (1, 4), (0, 3), True, False, False, None, "minus1"),
    "grid3x3": ((5, 6), (3, 3), (1, 1), False, True, True, "subset", "minus1"),
    "asymmetric_flip": ((4, 5), (2, 3), (0, 2), True, True, True, "unsorted", None),
    "grid7x7": ((5, 6), (7, 7), (3, 3), False, False, True, "unsorted", "minus1"),
    "padding_past_kernel": ((3, 4), (2, 2), (2, 0), False, False, False, None, "minus1"),
}


def _ref_inputs(grid, kernel, keep_kind, src_kind, bias, dtype=torch.float64):
    b, C = 2, 5
    L = grid[0] * grid[1]
    K = L if src_kind is None else 9
    x = torch.randn(b, K, C, dtype=dtype)
    weight = torch.randn(C, *kernel, dtype=dtype)
    bias = torch.randn(C, dtype=dtype) if bias else None
    keep = None if keep_kind is None else random_keep(b, L, 8, sort=keep_kind == "subset")
    src = {None: None, "minus1": many_to_one(b, L, K),
           "hold": torch.randint(0, K, (b, L)).sort(dim=1).values}[src_kind]
    return x, weight, bias, keep, src


@pytest.mark.parametrize("name", REF_CASES)
def test_reference_is_the_definition(name):
    grid, kernel, padding, flip, silu, bias, keep_kind, src_kind = REF_CASES[name]
    x, weight, bias, keep, src = _ref_inputs(grid, kernel, keep_kind, src_kind, bias)
    out = gather_conv_ref(x, weight, bias, grid, padding, keep, src, flip, silu)
    assert out.dtype == torch.float64 and out.is_contiguous()
    torch.testing.assert_close(out, loop_definition(x, weight, bias, grid, padding, keep, src, flip, silu),
                               rtol=1e-12, atol=1e-12)


def test_reference_gelu_is_the_definition_and_activations_are_checked():
    x, weight, bias, keep, src = _ref_inputs((5, 6), (3, 3), "subset", "minus1", True)
    out = gather_conv_ref(x, weight, bias, (5, 6), (1, 1), keep, src, act="gelu")
    torch.testing.assert_close(out, loop_definition(x, weight, bias, (5, 6), (1, 1), keep, src, gelu=True),
                               rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="activation"):
        gather_conv(x, weight, bias, (5, 6), (1, 1), keep, src, act="relu")
    with pytest.raises(ValueError, match="two activations"):
        gather_conv(x, weight, bias, (5, 6), (1, 1), keep, src, silu=True, act="gelu")


def test_reference_keeps_the_activation_dtype_and_is_differentiable():
    x, weight, bias, keep, src = _ref_inputs((5, 6), (3, 3), "subset", "minus1", True, dtype=torch.float32)
    xb = x.to(torch.bfloat16).requires_grad_()
    weight.requires_grad_()
    out = gather_conv_ref(xb, weight, bias, (5, 6), (1, 1), keep, src, silu=True)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert xb.grad.dtype == torch.bfloat16 and weight.grad is not None


# ----------------------------------------------------------------------------------------------- kernels
KERNEL_CASES = {
    # name: grid, (KH, KW), padding, flip, keep, src   (x has K rows; silu and bias vary per test)
    "causal1d_hold": ((1, 13), (1, 4), (0, 3), False, "layout", "forward"),
    "causal1d_flip_hold": ((1, 13), (1, 4), (0, 3), True, "layout", "backward"),
    "causal1d_zero": ((1, 13), (1, 4), (0, 3), False, "layout", "zero"),
    "dense1d_flip": ((1, 13), (1, 4), (0, 3), True, None, None),
    "packed": ((1, 7), (1, 4), (0, 3), False, None, None),
    "grid3x3_hold": ((5, 6), (3, 3), (1, 1), False, "layout", "grid"),
    "grid3x3_zero_all_positions": ((5, 6), (3, 3), (1, 1), False, None, "zero"),
    "grid3x3_many_to_one": ((4, 5), (3, 3), (1, 1), True, "unsorted", "many"),
    "grid7x7_hold_all_positions": ((5, 6), (7, 7), (3, 3), False, None, "grid"),
    "grid7x7_zero_subset": ((5, 6), (7, 7), (3, 3), False, "layout", "zero"),
    "grid7x7_dense_flip_asymmetric": ((4, 5), (7, 7), (2, 4), True, None, None),
}


def kernel_inputs(name, dtype, C=12, b=2, index_dtype=torch.int64):
    """Fresh random inputs for a KERNEL_CASES entry; x is the first C columns of a (b, K, 2C) tensor, as the
    models' in_proj output is split."""
    grid, kernel, padding, flip, keep_kind, src_kind = KERNEL_CASES[name]
    L = grid[0] * grid[1]
    M = max(L * 7 // 10, 1)
    keep = src = None
    K = L
    if keep_kind == "layout" or src_kind in ("forward", "backward", "grid", "zero"):
        lkeep, lsrc, _ = layout_maps(b, grid, M, src_kind or "zero")
        K = M
        keep = lkeep if keep_kind == "layout" else None
        src = lsrc
    if keep_kind == "unsorted":
        keep = random_keep(b, L, M, sort=False)
    if src_kind == "many":
        K = 6
        src = many_to_one(b, L, K)
    keep = None if keep is None else keep.to(index_dtype)
    src = None if src is None else src.to(index_dtype)
    xz = torch.randn(b, K, 2 * C).to(dtype)
    weight = torch.randn(C, *kernel) * 0.5
    bias = torch.randn(C)
    return xz, weight, bias, grid, padding, keep, src, flip


def check_kernel(name, dtype, silu=True, with_bias=True, index_dtype=torch.int64, C=12, act=None):
    """Triton against the float64 reference on the same (rounded) inputs: output and every gradient."""
    xz, weight, bias, grid, padding, keep, src, flip = kernel_inputs(name, dtype, C=C, index_dtype=index_dtype)
    bias = bias if with_bias else None
    mine = [t.detach().to(DEVICE).requires_grad_() if t is not None else None for t in (xz, weight, bias)]
    ref = [t.detach().double().requires_grad_() if t is not None else None for t in (xz, weight, bias)]
    maps = [None if t is None else t.to(DEVICE) for t in (keep, src)]
    out = gather_conv(mine[0][..., :C], mine[1], mine[2], grid, padding, *maps, flip, silu, backend="triton",
                      act=act)
    expect = gather_conv_ref(ref[0][..., :C], ref[1], ref[2], grid, padding, keep, src, flip, silu, act=act)
    assert out.dtype == dtype and out.shape == expect.shape and out.is_contiguous()
    assert rel(out, expect) < TOL[dtype]
    dout = torch.randn(expect.shape, dtype=torch.float64).to(dtype)
    out.backward(dout.to(DEVICE))
    expect.backward(dout.double())
    for got, want, what in zip(mine, ref, ("x", "weight", "bias")):
        if got is None:
            continue
        assert got.grad.dtype == got.dtype and got.grad.shape == got.shape, what
        assert rel(got.grad, want.grad) < TOL[dtype], what
    assert not mine[0].grad[..., C:].any()  # the columns past the slice get nothing


@pytest.mark.slow
@pytest.mark.parametrize("name", KERNEL_CASES)
def test_kernel_float32(name):
    check_kernel(name, torch.float32, silu="dense" not in name)  # dense cases: the gradient is dout itself


@pytest.mark.slow
@pytest.mark.parametrize("name,silu,with_bias,index_dtype", [
    ("causal1d_hold", False, False, torch.int32),
    ("causal1d_flip_hold", True, True, torch.int32),
    ("grid3x3_many_to_one", False, True, torch.int64),
])
def test_kernel_float32_small_blocks(name, silu, with_bias, index_dtype, small_blocks):
    check_kernel(name, torch.float32, silu, with_bias, index_dtype, C=13)


@pytest.mark.parametrize("name,dtype", [("grid3x3_hold", torch.float32), ("grid3x3_many_to_one", torch.float32),
                                        ("grid3x3_zero_all_positions", torch.bfloat16)])
def test_kernel_gelu(name, dtype):
    """GELU fused into the conv (GroupMamba's FFN): output and every gradient against the float64 reference."""
    check_kernel(name, dtype, silu=False, act="gelu", C=16 if dtype == torch.bfloat16 else 12)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["causal1d_flip_hold", "packed", "grid3x3_hold", "grid3x3_zero_all_positions",
                                  "grid7x7_zero_subset"])
def test_kernel_bfloat16(name):
    # 16 channels: one whole channel block, so the kernels drop the channel masks (EVEN_C)
    check_kernel(name, torch.bfloat16, index_dtype=torch.int32, C=16)


@pytest.mark.slow
def test_kernel_any_strides():
    # x with a non-unit channel stride, weight as a permuted view, keep and src as strided column slices
    b, C, grid = 2, 6, (4, 5)
    keep, src, _ = layout_maps(b, grid, 14, "grid")
    x = torch.randn(b, C, 14).transpose(1, 2)
    weight = torch.randn(3, 3, C).permute(2, 0, 1)
    keep_s = torch.stack([keep, keep], dim=-1)[..., 0]
    src_s = torch.stack([src.int(), src.int()], dim=-1)[..., 1]
    assert x.stride(2) != 1 and not weight.is_contiguous() and keep_s.stride(1) == 2 and src_s.stride(1) == 2
    dev = lambda t: t.to(DEVICE)  # noqa: E731  (.to keeps the strides of these views)
    out = gather_conv(dev(x), dev(weight), None, grid, (1, 1), dev(keep_s), dev(src_s), backend="triton")
    assert rel(out, loop_definition(x, weight, None, grid, (1, 1), keep, src)) < 1e-5


def test_dense_equals_cudnn_style_conv():
    # keep=None and no src: the plain depthwise conv of a dense model, token-major
    b, C, H, W = 2, 12, 5, 6
    for k in (3, 7):
        x = torch.randn(b, H * W, C, device=DEVICE)
        weight, bias = torch.randn(C, 1, k, k, device=DEVICE), torch.randn(C, device=DEVICE)
        expect = F.conv2d(x.transpose(1, 2).reshape(b, C, H, W), weight, bias, padding=k // 2, groups=C)
        out = gather_conv(x, weight[:, 0], bias, (H, W), (k // 2, k // 2), backend="triton")
        assert rel(out, expect.flatten(2).transpose(1, 2)) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("need", ["x", "weight"])
def test_kernel_partial_gradients(need):
    # a frozen conv (dx only: dpre stored, no dweight) and a frozen input (dweight only: dpre recomputed, unstored)
    xz, weight, bias, grid, padding, keep, src, flip = kernel_inputs("causal1d_hold", torch.float32)
    x = xz[..., :12].to(DEVICE).requires_grad_(need == "x")
    weight = weight.to(DEVICE).requires_grad_(need == "weight")
    out = gather_conv(x, weight, bias.to(DEVICE), grid, padding, keep.to(DEVICE), src.to(DEVICE), flip, silu=True,
                      backend="triton")
    x64, w64 = x.detach().cpu().double().requires_grad_(), weight.detach().cpu().double().requires_grad_()
    expect = gather_conv_ref(x64, w64, bias.double(), grid, padding, keep, src, flip, silu=True)
    dout = torch.randn(expect.shape, dtype=torch.float64)
    out.backward(dout.float().to(DEVICE))
    expect.backward(dout)
    got, want = (x.grad, x64.grad) if need == "x" else (weight.grad, w64.grad)
    assert rel(got.cpu(), want) < 1e-5


def test_parameter_copies_follow_updates_and_training():
    """Without a gradient the taps/bias copies are made once per parameter version: a second call launches no copy,
    an in-place update (optimizer step, load_state_dict) is seen at once; a conv being trained copies at every call
    (a CUDA graph of the training step must replay that copy after each update)."""
    from ssmprune_cli import param_cache

    torch.manual_seed(5)
    conv = torch.nn.Conv2d(6, 6, 3, padding=1, groups=6).to(DEVICE)
    weight = lambda: conv.weight.view(6, 3, 3)  # noqa: E731  (a fresh view every call, as the models make)
    x = torch.randn(2, 20, 6, device=DEVICE)
    keep, src, _ = layout_maps(2, (4, 5), 11, "grid")
    keep, src = keep.to(DEVICE), src.to(DEVICE)
    made = []
    real = gk._taps_major
    counting = lambda w: made.append(1) or real(w)  # noqa: E731
    gk._taps_major = counting
    try:
        param_cache.clear()

        def run():
            return gather_conv(x, weight(), conv.bias, (4, 5), (1, 1), keep, src, silu=True, backend="triton")

        def want():
            w, bias = weight().detach().double().cpu(), conv.bias.detach().double().cpu()
            return gather_conv_ref(x.double().cpu(), w, bias, (4, 5), (1, 1), keep.cpu(), src.cpu(), silu=True)

        with torch.no_grad():
            first = run()
            second = run()
            assert len(made) == 1 and torch.equal(first, second)
            conv.weight.mul_(-0.5)
            conv.bias.add_(1.0)
            updated = run()
        assert len(made) == 2 and rel(updated.cpu(), want()) < 1e-5 and rel(first.cpu(), want()) > 1e-2
        out = run()  # recorded for autograd: the weight is being trained
        out.sum().backward()
        assert len(made) == 3 and conv.weight.grad is not None and rel(out.detach().cpu(), want()) < 1e-5
    finally:
        gk._taps_major = real
        param_cache.clear()


def test_no_outputs():
    x = torch.randn(2, 5, 4, device=DEVICE, requires_grad=True)
    out = gather_conv(x, torch.randn(4, 1, 4, device=DEVICE), None, (1, 5), (0, 3),
                      keep=torch.zeros(2, 0, dtype=torch.long, device=DEVICE), backend="triton")
    assert out.shape == (2, 0, 4)
    out.sum().backward()
    assert not x.grad.any()


# ----------------------------------------------------------------------------------------------- models' maps
@pytest.mark.slow
@pytest.mark.parametrize("fill", ["hold", "zero"])
def test_serves_vims_two_directions(fill):
    """What Vim computes today (scatter by the fill, causal conv in scan order, read back at the kept steps)
    equals one gather conv per direction: the backward direction is the flipped conv in original positions, and
    with keep in descending order its outputs come in scan order."""
    b, L, K, E = 2, 13, 8, 6
    layout = TokenLayout(random_keep(b, L, K), L, conv_fill=fill)
    x = torch.randn(b, K, E, dtype=torch.float64)
    for d, kind in ((0, "forward"), (1, "backward")):
        conv = torch.nn.Conv1d(E, E, 4, groups=E).double()
        order = torch.arange(L).flip(0) if d else torch.arange(L)
        steps, _ = layout.scan_steps(order)
        full = layout.scatter(x, "zero" if fill == "zero" else kind)[:, order]
        today = layout.take(F.silu(conv(F.pad(full.transpose(1, 2), (3, 0)))).transpose(1, 2), steps)
        mine = gather_conv(x, conv.weight, conv.bias, (1, L), (0, 3), layout.keep,  # (E, 1, 4): KH = 1
                           layout.fill_index("zero" if fill == "zero" else kind), flip=d == 1, silu=True)
        torch.testing.assert_close(mine.flip(1) if d else mine, today)
        keep = layout.keep.flip(1) if d else layout.keep                                   # scan order
        dev = lambda t: t.detach().float().to(DEVICE) if t.is_floating_point() else t.to(DEVICE)  # noqa: E731
        kernel = gather_conv(dev(x), dev(conv.weight), dev(conv.bias), (1, L), (0, 3), dev(keep),
                             dev(layout.fill_index("zero" if fill == "zero" else kind)), flip=d == 1, silu=True,
                             backend="triton")
        assert rel(kernel.cpu(), today) < 1e-5


def test_serves_the_2d_convs():
    """The three-pass form of a pruned 2-D conv (scatter by the nearest kept token, conv on the grid, gather at the
    kept tokens) as one op."""
    b, grid, C = 2, (5, 6), 7
    keep, src, layout = layout_maps(b, grid, 21, "grid")
    conv = torch.nn.Conv2d(C, C, 3, padding=1, groups=C).double()
    x = torch.randn(b, 21, C, dtype=torch.float64)
    full = layout.scatter(x, "grid").transpose(1, 2).reshape(b, C, *grid)
    three_pass = layout.gather(conv(full).flatten(2).transpose(1, 2))
    torch.testing.assert_close(gather_conv(x, conv.weight[:, 0], conv.bias, grid, (1, 1), keep, src), three_pass)


# ----------------------------------------------------------------------------------------------- dispatch
def test_dispatch():
    x, weight, bias, keep, src = _ref_inputs((1, 13), (1, 4), "subset", "hold", True, dtype=torch.float32)
    expect = gather_conv_ref(x.double(), weight.double(), bias.double(), (1, 13), (0, 3), keep, src)
    assert rel(gather_conv(x, weight, bias, (1, 13), (0, 3), keep, src), expect) < 1e-6     # CPU: reference
    # float64 keeps float64 precision: it goes to the reference even when the kernels are asked for
    out64 = gather_conv(x.double(), weight, bias, (1, 13), (0, 3), keep, src, backend="triton")
    assert out64.dtype == torch.float64 and rel(out64, expect) < 1e-12
    with pytest.raises(ValueError, match="backend"):
        gather_conv(x, weight, bias, (1, 13), (0, 3), keep, src, backend="cudnn")
    with pytest.raises(ValueError, match="src must be"):
        gather_conv(x, weight, bias, (2, 13), (0, 3), keep, src)
    with pytest.raises(ValueError, match="without src"):
        gather_conv(x, weight, bias, (1, 13), (0, 3))


def test_import_does_not_import_triton(triton_after_import):
    assert triton_after_import["ssmprune_cli.ops.gather_conv"] is False  # in a fresh interpreter (conftest.py)


class _Conv(torch.nn.Module):
    def __init__(self, keep, src):
        super().__init__()
        self.keep, self.src = keep, src

    def forward(self, x, weight, bias):
        return gather_conv(x, weight, bias, (4, 5), (1, 1), self.keep, self.src, silu=True)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:`torch.jit:DeprecationWarning")
def test_traced_as_one_op_and_counted():
    b, C = 2, 6
    keep, src, _ = layout_maps(b, (4, 5), 14, "grid")
    args = (torch.randn(b, 14, C), torch.randn(C, 3, 3), torch.randn(C))
    graph = torch.jit.trace(_Conv(keep, src), args).graph
    kinds = {node.kind() + "." + node.pyname() for node in graph.nodes() if node.kind() == "prim::PythonOp"}
    assert kinds == {GATHER_CONV_OP} == {"prim::PythonOp.TracedGatherConv"}
    for maps in ((keep, src), (None, None)):
        x = args[0] if maps[1] is not None else torch.randn(b, 20, C)
        analysis = _fvcore_analysis()(_Conv(*maps), (x,) + args[1:]).set_op_handle(GATHER_CONV_OP,
                                                                                  gather_conv_flop_jit)
        analysis.unsupported_ops_warnings(False).tracer_warnings("none")
        M = 20 if maps[0] is None else 14
        assert analysis.total() == b * M * C * 9
        assert analysis.by_operator() == {"gather_conv": b * M * C * 9}
        assert not analysis.unsupported_ops()


# ----------------------------------------------------------------------------------------------- channel groups
@pytest.mark.parametrize("kind,with_bias,act", [("dense", True, "silu"), ("grid", False, None),
                                                ("zero", True, "gelu")])
def test_grouped_equals_each_group_alone(kind, with_bias, act, small_blocks):
    """x (G, b, K, C) as GroupMamba passes it (a strided slice of one projection's output), each group with its
    own taps and bias, the maps shared: output and the gradients of x, weight and bias equal the float64
    definition run group by group."""
    torch.manual_seed(11)
    G, b, C, grid = 3, 2, 5, (4, 5)
    L = grid[0] * grid[1]
    keep, src = (None, None) if kind == "dense" else layout_maps(b, grid, 13, kind)[:2]
    K = L if src is None else keep.shape[1]
    xz = torch.randn(G * b * K, 2 * C, dtype=torch.float64)
    x64 = xz.view(G, b, K, 2 * C)[..., :C]                                       # strided, as the model's
    w64 = torch.randn(G, C, 3, 3, dtype=torch.float64)
    b64 = torch.randn(G, C, dtype=torch.float64) if with_bias else None
    want = torch.stack([loop_definition(x64[g], w64[g], None if b64 is None else b64[g], grid, (1, 1), keep, src,
                                        silu=act == "silu", gelu=act == "gelu") for g in range(G)])
    ref = gather_conv_ref(x64, w64, b64, grid, (1, 1), keep, src, act=act)
    assert ref.shape == (G, b, L if keep is None else keep.shape[1], C)
    assert rel(ref, want) < 1e-12

    xz32 = xz.float().to(DEVICE).requires_grad_()
    x = xz32.view(G, b, K, 2 * C)[..., :C]
    w = w64.float().to(DEVICE).requires_grad_()
    bias = None if b64 is None else b64.float().to(DEVICE).requires_grad_()
    dev = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    out = gather_conv(x, w, bias, grid, (1, 1), dev(keep), dev(src), act=act, backend="triton")
    assert out.shape == ref.shape and out.is_contiguous()
    assert rel(out, ref) < 1e-5
    dout = torch.randn(ref.shape, dtype=torch.float64)
    inputs64 = [t for t in (x64, w64, b64) if t is not None]
    for t in inputs64:
        t.requires_grad_()
    ref = gather_conv_ref(x64, w64, b64, grid, (1, 1), keep, src, act=act)
    grads64 = torch.autograd.grad(ref, inputs64, dout)
    grads = torch.autograd.grad(out, [t for t in (x, w, bias) if t is not None], dout.float().to(DEVICE))
    for got, expect in zip(grads, grads64):
        assert got.shape == expect.shape
        assert rel(got, expect) < 1e-5


def test_grouped_shape_errors():
    x = torch.randn(2, 1, 20, 4)
    with pytest.raises(ValueError, match="grouped gather_conv needs x \\(G, b, K, C\\) and weight \\(G, C, KH, KW\\)"):
        gather_conv(x, torch.randn(4, 3, 3), None, (4, 5), (1, 1))
    with pytest.raises(ValueError, match="bias must be \\(2, 4\\)"):
        gather_conv(x, torch.randn(2, 4, 3, 3), torch.randn(4), (4, 5), (1, 1))


def test_grouped_traced_and_counted():
    """fvcore counts a grouped conv as its groups' convs together: G·b·M·C·KH·KW."""
    FlopCountAnalysis = _fvcore_analysis()

    class Grouped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(3, 4, 3, 3))

        def forward(self, x):
            return gather_conv(x, self.w, None, (4, 5), (1, 1))

    fca = FlopCountAnalysis(Grouped(), torch.randn(3, 2, 20, 4)).unsupported_ops_warnings(False)
    fca.set_op_handle(GATHER_CONV_OP, gather_conv_flop_jit)
    assert fca.by_operator() == {"gather_conv": 3 * 2 * 20 * 4 * 9}
