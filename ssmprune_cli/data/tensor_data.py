"""Small image sets held in memory as uint8 tensors (CIFAR-sized data), with on-device augmentation.

Decoding 50,000 JPEGs once and keeping them as one (N, 3, H, W) uint8 tensor (150 MB for CIFAR-10) lets every
epoch run from memory on the GPU, with random-crop and flip augmentation done there.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .images import ImageSet


def _decode(path, size: Tuple[int, int]) -> np.ndarray:
    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.size != (size[1], size[0]):
            img = img.resize((size[1], size[0]), Image.BICUBIC)
        return np.asarray(img, dtype=np.uint8)


@dataclass
class TensorImages:
    images: Tensor   # (N, 3, H, W) uint8
    labels: Tensor   # (N,) long

    @classmethod
    def from_image_set(cls, images: ImageSet, size: Tuple[int, int], workers: int = 8,
                       progress=None) -> "TensorImages":
        out = np.empty((len(images), size[0], size[1], 3), dtype=np.uint8)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for i, arr in enumerate(pool.map(lambda p: _decode(p, size), images.paths)):
                out[i] = arr
                if progress is not None and i % 256 == 0:
                    progress(min(256, len(images) - i))
        return cls(torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(),
                   torch.tensor(images.labels, dtype=torch.long))

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device) -> "TensorImages":
        return TensorImages(self.images.to(device), self.labels.to(device))

    def shard(self, rank: int, world: int) -> "TensorImages":
        return TensorImages(self.images[rank::world], self.labels[rank::world])


def normalise(x_uint8: Tensor, mean: Sequence[float], std: Sequence[float], dtype=torch.float32) -> Tensor:
    m = torch.tensor(mean, device=x_uint8.device, dtype=dtype)[:, None, None]
    s = torch.tensor(std, device=x_uint8.device, dtype=dtype)[:, None, None]
    return (x_uint8.to(dtype) / 255.0 - m) / s


def augment(x: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """Random crop with zero padding and horizontal flip, per image, on the tensor's device."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])            # (b, h)
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])            # (b, w)
    flip = torch.rand(b, generator=generator, device=x.device) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def batches(data: TensorImages, batch_size: int, generator: Optional[torch.Generator] = None,
            shuffle: bool = True, drop_last: bool = False) -> Iterator[Tuple[Tensor, Tensor]]:
    n = len(data)
    order = (torch.randperm(n, generator=generator, device=generator.device if generator else "cpu")
             if shuffle else torch.arange(n))
    order = order.to(data.images.device)
    stop = n - n % batch_size if drop_last else n
    for s in range(0, stop, batch_size):
        idx = order[s:s + batch_size]
        yield data.images[idx], data.labels[idx]
