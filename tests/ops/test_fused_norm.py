"""Fused residual add + norm (+ gate): the reference against independent float64 formulas and the models' norms;
the Triton kernels against the float64 reference, forward and every gradient, for every option.

On a machine without CUDA, tests/conftest.py sets TRITON_INTERPRET=1 before the kernels are imported, so they run
on the CPU; shapes stay tiny (rows <= 12, D in {8, 24, 40}). Every buffer the kernels must fill is NaN first.
"""

import itertools
import zlib

import pytest
import torch
import torch.nn.functional as F

from ssmprune_cli.errors import BadInputError
from ssmprune_cli.kernels import fused_norm as K
from ssmprune_cli.models.vim import RMSNorm
from ssmprune_cli.ops import fused_norm as ops
from ssmprune_cli.ops.fused_norm import add_norm, add_norm_ref, layer_norm, rms_norm

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EPS = 1e-5
# bfloat16 outputs lie within this relative distance of the exact value: half a unit in the last place (2**-7
# relative at most) on the GPU, which rounds to nearest; a whole one under the interpreter, whose float32 ->
# bfloat16 conversion truncates (triton/runtime/interpreter.py, `cast_impl`).
BF16_ULP = 2.0 ** -8 if torch.cuda.is_available() else 2.0 ** -7


