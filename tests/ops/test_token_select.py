"""A prune point's scores and selection (ops/token_select.py): the PyTorch forms against definitions written here
row by row, and the Triton kernels (interpreter on CPU) against the PyTorch forms, on fresh random inputs with
forced ties, protected rows, NaN and signed zeros."""

import pytest
import torch

from ssmprune_cli.ops.token_select import clip_scores, clip_scores_ref, select_top, select_top_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _definition(scores, keep, protected):
    """Per image: protected rows first, then by score (NaN as -inf) descending, ties to the lower row."""
    out = []
    for b, row in enumerate(scores.float().tolist()):
        prot = set() if protected is None else set(protected[b].tolist())
        key = lambda i: (i not in prot, -(float("-inf") if row[i] != row[i] else row[i]), i)  # noqa: E731
        out.append(sorted(sorted(range(len(row)), key=key)[:keep]))
    return torch.tensor(out, dtype=torch.int64)


def _scores(b, K, gen, dtype=torch.float32):
    s = torch.randn(b, K, generator=gen)
    s[:, ::3] = s[:, ::3].round()                        # many exact ties
    s[:, 1] = float("nan")
    s[:, 2] = -0.0
    s[:, 5 % K] = 0.0
    return s.to(dtype)


# Rows padded to a power of two in one program: 7 -> 8, 20 -> 32, 197 -> 256 and 300 -> 512 (two warps on the GPU).
# Under the interpreter the sort of 256 or 512 keys costs seconds: each of those two runs once, with and without
# protected rows, where the small cases run both ways.
@pytest.mark.parametrize("K,keep,with_prot", [(7, 3, False), (7, 3, True), (20, 20, False), (20, 20, True),
                                              (20, 1, False), (20, 1, True), (197, 101, False), (300, 210, True)])
def test_reference_is_the_definition_and_kernel_equals_it(K, keep, with_prot):
    gen = torch.Generator().manual_seed(K * 7 + keep)
    s = _scores(3, K, gen)
    prot = None
    if with_prot:
        prot = torch.stack([torch.randperm(K, generator=gen)[:min(2, keep)] for _ in range(3)])
        s[0, prot[0, 0]] = float("-inf")                   # the lowest score, still kept
    want = _definition(s, keep, prot)
    assert torch.equal(select_top_ref(s, keep, prot), want)
    got = select_top(s.to(DEVICE), keep, None if prot is None else prot.to(DEVICE), backend="triton")
    assert got.dtype == torch.int64 and torch.equal(got.cpu(), want)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_kernel_reads_any_score_dtype_and_expanded_protection(dtype):
    gen = torch.Generator().manual_seed(3)
    s = _scores(2, 65, gen, dtype)                        # one program per image under the interpreter: two
    prot = torch.tensor([[32]]).expand(2, 1)              # Vim's middle class token, one view for every image
    want = _definition(s, 17, prot)
    assert torch.equal(select_top_ref(s, 17, prot), want)
    assert torch.equal(select_top(s.to(DEVICE), 17, prot.to(DEVICE), backend="triton").cpu(), want)


def test_select_checks_its_arguments():
    s = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="cannot keep 6 of 5"):
        select_top(s, 6)
    with pytest.raises(ValueError, match="3 protected tokens do not fit in 2"):
        select_top(s, 2, torch.zeros(2, 3, dtype=torch.long))
    assert select_top(s, 0, backend="triton").shape == (2, 0)  # EViT's fused token can take the only place


@pytest.mark.parametrize("shape", [(2, 9, 7), (3, 33, 1300)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_clip_scores(shape, dtype):
    gen = torch.Generator().manual_seed(sum(shape))
    o64 = torch.randn(*shape, generator=gen, dtype=torch.float64)
    o = o64.to(dtype)
    want = torch.where(o.double() > 0, o.double(), 0.0).sum(-1)   # float64 definition of the rounded inputs
    ref = clip_scores_ref(o)
    assert ref.dtype == dtype
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(ref.double(), want, rtol=tol, atol=tol)
    strided = torch.randn(shape[0], shape[1], shape[2] + 5, generator=gen).to(dtype)[..., :shape[2]]
    for x in (o, strided):
        got = clip_scores(x.to(DEVICE), backend="triton").cpu()
        assert got.dtype == dtype and got.shape == shape[:2]
        torch.testing.assert_close(got.double(), clip_scores_ref(x).double(), rtol=tol, atol=tol)


def test_cpu_tensors_take_the_reference_unless_asked():
    o = torch.randn(2, 6, 4)
    assert torch.equal(clip_scores(o), clip_scores_ref(o))
    assert torch.equal(select_top(o[..., 0], 3), select_top_ref(o[..., 0], 3))


def test_importing_the_op_does_not_import_triton(triton_after_import):
    # a prune point's scores and selection, imported as the pruning engine does, in a fresh interpreter (conftest.py)
    assert triton_after_import["ssmprune_cli.pruning.importance"] is False
