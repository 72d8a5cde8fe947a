"""Kernel-ready copies of parameters, made once per parameter version instead of once per call.

The kernels take some parameters in another layout or dtype than the module holds them (the scan's A·log2(e)
transposed, the gather conv's taps channel-contiguous in float32). Made at every call they are tiny launches
that a CUDA graph replays with every forward (about 2-3 µs of GPU time each, hundreds per model). Here each
such copy is made once and served again while the parameter is unchanged.

An entry belongs to the tensor object (a weak reference) and is checked against the tensor's version counter and
address: an in-place update (an optimizer step, `load_state_dict`) makes a new copy, and a freed tensor's address
reused by a new one at version 0 cannot be served a stale copy. A view (VMamba's `A_logs.view(4, E, N)[k]`, made
anew every forward) is cached under the tensor it views, which lives as long as the parameter and shares its
version counter. Inference tensors have no version counter (a tensor a compiled graph made, say): never cached.
"""

from __future__ import annotations

import weakref
from typing import Callable, Dict

import torch
from torch import Tensor

_CACHE: Dict[tuple, tuple] = {}
_LIMIT = 4096


def derived(t: Tensor, tag: str, make: Callable[[Tensor], Tensor]) -> Tensor:
    """`make(t)` (a new tensor that does not need gradients), cached for t's current values under `tag`."""
    if t.is_inference():
        return make(t)
    owner = t if t._base is None else t._base
    key = (id(owner), tag, t.storage_offset(), tuple(t.shape), tuple(t.stride()))
    stamp = (t.data_ptr(), t._version, t.device, t.dtype)
    entry = _CACHE.get(key)
    if entry is not None and entry[0]() is owner and entry[1] == stamp:
        return entry[2]
    with torch.inference_mode(False), torch.no_grad():
        value = make(t)
    if len(_CACHE) > _LIMIT:
        _CACHE.clear()
    _CACHE[key] = (weakref.ref(owner, lambda _ref, key=key: _CACHE.pop(key, None)), stamp, value)
    return value


def clear() -> None:
    """Forget every copy (tests)."""
    _CACHE.clear()