@pytest.fixture(autouse=True)
def fresh_inputs(_seed, request):
    """Different, reproducible random inputs for every test case."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(autouse=True)
def poisoned(monkeypatch):
    monkeypatch.setattr(K, "_empty", lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype,
                                                                           device=device))


@pytest.fixture
def small_tiles(monkeypatch):
    """Several programs and, in the backward, several tiles per program even at 12 rows."""
    monkeypatch.setitem(K.LAUNCH, "fwd", {4096: (4, 2)})
    monkeypatch.setitem(K.LAUNCH, "bwd", {4096: (2, 2)})
    monkeypatch.setitem(K.LAUNCH, "programs_per_sm", 2)


def rel(x, ref) -> float:
    """||x - ref|| / ||ref|| in float64; NaN anywhere gives inf, so unwritten (poisoned) elements fail."""
    x, ref = x.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(x).all():
        return float("inf")
    return ((x - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def assert_matches(got, want, dtype, name=""):
    """float32: 1e-5 relative to the float64 value; bfloat16: within bfloat16 rounding of it, element by element
    (plus float32 arithmetic error, 1e-5 of the largest element)."""
    assert got is not None, name
    assert got.dtype == dtype and got.shape == want.shape, name
    if dtype == torch.bfloat16:
        got, want = got.detach().double().cpu(), want.detach().double().cpu()
        assert torch.isfinite(got).all(), name
        err = (got - want).abs() - BF16_ULP * want.abs()
        assert err.max().item() <= 1e-5 * want.abs().max().item(), name
    else:
        assert rel(got, want) <= 1e-5, name


def independent(x, residual, weight, bias, gate, eps, kind):
    """The norms written differently from `add_norm_ref` (float64)."""
    s = x if residual is None else x + residual
    D = s.shape[-1]
    if kind == "rms":
        y = s * (D ** 0.5) / torch.sqrt(torch.linalg.vector_norm(s, dim=-1, keepdim=True) ** 2 + D * eps)
    else:
        var, mean = torch.var_mean(s, dim=-1, keepdim=True, correction=0)
        y = (s - mean) / torch.sqrt(var + eps)
    y = y * weight + (0.0 if bias is None else bias)
    return y if gate is None else y * gate


def rows_of(lead, D, dtype, *, strided=False, scale=1.0, shift=0.0):
    """Random (*lead, D) rows; `strided`: a column slice of a wider tensor, starting at an unaligned column."""
    if strided:
        wide = (torch.randn(*lead, D + 5) * scale + shift).to(device=DEVICE, dtype=dtype)
        return wide[..., 3:D + 3]
    return (torch.randn(*lead, D) * scale + shift).to(device=DEVICE, dtype=dtype)


# ---------------------------------------------------------------------------------------------- the reference
@pytest.mark.parametrize("kind,residual,bias,gate", list(itertools.product(["rms", "layer"], [False, True],
                                                                           [False, True], [False, True])))
def test_reference_equals_independent_formulas(kind, residual, bias, gate):
    D = 24
    x = torch.randn(3, 5, D, dtype=torch.float64) * 2.0 + 0.7
    r = torch.randn(3, 5, D, dtype=torch.float64) if residual else None
    w = 1.0 + 0.3 * torch.randn(D, dtype=torch.float64)
    b = 0.3 * torch.randn(D, dtype=torch.float64) if bias else None
    g = torch.randn(3, 5, D, dtype=torch.float64) if gate else None
    y, res = add_norm_ref(x, r, w, b, EPS, kind, gate=g)
    assert y.dtype == torch.float64 and rel(y, independent(x, r, w, b, g, EPS, kind)) < 1e-13
    if residual:
        assert res.dtype == torch.float64 and torch.equal(res, x + r)
    else:
        assert res is None


def test_reference_equals_torch_layer_norm_and_vim_rmsnorm():
    D = 40
    x, r = torch.randn(4, D, dtype=torch.float64) + 0.5, torch.randn(4, D, dtype=torch.float64)
    w, b = 1.0 + 0.3 * torch.randn(D, dtype=torch.float64), torch.randn(D, dtype=torch.float64)
    y, _ = add_norm_ref(x, r, w, b, 1e-6, "layer")
    torch.testing.assert_close(y, F.layer_norm(x + r, (D,), w, b, 1e-6), rtol=1e-13, atol=1e-13)
    norm = RMSNorm(D, EPS).double()
    with torch.no_grad():
        norm.weight.copy_(w)
        y, _ = add_norm_ref(x, r, w, None, EPS, "rms")
        torch.testing.assert_close(y, norm(x + r), rtol=1e-13, atol=1e-13)


def test_reference_follows_vim_block_dtypes_exactly():
    """VimBlock: residual = fp32(residual + hidden); hidden = RMSNorm(residual).to(hidden.dtype)."""
    D = 24
    hidden, residual = torch.randn(2, 7, D).to(torch.bfloat16), torch.randn(2, 7, D)
    norm = RMSNorm(D, EPS)
    with torch.no_grad():
        norm.weight.copy_(1.0 + 0.3 * torch.randn(D))
        y, res = add_norm_ref(hidden, residual, norm.weight, None, EPS, "rms")
        want_res = residual + hidden
        assert res.dtype == torch.float32 and torch.equal(res, want_res)
        assert y.dtype == torch.bfloat16 and torch.equal(y, norm(want_res).to(torch.bfloat16))
        # block 0: no residual yet; the stream starts as the hidden state, at float32
        y, res = add_norm_ref(hidden, None, norm.weight, None, EPS, "rms", residual_dtype=torch.float32)
        assert torch.equal(res, hidden.float()) and torch.equal(y, norm(hidden.float()).to(torch.bfloat16))


def test_reference_gate_and_dtypes():
    D = 8
    y = torch.randn(2, 3, D)
    z = torch.randn(2, 3, D)
    ln = torch.nn.LayerNorm(D)
    with torch.no_grad():
        out = layer_norm(y, ln.weight, ln.bias, ln.eps, gate=z)  # GroupMamba: out_norm(y) * z
        torch.testing.assert_close(out, ln(y) * z, rtol=1e-6, atol=1e-6)
        assert rms_norm(y.to(torch.bfloat16), torch.ones(D), EPS).dtype == torch.bfloat16
        out, res = add_norm_ref(y.to(torch.bfloat16), None, ln.weight, None, EPS, "rms", out_dtype=torch.float32)
        assert out.dtype == torch.float32 and res is None
        y64, z64 = y.double(), z.double()
        out = add_norm_ref(y64, None, ln.weight, ln.bias, ln.eps, "layer", gate=z64, gate_act="silu")[0]
        torch.testing.assert_close(out, F.layer_norm(y64, (D,), ln.weight.double(), ln.bias.double(), ln.eps)
                                   * (z64 / (1 + torch.exp(-z64))), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="gate activation"):
        add_norm(y, None, ln.weight, ln.bias, ln.eps, "layer", gate=z, gate_act="gelu")
    with pytest.raises(ValueError, match="gate_act needs a gate"):
        add_norm(y, None, ln.weight, ln.bias, ln.eps, "layer", gate_act="silu")


# ------------------------------------------------------------------------------------------- Triton kernels
RES_MODES = {
    None: {},                                                             # no residual, no residual output
    "fp32": {"residual": torch.float32},                                  # Vim: float32 residual stream
    "x_dtype": {"residual": "x", "residual_dtype": "x"},                  # a residual stream in x's dtype
    "start": {"residual_dtype": torch.float32},                           # Vim block 0: stream starts here
}


def case_inputs(kind, res, bias, gate, dtype, lead=(3, 4), D=24, strided=False):
    mode = RES_MODES[res]
    rdt = {"x": dtype}.get(mode.get("residual"), mode.get("residual"))
    x = rows_of(lead, D, dtype, strided=strided, scale=1.5, shift=0.3)
    r = None if rdt is None else rows_of(lead, D, rdt, strided=strided)
    w = (1.0 + 0.3 * torch.randn(D)).to(DEVICE)
    b = (0.3 * torch.randn(D)).to(DEVICE) if bias else None
    g = rows_of(lead, D, dtype, strided=strided) if gate else None
    res_dtype = {"x": dtype}.get(mode.get("residual_dtype"), mode.get("residual_dtype"))
    return [x, r, w, b, g], res_dtype


def leaves(tensors, dtype=None):
    return [None if t is None else t.detach().to(device="cpu" if dtype else t.device, dtype=dtype or t.dtype)
            .requires_grad_() for t in tensors]


def check(kind, tensors, res_dtype, out_dtype=None, use_residual_grad=True, gate_act=None):
    """Kernel and float64 reference on the same (rounded) inputs: outputs and every gradient."""
    mine, ref = leaves(tensors), leaves(tensors, torch.float64)
    x = tensors[0]
    y, res = add_norm(*mine[:4], EPS, kind, out_dtype, res_dtype, mine[4], backend="triton", gate_act=gate_act)
    want_y, want_res = add_norm_ref(*ref[:4], EPS, kind, None, None if res_dtype is None else torch.float64, ref[4],
                                    gate_act=gate_act)
    assert_matches(y, want_y, out_dtype or x.dtype, "out")
    if res_dtype is None and tensors[1] is None:
        assert res is None
    else:
        want_dtype = res_dtype or torch.promote_types(torch.promote_types(x.dtype, tensors[1].dtype), torch.float32)
        assert_matches(res, want_res, want_dtype, "residual out")
    dy = torch.randn(want_y.shape, dtype=torch.float64).to(y.dtype)
    loss, want_loss = (y * dy.to(y.device)).float().sum(), (want_y * dy.double()).sum()
    if res is not None and use_residual_grad:
        dres = torch.randn(want_res.shape, dtype=torch.float64).to(res.dtype)
        loss = loss + (res * dres.to(res.device)).float().sum()
        want_loss = want_loss + (want_res * dres.double()).sum()
    loss.backward()
    want_loss.backward()
    for name, m, r in zip(("x", "residual", "weight", "bias", "gate"), mine, ref):
        if m is not None:
            assert_matches(m.grad, r.grad, m.dtype, "d" + name)


@pytest.mark.slow
@pytest.mark.parametrize("kind,res,bias,gate,dtype", list(itertools.product(
    ["rms", "layer"], list(RES_MODES), [False, True], [False, True], [torch.float32, torch.bfloat16])))
def test_kernels_every_option(kind, res, bias, gate, dtype, small_tiles):
    tensors, res_dtype = case_inputs(kind, res, bias, gate, dtype, lead=(11,), D=40)
    check(kind, tensors, res_dtype)


@pytest.mark.slow
@pytest.mark.parametrize("kind,res,dtype", [("layer", None, torch.bfloat16), ("layer", None, torch.float32),
                                            ("rms", "fp32", torch.float32)])
def test_kernels_silu_gate(kind, res, dtype, small_tiles):
    """gate_act='silu' (GroupMamba's out_norm(y) * silu(z) in one pass): forward and every gradient, the gate's
    through silu', against the float64 reference."""
    tensors, res_dtype = case_inputs(kind, res, True, True, dtype, lead=(11,), D=24)
    tensors[4] = tensors[4] * 3  # the gate over silu's curved range
    check(kind, tensors, res_dtype, gate_act="silu")


@pytest.mark.slow
@pytest.mark.parametrize("D", [8, 24, 40])
@pytest.mark.parametrize("kind", ["rms", "layer"])
def test_kernels_default_launch(kind, D):
    tensors, res_dtype = case_inputs(kind, "fp32", True, kind == "layer", torch.bfloat16, lead=(2, 6), D=D)
    check(kind, tensors, res_dtype)


@pytest.mark.slow
@pytest.mark.parametrize("kind,res,gate", [("rms", "fp32", False), ("layer", "x_dtype", True), ("layer", None, True),
                                           ("rms", "start", False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernels_strided_rows(kind, res, gate, dtype, small_tiles):
    """Column slices (rows strided, last dim contiguous, unaligned start) are read in place, no copy."""
    tensors, res_dtype = case_inputs(kind, res, True, gate, dtype, lead=(2, 5), D=24, strided=True)
    x = tensors[0]
    rows, stride = K._rows(x, 24)
    assert not x.is_contiguous() and rows.data_ptr() == x.data_ptr() and stride == 29
    check(kind, tensors, res_dtype)


@pytest.mark.slow
def test_kernels_any_layout(small_tiles):
    """Leading dims that do not merge into one row stride, and a gate whose last dim is strided: copied once."""
    D = 24
    x = (torch.randn(5, 2, D + 5) * 1.5 + 0.3).to(DEVICE).transpose(0, 1)[..., :D]
    r = torch.randn(5, 2, D, device=DEVICE).transpose(0, 1)
    g = torch.randn(D, 2, 5, device=DEVICE).permute(1, 2, 0)
    assert K._rows(x, D)[0].data_ptr() != x.data_ptr() and g.stride(-1) != 1
    check("layer", [x, r, (1.0 + 0.3 * torch.randn(D)).to(DEVICE), torch.randn(D, device=DEVICE), g], None)


@pytest.mark.slow
def test_kernels_unused_residual_output_and_out_dtype(small_tiles):
    tensors, res_dtype = case_inputs("rms", "fp32", False, False, torch.bfloat16, lead=(12,), D=8)
    check("rms", tensors, res_dtype, out_dtype=torch.float32, use_residual_grad=False)


@pytest.mark.slow
def test_kernels_only_the_residual_output_used():
    x, r = rows_of((3, 8), 8, torch.bfloat16).requires_grad_(), rows_of((3, 8), 8, torch.float32).requires_grad_()
    w = torch.ones(8, device=DEVICE, requires_grad=True)
    _, res = add_norm(x, r, w, None, EPS, "rms", backend="triton")
    dres = torch.randn_like(res)
    res.backward(dres)
    assert torch.equal(x.grad, dres.to(torch.bfloat16)) and torch.equal(r.grad, dres) and w.grad is None


@pytest.mark.slow
def test_kernels_frozen_inputs_only_weight_grads(small_tiles):
    tensors, res_dtype = case_inputs("layer", "fp32", True, True, torch.float32, lead=(12,), D=24)
    x, r, _, _, g = tensors
    w, b = (t.detach().requires_grad_() for t in tensors[2:4])
    y, _ = add_norm(x, r, w, b, EPS, "layer", gate=g, backend="triton")
    dy = torch.randn_like(y)
    dw, db = torch.autograd.grad(y, (w, b), dy)
    w64, b64 = w.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    want = add_norm_ref(x.double(), r.double(), w64, b64, EPS, "layer", gate=g.double())[0]
    want_dw, want_db = torch.autograd.grad(want, (w64, b64), dy.double())
    assert rel(dw, want_dw) < 1e-5 and rel(db, want_db) < 1e-5


@pytest.mark.slow
def test_kernels_inference_path_matches_training_path():
    tensors, res_dtype = case_inputs("layer", "fp32", True, True, torch.float32, lead=(2, 5), D=40)
    with torch.no_grad():
        plain = add_norm(*tensors[:4], EPS, "layer", None, res_dtype, tensors[4], backend="triton")
    trained = add_norm(*leaves(tensors)[:4], EPS, "layer", None, res_dtype, leaves(tensors)[4], backend="triton")
    assert trained[0].requires_grad and not plain[0].requires_grad
    # the same arithmetic compiled twice (statistics saved or not): the GPU compiler may contract differently
    assert rel(plain[0], trained[0]) < 1e-6 and torch.equal(plain[1], trained[1])


@pytest.mark.slow
def test_kernels_residual_output_convention():
    x = rows_of((4,), 24, torch.bfloat16)
    w = torch.ones(24, device=DEVICE)
    _, res = add_norm(x, None, w, None, EPS, "rms", backend="triton")
    assert res is None
    _, res = add_norm(x, None, w, None, EPS, "rms", residual_dtype=torch.float32, backend="triton")
    assert res.dtype == torch.float32 and torch.equal(res, x.float())
    _, res = add_norm(x, x, w, None, EPS, "rms", backend="triton")
    assert res.dtype == torch.float32 and torch.equal(res, x.float() * 2)


@pytest.mark.slow
@pytest.mark.parametrize("lead", [(), (0,), (2, 0, 3)])
def test_kernels_single_and_empty_rows(lead):
    tensors, res_dtype = case_inputs("layer", "fp32", True, True, torch.float32, lead=lead, D=8)
    if lead == ():
        check("layer", tensors, res_dtype)
        return
    mine = leaves(tensors)
    y, res = add_norm(*mine[:4], EPS, "layer", gate=mine[4], backend="triton")
    assert y.shape == res.shape == tensors[0].shape
    (y.sum() + res.sum()).backward()
    assert torch.equal(mine[2].grad, torch.zeros(8, device=DEVICE)) and mine[0].grad.shape == y.shape


# ------------------------------------------------------------------------------------------------- dispatch
def _no_triton(*args, **kwargs):
    raise AssertionError("the Triton path was taken")


def test_cpu_and_float64_take_the_reference(monkeypatch):
    monkeypatch.setattr(K, "add_norm_triton", _no_triton)
    tensors, _ = case_inputs("layer", "fp32", True, True, torch.float32, lead=(5,), D=24)
    tensors = [t.cpu() for t in tensors]
    got = add_norm(*tensors[:4], EPS, "layer", gate=tensors[4])
    want = add_norm_ref(*tensors[:4], EPS, "layer", gate=tensors[4])
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    t64 = [t.double() for t in tensors]
    got = add_norm(*t64[:4], EPS, "layer", gate=t64[4], backend="triton")
    assert got[0].dtype == torch.float64 and torch.equal(got[0], add_norm_ref(*t64[:4], EPS, "layer", gate=t64[4])[0])
    assert torch.equal(rms_norm(tensors[0], tensors[2], EPS), add_norm_ref(tensors[0], None, tensors[2], None, EPS,
                                                                         "rms")[0])


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:`torch.jit:DeprecationWarning")
@pytest.mark.parametrize("kind", ["rms", "layer"])
def test_tracing_takes_the_reference_and_counts_nothing(kind, monkeypatch):
    """Under torch.jit tracing (fvcore) the op is the reference's elementwise ops, which the FLOP report decides
    not to count (report.flops.NOT_COUNTED): nothing is counted and nothing is left unsupported."""
    from ssmprune_cli.report.flops import NOT_COUNTED, _fvcore_analysis

    monkeypatch.setattr(K, "add_norm_triton", _no_triton)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight, self.bias = torch.nn.Parameter(torch.randn(8)), torch.nn.Parameter(torch.randn(8))

        def forward(self, x, r, z):
            return add_norm(x, r, self.weight, self.bias, EPS, kind, gate=z, backend="triton")

    args = (torch.randn(2, 3, 8), torch.randn(2, 3, 8), torch.randn(2, 3, 8))
    traced = torch.jit.trace(Block(), args, check_trace=False)
    kinds = {n.kind() for n in traced.graph.nodes()}
    assert "aten::rsqrt" in kinds and not any(k.startswith("prim::PythonOp") for k in kinds)
    analysis = _fvcore_analysis()(Block(), args).unsupported_ops_warnings(False).tracer_warnings("none")
    for op in NOT_COUNTED:
        analysis.set_op_handle(op, None)
    assert analysis.total() == 0 and not analysis.unsupported_ops()


def test_triton_needs_cuda_outside_the_interpreter(monkeypatch):
    monkeypatch.setattr(K, "INTERPRET", False)
    with pytest.raises(BadInputError, match="CUDA"):
        add_norm(torch.randn(2, 8), None, torch.ones(8), None, EPS, "rms", backend="triton")


def test_bad_arguments():
    x, w = torch.randn(2, 8), torch.ones(8)
    with pytest.raises(ValueError, match="kind"):
        add_norm(x, None, w, None, EPS, "batch")
    with pytest.raises(ValueError, match="backend"):
        add_norm(x, None, w, None, EPS, "rms", backend="cuda")
    with pytest.raises(ValueError, match="residual"):
        add_norm(x, torch.randn(2, 9), w, None, EPS, "rms")
    with pytest.raises(ValueError, match="weight"):
        add_norm(x, None, torch.ones(9), None, EPS, "rms", backend="triton")


def test_width_limit_is_one_number():
    assert ops.MAX_WIDTH == K.MAX_WIDTH == max(K.LAUNCH["fwd"]) == max(K.LAUNCH["bwd"])
    with pytest.raises(BadInputError, match="rows of 1 to"):
        add_norm(torch.randn(1, K.MAX_WIDTH + 1, device=DEVICE), None, torch.ones(K.MAX_WIDTH + 1, device=DEVICE),
                 None, EPS, "rms", backend="triton")


def test_importing_the_op_does_not_import_triton(triton_after_import):
    assert triton_after_import["ssmprune_cli.ops.fused_norm"] is False  # in a fresh interpreter (conftest.py)


@pytest.mark.parametrize("dtype,D", [(torch.float32, 24), (torch.bfloat16, 40)])
def test_kernels_grouped_weights(dtype, D, small_tiles):
    """Weights (G, D): x (G, b, K, D), group g's rows normed with weight[g] and bias[g], gated by silu(z) read as a
    column slice (GroupMamba's four out_norms in one launch; rows of one program span two groups here): the
    kernel against each group's float64 reference."""
    G, b, K = 3, 2, 5
    x = torch.randn(G, b, K, D).to(dtype)
    xz = torch.randn(G, b, K, 2 * D).to(dtype)
    z = xz[..., D:]
    w, bias = torch.randn(G, D) * 0.5 + 1.0, torch.randn(G, D) * 0.3
    want = torch.stack([add_norm_ref(x[g].double(), None, w[g].double(), bias[g].double(), EPS, "layer",
                                     gate=z[g].double(), gate_act="silu")[0] for g in range(G)])
    ref = add_norm_ref(x.double(), None, w.double(), bias.double(), EPS, "layer", gate=z.double(), gate_act="silu")[0]
    torch.testing.assert_close(ref, want, rtol=1e-12, atol=1e-12)
    dev = lambda t: t.to(DEVICE)  # noqa: E731
    got = add_norm(dev(x), None, dev(w), dev(bias), EPS, "layer", gate=dev(xz)[..., D:], gate_act="silu",
                   backend="triton")[0]
    assert got.shape == x.shape and got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 4 * BF16_ULP
    assert ((got.double().cpu() - want).abs() / want.abs().clamp(min=1.0)).max() < tol
    # with gradients to compute, grouped weights take the reference (the kernels have no grouped backward)
    wg = dev(w).requires_grad_()
    y = add_norm(dev(x).float(), None, wg, dev(bias), EPS, "layer", backend="triton")[0]
    y.sum().backward()
    assert wg.grad.shape == (G, D)
    with pytest.raises(ValueError, match=f"expected \\(3, {D}\\) \\(grouped"):
        add_norm(x, None, torch.randn(G, D + 1), None, EPS, "layer")
