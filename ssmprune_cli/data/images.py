"""Images for calibration and evaluation: an ImageFolder tree (class sub-folders) or a flat folder.

Preprocessing follows the model's own input size and normalisation: images at the model's size (e.g. CIFAR 32 px
for a 32 px model) are only converted; larger ones are resized (shorter side to size/0.875, bicubic) and
centre-cropped, the usual ImageNet evaluation transform.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ssmprune_cli.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}
CROP_PCT = 0.875


@dataclass
class ImageSet:
    paths: List[Path]
    labels: List[int]          # -1 for a flat folder
    classes: List[str]

    def __len__(self) -> int:
        return len(self.paths)


def find_images(root, limit: Optional[int] = None, seed: int = 0) -> ImageSet:
    """List images under `root`; with `limit`, a seeded class-balanced-in-expectation random subset."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder of images")
    try:
        class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    except OSError as e:
        raise DataError(f"cannot read {root}: {e.strerror}") from None
    paths: List[Path] = []
    labels: List[int] = []
    classes: List[str] = []
    if class_dirs:
        classes = [d.name for d in class_dirs]
        for i, d in enumerate(class_dirs):
            for p in sorted(d.rglob("*")):
                if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                    paths.append(p)
                    labels.append(i)
    else:
        for p in sorted(root.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                paths.append(p)
                labels.append(-1)
    if not paths:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {root}")
    if limit is not None and limit < len(paths):
        order = list(range(len(paths)))
        random.Random(seed).shuffle(order)
        keep = sorted(order[:limit])
        paths = [paths[i] for i in keep]
        labels = [labels[i] for i in keep]
    return ImageSet(paths, labels, classes)


def preprocess(img: Image.Image, size: Tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> Tensor:
    img = img.convert("RGB")
    H, W = size
    if img.size != (W, H):
        scale_to = int(round(max(H, W) / CROP_PCT))
        w, h = img.size
        s = scale_to / min(w, h)
        img = img.resize((max(W, round(w * s)), max(H, round(h * s))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - W) // 2, (h - H) // 2
        img = img.crop((left, top, left + W, top + H))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).permute(2, 0, 1)
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s_ = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (x - m) / s_


def load_image(path: Path, size, mean, std) -> Tensor:
    try:
        with Image.open(path) as img:
            return preprocess(img, size, mean, std)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


def iter_batches(images: ImageSet, batch_size: int, size, mean, std,
                 device=None, dtype=torch.float32) -> Iterator[Tuple[Tensor, Tensor]]:
    """(images (b, 3, H, W), labels (b,)) batches in a fixed order."""
    for s in range(0, len(images), batch_size):
        chunk = range(s, min(s + batch_size, len(images)))
        x = torch.stack([load_image(images.paths[i], size, mean, std) for i in chunk])
        y = torch.tensor([images.labels[i] for i in chunk], dtype=torch.long)
        yield x.to(device=device, dtype=dtype), y.to(device=device)


def model_input_spec(model) -> Tuple[Tuple[int, int], Sequence[float], Sequence[float]]:
    c, h, w = model.input_size()
    mean, std = model.normalization()
    return (h, w), mean, std
