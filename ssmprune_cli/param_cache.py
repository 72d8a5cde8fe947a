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
A copy made from several tensors (`derived_from`: GroupMamba's four groups' weights stacked) is checked against
each of them.

A CUDA graph captured with cached copies reads their memory at every replay, after the cache may have replaced
them (the graph's bf16 weight copies and the eager float32 weights are different versions of one parameter):
`recording()` lists every copy served while it is open, and the graph keeps that list.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Callable, Dict, Iterator, List, Sequence

import torch
from torch import Tensor

_CACHE: Dict[tuple, tuple] = {}
_LIMIT = 4096
_RECORDERS: List[List[Tensor]] = []


def derived(t: Tensor, tag: str, make: Callable[[Tensor], Tensor]) -> Tensor:
    """`make(t)` (a new tensor that does not need gradients), cached for t's current values under `tag`."""
    return derived_from((t,), tag, lambda ts: make(ts[0]))


def derived_from(ts: Sequence[Tensor], tag: str, make: Callable[[Sequence[Tensor]], Tensor]) -> Tensor:
    """`make(ts)` (a new tensor that does not need gradients), cached for the current values of all of `ts`."""
    ts = tuple(ts)
    if any(t.is_inference() for t in ts):
        return _served(make(ts))
    owners = tuple(t if t._base is None else t._base for t in ts)
    key = (tag,) + tuple((id(o), t.storage_offset(), tuple(t.shape), tuple(t.stride())) for o, t in zip(owners, ts))
    stamp = tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in ts)
    entry = _CACHE.get(key)
    if entry is not None and all(r() is o for r, o in zip(entry[0], owners)) and entry[1] == stamp:
        return _served(entry[2])
    with torch.inference_mode(False), torch.no_grad():
        value = make(ts)
    if len(_CACHE) > _LIMIT:
        _CACHE.clear()
    refs = tuple(weakref.ref(o, lambda _ref, key=key: _CACHE.pop(key, None)) for o in owners)
    _CACHE[key] = (refs, stamp, value)
    return _served(value)


def _served(value: Tensor) -> Tensor:
    for served in _RECORDERS:
        served.append(value)
    return value


@contextlib.contextmanager
def recording() -> Iterator[List[Tensor]]:
    """While open, every copy served is appended to the yielded list (a CUDA graph captured meanwhile reads them:
    keep the list as long as the graph)."""
    served: List[Tensor] = []
    _RECORDERS.append(served)
    try:
        yield served
    finally:
        _RECORDERS.remove(served)


def clear() -> None:
    """Forget every copy (tests)."""
    _CACHE.clear()
