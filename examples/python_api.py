"""The Python API end to end: load a checkpoint, prune it, evaluate both models, save, reload in plain PyTorch.

    python examples/python_api.py --calib data/cifar10/test --val data/cifar10/test -o out/api
    python examples/python_api.py vim_s_midclstok_80p5acc.pth --ratio 0.3 --calib imagenet/val -o out/vim_s

With no checkpoint it uses the embedded demo model (a small Vim trained on CIFAR-10, docs/demo.md). An official
release file is passed the same way: `load_checkpoint("vim_s_midclstok_80p5acc.pth")` reads it weights-only with
an allow-list, detects the family and variant, and maps the official keys (docs/checkpoints.md); add
`ema=True` for its EMA weights or `family="plainmamba"` to skip detection. Without --calib the pruned positions
decay by softplus of the dt bias (`delta_fill="bias"`), which needs no data; without --val nothing is measured.

The steps below are what `ssmprune prune` runs (jobs/prune.py), minus its report and pictures; in one call:
`ssmprune_cli.jobs.run_prune(PruneRequest(checkpoint=..., out=..., ratio=0.4, calib=...))`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

import torch

import ssmprune_cli
from ssmprune_cli.assets import demo_checkpoint
from ssmprune_cli.data.images import find_images, validation_images
from ssmprune_cli.io import load_checkpoint, save_model
from ssmprune_cli.pruning import recipe as recipes
from ssmprune_cli.pruning.calibrate import measure_delta_hat
from ssmprune_cli.pruning.plan import dense_macs, resolve_fills, schedule_macs
from ssmprune_cli.pruning.pruned_model import PrunedModel
from ssmprune_cli.pruning.schedule import make_points, make_spec
from ssmprune_cli.runtime import model_batches, predictions, top1


def run(checkpoint: Optional[Path], out: Path, ratio: float = 0.4, calib: Optional[Path] = None,
        calib_images: int = 64, val: Optional[Path] = None, val_limit: Optional[int] = 200,
        batch_size: int = 32) -> dict:
    # 1. Load: an official .pth/.pt/.bin or an ssmprune .safetensors; the model comes back in eval mode.
    loaded = load_checkpoint(checkpoint or demo_checkpoint())
    model = loaded.model
    print(f"loaded {loaded.path.name}: {loaded.family} ({loaded.variant or 'no registered variant'}), "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, weights from '{loaded.weights}'")

    # 2. Plan: the built-in recipe of this variant (prune points), the ratio solved for keep counts.
    recipe = recipes.resolve(loaded.variant, loaded.family, overrides={"prune": {"ratio": ratio}})
    prune = recipe["prune"]
    points = make_points(model, prune)
    conv_fill, delta_fill = resolve_fills(model, prune["align"], None, "calib" if calib else "bias")
    spec = make_spec(points, prune, conv_fill, delta_fill, seed=0)
    print("schedule:", ", ".join(f"after {p.site} keep {p.keep}" for p in points))

    # 3. Calibrate Δ̂ (the decay a pruned position applies) on unlabelled images, then prune.
    delta_hat = None
    if calib is not None:
        images = find_images(calib, limit=calib_images, seed=0)
        delta_hat = measure_delta_hat(model, model_batches(model, images, batch_size, "cpu", torch.float32))
    pruned = PrunedModel(model, spec)  # prunes on the fly; `model` itself stays the dense model
    if delta_hat is not None:
        pruned.set_delta_hat(delta_hat)
    reduction = 1 - schedule_macs(model, points) / dense_macs(model)
    print(f"FLOPs: {reduction:.1%} fewer (analytic cost model)")

    # 4. Evaluate: top-1 of both on the same labelled images (the subset eval, bench and prune use).
    result = {"reduction": reduction, "points": [(p.site, p.keep) for p in points]}
    if val is not None:
        images = validation_images(val, val_limit)
        labels = torch.tensor(images.labels)
        dense_top1 = top1(predictions(model, images, batch_size, "cpu", torch.float32), labels)
        pruned_top1 = top1(predictions(pruned, images, batch_size, "cpu", torch.float32), labels)
        print(f"top-1 on {len(images)} images: dense {dense_top1:.2f}, pruned {pruned_top1:.2f}")
        result.update(dense_top1=dense_top1, pruned_top1=pruned_top1)

    # 5. Save: weights + the pruning spec (and Δ̂) in one .safetensors, config.json beside it. No pickle.
    out.mkdir(parents=True, exist_ok=True)
    path = save_model(pruned, out / "model.safetensors", family=loaded.family, variant=loaded.variant)

    # 6. Reload: a plain torch.nn.Module that prunes on the fly; nothing else to import or rebuild.
    reloaded = ssmprune_cli.load(path)
    assert isinstance(reloaded, torch.nn.Module)
    x = torch.randn(2, *reloaded.input_size())  # (b, 3, H, W), normalised like the model's training images
    with torch.no_grad():
        same = torch.allclose(reloaded(x), pruned(x), atol=1e-5)
    print(f"saved {path}; reloaded, same logits as in memory: {same}")
    result.update(path=path, same_logits=same)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", type=Path, help="official .pth or ssmprune .safetensors "
                        "(default: the embedded demo model)")
    parser.add_argument("-o", "--out", type=Path, default=Path("out/api"))
    parser.add_argument("--ratio", type=float, default=0.4, help="target FLOPs reduction")
    parser.add_argument("--calib", type=Path, help="unlabelled calibration images")
    parser.add_argument("--calib-images", type=int, default=64)
    parser.add_argument("--val", type=Path, help="labelled images (ImageFolder)")
    parser.add_argument("--val-limit", type=int, default=200)
    ns = parser.parse_args()
    run(ns.checkpoint, ns.out, ns.ratio, ns.calib, ns.calib_images, ns.val, ns.val_limit)


if __name__ == "__main__":
    main()
