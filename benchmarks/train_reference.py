"""Train the reference models of docs/results.md on CIFAR-10 at 256 tokens, with the project's own training code.

    python benchmarks/train_reference.py --data ../shared/data/cifar10-jpeg.tar.gz --out runs/reference \
        --models vim plainmamba groupmamba [--epochs 100] [--max-minutes 9]

The models (official key layouts; each checkpoint carries its config, CIFAR-10 mean and std included):

    vim          Vim-T width 192, 12 blocks, 32 px, patch 2: 16×16 patches + the class token = 257 tokens
    plainmamba   PlainMamba-L1 width 192 (its stem, and the L1 DWConv after layer 1), 12 layers, 32 px, patch 2:
                 16×16 tokens
    groupmamba   GroupMamba, widths 48/96/144/192, depths 2/4/9/2 (GroupMamba-T's proportions), on CIFAR
                 upsampled to 64 px: 16×16 tokens in stage 1 (8×8, 4×4, 2×2 after)
    demo         the embedded demo model (docs/demo.md): Vim width 128, 12 blocks, 32 px, patch 4 = 65 tokens;
                 not a reference model, trained here so that its training is recorded and resumable too

Each is 3.4-4.0 M parameters, so a checkpoint (< 16 MiB) and a training state (≤ 32 MB in parts) come back from
the GPU machine and travel to it again with the data (64 MiB a call).

Training is `ssmprune_cli.train.finetune.train` with labels only (AdamW, warm-up + cosine, label smoothing, crop
and flip, drop path 0.1 for Vim and GroupMamba, bf16 autocast on CUDA), one epoch per call. Resuming: after every epoch the training state (weights,
optimiser, step) is written to OUT/<model>/state.partNN, its AdamW moments rounded to bf16 and the file cut into
parts of at most 15 MiB, so it travels within the GPU machine's limits (16 MiB a file, 64 MiB a call); every run
resumes from it, and stops at an epoch boundary once --max-minutes have passed. Epoch e shuffles and augments
with the seed (seed · 1000 + e) (its data order, crops, flips and drop path), and every epoch passes through the same rounding, so the weights do not depend on
how the epochs are split into runs: the same command, repeated until done, rebuilds the same weights on the same
kind of GPU and software (CUDA reductions with atomics can still differ in the last bits: compare the SHA-256).

Outputs in OUT/<model>/: log.jsonl (one line per epoch: loss, test top-1 on the 10,000 test images, seconds),
reference.json (model, configuration, seeds, the command of every run, versions, device, final top-1, the
checkpoint's SHA-256), and when the last epoch is done model.safetensors + config.json (ssmprune's format; the state
parts are then removed). Exit code 0 when every model is done, 10 when --max-minutes stopped a run (rerun it).
`--small --device cpu` trains tiny variants on a few hundred images: a smoke test.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import shlex
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssmprune_cli.data.images import find_images  # noqa: E402
from ssmprune_cli.data.tensor_data import TensorImages  # noqa: E402
from ssmprune_cli.io.safetensors_io import save_model  # noqa: E402
from ssmprune_cli.models import create_model  # noqa: E402
from ssmprune_cli.train.finetune import TrainConfig, accuracy, train  # noqa: E402

CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
PART_BYTES = 15 * 2**20

# name → (registered variant, its options, image size). The same dicts are written into reference.json.
MODELS: Dict[str, Dict[str, Any]] = {
    "vim": {"variant": "vim_tiny", "img": 32, "options": dict(
        img_size=32, patch_size=2, stride=2, depth=12, num_classes=10, drop_path_rate=0.1)},
    "plainmamba": {"variant": "plainmamba_l1", "img": 32, "options": dict(
        img_size=32, patch_size=2, depth=12, num_classes=10)},
    "groupmamba": {"variant": "groupmamba_tiny", "img": 64, "options": dict(
        img_size=64, num_classes=10, embed_dims=[48, 96, 144, 192], depths=[2, 4, 9, 2], mlp_ratios=[4, 4, 4, 4],
        drop_path_rate=0.1)},
    # the embedded demo model (docs/demo.md): 32 px, patch 4, 64 patches + class token = 65 tokens, 12 blocks
    "demo": {"variant": "vim_test", "img": 32, "options": dict(
        img_size=32, patch_size=4, stride=4, embed_dim=128, depth=12, d_state=16, num_classes=10)},
}
# --small: tiny variants of the same families, for a CPU smoke test
SMALL: Dict[str, Dict[str, Any]] = {
    "vim": {"variant": "vim_test", "img": 32, "options": dict(img_size=32, patch_size=8, stride=8, depth=2,
                                                              num_classes=10)},
    "plainmamba": {"variant": "plainmamba_test", "img": 32, "options": dict(img_size=32, patch_size=8,
                                                                            num_classes=10)},
    "groupmamba": {"variant": "groupmamba_test", "img": 32, "options": dict(img_size=32, num_classes=10)},
    "demo": {"variant": "vim_test", "img": 32, "options": dict(img_size=32, patch_size=8, stride=8, depth=2,
                                                               num_classes=10)},
}
# per-model training defaults (flags override all models alike)
DEFAULTS = {"epochs": 100, "batch_size": 256, "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 5}

log = logging.getLogger("train_reference")


class _EpochDone(Exception):
    """Raised from the step callback one step after an epoch boundary: that epoch's state is on disk."""


