"""Brief training: distillation fine-tuning of a pruned model (DESIGN 2.4), or plain supervised training (the
demo model). AdamW with warm-up and a cosine schedule, bf16 autocast on CUDA, checkpoints that resume, DDP under
torchrun (WORLD_SIZE > 1). Progress goes through the `ssmprune.train` logger; nothing prints.

Batches (docs/finetune.md): every epoch one shuffle of all images, seeded by (seed, epoch) and the same on every
rank; rank r takes positions r, r + world, ... of it, cut to an equal count per rank, in full batches of
`batch_size`. A set with fewer images per rank than one batch trains on one batch of all of them. So every rank
runs the same number of steps, no epoch is empty, and N ranks of batch B see, step by step, exactly the images
of one process with batch N·B.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmprune_cli.data.tensor_data import TensorImages, augment, batches, normalise
from ssmprune_cli.errors import BadInputError
from ssmprune_cli.train.graphs import autocast, graphed_training

log = logging.getLogger("ssmprune.train")


@dataclass
class TrainConfig:
    epochs: float = 1.0
    batch_size: int = 128
    lr: float = 5e-4
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    warmup_steps: int = 100
    label_smoothing: float = 0.1
    distill_alpha: float = 0.5   # weight of the soft-logit KL to the teacher (0 = labels only)
    distill_tau: float = 1.0
    grad_clip: float = 1.0
    bf16: bool = True            # autocast on CUDA; ignored on CPU
    augment: bool = True
    seed: int = 0
    max_seconds: float = 0.0     # > 0: shorten the schedule to fit this wall-clock budget
    cuda_graphs: bool = True     # one GPU: replay forward and backward from CUDA graphs (train/graphs.py)

    def check(self) -> None:
        """Refuse settings that cannot train (one line each; the CLI's option names)."""
        if not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise BadInputError(f"--epochs must be more than 0 (got {self.epochs:g}): there is nothing to train")
        if self.batch_size < 1:
            raise BadInputError(f"--batch-size must be at least 1 (got {self.batch_size})")
        if not (self.lr >= 0 and math.isfinite(self.lr)):
            raise BadInputError(f"--lr must be 0 or more (got {self.lr:g})")


@dataclass(frozen=True)
class Schedule:
    """How many images each rank takes per epoch, its batch, and the steps (module docstring)."""

    per_rank: int
    batch_size: int
    steps_per_epoch: int
    total: int


def plan_steps(n_images: int, cfg: TrainConfig, world: int = 1) -> Schedule:
    """The schedule for `n_images` training images on `world` ranks (the job sizes its progress bar with it)."""
    cfg.check()
    per_rank = n_images // world
    if per_rank < 1:
        raise BadInputError(f"{n_images} training images for {world} processes: each process needs at least one")
    batch = min(cfg.batch_size, per_rank)
    steps_per_epoch = per_rank // batch
    return Schedule(per_rank, batch, steps_per_epoch, max(1, int(round(cfg.epochs * steps_per_epoch))))


def epoch_batches(n_images: int, plan: Schedule, seed: int, epoch: int, rank: int = 0, world: int = 1):
    """Index tensors of this rank's batches in `epoch` (CPU, long)."""
    order = torch.randperm(n_images, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    mine = order[:plan.per_rank * world][rank::world]
    return [mine[i * plan.batch_size:(i + 1) * plan.batch_size] for i in range(plan.steps_per_epoch)]


def _world() -> tuple:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def _logits(out: Any) -> Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def loss_fn(out: Any, labels: Tensor, teacher_logits: Optional[Tensor], cfg: TrainConfig) -> Tensor:
    """Labels (smoothed CE) and, with a teacher, soft-logit KL. A model with two heads (GroupMamba returns
    (head, dist_head) in training) keeps the distillation head's role: CE on the first, KL on the second."""
    head = _logits(out)
    dist_head = out[1] if isinstance(out, (tuple, list)) and len(out) > 1 else head
    ce = F.cross_entropy(head.float(), labels, label_smoothing=cfg.label_smoothing)
    if teacher_logits is None or cfg.distill_alpha <= 0:
        return ce if dist_head is head else 0.5 * (ce + F.cross_entropy(dist_head.float(), labels,
                                                                         label_smoothing=cfg.label_smoothing))
    t = cfg.distill_tau
    kl = F.kl_div(F.log_softmax(dist_head.float() / t, -1), F.log_softmax(teacher_logits.float() / t, -1),
                  reduction="batchmean", log_target=True) * t * t
    return (1 - cfg.distill_alpha) * ce + cfg.distill_alpha * kl


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, p)))


@torch.no_grad()
def accuracy(model: nn.Module, data: TensorImages, mean, std, batch_size: int = 512) -> float:
    was = model.training
    model.eval()
    correct = 0
    for x, y in batches(data, batch_size, shuffle=False):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda):
            pred = _logits(model(normalise(x, mean, std))).argmax(-1)
        correct += int((pred == y).sum())
    model.train(was)
    return 100.0 * correct / max(1, len(data))


