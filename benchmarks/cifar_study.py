"""Train small Vim / PlainMamba / GroupMamba / VMamba models on CIFAR-10, then measure where pruning hurts least.

    python benchmarks/cifar_study.py --data ../shared/data/cifar10-jpeg.tar.gz --out runs/cifar \
        --families vim plainmamba groupmamba vmamba --epochs 15

For each family: train (labels only), save `<family>_cifar10.safetensors`, then a training-free sensitivity sweep:
one prune point at each site keeping half of the patch tokens (aligned defaults, and naive packing beside it),
then whole schedules at 30% and 40% fewer FLOPs (GroupMamba: 10% and 20%; VMamba: 10%, 20% and 30%) with the
points early / middle / late (the hierarchical GroupMamba and VMamba: by stage, and the built-in recipe's points).
Prints tables and writes
`study.json`. The numbers choose the built-in recipes (docs/recipes.md). Runs on CUDA (Triton scan) or CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssmprune_cli.data.images import find_images  # noqa: E402
from ssmprune_cli.data.tensor_data import TensorImages, batches, normalise  # noqa: E402
from ssmprune_cli.io.safetensors_io import save_model  # noqa: E402
from ssmprune_cli.models import create_model  # noqa: E402
from ssmprune_cli.pruning.calibrate import measure_delta_hat  # noqa: E402
from ssmprune_cli.pruning.plan import (  # noqa: E402
    PruningSpec,
    dense_macs,
    keep_from_rates,
    resolve_fills,
    schedule_macs,
    solve_ratio,
)
from ssmprune_cli.pruning.schedule import make_points  # noqa: E402
from ssmprune_cli.pruning import recipe as recipes  # noqa: E402
from ssmprune_cli.pruning.pruned_model import PrunedModel  # noqa: E402
from ssmprune_cli.train.finetune import TrainConfig, accuracy, train  # noqa: E402

CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]

MODELS = {
    # 32 px, patch 4: 64 patches + class token = 65 tokens, 12 blocks (the DESIGN 2.3 study model)
    "vim": lambda: create_model("vim_test", img_size=32, patch_size=4, stride=4, embed_dim=128, depth=12,
                                d_state=16, num_classes=10, mean=CIFAR_MEAN, std=CIFAR_STD),
    # 32 px, patch 4: 8x8 grid
    "plainmamba": lambda: create_model("plainmamba_test", img_size=32, patch_size=4, embed_dim=128, depth=12,
                                       d_state=16, num_classes=10, stem_channels=32, num_convs_patch_embed=1,
                                       layers_with_dwconv=[], mean=CIFAR_MEAN, std=CIFAR_STD),
    # 64 px (CIFAR upsampled): 16x16, 8x8, 4x4, 2x2 grids
    "groupmamba": lambda: create_model("groupmamba_test", img_size=64, embed_dims=[32, 64, 128, 192],
                                       depths=[2, 2, 6, 2], mlp_ratios=[4, 4, 4, 4], stem_hidden_dim=16,
                                       num_classes=10, mean=CIFAR_MEAN, std=CIFAR_STD),
    # 64 px (CIFAR upsampled): 16x16, 8x8, 4x4, 2x2 grids; stage FLOPs shares 16/15/43/14 %, VMamba-T's 13/13/50/12
    "vmamba": lambda: create_model("vmamba_test", img_size=64, dims=[32, 64, 128, 256], depths=[2, 2, 6, 2],
                                   mlp_ratio=4.0, num_classes=10, mean=CIFAR_MEAN, std=CIFAR_STD),
}
SIZES = {"vim": 32, "plainmamba": 32, "groupmamba": 64, "vmamba": 64}
HIERARCHICAL = ("groupmamba", "vmamba")  # prune sites "stage.block", refilled before each downsampling
# FLOPs cuts of the whole-schedule comparison: the 64 px GroupMamba's later stages hold 16 and 4 tokens, so most of
# its schedules cannot reach 30 % (the built-in recipe cuts GroupMamba-T by 13 %)
RATIOS = {"groupmamba": (0.1, 0.2), "vmamba": (0.1, 0.2, 0.3)}  # VMamba-T's recipe cuts 20.5 %


def extract(tar_path: Path) -> Path:
    root = Path(tempfile.mkdtemp(prefix="cifar"))
    with tarfile.open(tar_path) as tar:
        tar.extractall(root, filter="data")
    return root / "cifar10"


def evaluate(model, data, bs=1000) -> float:
    return accuracy(model, data, CIFAR_MEAN, CIFAR_STD, batch_size=bs)


def calibrate(model, data, n=512):
    sub = TensorImages(data.images[:n], data.labels[:n])
    return measure_delta_hat(model, (normalise(x, CIFAR_MEAN, CIFAR_STD) for x, _ in batches(sub, 256,
                                                                                               shuffle=False)))


def pruned_acc(model, spec, dhat, test) -> float:
    pm = PrunedModel(model, spec)
    if spec.delta_fill == "calib":
        pm.set_delta_hat(dhat)
    try:
        return evaluate(pm, test)
    finally:
        pm.detach()


def candidate_sites(model, family):
    sites = model.prune_sites()
    if family in HIERARCHICAL:
        return [s for s in sites if s.split(".")[0] in ("1", "2", "3")]
    return sites[:-1]


def schedules(model, family):
    sites = candidate_sites(model, family)
    if family in HIERARCHICAL:
        s3 = [s for s in sites if s.startswith("3.")]
        s2 = [s for s in sites if s.startswith("2.")]
        s1 = [s for s in sites if s.startswith("1.")]
        prune = recipes.resolve(family, family, None, {})["prune"]
        recipe = [p.site for p in make_points(model, prune)]
        return {"stage3": s3[:2], "stage1+3": s1[:1] + s3[:1], "stage1": s1[:1], "stage1+2": s1[:1] + s2[:1],
                "stage2+3+3": s2[:1] + s3[:1] + s3[len(s3) // 2:len(s3) // 2 + 1],
                f"recipe ({','.join(recipe)})": recipe}
    n = len(sites) + 1
    pick = lambda fr: [sites[max(0, round(f * n) - 1)] for f in fr]  # noqa: E731
    return {"early (1/6,2/6,3/6)": pick([1 / 6, 2 / 6, 3 / 6]), "paper-like (1/4,2/4,3/4)": pick([0.25, 0.5, 0.75]),
            "late (2/6,3/6,4/6)": pick([2 / 6, 3 / 6, 4 / 6])}


def study(family, train_set, test, device, args, out: Path):
    torch.manual_seed(0)
    model = MODELS[family]().to(device)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=0.05,
                      warmup_steps=100, label_smoothing=0.1, distill_alpha=0.0, bf16=device.type == "cuda",
                      max_seconds=args.train_seconds)
    t0 = time.perf_counter()
    summary = train(model, train_set, cfg, CIFAR_MEAN, CIFAR_STD)
    model.eval()
    dense = evaluate(model, test)
    print(f"[{family}] trained {summary['steps']} steps ({summary['steps'] * args.batch_size / len(train_set):.1f} "
          f"epochs) in {time.perf_counter() - t0:.0f}s: top-1 {dense:.2f}",
          flush=True)
    save_model(model.float().cpu(), out / f"{family}_cifar10.safetensors")
    model.to(device)
    dhat = calibrate(model, train_set)
    result = {"family": family, "dense_top1": dense, "train": summary, "params": sum(p.numel() for p in
                                                                                   model.parameters()),
              "dense_gmacs": dense_macs(model) / 1e9, "single": [], "schedules": []}
    aligned = resolve_fills(model, "aligned", None, None)
    naive = resolve_fills(model, "none", None, None)
    for site in candidate_sites(model, family):
        pts = keep_from_rates(model, [site], [0.5])
        row = {"site": site, "keep": pts[0].keep, "reduction": 1 - schedule_macs(model, pts) / dense_macs(model)}
        for name, (cf, df) in (("aligned", aligned), ("naive", naive)):
            spec = PruningSpec(pts, align="aligned" if name == "aligned" else "none", conv_fill=cf, delta_fill=df)
            row[name] = pruned_acc(model, spec, dhat, test)
        result["single"].append(row)
        print(f"[{family}] site {site:>5} keep {row['keep']:>4} -{row['reduction']:.1%} FLOPs: aligned "
              f"{row['aligned']:.2f} naive {row['naive']:.2f}", flush=True)
    for ratio in RATIOS.get(family, (0.3, 0.4)):
        for label, sites in schedules(model, family).items():
            try:
                pts = solve_ratio(model, sites, ratio)
            except Exception as e:  # unreachable with these points: recorded, not fatal
                result["schedules"].append({"ratio": ratio, "label": label, "sites": sites, "error": str(e)})
                continue
            row = {"ratio": ratio, "label": label, "sites": sites, "keep": [p.keep for p in pts],
                   "reduction": 1 - schedule_macs(model, pts) / dense_macs(model)}
            for name, (cf, df) in (("aligned", aligned), ("naive", naive)):
                spec = PruningSpec(pts, align="aligned" if name == "aligned" else "none", conv_fill=cf,
                                   delta_fill=df)
                row[name] = pruned_acc(model, spec, dhat, test)
            result["schedules"].append(row)
            print(f"[{family}] ratio {ratio} {label:<26} keep {row['keep']}: aligned {row['aligned']:.2f} "
                  f"naive {row['naive']:.2f}", flush=True)
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--families", nargs="+", default=list(MODELS))
    ap.add_argument("--epochs", type=float, default=15)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--test-images", type=int, default=10000)
    ap.add_argument("--train-seconds", type=float, default=0.0, help="wall-clock budget per model (0: none)")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    root = extract(args.data) if args.data.suffix == ".gz" else args.data
    results = []
    cache = {}
    for family in args.families:
        size = SIZES[family]
        if size not in cache:
            t0 = time.perf_counter()
            tr = TensorImages.from_image_set(find_images(root / "train"), (size, size)).to(device)
            te = TensorImages.from_image_set(find_images(root / "test", limit=args.test_images), (size, size))
            cache[size] = (tr, te.to(device))
            print(f"decoded CIFAR-10 at {size}px in {time.perf_counter() - t0:.0f}s", flush=True)
        results.append(study(family, *cache[size], device, args, args.out))
        (args.out / "study.json").write_text(json.dumps(results, indent=1))
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    (args.out / "study.json").write_text(json.dumps({"environment": env, "results": results}, indent=1))


if __name__ == "__main__":
    main()
