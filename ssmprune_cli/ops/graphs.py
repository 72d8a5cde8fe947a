"""Fixed-shape inference through a CUDA graph: one capture, then each call is one replay.

A model's forward launches hundreds of small kernels; at batch 1 the host's launch time exceeds the GPU's work.
A captured graph replays them all with one launch. Pruned models are capture-safe: the kept-token count per prune
point is fixed by the schedule, token choices stay on the device, and the forward makes no host-to-device copies
and reads nothing back (`torch.cuda.is_current_stream_capturing()` skips the one optional check that would).

Autocast runs inside the captured function with its weight-cast cache off: a cached cast made outside the graph
would be freed when the autocast context closes, and the graph would read freed memory.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
from torch import Tensor, nn


class GraphedForward:
    """`model(x)` for inputs of one shape, dtype and device, replayed from a CUDA graph.

    The returned tensor is the graph's static output: it is overwritten by the next call (clone it to keep it).
    """

    def __init__(self, model: nn.Module, example: Tensor, autocast_dtype: Optional[torch.dtype] = None,
                 warmup: int = 2):
        if not example.is_cuda:
            raise ValueError("CUDA graphs need a CUDA input")
        self.model = model
        self.autocast_dtype = autocast_dtype
        self.static_in = example.clone()
        stream = torch.cuda.Stream(device=example.device)
        stream.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(stream):
            for _ in range(max(warmup, 1)):  # lazy initialisation (kernel compilation, caches) outside the capture
                self._forward(self.static_in)
        torch.cuda.current_stream(example.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = self._forward(self.static_in)

    def _forward(self, x: Tensor):
        ctx = (torch.autocast("cuda", dtype=self.autocast_dtype, cache_enabled=False)
               if self.autocast_dtype is not None else contextlib.nullcontext())
        with ctx:
            return self.model(x)

    def __call__(self, x: Tensor):
        if x is not self.static_in:
            self.static_in.copy_(x)
        self.graph.replay()
        return self.static_out


def graphed(model: nn.Module, example: Tensor, autocast_dtype: Optional[torch.dtype] = None
            ) -> Callable[[Tensor], Tensor]:
    """A callable that replays `model` from a CUDA graph for inputs shaped like `example` (inference only)."""
    return GraphedForward(model, example, autocast_dtype)