def _graphed(model: nn.Module, teacher: Optional[nn.Module], sample: Tensor, bf16: bool):
    """The training forward (and the teacher's) replayed from CUDA graphs for batches shaped like `sample`; the
    eager modules where capture fails. Third: the model's graphs (or None), for train() to release."""
    from ssmprune_cli.ops.graphs import GraphedForward

    g = graphed_training(model, sample, bf16)
    fwd = g if g is not None and g.ok else model
    teach = teacher
    if teacher is not None:
        try:
            graphed = GraphedForward(teacher, sample, torch.bfloat16 if bf16 else None)
            teach = lambda x: graphed(x) if x.shape == sample.shape else teacher(x)  # noqa: E731
        except Exception as exc:  # the teacher then runs eagerly; training is unaffected
            log.warning("CUDA graphs unavailable for the teacher (%s); it runs eagerly", type(exc).__name__)
    return fwd, teach, g


def save_state(path, state: Dict[str, Any]) -> None:
    """Write the resume state atomically: a temporary file beside it, renamed over it once complete, and removed
    if the write is interrupted (Ctrl-C mid-save leaves the previous state, never half of a new one)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def saved_step(path) -> Optional[int]:
    """The step a resume state file holds, or None when there is none (or it cannot be read)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError, AttributeError):
        return None


def train(model: nn.Module, train_data: TensorImages, cfg: TrainConfig, mean, std,
          teacher: Optional[nn.Module] = None, val_data: Optional[TensorImages] = None,
          checkpoint: Optional[Path] = None, on_step: Optional[Callable[[int, int, float], None]] = None
          ) -> Dict[str, Any]:
    """Train `model` in place; returns a summary. With `checkpoint`, state is saved there each epoch and a run
    resumes from it when the file exists (at the step it reached, with the batches it would have had)."""
    rank, world = _world()
    plan = plan_steps(len(train_data), cfg, world)
    device = next(model.parameters()).device
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                  else None)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(("A_log", "A_b_log", "A_logs", "pos_embed", "cls_token"))
         else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.999))
    steps_per_epoch, total = plan.steps_per_epoch, plan.total
    step = 0
    if checkpoint is not None and Path(checkpoint).exists():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        log.info("resumed from %s at step %d", checkpoint, step)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + rank)  # augmentation draws, per rank
    use_bf16 = cfg.bf16 and device.type == "cuda"
    fwd, teach = net, teacher
    graphs_pending = cfg.cuda_graphs and device.type == "cuda" and world == 1  # captured at the first batch
    if teacher is not None:
        teacher.eval()
    model.train()
    t0 = t10 = time.perf_counter()
    history = []
    graphs = None
    try:
        while step < total:
            epoch, skip = divmod(step, steps_per_epoch)
            for idx in epoch_batches(len(train_data), plan, cfg.seed, epoch, rank, world)[skip:]:
                if step >= total:
                    break
                idx = idx.to(train_data.images.device)
                x, y = train_data.images[idx], train_data.labels[idx]
                if cfg.augment:
                    x = augment(x, gen)
                xf = normalise(x, mean, std)
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, total, cfg)
                if graphs_pending:
                    graphs_pending = False
                    fwd, teach, graphs = _graphed(model, teacher, xf, use_bf16)
                with autocast(use_bf16):
                    t_logits = None
                    if teach is not None:
                        with torch.no_grad():
                            t_logits = _logits(teach(xf))
                    out = fwd(xf)
                    loss = loss_fn(out, y, t_logits, cfg)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                step += 1
                if cfg.max_seconds > 0 and step == 10:
                    t10 = time.perf_counter()  # steps 10-30 time the steady state (no compile or autotune)
                if cfg.max_seconds > 0 and step == 30:
                    per_step = (time.perf_counter() - t10) / 20
                    spent = time.perf_counter() - t0
                    total = max(step + 1, min(total, step + int((cfg.max_seconds - spent) / per_step)))
                if on_step is not None:
                    on_step(step, total, float(loss.detach()))
                if step % steps_per_epoch == 0 or step == total:
                    entry = {"step": step, "loss": float(loss.detach()), "seconds": time.perf_counter() - t0}
                    if val_data is not None and rank == 0:
                        entry["val_top1"] = accuracy(model, val_data, mean, std)
                    history.append(entry)
                    log.info("step %d/%d loss %.4f %s", step, total, entry["loss"],
                             f"val {entry.get('val_top1', float('nan')):.2f}")
                    if checkpoint is not None and rank == 0:
                        save_state(checkpoint, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                                "step": step, "config": asdict(cfg)})
    finally:
        if graphs is not None:
            graphs.release()  # the model leaves train() with its own forward, however the loop ended
    model.eval()
    return {"steps": total, "batch_size": plan.batch_size, "steps_per_epoch": steps_per_epoch,
            "images_per_rank": plan.per_rank, "history": history, "config": asdict(cfg),
            "seconds": time.perf_counter() - t0}
