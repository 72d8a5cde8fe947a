"""Dense against pruned, whole models, in one run: fvcore FLOPs, batch-1 latency, large-batch throughput and, with
--stages, where the time goes. Weights are random (seeded): speed and FLOPs do not depend on them.

    python benchmarks/models.py                                  # the H200 cases: Vim-S paper schedule,
                                                                 # PlainMamba-L3 at 41.6 % fewer FLOPs
    python benchmarks/models.py --cases vim_test plainmamba_test --device cpu --batch 8   # a CPU smoke run
    python benchmarks/models.py --json out/models.json --stages
    python benchmarks/models.py --cases groupmamba_tiny --launch token_scan.one_state.chunk_below=1.1   # a sweep

Schedules come from the built-in recipes (ssmprune_cli/recipes), as `ssmprune prune` would resolve them, with
`--ratio` where a case names one; Δ̂ is the default 'calib' fill holding the bias values (no calibration data
needed; the speed of the aligned scan does not depend on Δ̂'s values). On CUDA each model is replayed from a CUDA
graph unless --no-graphs. `--launch MODULE.ENTRY.KEY=VALUE` sets one launch parameter of a kernel module
(`ssmprune_cli.kernels.MODULE.LAUNCH[ENTRY][KEY]`) for the whole run: sweeps compare runs of one call with and
without it. Numbers are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssmprune_cli.pruning.schedule import make_points  # noqa: E402
from ssmprune_cli.models import create_model, model_family  # noqa: E402
from ssmprune_cli.pruning import recipe as recipes  # noqa: E402
from ssmprune_cli.pruning.plan import PruningSpec  # noqa: E402
from ssmprune_cli.pruning.pruned_model import PrunedModel  # noqa: E402
from ssmprune_cli.report.bench import BenchSettings, bench_models, render_bench  # noqa: E402

# case name → (variant, --ratio or None for the recipe's own keep counts)
CASES = {
    "vim_small": ("vim_small", None),          # the paper's schedule: blocks 5/10/15 → 157/125/101 tokens
    "plainmamba_l3": ("plainmamba_l3", 0.416),  # the paper's PlainMamba-L3 reduction, recipe prune points
    "vim_test": ("vim_test", 0.3),
    "plainmamba_test": ("plainmamba_test", 0.1),
    "groupmamba_tiny": ("groupmamba_tiny", None),  # no published schedule: the recipe's stage-3 points
    "groupmamba_test": ("groupmamba_test", 0.05),
    "vmamba_tiny": ("vmamba_tiny", None),  # no published schedule: the recipe's 2.1, 3.1, 3.4 at 0.7 (−20.5 %)
    "vmamba_test": ("vmamba_test", 0.1),
}


def build_pair(variant: str, ratio, seed: int = 0):
    """(dense, pruned) with the same random weights; the pruned one wraps its own copy."""
    torch.manual_seed(seed)
    dense = create_model(variant).eval()
    twin = create_model(variant).eval()
    twin.load_state_dict(dense.state_dict())
    overrides = {"prune": {"ratio": ratio}} if ratio is not None else {}
    prune = recipes.resolve(variant, model_family(variant), None, overrides)["prune"]
    if ratio is not None:
        prune.pop("keep", None)
    points = make_points(twin, prune)
    # 'calib', the default fill: Δ̂ is a stored buffer (here the bias values PrunedModel fills in before calibration)
    return dense, PrunedModel(twin, PruningSpec(points, delta_fill="calib"))


def set_launch(settings) -> None:
    """Apply `MODULE.ENTRY.KEY=VALUE` settings to the kernel modules' LAUNCH tables (a value's type follows the
    entry it replaces); an unknown module, entry or key is an error, not a silent no-op."""
    for item in settings:
        name, _, value = item.partition("=")
        parts = name.split(".")
        if len(parts) != 3 or not value:
            raise SystemExit(f"--launch {item!r}: expected MODULE.ENTRY.KEY=VALUE")
        table = importlib.import_module(f"ssmprune_cli.kernels.{parts[0]}").LAUNCH
        if parts[1] not in table or parts[2] not in table[parts[1]]:
            raise SystemExit(f"--launch {item!r}: LAUNCH[{parts[1]!r}] has no key {parts[2]!r}")
        old = table[parts[1]][parts[2]]
        try:
            number = float(value)
        except ValueError:
            raise SystemExit(f"--launch {item!r}: {value!r} is not a number") from None
        if isinstance(old, int) and not number.is_integer():
            raise SystemExit(f"--launch {item!r}: {parts[2]} takes whole numbers")
        table[parts[1]][parts[2]] = type(old)(number)
        print(f"launch: {parts[0]}.{parts[1]}.{parts[2]} = {table[parts[1]][parts[2]]} (was {old})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=["vim_small", "plainmamba_l3"], choices=sorted(CASES))
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--latency-batch", type=int, default=1, help="= --batch: one compile per model with --compile")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--no-graphs", action="store_true", help="time eager calls instead of CUDA-graph replays")
    ap.add_argument("--stages", action="store_true", help="per-block timing and profiler categories")
    ap.add_argument("--json", type=Path, default=None, help="write every number here")
    ap.add_argument("--launch", nargs="*", default=[], metavar="MODULE.ENTRY.KEY=VALUE",
                    help="set kernel launch parameters for this run (sweeps)")
    args = ap.parse_args()
    set_launch(args.launch)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    settings = BenchSettings(device=str(device), dtype=args.dtype, batch=args.batch,
                             latency_batch=args.latency_batch, repeats=args.repeats,
                             warmup=args.warmup, compile=args.compile, stages=args.stages,
                             graphs=not args.no_graphs)
    results = {}
    for case in args.cases:
        variant, ratio = CASES[case]
        t0 = time.time()
        dense, pruned = build_pair(variant, ratio)
        result = bench_models({"model": pruned, "baseline": dense}, settings, device,
                              {"model": f"{variant} pruned {[(p.site, p.keep) for p in pruned.spec.points]}",
                               "baseline": f"{variant} dense"})
        result["case"] = {"variant": variant, "ratio": ratio, "points": [vars(p) for p in pruned.spec.points],
                          "wall_s": time.time() - t0}
        results[case] = result
        render_bench(result)
        if args.json is not None:  # after every case: a later failure keeps what was measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2))
        del dense, pruned
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"\n{'case':16s} {'dense img/s':>11s} {'pruned img/s':>12s} {'ratio':>6s} {'ideal':>6s} {'of ideal':>8s} "
          f"{'lat dense ms':>12s} {'lat pruned ms':>13s}  timed as")
    for case, r in results.items():
        m, b, c = r["models"]["model"], r["models"]["baseline"], r["comparison"]
        print(f"{case:16s} {b['throughput']['images_per_s']:11.1f} {m['throughput']['images_per_s']:12.1f} "
              f"{c['throughput_speedup']:6.3f} {c['ideal_speedup']:6.3f} {c['efficiency']:8.1%} "
              f"{b['latency']['median_ms']:12.3f} {m['latency']['median_ms']:13.3f}  "
              f"{m['throughput'].get('mode', 'eager')}")


if __name__ == "__main__":
    main()
