"""`ssmprune eval`: top-1 of a dense or pruned model, and agreement with a baseline."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ssmprune_cli.data.images import validation_images
from ssmprune_cli.io.load import load_checkpoint

from ssmprune_cli.report.progress import progress_bar
from ssmprune_cli.runtime import pick_device, predictions, top1


@dataclass
class EvalRequest:
    model: Path
    val: Path
    baseline: Optional[Path] = None
    val_limit: Optional[int] = None       # the validation subset: the same images in every command
    batch_size: int = 64
    device: Optional[str] = None
    load_options: Dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def run_eval(req: EvalRequest) -> Dict[str, Any]:
    device = pick_device(req.device)
    model = load_checkpoint(req.model, **req.load_options).model.to(device).eval()
    images = validation_images(req.val, req.val_limit)
    labelled = all(lbl >= 0 for lbl in images.labels)
    dtype = next(model.parameters()).dtype
    with progress_bar("evaluating", len(images)) as advance:
        pred = predictions(model, images, req.batch_size, device, dtype, advance)
    result: Dict[str, Any] = {"model": str(req.model), "images": len(images)}
    labels = torch.tensor(images.labels)
    if labelled:
        result["top1"] = top1(pred, labels)
    if req.baseline is not None:
        base = load_checkpoint(req.baseline, **req.load_options).model.to(device).eval()
        with progress_bar("evaluating the baseline", len(images)) as advance:
            base_pred = predictions(base, images, req.batch_size, device, dtype, advance)
        result["baseline"] = str(req.baseline)
        result["agreement"] = top1(pred, base_pred)
        if labelled:
            result["baseline_top1"] = top1(base_pred, labels)
            result["acc_drop"] = result["baseline_top1"] - result["top1"]
    return result
