"""Fixed-shape inference through a CUDA graph: one capture, then each call is one replay.

A model's forward launches hundreds of small kernels; at batch 1 the host's launch time exceeds the GPU's work.
A captured graph replays them all with one launch. Pruned models are capture-safe: the kept-token count per prune
point is fixed by the schedule, token choices stay on the device, and the forward makes no host-to-device copies
and reads nothing back (`torch.cuda.is_current_stream_capturing()` skips the one optional check that would).

Autocast runs inside the captured function with its weight-cast cache off: a cached cast made outside the graph
would be freed when the autocast context closes, and the graph would read freed memory. So that the graph does not
replay a cast of every matmul weight at every call instead (hundreds of small kernels: a quarter of a batch-1
GroupMamba-T forward's launches), the weights autocast would cast are handed to the capture already cast, as copies
the graph keeps (`matmul_weights_as`): the same values autocast makes, so the same results. The kernel-ready
parameter copies the capture was served (ssmprune_cli/param_cache.py) are kept with the graph, so that a later
call that replaces them in the cache cannot free memory the graph reads.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, List, Optional

import torch
from torch import Tensor, nn

from ssmprune_cli import param_cache


@contextlib.contextmanager
def matmul_weights_as(model: nn.Module, dtype: torch.dtype) -> Iterator[List[Tensor]]:
    """While open, the float32 weights of the model's nn.Linear and dense (groups = 1) nn.Conv modules, and the
    parameters a module lists in its `matmul_parameters` (weights it passes to F.linear itself, as GroupMamba's and
    VMamba's x_proj and dt_proj), hold `dtype` copies of their values: under autocast to `dtype` those are exactly
    the casts autocast would make at each call, and it makes none for them. Biases, depthwise convs (the project's
    own kernels read their float32 taps) and every other parameter stay as they are. The parameters are the same
    objects throughout, and get their own values back on exit. Yields the copies (a CUDA graph captured meanwhile
    reads them: keep them alive as long as it)."""
    swapped, seen = [], set()
    for m in model.modules():
        dense_conv = isinstance(m, nn.modules.conv._ConvNd) and m.groups == 1
        weights = [m.weight] if isinstance(m, nn.Linear) or dense_conv else []
        weights += [getattr(m, name) for name in getattr(m, "matmul_parameters", ())]
        for w in weights:
            if isinstance(w, nn.Parameter) and w.dtype == torch.float32 and id(w) not in seen:  # tied: once
                seen.add(id(w))
                swapped.append((w, w.data))
    copies = []
    try:
        for w, data in swapped:
            copies.append(data.to(dtype))
            w.data = copies[-1]
        yield copies
    finally:
        for w, data in swapped:
            w.data = data


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
        # a compiled model's kernels fuse the casts themselves (and would recompile for the other weight dtype)
        compiled = hasattr(model, "_orig_mod")
        cast = (matmul_weights_as(model, autocast_dtype) if autocast_dtype is not None and not compiled
                else contextlib.nullcontext([]))
        with cast as self._weights:  # the graph reads these copies at every replay
            stream = torch.cuda.Stream(device=example.device)
            stream.wait_stream(torch.cuda.current_stream(example.device))
            with torch.cuda.stream(stream):
                for _ in range(max(warmup, 1)):  # lazy initialisation (kernels, caches) outside the capture
                    self._forward(self.static_in)
            torch.cuda.current_stream(example.device).wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with param_cache.recording() as self._derived, torch.cuda.graph(self.graph):  # kept: the graph reads them
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