# ------------------------------------------------------------------------------------------------ data
def load_cifar(data: Path, size: int, train_limit: Optional[int], test_limit: Optional[int], device):
    """(train, test) as in-memory uint8 tensors at `size` px, from the tarball or an extracted folder."""
    root = data
    if data.is_file():
        root = Path(tempfile.mkdtemp(prefix="cifar"))
        with tarfile.open(data) as tar:
            tar.extractall(root, filter="data")
        root = root / "cifar10"
    sets = []
    for split, limit in (("train", train_limit), ("test", test_limit)):
        images = find_images(root / split, limit=limit, seed=0)
        sets.append(TensorImages.from_image_set(images, (size, size)).to(device))
    return sets


# ------------------------------------------------------------------------------------------------ state
def save_state_parts(state_file: Path, folder: Path) -> List[Path]:
    """The training state with AdamW moments in bf16, cut into parts of at most 15 MiB; the file is removed."""
    state = torch.load(state_file, map_location="cpu", weights_only=True)
    for entry in state["optimizer"]["state"].values():
        for key in ("exp_avg", "exp_avg_sq"):
            if key in entry:
                entry[key] = entry[key].to(torch.bfloat16)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    for old in folder.glob("state.part*"):
        old.unlink()
    parts = []
    for i in range(0, len(data), PART_BYTES):
        part = folder / f"state.part{i // PART_BYTES:02d}"
        part.write_bytes(data[i:i + PART_BYTES])
        parts.append(part)
    state_file.unlink()
    return parts


def load_state_parts(folder: Path, state_file: Path) -> Optional[int]:
    """Join the parts back into the file train() resumes from (moments as float32); the step, or None."""
    parts = sorted(folder.glob("state.part*"))
    if not parts:
        return None
    state = torch.load(io.BytesIO(b"".join(p.read_bytes() for p in parts)), map_location="cpu", weights_only=True)
    for entry in state["optimizer"]["state"].values():
        for key in ("exp_avg", "exp_avg_sq"):
            if key in entry:
                entry[key] = entry[key].float()
    torch.save(state, state_file)
    return int(state["step"])


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ------------------------------------------------------------------------------------------------ training
def build(name: str, small: bool, seed: int, drop_path: Optional[float] = None):
    spec = (SMALL if small else MODELS)[name]
    if drop_path is not None:  # recorded in reference.json with the other options
        spec = {**spec, "options": {**spec["options"], "drop_path_rate": drop_path}}
    torch.manual_seed(seed)
    return create_model(spec["variant"], mean=CIFAR_MEAN, std=CIFAR_STD, **spec["options"]), spec


