"""A prune point's cost in kernel launches, which is what batch-1 latency pays for (a pruned block is not cheaper
than a dense one when every kernel is launch-bound). Counted as the GPU would run the forward: every fused op on
its Triton kernel (the interpreter, on CPU tensors), each kernel one launch, plus every aten op that computes
(views and dtype no-ops excluded). The launches a pruned forward makes beyond its dense model, per prune point:
score, selection, the new layout, one launch for all the scan orders of the next block, the 2-D fill map, the
gathers of the tensors that go on and a hierarchical model's refill scatter."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

from ssmprune_cli.kernels import token_scan as ts
from ssmprune_cli.models import create_model
from ssmprune_cli.ops.selective_scan import scan_backend
from ssmprune_cli.pruning.plan import PruningSpec
from ssmprune_cli.pruning.pruned_model import PrunedModel
from ssmprune_cli.pruning.schedule import keep_from_rates


def _count(model, x):
    """benchmarks/launch_count.py's counter (loaded here: it refuses to import without the interpreter)."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "launch_count.py"
    spec = importlib.util.spec_from_file_location("bench_launch_count", path)
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module.count(model, x)


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
        d, p = _count(model, x), _count(pruned, x)
    extra = sum(p.values()) - sum(d.values())
    assert p["kernel _select_kernel"] == len(points) and p["kernel _clip_score_kernel"] == len(points)
    assert 0 < extra <= per_point * len(points) + once, (extra, p - d)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="counts Triton launches through the interpreter (set on machines without CUDA)")
def test_groupmamba_layer_runs_its_four_groups_together():
    """What runs per token runs for the four channel groups at once: in_proj, x_proj, dt_proj and out_proj as one
    batched matmul each, the 3x3 convs as one launch; only the four scans (four orders) and out_norms per group."""
    from ssmprune_cli.models.groupmamba import GroupMambaConfig, GroupMambaLayer

    torch.manual_seed(0)
    layer = GroupMambaLayer(32, GroupMambaConfig(embed_dims=[32, 32, 32, 32]), dt_rank=1).eval()
    x = torch.randn(1, 20, 32)
    with scan_backend("triton"), torch.inference_mode():
        layer(x, (4, 5))
        ops = _count(lambda t: layer(t, (4, 5)), x)
    assert ops["bmm"] == 4 and ops["kernel _conv_fwd_kernel"] == 1
    assert ops["linear"] == 3                                   # CAM's fc1 and fc2, proj
    assert ops["kernel _token_scan_one_state_kernel"] == 4
