"""Pruned models under torch.compile (what `bench --compile` runs): the traced forward equals the eager one, and it
makes no tensor from host data. Such a tensor (a Python list turned into a device tensor) is a host-to-device copy
in every call, which CUDA graph capture refuses: `bench --compile` then fell back to eager calls for pruned
PlainMamba on the GPU.

Dynamo traces with a recording backend (no Inductor code generation), so the test is fast on the CPU."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from models import CASES, build_pair  # noqa: E402

HOST_DATA = (torch.tensor, torch.as_tensor, torch.from_numpy)
IMAGE = {"vim_test": 16, "plainmamba_test": 64, "groupmamba_test": 32, "vmamba_test": 32}


@pytest.mark.parametrize("case", sorted(IMAGE))
def test_compiled_pruned_forward_is_exact_and_copies_nothing(case):
    variant, ratio = CASES[case]
    dense, pruned = build_pair(variant, ratio)
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
