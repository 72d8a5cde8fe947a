"""A prune point's cost in kernel launches, which is what batch-1 latency pays for (a pruned block is not cheaper
than a dense one when every kernel is launch-bound). Counted as the GPU would run the forward: every fused op on
its Triton kernel (the interpreter, on CPU tensors), each kernel one launch, plus every aten op that computes
(views and dtype no-ops excluded). The launches a pruned forward makes beyond its dense model, per prune point:
score, selection, the new layout, one launch for all the scan orders of the next block, the 2-D fill map, the
gathers of the tensors that go on and a hierarchical model's refill scatter."""

import collections
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ssmprune_cli.kernels import token_scan as ts
from ssmprune_cli.models import create_model
from ssmprune_cli.ops.selective_scan import scan_backend
from ssmprune_cli.pruning.plan import PruningSpec
from ssmprune_cli.pruning.pruned_model import PrunedModel
from ssmprune_cli.pruning.schedule import keep_from_rates

_FREE = {"view", "_unsafe_view", "expand", "t", "transpose", "permute", "select", "slice", "split",
         "split_with_sizes", "unsqueeze", "squeeze", "as_strided", "alias", "detach", "unbind", "reshape",
         "lift_fresh", "_reshape_alias", "unflatten", "flatten", "narrow", "empty", "empty_strided", "empty_like",
         "new_empty", "is_same_size", "chunk"}


class _Launches(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()
        self.inside_kernel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__.split(".")[0]
        if self.inside_kernel or name in _FREE or (name == "to" and args and out is args[0]):
            return out
        self.ops[name] += 1
        return out


def _count(model, x, monkeypatch) -> collections.Counter:
    from triton.runtime.interpreter import InterpretedFunction

    counter = _Launches()
    run = InterpretedFunction.run

    def counted(self, *args, **kwargs):
        counter.ops["kernel " + self.fn.__name__] += 1
        counter.inside_kernel += 1  # the interpreter's own tensor work is the kernel, not launches
        try:
            return run(self, *args, **kwargs)
        finally:
            counter.inside_kernel -= 1

    monkeypatch.setattr(InterpretedFunction, "run", counted)
    with counter:
        model(x)
    monkeypatch.setattr(InterpretedFunction, "run", run)
    return counter.ops


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="counts Triton launches through the interpreter (set on machines without CUDA)")
@pytest.mark.parametrize("name,options,per_point,once", [
    # score, select, layout, orders, 2-D fill, the gather of x, the refill scatter
    ("groupmamba_test", dict(depths=[2, 2, 2, 1]), 7, 0),
    # score, select, layout, orders, the protected class token's row, gathers of hidden and residual; once: the
    # check that the class token survived (a read-back, skipped under CUDA graphs and torch.compile)
    ("vim_test", dict(embed_dim=16), 7, 3),
])
def test_a_prune_point_costs_a_handful_of_launches(name, options, per_point, once, monkeypatch):
    # Launches are counted, not timed: the widths and tiles below change what each launch does, not how many there
    # are. Vim at half width runs one channel block per scan; GroupMamba's one-state scans take 32-step tiles (128
    # on the GPU), whose parallel prefix the interpreter walks step by step over a whole tile, however few tokens.
    monkeypatch.setitem(ts.LAUNCH, "one_state", dict(ts.LAUNCH["one_state"], BT=32))
    torch.manual_seed(0)
    model = create_model(name, **options).eval()
    points = keep_from_rates(model, model.prune_sites()[:3], [0.7, 0.7, 0.7])
    pruned = PrunedModel(model, PruningSpec(points, delta_fill="calib")).eval()  # model(x) stays the dense forward
    x = torch.randn(1, *model.input_size())
    with scan_backend("triton"), torch.inference_mode():
        pruned(x)  # parameter copies and scan orders made once (shared by both forwards), outside the count
        d, p = _count(model, x, monkeypatch), _count(pruned, x, monkeypatch)
    extra = sum(p.values()) - sum(d.values())
    assert p["kernel _select_kernel"] == len(points) and p["kernel _clip_score_kernel"] == len(points)
    assert 0 < extra <= per_point * len(points) + once, (extra, p - d)
