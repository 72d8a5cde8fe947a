"""Inference graphs hand autocast its matmul weights already cast (ops/graphs.matmul_weights_as): the same results
as autocast casting them at each call, the parameters untouched afterwards, and nothing else cast."""

import pytest
import torch
from torch import nn

from ssmprune_cli.models import create_model
from ssmprune_cli.ops.graphs import matmul_weights_as


class _Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Conv2d(3, 8, 2, stride=2)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8, 5)
        self.tied = nn.Linear(5, 8, bias=False)
        self.tied_again = nn.Linear(5, 8, bias=False)
        self.tied_again.weight = self.tied.weight

    def forward(self, x):
        h = self.depthwise(self.dense(x)).mean((2, 3))
        return self.tied_again(self.fc(h)) + self.tied(self.fc(h))


@pytest.mark.parametrize("inference", [False, True], ids=["no_grad", "inference_mode"])
def test_weights_are_cast_for_the_call_and_given_back(inference):
    torch.manual_seed(0)
    m = _Mixed().eval()
    params = {n: (p, p.detach().clone()) for n, p in m.named_parameters()}
    order = list(m.state_dict())
    mode = torch.inference_mode() if inference else torch.no_grad()  # bench captures its graphs in inference mode
    with mode, matmul_weights_as(m, torch.bfloat16) as copies:
        assert len(copies) == 3  # dense conv, fc and the tied weight once
        assert m.dense.weight.dtype == m.fc.weight.dtype == m.tied.weight.dtype == torch.bfloat16
        assert m.dense.bias.dtype == m.fc.bias.dtype == torch.float32                 # biases stay
        assert m.depthwise.weight.dtype == torch.float32                              # the project's own kernels
        assert torch.equal(m.fc.weight, params["fc.weight"][1].to(torch.bfloat16))
    for n, p in m.named_parameters():
        assert p is params[n][0] and p.dtype == torch.float32 and torch.equal(p, params[n][1]), n
        assert not p.is_inference() and p.requires_grad, n
    assert list(m.state_dict()) == order


@pytest.mark.parametrize("name", ["groupmamba_test", "vmamba_test"])
def test_listed_matmul_parameters_are_cast_too(name):
    """GroupMamba's and VMamba's SS2D pass x_proj and dt_proj weights to F.linear themselves (official parameter
    layout): listed in `matmul_parameters`, they are cast with the nn.Linear weights and given back after."""
    model = create_model(name).eval()
    listed = [(m, n) for m in model.modules() for n in getattr(m, "matmul_parameters", ())]
    assert len(listed) == 2 * sum(1 for m in model.modules() if hasattr(m, "matmul_parameters")) > 0
    before = {id(getattr(m, n)): getattr(m, n).detach().clone() for m, n in listed}
    with torch.no_grad(), matmul_weights_as(model, torch.bfloat16) as copies:
        assert all(getattr(m, n).dtype == torch.bfloat16 for m, n in listed)
        assert len(copies) == len(listed) + sum(1 for m in model.modules() if isinstance(m, nn.Linear)) + sum(
            1 for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups == 1)
        assert all(m.A_logs.dtype == torch.float32 for m, _ in listed)     # the scan's parameters stay
    for m, n in listed:
        p = getattr(m, n)
        assert isinstance(p, nn.Parameter) and p.dtype == torch.float32 and torch.equal(p, before[id(p)])


@pytest.mark.parametrize("name", ["vim_test", "groupmamba_test", "plainmamba_test", "vmamba_test"])
def test_same_logits_as_autocast_casting_each_call(name):
    """Under bf16 autocast the pre-cast weights give bit-identical logits (CPU autocast, fresh random weights)."""
    torch.manual_seed(1)
    model = create_model(name).eval()
    x = torch.randn(2, *model.input_size())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = model(x)
        with matmul_weights_as(model, torch.bfloat16):
            got = model(x)
    assert got.dtype == want.dtype and torch.equal(got, want)
