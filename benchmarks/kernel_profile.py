"""Which GPU kernels a dense and a pruned model spend their time in, side by side (one run, bf16 autocast).

    python3 benchmarks/kernel_profile.py --cases vim_small groupmamba_tiny --top 25
    python3 benchmarks/kernel_profile.py --cases vim_small --host     # host functions of eager batch-1 calls

`models.py --stages` groups the time by op; this lists the kernels themselves (CUDA device time per batch, from
torch.profiler over eager forwards after warm-up), so a kernel that does not shrink with the tokens, or a launch
that should not be there, shows by name. Weights are random (seeded) as in models.py. `--host` profiles the
Python side instead (cProfile over eager batch-1 forwards of the dense model: what an eager call spends before
the GPU sees a launch).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import CASES, build_pair  # noqa: E402


def kernel_times(model, x, calls: int):
    """{kernel name: (ms per forward, launches per forward)}."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(3):
            model(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                model(x)
            torch.cuda.synchronize()
    acc = defaultdict(lambda: [0.0, 0])
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            acc[ev.name][0] += ev.device_time_total / 1000.0 / calls
            acc[ev.name][1] += 1
    return {k: (v[0], v[1] / calls) for k, v in acc.items()}


def host_profile(model, x, calls: int, top: int) -> None:
    import cProfile
    import pstats

    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(3):
            model(x)
        torch.cuda.synchronize()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(calls):
            model(x)
        torch.cuda.synchronize()
        prof.disable()
    stats = pstats.Stats(prof)
    total = sum(v[2] for v in stats.stats.values())  # tottime, seconds
    print(f"  host time per eager forward: {total / calls * 1000:.2f} ms")
    stats.sort_stats("tottime").print_stats(top)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", choices=sorted(CASES), default=["vim_small"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--host", action="store_true", help="cProfile the host side of eager batch-1 dense forwards")
    a = p.parse_args()
    for case in a.cases:
        variant, ratio = CASES[case]
        dense, pruned = build_pair(variant, ratio)
        dense, pruned = dense.cuda(), pruned.cuda()
        x = torch.randn(a.batch, *dense.input_size(), device="cuda")
        if a.host:
            print(f"\n{case}: host functions of {10 * a.calls} eager batch-1 dense forwards")
            host_profile(dense, x[:1], 10 * a.calls, a.top)
            continue
        d, q = kernel_times(dense, x, a.calls), kernel_times(pruned, x, a.calls)
        names = sorted(set(d) | set(q), key=lambda k: -max(d.get(k, (0, 0))[0], q.get(k, (0, 0))[0]))
        print(f"\n{case}, batch {a.batch}: ms per forward (launches) dense | pruned | pruned/dense")
        print(f"  total {sum(v[0] for v in d.values()):8.3f} ({sum(v[1] for v in d.values()):5.0f}) | "
              f"{sum(v[0] for v in q.values()):8.3f} ({sum(v[1] for v in q.values()):5.0f})")
        for k in names[:a.top]:
            dm, dn = d.get(k, (0.0, 0))
            qm, qn = q.get(k, (0.0, 0))
            ratio_s = f"{qm / dm:6.3f}" if dm > 0 else "     -"
            print(f"  {dm:8.3f} ({dn:4.0f}) | {qm:8.3f} ({qn:4.0f}) | {ratio_s}  {k[:110]}")
        del dense, pruned
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
