"""`ssmprune finetune`: brief distillation fine-tuning of a pruned model (DESIGN 2.4)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from ssmprune_cli.data.images import find_images, model_input_spec, validation_images
from ssmprune_cli.errors import BadInputError, DataError, Interrupted
from ssmprune_cli.io.atomic import atomic_dir, check_not_input
from ssmprune_cli.io.load import load_checkpoint
from ssmprune_cli.io.safetensors_io import save_model
from ssmprune_cli.pruning.pruned_model import PrunedModel
from ssmprune_cli.report.console import note
from ssmprune_cli.report.jsondoc import dumps
from ssmprune_cli.report.progress import progress_bar
from ssmprune_cli.runtime import pick_device


@dataclass
class FinetuneRequest:
    model: Path
    train: Path
    out: Path
    teacher: Optional[Path] = None       # default: the dense model inside MODEL (for a pruned MODEL)
    train_images: Optional[int] = None
    val: Optional[Path] = None
    val_limit: Optional[int] = None
    config: Any = None                   # train.finetune.TrainConfig
    force: bool = False
    device: Optional[str] = None
    load_options: Dict[str, Any] = field(default_factory=dict)


def run_finetune(req: FinetuneRequest) -> Dict[str, Any]:
    """Brief distillation fine-tuning (DESIGN 2.4): the dense model is the teacher; the result keeps MODEL's
    pruning spec and Δ̂. A run interrupted after an epoch resumes from OUT's state file beside it."""
    from ssmprune_cli.data.tensor_data import TensorImages
    from ssmprune_cli.train.finetune import TrainConfig, accuracy, plan_steps, saved_step, train

    out = Path(req.out)
    if out.exists() and not req.force:
        raise BadInputError(f"output folder {out} already exists; pass --force to replace it")
    check_not_input(out, [req.model])
    cfg = req.config or TrainConfig()
    cfg.check()  # before anything is loaded: --epochs 0 is a one-line refusal, not a wait
    device = pick_device(req.device)
    loaded = load_checkpoint(req.model, **req.load_options)
    student = loaded.model.to(device)
    if req.teacher is not None:
        teacher = load_checkpoint(req.teacher, **req.load_options).model
    elif isinstance(student, PrunedModel):
        teacher = load_checkpoint(req.model, **req.load_options).model.detach()  # the dense model, no pruning
    else:
        raise BadInputError(f"{req.model} is a dense model: pass --teacher CKPT, or fine-tune a pruned model "
                            "(its dense model is the teacher)")
    teacher = teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    core = student.model if isinstance(student, PrunedModel) else student
    size, mean, std = model_input_spec(core)
    with progress_bar("decoding training images", None) as advance:
        data = TensorImages.from_image_set(find_images(req.train, limit=req.train_images, seed=cfg.seed), size,
                                           progress=advance).to(device)
    if bool((data.labels < 0).any()):
        raise DataError(f"--train {req.train} has no class folders: fine-tuning needs labelled images")
    val = None
    if req.val is not None:
        val = TensorImages.from_image_set(validation_images(req.val, req.val_limit), size).to(device)
    before = accuracy(student, val, mean, std) if val is not None else None
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    plan = plan_steps(len(data), cfg, world)
    if plan.batch_size < cfg.batch_size and rank == 0:
        note(f"{plan.per_rank} training images{' per process' if world > 1 else ''}, fewer than --batch-size "
             f"{cfg.batch_size}: every step trains on one batch of all {plan.batch_size}")
    state = out.with_name(f".{out.name}.train_state.pt")
    try:
        with progress_bar("fine-tuning", plan.total) as update:
            summary = train(student, data, cfg, mean, std, teacher=teacher, val_data=val, checkpoint=state,
                            on_step=_bar_feed(update))
        result = {"model": str(req.model), "teacher": str(req.teacher) if req.teacher else "dense model of MODEL",
                  "train_images": len(data), "summary": summary, "rank": rank, "world_size": world}
        if rank != 0:
            return result  # under torchrun every rank holds the same weights; rank 0 measures and writes
        if val is not None:
            result["val"] = {"images": len(val), "top1_before": before,
                             "top1_after": accuracy(student, val, mean, std)}
        try:
            with atomic_dir(out) as tmp:
                spec = student.spec.to_dict() if isinstance(student, PrunedModel) else None
                save_model(core.cpu(), tmp / "model.safetensors", family=loaded.family, variant=loaded.variant,
                           pruning=spec, protect=[req.model])
                (tmp / "finetune.json").write_text(dumps(result) + "\n")
        except Interrupted:  # Ctrl-C during the final rename: the output is complete, nothing is left to resume
            state.unlink(missing_ok=True)
            raise
    except KeyboardInterrupt:
        # Resume state is saved at the end of every epoch (train/finetune.py: save_state, atomic).
        step = saved_step(state) if rank == 0 else None
        if step is None:
            raise Interrupted("interrupted before the first epoch ended; nothing was written") from None
        raise Interrupted(f"interrupted; {out} was not written, the state after step {step} of {plan.total} is "
                          f"saved in {state}: rerun the same command to resume from it") from None
    state.unlink(missing_ok=True)
    return result


def _bar_feed(update):
    """on_step for `train`: the step reached, the total, and the running loss (exponential average over about
    the last 20 steps, bias-corrected)."""
    avg = {"value": 0.0, "weight": 0.0}

    def on_step(step: int, total: int, loss: float) -> None:
        avg["value"] = 0.95 * avg["value"] + 0.05 * loss
        avg["weight"] = 0.95 * avg["weight"] + 0.05
        update(completed=step, total=total, info=f"loss {avg['value'] / avg['weight']:.4f}")
    return on_step
