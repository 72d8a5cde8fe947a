"""`ssmprune prune`: checkpoint → model → scores → plan → Δ̂ calibration → pruned model → files and report."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import yaml

from ssmprune_cli.data.images import ImageSet, across_classes, find_images, validation_images
from ssmprune_cli.errors import BadInputError, DataError, RecipeError
from ssmprune_cli.io.atomic import atomic_dir, check_not_input
from ssmprune_cli.io.load import load_checkpoint
from ssmprune_cli.io.safetensors_io import save_model
from ssmprune_cli.pruning import recipe as recipes
from ssmprune_cli.pruning.calibrate import measure_delta_hat
from ssmprune_cli.pruning.plan import PruningSpec
from ssmprune_cli.pruning.pruned_model import PrunedModel
from ssmprune_cli.pruning.schedule import check_prune, choose_policy, plan_from_recipe, policy_candidates
from ssmprune_cli.report.gates import gate_row
from ssmprune_cli.report.jsondoc import dumps
from ssmprune_cli.report.pictures import render_importance, render_tokens_plot
from ssmprune_cli.report.progress import progress_bar
from ssmprune_cli.report.prune_report import build_prune_report, render_prune_markdown
from ssmprune_cli.runtime import model_batches, pick_device, predictions, top1


@dataclass
class PruneRequest:
    checkpoint: Path
    out: Path
    ratio: Optional[float] = None
    keep: Optional[List[float]] = None
    at: Optional[List[str]] = None
    recipe: Optional[Path] = None
    calib: Optional[Path] = None
    calib_images: Optional[int] = None
    batch_size: Optional[int] = None
    score: Optional[str] = None
    align: Optional[str] = None
    conv_fill: Optional[str] = None
    delta_fill: Optional[str] = None
    split: Optional[str] = None
    method: Optional[str] = None          # prune (default), merge, fuse (pruning/methods.py)
    merge_layers: Optional[str] = None    # merge: points, all, alternate, lower, upper (Famba-V's strategies)
    auto: bool = False
    seed: Optional[int] = None
    force: bool = False
    device: Optional[str] = None
    val: Optional[Path] = None            # labelled images: top-1 of dense and pruned in the report
    val_limit: Optional[int] = None
    bench: Optional[Any] = None           # report.bench.BenchSettings: latency/throughput, dense vs pruned
    max_flops: Optional[float] = None     # gates (exit 3 after the outputs are written)
    max_acc_drop: Optional[float] = None
    min_speedup: Optional[float] = None
    load_options: Dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ planning
def _overrides(req: PruneRequest) -> Dict[str, Any]:
    prune = {"ratio": req.ratio, "keep": req.keep, "at": req.at, "score": req.score, "align": req.align,
             "conv_fill": req.conv_fill, "delta_fill": req.delta_fill, "split": req.split, "method": req.method,
             "merge": {"layers": req.merge_layers} if req.merge_layers is not None else None}
    return {"seed": req.seed, "prune": {k: v for k, v in prune.items() if v is not None},
            "calib": {k: v for k, v in {"images": req.calib_images, "batch_size": req.batch_size}.items()
                      if v is not None},
            "auto": {"enabled": True} if req.auto else {}}


def resolve_recipe(loaded, req: PruneRequest) -> Dict[str, Any]:
    recipe = recipes.resolve(loaded.variant, loaded.family, req.recipe, _overrides(req))
    prune = recipe["prune"]
    if req.keep is not None and req.ratio is not None:
        raise RecipeError("give either --ratio or --keep, not both")
    if req.keep is not None:
        prune.pop("ratio", None)  # an explicit schedule on the command line wins over a recipe's target
    if req.ratio is not None:
        prune.pop("keep", None)
    if req.at is not None:
        prune.pop("at_fraction", None)
    check_prune(prune, at_given=req.at is not None, score_given=req.score is not None)
    return recipe


# ------------------------------------------------------------------------------------------------ data
MIN_HOLDOUT = 32  # fewer held-out images cannot tell policies apart (docs/pruning.md §4)


def calibration_sets(calib_dir, n: int, holdout: int, seed: int) -> Tuple[ImageSet, Optional[ImageSet]]:
    """(calibration images, held-out images or None) from one shuffle of the folder seeded by `seed`: the first
    `n` calibrate Δ̂ (the seeded subset `find_images(calib_dir, n, seed)`); with `holdout`, the held-out images
    that choose and report the `--auto` policy come only from the rest, never the same images."""
    images = find_images(calib_dir)
    order = list(range(len(images)))
    random.Random(seed).shuffle(order)
    cal = images.subset(order[:n])
    if not holdout:
        return cal, None
    if holdout < MIN_HOLDOUT:
        raise RecipeError(f"calib.holdout is {holdout}: --auto needs at least {MIN_HOLDOUT} held-out images to "
                          "tell policies apart")
    rest = order[n:]
    if len(rest) < MIN_HOLDOUT:
        raise DataError(f"--auto needs at least {MIN_HOLDOUT} held-out images besides the {len(cal)} calibration "
                        f"images, but {calib_dir} has {len(images)} images; pass --calib-images "
                        f"{max(1, len(images) - MIN_HOLDOUT)} or fewer, or a folder with more images")
    return cal, images.subset(rest[:holdout])


# ------------------------------------------------------------------------------------------------ prune
def run_prune(req: PruneRequest) -> Dict[str, Any]:
    out = Path(req.out)
    if out.exists() and not req.force:
        raise BadInputError(f"output folder {out} already exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise BadInputError(f"output path {out} exists and is not a folder")
    check_not_input(out, [req.checkpoint])
    if Path(req.checkpoint).resolve().is_relative_to(out.resolve()):
        raise BadInputError(f"the checkpoint {req.checkpoint} lies inside the output folder {out}; "
                            "choose another output folder")
    device = pick_device(req.device)
    loaded = load_checkpoint(req.checkpoint, **req.load_options)
    model = loaded.model.to(device).eval()
    if isinstance(model, PrunedModel):
        raise BadInputError(f"{req.checkpoint} is already pruned; prune the dense checkpoint instead")
    recipe = resolve_recipe(loaded, req)
    prune, calib, auto = recipe["prune"], recipe["calib"], recipe["auto"]
    seed = int(recipe.get("seed", 0))
    torch.manual_seed(seed)
    spec = plan_from_recipe(model, recipe)
    dtype = next(model.parameters()).dtype
    needs_data = spec.delta_fill == "calib" or auto.get("enabled")
    cal_set = hold_set = None
    delta_hat = None
    if needs_data:
        if req.calib is None:
            why = "--auto" if auto.get("enabled") else "delta_fill 'calib' (the default)"
            raise DataError(f"{why} needs calibration images: pass --calib DIR, or --delta-fill bias to prune "
                            "without data")
        cal_set, hold_set = calibration_sets(req.calib, int(calib["images"]),
                                             int(calib["holdout"]) if auto.get("enabled") else 0, seed)
        bs = int(calib["batch_size"])
        with progress_bar("calibrating Δ", len(cal_set)) as advance:
            delta_hat = measure_delta_hat(model, model_batches(model, cal_set, bs, device, dtype), advance)
    auto_result = None
    if auto.get("enabled"):
        spec, auto_result = auto_policy(model, spec, prune, auto, hold_set, int(calib["batch_size"]), device,
                                        dtype, delta_hat)
    pruned = PrunedModel(model, spec)
    if delta_hat is not None and spec.delta_fill == "calib":
        pruned.set_delta_hat(delta_hat)
    if spec.delta_fill != "calib":
        for m in model.mixers():
            m.delta_hat = None  # only 'calib' stores Δ̂ in the checkpoint
    agreement = auto_result["chosen"]["agreement"] if auto_result else None  # on the held-out images
    accuracy = None
    if req.val is not None:
        accuracy = measure_accuracy(model, pruned, req.val, req.val_limit, int(calib["batch_size"]), device,
                                    dtype)
    elif req.max_acc_drop is not None:
        raise BadInputError("--max-acc-drop needs --val (labelled images)")
    speed = None
    if req.bench is not None:
        from ssmprune_cli.report.bench import bench_models  # timing code only when asked for

        speed = bench_models({"model": pruned, "baseline": model}, req.bench, device,
                             labels={"model": "pruned", "baseline": "dense"})
    elif req.min_speedup is not None:
        raise BadInputError("--min-speedup needs --bench (speed is measured only when asked for)")
    report = build_prune_report(loaded, model, spec, recipe, calib_images=len(cal_set) if cal_set else 0,
                                holdout_images=len(hold_set) if hold_set else 0, agreement=agreement,
                                auto=auto_result, pruned_model=pruned, accuracy=accuracy, speed=speed)
    report["gates"] = prune_gates(report, req)
    write_outputs(out, req, loaded, pruned, spec, recipe, report, cal_set)
    return report


def measure_accuracy(model, pruned, val_dir, limit, batch_size, device, dtype) -> Dict[str, Any]:
    images = validation_images(val_dir, limit)  # the images eval, bench and finetune --val use, whatever the seed
    if any(lbl < 0 for lbl in images.labels):
        raise DataError(f"--val {val_dir} has no class folders: top-1 needs labelled images (ImageFolder)")
    labels = torch.tensor(images.labels)
    with progress_bar("dense top-1", len(images)) as advance:
        dense = predictions(model, images, batch_size, device, dtype, advance)
    with progress_bar("pruned top-1", len(images)) as advance:
        ours = predictions(pruned, images, batch_size, device, dtype, advance)
    return {"images": len(images), "baseline_top1": top1(dense, labels), "top1": top1(ours, labels)}


def prune_gates(report: Dict[str, Any], req: PruneRequest) -> List[Dict[str, Any]]:
    """--max-flops (pruned GMACs, fvcore), --min-speedup (throughput, needs --bench) and --max-acc-drop
    (top-1 points, needs --val)."""
    rows = []
    if req.max_flops is not None:
        rows.append(gate_row("--max-flops", report["flops"]["pruned_gmacs"], req.max_flops, "GMACs (fvcore)",
                             upper=True))
    if req.min_speedup is not None:
        rows.append(gate_row("--min-speedup", report["speed"]["comparison"]["throughput_speedup"],
                             req.min_speedup, "x throughput vs dense", upper=False))
    if req.max_acc_drop is not None:
        acc = report["accuracy"]
        rows.append(gate_row("--max-acc-drop", acc["baseline_top1"] - acc["top1"], req.max_acc_drop,
                             "top-1 points", upper=True))
    return rows


def auto_policy(model, spec: PruningSpec, prune, auto, hold_set: Optional[ImageSet], batch_size: int, device,
                dtype, delta_hat):
    """--auto on the held-out calibration images: decoded once, shared by every candidate (pruning/schedule.py
    scores them and decides)."""
    if hold_set is None or len(hold_set) < MIN_HOLDOUT:
        raise DataError(f"--auto needs at least {MIN_HOLDOUT} held-out calibration images")
    with progress_bar("held-out images", len(hold_set)) as advance:
        batches = []
        for x in model_batches(model, hold_set, batch_size, device, dtype):
            batches.append(x)
            advance(x.shape[0])
    with progress_bar("policy candidates", len(policy_candidates(model, spec, prune, auto))) as advance:
        return choose_policy(model, spec, prune, auto, batches, delta_hat, advance)


def write_outputs(out: Path, req: PruneRequest, loaded, pruned: PrunedModel, spec: PruningSpec,
                  recipe: Dict[str, Any], report: Dict[str, Any], cal_set: Optional[ImageSet] = None) -> None:
    """Everything goes to a temporary folder beside OUT, then one rename: no partial output."""
    with atomic_dir(out) as tmp:
        save_model(pruned.model, tmp / "model.safetensors", family=loaded.family, variant=loaded.variant,
                   pruning=spec.to_dict(), protect=[req.checkpoint])
        resolved = dict(recipe)
        resolved["prune"] = dict(recipe["prune"], conv_fill=spec.conv_fill, delta_fill=spec.delta_fill,
                                 at=[p.site for p in spec.points], keep=[p.keep for p in spec.points])
        resolved["prune"].pop("at_fraction", None)
        if isinstance(resolved["prune"].get("merge"), dict):  # the points are written out: rerunning uses them
            resolved["prune"]["merge"] = dict(resolved["prune"]["merge"], layers="points")
        (tmp / "recipe.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        (tmp / "report.json").write_text(dumps(report) + "\n")
        (tmp / "report.md").write_text(render_prune_markdown(report))
        render_tokens_plot(report["tokens_per_block"], tmp / "tokens.png",
                           points=[s["site"] for s in report["schedule"]])
        if cal_set is not None and len(cal_set):
            render_importance(pruned, across_classes(cal_set, 4).paths, tmp / "importance.png")
