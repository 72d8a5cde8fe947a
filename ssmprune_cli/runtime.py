"""Where and how models run over images, below the jobs and the reports that both need it: the device choice,
batches of preprocessed images, and batched top-1 predictions (replayed from a CUDA graph on one GPU).

No printing here: a caller that wants a progress bar passes `progress`, a callable advanced by the images done.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
from torch import nn

from ssmprune_cli.data.images import ImageSet, iter_batches, model_input_spec
from ssmprune_cli.errors import BadInputError


def pick_device(device: Optional[str]) -> torch.device:
    """`None` / "auto": CUDA when available, else the CPU; otherwise the device named (cpu, cuda, cuda:N)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise BadInputError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError("--device cuda was asked for but no CUDA GPU is available")
    return dev


def model_batches(model: nn.Module, images: ImageSet, batch_size: int, device, dtype) -> Iterator[torch.Tensor]:
    """The images as `model` takes them (its input size, mean and std), in batches, in file order."""
    size, mean, std = model_input_spec(model)
    for x, _ in iter_batches(images, batch_size, size, mean, std, device=device, dtype=dtype):
        yield x


@torch.no_grad()
def predictions(model: nn.Module, images: ImageSet, batch_size: int, device, dtype,
                progress: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Top-1 class of every image. On CUDA, full batches replay the model from a CUDA graph (captured at the
    first one; a model that cannot be captured runs eagerly), so small models are not held back by launches."""
    preds = []
    run = None
    for x in model_batches(model, images, batch_size, device, dtype):
        if run is None:
            run = _runner(model, x)
        preds.append(run(x).argmax(dim=-1).cpu())
        if progress is not None:
            progress(x.shape[0])
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def _runner(model: nn.Module, first: torch.Tensor):
    if not first.is_cuda:
        return model
    from ssmprune_cli.ops.graphs import GraphedForward

    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
    try:
        graphed = GraphedForward(model, first, dtype)
    except Exception:  # capture can fail in many ways; eager predictions are the same predictions
        torch.cuda.synchronize(first.device)
        return model
    return lambda x: graphed(x) if x.shape == first.shape else model(x)


def top1(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 in percent, from the count of correct predictions (exact: 2 of 30 is 6.666..., not a float32 mean)."""
    return 100.0 * int((pred == labels).sum()) / max(1, len(labels))