def train_model(name: str, args, data_cache: Dict[int, Any], device, started: float) -> Dict[str, Any]:
    folder = args.out / name
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / "reference.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    if manifest.get("done"):
        log.info("%s: done already (%s)", name, manifest["checkpoint"]["sha256"][:12])
        return manifest
    model, spec = build(name, args.small, args.seed, args.drop_path)
    model.to(device)
    size = spec["img"]
    if size not in data_cache:
        data_cache[size] = load_cifar(args.data, size, args.train_images, args.test_images, device)
    train_set, test_set = data_cache[size]
    steps_per_epoch = max(1, len(train_set) // args.batch_size)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, min_lr=1e-6,
                      weight_decay=args.weight_decay, warmup_steps=args.warmup_epochs * steps_per_epoch,
                      label_smoothing=0.1, distill_alpha=0.0, bf16=device.type == "cuda", augment=True,
                      seed=args.seed)
    fixed = {"model": name, "variant": spec["variant"], "options": spec["options"], "train": asdict(cfg),
             "train_images": len(train_set), "test_images": len(test_set), "seed": args.seed,
             "epoch_seed": "seed * 1000 + epoch", "small": args.small}
    if manifest and {k: manifest.get(k) for k in fixed} != fixed:
        raise SystemExit(f"{folder} holds a run with other settings; use another --out or remove it")
    manifest.update(fixed)
    runs = manifest.setdefault("runs", [])
    state_file = folder / "state.pt"
    step = load_state_parts(folder, state_file) or 0
    epoch = step // steps_per_epoch
    total_epochs = int(round(args.epochs))
    run = {"command": " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv), "from_epoch": epoch,
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    runs.append(run)
    last_loss = [float("nan")]

    def on_step(s: int, total: int, loss: float) -> None:
        last_loss[0] = loss
        if s == stop_at:
            raise _EpochDone

    ran = 0
    while epoch < total_epochs:
        if ran and args.max_minutes and (time.perf_counter() - started) / 60 > args.max_minutes:
            log.info("%s: %.1f minutes used, stopping after epoch %d; rerun the same command to resume",
                     name, (time.perf_counter() - started) / 60, epoch)
            break
        t0 = time.perf_counter()
        stop_at = (epoch + 1) * steps_per_epoch + 1  # one step into the next epoch: this epoch's state is saved
        torch.manual_seed(args.seed * 1000 + epoch)   # drop path draws from the global generator
        try:
            train(model, train_set, replace(cfg, seed=args.seed * 1000 + epoch), CIFAR_MEAN, CIFAR_STD,
                  checkpoint=state_file, on_step=on_step)
        except _EpochDone:
            pass
        state = torch.load(state_file, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])  # the epoch's end (the extra step is dropped)
        save_state_parts(state_file, folder)
        load_state_parts(folder, state_file)  # continue from the rounded state, as a fresh run would
        state = torch.load(state_file, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        top1 = accuracy(model, test_set, CIFAR_MEAN, CIFAR_STD)
        epoch += 1
        ran += 1
        entry = {"epoch": epoch, "step": int(state["step"]), "loss": last_loss[0], "test_top1": top1,
                 "seconds": time.perf_counter() - t0}
        with open(folder / "log.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
        log.info("%s: epoch %d/%d loss %.4f test top-1 %.2f (%.0f s)", name, epoch, total_epochs, entry["loss"],
                 top1, entry["seconds"])
    state_file.unlink(missing_ok=True)
    run["to_epoch"] = epoch
    if epoch >= total_epochs:
        ckpt = folder / "model.safetensors"
        save_model(model.float().cpu(), ckpt, family=model.family, variant=None)
        model.to(device)
        manifest["done"] = True
        manifest["test_top1"] = accuracy(model, test_set, CIFAR_MEAN, CIFAR_STD)
        manifest["checkpoint"] = {"path": str(ckpt), "sha256": sha256(ckpt), "bytes": ckpt.stat().st_size}
        for part in folder.glob("state.part*"):
            part.unlink()
        log.info("%s: done, test top-1 %.2f, %s sha256 %s", name, manifest["test_top1"], ckpt,
                 manifest["checkpoint"]["sha256"])
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="cifar10-jpeg.tar.gz, or its extracted cifar10/ folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", nargs="+", default=[m for m in MODELS if m != "demo"], choices=list(MODELS))
    ap.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    ap.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    ap.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    ap.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"])
    ap.add_argument("--warmup-epochs", type=int, default=DEFAULTS["warmup_epochs"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--drop-path", type=float, default=None, help="stochastic depth rate for every model (default: "
                    "each model's own, 0.1 for vim and groupmamba, none for the others)")
    ap.add_argument("--max-minutes", type=float, default=0.0, help="stop at the first epoch boundary after this")
    ap.add_argument("--device", default=None, help="cpu, cuda (default: cuda when available)")
    ap.add_argument("--small", action="store_true", help="tiny variants and few images: a CPU smoke test")
    ap.add_argument("--train-images", type=int, default=None)
    ap.add_argument("--test-images", type=int, default=None)
    args = ap.parse_args(argv)
    if args.small:
        args.train_images = args.train_images or 256
        args.test_images = args.test_images or 64
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    started = time.perf_counter()
    cache: Dict[int, Any] = {}
    unfinished = 0
    for name in args.models:
        manifest = train_model(name, args, cache, device, started)
        unfinished += not manifest.get("done")
    return 0 if not unfinished else 10  # 10: stopped by --max-minutes, rerun to resume


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
