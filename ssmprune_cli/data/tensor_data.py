"""Small image sets held in memory as uint8 tensors (CIFAR-sized data), with on-device augmentation.

Decoding 50,000 JPEGs once and keeping them as one (N, 3, H, W) uint8 tensor (150 MB for CIFAR-10) lets every
epoch run from memory on the GPU, with random-crop and flip augmentation done there. The pixels are those
evaluation uses (`images.image_array`: the model's own resize and centre crop, never a stretch), normalised by
the same `normalise`; augmentation (docs/finetune.md) is the only difference, and only in training.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .images import ImageSet, image_array, normalise

__all__ = ["TensorImages", "augment", "batches", "normalise"]


@dataclass
class TensorImages:
    images: Tensor   # (N, 3, H, W) uint8
    labels: Tensor   # (N,) long

    @classmethod
    def from_image_set(cls, images: ImageSet, size: Tuple[int, int], workers: int = 8,
                       progress=None) -> "TensorImages":
        out = np.empty((len(images), size[0], size[1], 3), dtype=np.uint8)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for i, arr in enumerate(pool.map(lambda p: image_array(p, size), images.paths)):
                out[i] = arr
                if progress is not None and i % 256 == 0:
                    progress(min(256, len(images) - i))
        return cls(torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(),
                   torch.tensor(images.labels, dtype=torch.long))

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device) -> "TensorImages":
        return TensorImages(self.images.to(device), self.labels.to(device))


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
