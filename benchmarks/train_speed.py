"""Fine-tuning speed, dense against pruned, in one run: images per second of a training step (forward, loss,
backward, AdamW; bf16 autocast) at ImageNet size, and one epoch of the CIFAR-10 demo-size model.

    python benchmarks/train_speed.py                        # Vim-S, PlainMamba-L3, GroupMamba-T at 224 px, batch 64
    python benchmarks/train_speed.py --cases vim_test --device cpu --batch 4 --steps 2 --demo-images 64   # smoke

Weights are random (seeded) and labels random: speed does not depend on them. Pruned models use the schedules of
benchmarks/models.py. Dense and pruned steps alternate in blocks of `--steps`, medians over `--repeats` blocks.
The demo epoch runs `ssmprune_cli.train.finetune.train` (the code `ssmprune finetune` runs) over `--demo-images`
synthetic 32 × 32 images with the demo model's shape (docs/demo.md), at `--demo-batch`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import CASES, build_pair  # noqa: E402

from ssmprune_cli.data.tensor_data import TensorImages  # noqa: E402
from ssmprune_cli.models import create_model  # noqa: E402
from ssmprune_cli.train.finetune import TrainConfig, train  # noqa: E402
from ssmprune_cli.train.graphs import autocast, graphed_training  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_fn(model, opt, x, y, device, graphs):
    """One training step as `ssmprune finetune` runs it: on CUDA the forward and backward replayed from CUDA
    graphs (ssmprune_cli/train/graphs.py) unless --no-graphs."""
    fwd = model
    if graphs and device.type == "cuda":
        g = graphed_training(model, x, True)
        fwd = g if g is not None else model

    def step():
        with autocast(device.type == "cuda"):
            out = fwd(x)
            out = out[0] if isinstance(out, (tuple, list)) else out
            loss = F.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def time_steps(step, n, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / n


def case(variant, ratio, args, device):
    dense, pruned = build_pair(variant, ratio)
    models = {"dense": dense, "pruned": pruned}
    c, h, w = dense.input_size()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, c, h, w, generator=g).to(device)
    y = torch.randint(0, dense.cfg.num_classes, (args.batch,), generator=g).to(device)
    steps = {}
    for name, m in models.items():
        m.to(device).train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-5)
        steps[name] = step_fn(m, opt, x, y, device, not args.no_graphs)
        time_steps(steps[name], args.warmup, device)
    samples = {n: [] for n in models}
    for r in range(args.repeats):
        for name in (list(models) if r % 2 == 0 else list(models)[::-1]):
            samples[name].append(time_steps(steps[name], args.steps, device))
    res = {n: {"median_s": statistics.median(v), "images_per_s": args.batch / statistics.median(v)}
           for n, v in samples.items()}
    res["speedup"] = res["pruned"]["images_per_s"] / res["dense"]["images_per_s"]
    res["points"] = [vars(p) for p in pruned.spec.points]
    del dense, pruned, models, steps
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def demo_epoch(args, device):
    """One epoch of the demo-size Vim (12 blocks, width 128, 65 tokens) through the fine-tuning loop."""
    torch.manual_seed(0)
    model = create_model("vim_tiny", img_size=32, patch_size=4, stride=4, embed_dim=128, depth=12,
                         num_classes=10).to(device)
    g = torch.Generator().manual_seed(0)
    data = TensorImages(torch.randint(0, 256, (args.demo_images, 3, 32, 32), generator=g, dtype=torch.uint8),
                        torch.randint(0, 10, (args.demo_images,), generator=g)).to(device)
    cfg = TrainConfig(epochs=1.0, batch_size=args.demo_batch, warmup_steps=10, distill_alpha=0.0,
                      cuda_graphs=not args.no_graphs)
    t0 = time.perf_counter()
    summary = train(model, data, cfg, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    _sync(device)
    wall = time.perf_counter() - t0
    return {"images": args.demo_images, "batch": args.demo_batch, "steps": summary["steps"], "seconds": wall,
            "images_per_s": args.demo_images / wall}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="*", default=["vim_small", "plainmamba_l3", "groupmamba_tiny"],
                    choices=sorted(CASES))
    ap.add_argument("--device", default=None)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--demo-images", type=int, default=50000)
    ap.add_argument("--demo-batch", type=int, default=256)
    ap.add_argument("--no-graphs", action="store_true", help="eager training steps")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "cases": {}}
    for name in args.cases:
        variant, ratio = CASES[name]
        r = case(variant, ratio, args, device)
        results["cases"][name] = r
        print(f"train {name:16s} dense {r['dense']['images_per_s']:8.1f} img/s  pruned {r['pruned']['images_per_s']:8.1f}"
              f" img/s  x{r['speedup']:.3f}  {'eager' if args.no_graphs else 'cuda graphs'}", flush=True)
    if args.demo_images > 0:
        d = demo_epoch(args, device)
        results["demo_epoch"] = d
        print(f"demo epoch: {d['images']} images, batch {d['batch']}, {d['steps']} steps in {d['seconds']:.1f} s "
              f"({d['images_per_s']:.0f} img/s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
