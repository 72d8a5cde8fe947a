"""Images for calibration, evaluation and fine-tuning: an ImageFolder tree (class sub-folders) or a flat folder.

One preprocessing path, the model's own, serves every command (prune, eval, bench, finetune): images at the
model's input size (e.g. CIFAR 32 px for a 32 px model) are only converted; others get the ImageNet evaluation
transform as timm and torchvision define it: the shorter side resized to floor(size / 0.875) (bicubic, the longer
side in proportion, truncated), then a centred crop. The result is kept as uint8 (`image_array`) and normalised
with the model's mean and std (`normalise`); fine-tuning decodes the same uint8 pixels once into memory.

Subsets (docs/data.md): `validation_images(root, limit)` (`find_images` without a seed) is the validation
subset, a function of the files alone, so every command evaluates the same images for the same `--val-limit`;
with a seed, `find_images` draws a seeded random subset (calibration and training).
"""

from __future__ import annotations

import hashlib
import logging
import math
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

log = logging.getLogger("ssmprune.data")
_told: set = set()  # folders whose skipped files were already reported in this process (--calib and --val alike)


@dataclass
class ImageSet:
    paths: List[Path]
    labels: List[int]          # -1 for a flat folder
    classes: List[str]

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices) -> "ImageSet":
        """These images, in file order."""
        keep = sorted(indices)
        return ImageSet([self.paths[i] for i in keep], [self.labels[i] for i in keep], self.classes)


def find_images(root, limit: Optional[int] = None, seed: Optional[int] = None) -> ImageSet:
    """List images under `root`. With `limit`: without `seed`, the validation subset (`validation_order`: the
    same images whatever the command or its seed); with `seed`, a seeded random subset. Either is returned in
    file order and is class-balanced in expectation."""
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
    skipped: List[Path] = []
    if class_dirs:
        classes = [d.name for d in class_dirs]
        files = [(-2, p) for p in sorted(root.iterdir()) if not p.is_dir()]  # beside the class folders: unused
        for i, d in enumerate(class_dirs):
            files += [(i, p) for p in sorted(d.rglob("*")) if not p.is_dir()]
    else:
        files = [(-1, p) for p in sorted(root.iterdir()) if not p.is_dir()]
    for label, p in files:
        if label != -2 and _listed(p):
            paths.append(p)
            labels.append(label)
        elif not p.name.startswith("."):  # hidden files (.DS_Store, macOS's ._x.jpg) go unmentioned
            skipped.append(p)
    if not paths:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {root}")
    if skipped and str(root) not in _told:
        _told.add(str(root))
        shown = ", ".join(str(p.relative_to(root)) for p in skipped[:3]) + (", …" if len(skipped) > 3 else "")
        why = "not images by name" + (" or outside the class folders" if class_dirs else "")
        log.info(f"{root}: skipped {len(skipped)} file(s) {why} ({shown}); using {len(paths)} images")
    images = ImageSet(paths, labels, classes)
    if limit is None or limit >= len(paths):
        return images
    if seed is None:
        order = validation_order(images, root)
    else:
        order = list(range(len(paths)))
        random.Random(seed).shuffle(order)
    return images.subset(order[:limit])


def across_classes(images: ImageSet, n: int) -> ImageSet:
    """Up to `n` images drawn across the classes, for pictures: one image from each of `n` classes spread evenly
    over the class list (then a second round when there are fewer classes than `n`); a flat folder gives `n`
    images spread evenly over its files. Deterministic: the first images of each class in file order."""
    by_label: dict = {}
    for i, lbl in enumerate(images.labels):
        by_label.setdefault(lbl, []).append(i)
    groups = [by_label[k] for k in sorted(by_label)]
    if len(groups) == 1:  # a flat folder (or one class): evenly spaced files
        only = groups[0]
        step = len(only) / max(1, min(n, len(only)))
        return images.subset(sorted({only[int(k * step)] for k in range(min(n, len(only)))}))
    picked: List[int] = []
    rounds = 0
    while len(picked) < min(n, len(images)):
        want = min(n - len(picked), len(groups))
        for k in range(want):
            g = groups[int(k * len(groups) / want)]
            if rounds < len(g) and g[rounds] not in picked:
                picked.append(g[rounds])
        rounds += 1
        if rounds > max(len(g) for g in groups):
            break
    return ImageSet([images.paths[i] for i in picked], [images.labels[i] for i in picked], images.classes)


