"""Training steps through CUDA graphs: the forward and backward of a fixed batch shape, each replayed as one launch.

A small vision SSM at batch 64-512 launches a few thousand kernels per step (forward, backward, the scan's and
conv's custom kernels, norms); from eager Python the host then limits the step, and a pruned model, which adds the
prune points' bookkeeping, gets slower than dense although it does less arithmetic. `torch.cuda.make_graphed_callables`
captures the model's training forward and its backward once; every later step with the same batch shape replays
them. Pruned models are capture-safe (fixed kept-token counts, no host reads in the forward). The loss and the
optimizer stay eager: they are a handful of launches.

Autocast runs with its weight-cast cache off, during capture and every step (a cached cast made outside the graph
would be freed while the graph still reads it). For the same reason the graphs keep the kernel-ready parameter
copies their capture was served (`ssmprune_cli/param_cache.py`: those of frozen parameters, made once).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ssmprune_cli import param_cache

log = logging.getLogger("ssmprune.train")


def autocast(enabled: bool):
    """bf16 autocast on CUDA without the weight-cast cache (graph-safe), or nothing."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)


class GraphedTraining:
    """`model(x)` for training: replayed from CUDA graphs for batches shaped like the sample, eager otherwise (a
    smaller last batch, say). `ok` is False when capture failed; the model then runs eagerly throughout."""

    def __init__(self, model: nn.Module, sample: Tensor, bf16: bool, warmup: int = 3):
        self.model = model
        self.shape = tuple(sample.shape)
        self.bf16 = bf16
        self._eager: Callable = type(model).forward.__get__(model)
        self._derived: list = []
        self.ok = False
        # make_graphed_callables replaces model.forward; a model graphed by an earlier train() call (one call per
        # epoch, say) must be captured through its own forward, not by replaying the old graph inside the capture
        model.__dict__.pop("forward", None)
        try:
            with autocast(bf16), param_cache.recording() as self._derived:  # kept: the graphs read them
                torch.cuda.make_graphed_callables(model, (sample,), num_warmup_iters=warmup)
            self.ok = True
        except Exception as exc:  # capture fails in many ways (an op that syncs, say): train eagerly
            log.warning("CUDA graphs unavailable for this model (%s: %s); training eagerly", type(exc).__name__,
                        " ".join(str(exc).split())[:200])
            model.forward = self._eager
            torch.cuda.synchronize()
        model.zero_grad(set_to_none=True)  # the capture's warm-up steps left gradients behind

    def __call__(self, x: Tensor):
        if self.ok and tuple(x.shape) == self.shape and self.model.training:
            return self.model(x)
        return self._eager(x)

    def release(self) -> None:
        """Give the model its own forward back (and the graphs' memory to the allocator once unreferenced)."""
        self.model.__dict__.pop("forward", None)
        self._derived = []
        self.ok = False


def graphed_training(model: nn.Module, sample: Tensor, bf16: bool) -> Optional[GraphedTraining]:
    """A graphed training forward for CUDA models, or None where graphs do not apply (CPU)."""
    if not sample.is_cuda:
        return None
    return GraphedTraining(model, sample, bf16)
