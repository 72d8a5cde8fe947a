"""Kernel launches of one dense and one pruned forward, counted on the CPU: what batch-1 latency pays for.

    TRITON_INTERPRET=1 python benchmarks/launch_count.py --cases groupmamba_tiny --img-size 64 [--top 12]

Every fused op runs its Triton kernel through the interpreter (each kernel one launch) and every aten op that
computes counts once (views and dtype no-ops excluded), as tests/pruning/test_launch_budget.py counts them. On the
GPU the norms are one fused kernel each where the CPU runs the reference's several ops, so the totals here are
higher than a GPU profile's; differences between two trees are what this measures. The pruned model prunes 30 %
at each of the first three prune sites. `--img-size` shrinks the input (the interpreter walks the scans step by
step): the launches do not depend on it except where a launch rule looks at sizes (scan chunks).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from pathlib import Path

if os.environ.get("TRITON_INTERPRET") != "1":
    raise SystemExit("set TRITON_INTERPRET=1 (before Python starts): the kernels are counted through the interpreter")

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssmprune_cli.models import create_model  # noqa: E402
from ssmprune_cli.ops.selective_scan import scan_backend  # noqa: E402
from ssmprune_cli.pruning.plan import PruningSpec  # noqa: E402
from ssmprune_cli.pruning.pruned_model import PrunedModel  # noqa: E402
from ssmprune_cli.pruning.schedule import keep_from_rates  # noqa: E402

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
        if not self.inside_kernel and name not in _FREE and not (name == "to" and args and out is args[0]):
            self.ops[name] += 1
        return out


def count(model, x) -> collections.Counter:
    from triton.runtime.interpreter import InterpretedFunction

    counter, run = _Launches(), InterpretedFunction.run

    def counted(self, *args, **kwargs):
        counter.ops["kernel " + self.fn.__name__] += 1
        counter.inside_kernel += 1  # the interpreter's own tensor work is the kernel, not launches
        try:
            return run(self, *args, **kwargs)
        finally:
            counter.inside_kernel -= 1

    InterpretedFunction.run = counted
    try:
        with counter:
            model(x)
    finally:
        InterpretedFunction.run = run
    return counter.ops


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", default=["groupmamba_tiny"])
    ap.add_argument("--img-size", type=int, default=None)
    ap.add_argument("--top", type=int, default=12, help="the most frequent ops to list")
    args = ap.parse_args(argv)
    for name in args.cases:
        torch.manual_seed(0)
        model = create_model(name, **({"img_size": args.img_size} if args.img_size else {})).eval()
        points = keep_from_rates(model, model.prune_sites()[:3], [0.7] * 3)
        pruned = PrunedModel(model, PruningSpec(points, delta_fill="calib")).eval()
        x = torch.randn(1, *model.input_size())
        with scan_backend("triton"), torch.inference_mode():
            pruned(x)  # parameter copies and scan orders made once, outside the count
            dense, kept = count(model, x), count(pruned, x)
        print(f"{name}: dense {sum(dense.values())} launches, pruned {sum(kept.values())}")
        for op, n in sorted(dense.items(), key=lambda kv: -kv[1])[:args.top]:
            print(f"  {op:40s} {n:6d} {kept[op]:6d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
