"""Pruned models under torch.compile (what `bench --compile` runs): the traced forward equals the eager one, and it
makes no tensor from host data. Such a tensor (a Python list turned into a device tensor) is a host-to-device copy
in every call, which CUDA graph capture refuses: `bench --compile` then fell back to eager calls for pruned
PlainMamba on the GPU.

Dynamo traces with a recording backend (no Inductor code generation), so the test is fast on the CPU."""

import functools
import sys
from pathlib import Path

import pytest
import torch

from ssmprune_cli.models import create_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import models as bench_models  # noqa: E402
from models import CASES, build_pair  # noqa: E402

HOST_DATA = (torch.tensor, torch.as_tensor, torch.from_numpy)
IMAGE = {"vim_test": 16, "plainmamba_test": 64, "groupmamba_test": 32, "vmamba_test": 32}
# Dynamo's time grows with the ops it traces. The hierarchical test variants' first stage (8 x 8 tokens, no prune
# point of these cases) is cut to one block, as their third stage to two: every kind of block is still traced
# (dense, pruned after a point, refilled at the end of a stage) at two thirds of the ops.
DEPTHS = {"groupmamba_test": [1, 2, 2, 1], "vmamba_test": [1, 2, 2, 1]}


@pytest.mark.parametrize("case", sorted(IMAGE))
def test_compiled_pruned_forward_is_exact_and_copies_nothing(case, monkeypatch):
    variant, ratio = CASES[case]
    if variant in DEPTHS:  # build_pair as the benchmark runs it, with fewer blocks
        monkeypatch.setattr(bench_models, "create_model", functools.partial(create_model, depths=DEPTHS[variant]))
    dense, pruned = build_pair(variant, ratio)
    if variant in DEPTHS:  # the sites the full-depth variant's recipe resolves to
        assert [pt.site for pt in pruned.spec.points] == ["2.1", "3.1"]
    made_from_host, graphs = [], []

    def record(gm, inputs):
        graphs.append(gm)
        for n in gm.graph.nodes:
            if n.op == "call_function" and n.target in HOST_DATA:
                made_from_host.append((n.stack_trace or "").strip().splitlines()[-1:])
        return gm.forward

    torch._dynamo.reset()
    x = torch.randn(2, 3, IMAGE[case], IMAGE[case])
    with torch.inference_mode():
        want = pruned(x)
        got = torch.compile(pruned, backend=record)(x)
    assert graphs, "nothing was traced"
    assert not made_from_host, made_from_host
    assert got.shape == want.shape == (2, dense.cfg.num_classes)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