def _listed(p: Path) -> bool:
    """An image file by its suffix; hidden files (`.DS_Store`, macOS's `._name.jpg` copies) are not images."""
    return p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()


def validation_images(root, limit: Optional[int] = None) -> ImageSet:
    """The validation subset of `root` (all images without `limit`): `find_images(root, limit)` with no seed."""
    return find_images(root, limit=limit, seed=None)


def validation_order(images: ImageSet, root) -> List[int]:
    """Indices of `images` in the order the validation subset takes them: by the SHA-256 of each file's path
    relative to `root`. A function of the files alone (no seed, no machine): `--val-limit N` means the same N
    images in prune, eval, bench and finetune, wherever the folder lies; adding images brings in only those new
    files whose hash sorts earlier."""
    root = Path(root)
    keys = [hashlib.sha256(p.relative_to(root).as_posix().encode()).digest() for p in images.paths]
    return sorted(range(len(keys)), key=keys.__getitem__)


def resize_crop(img: Image.Image, size: Tuple[int, int], crop_pct: float = CROP_PCT) -> Image.Image:
    """RGB at the model's (H, W): unchanged when it is that size already, else the evaluation transform (module
    docstring). Offsets round((side - crop) / 2) as torchvision's CenterCrop."""
    img = img.convert("RGB")
    H, W = size
    if img.size == (W, H):
        return img
    scale = math.floor(max(H, W) / crop_pct)
    w, h = img.size
    new = (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)
    img = img.resize(new, Image.BICUBIC)
    left, top = int(round((new[0] - W) / 2.0)), int(round((new[1] - H) / 2.0))
    return img.crop((left, top, left + W, top + H))


def image_array(path: Path, size: Tuple[int, int]) -> np.ndarray:
    """The file's pixels at the model's size, (H, W, 3) uint8: what evaluation and training both start from.

    Any image mode converts to RGB (grayscale, palette, RGBA, 16-bit); an image smaller than the input is
    scaled up by the same transform. A file that is not an image, is truncated or corrupt, or would decode to
    more pixels than Pillow's decompression-bomb limit stops the run with one line naming it (DataError): a
    silently skipped image would change which images `--val-limit N` means (docs/data.md)."""
    try:
        with Image.open(path) as img:
            return np.array(resize_crop(img, size), dtype=np.uint8)  # a writable copy
    except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
        raise DataError(f"cannot read image {path}: {e.strerror}") from None
    except UnidentifiedImageError:
        raise DataError(f"cannot read image {path}: not an image Pillow can read; remove it from the folder") \
            from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DataError(f"cannot read image {path} ({reason}): the file is truncated or corrupt; remove or "
                        "replace it") from None


def normalise(x_uint8: Tensor, mean: Sequence[float], std: Sequence[float], dtype=torch.float32) -> Tensor:
    """uint8 pixels (..., 3, H, W) → the model's input: x / 255, minus mean, over std (per channel)."""
    m = torch.tensor(mean, device=x_uint8.device, dtype=dtype)[:, None, None]
    s = torch.tensor(std, device=x_uint8.device, dtype=dtype)[:, None, None]
    return (x_uint8.to(dtype) / 255.0 - m) / s


def preprocess(img: Image.Image, size: Tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> Tensor:
    arr = np.array(resize_crop(img, size), dtype=np.uint8)
    return normalise(torch.from_numpy(arr).permute(2, 0, 1), mean, std)


def load_image(path: Path, size, mean, std) -> Tensor:
    return normalise(torch.from_numpy(image_array(path, size)).permute(2, 0, 1), mean, std)


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
