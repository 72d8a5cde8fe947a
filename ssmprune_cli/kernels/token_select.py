"""Triton forms of `ssmprune_cli.ops.token_select` (the definitions and shapes are there).

`clip_scores`: one program per BK rows of one image sums max(o, 0) over the channels, BC at a time, in float32
(float64 for float64 inputs), and stores the sum in o's dtype, the rounding `o.clamp(min=0).sum(-1)` gives.

`select_top`: one program per image turns every row into one 64-bit key that orders rows as the definition does,
(not protected) << 52 | (descending score as 32 sortable bits) << 20 | row, sorts the keys (a bitonic sort in
registers), reads the keep-th smallest key, keeps the rows whose key is at most that, and numbers the kept rows by a
prefix sum to write them in ascending order. Keys are unique (the row is in them), so exactly `keep` rows are kept.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import Tensor

import triton
import triton.language as tl

LAUNCH = {"clip": {"TILE": 4096, "BC_MAX": 1024, "num_warps": 4}}


@triton.jit(do_not_specialize=["K", "C"])
def _clip_score_kernel(o_ptr, out_ptr, K, C, s_ob, s_ok, BK: tl.constexpr, BC: tl.constexpr, ACC: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    rows = pid * BK + tl.arange(0, BK)
    mr = rows < K
    acc = tl.zeros((BK,), dtype=ACC)
    for c0 in range(0, C, BC):
        c = c0 + tl.arange(0, BC)
        x = tl.load(o_ptr + b * s_ob + rows[:, None] * s_ok + c[None, :], mask=mr[:, None] & (c < C)[None, :],
                    other=0.0).to(ACC)
        acc += tl.sum(tl.maximum(x, 0.0), axis=1)
    tl.store(out_ptr + b * K + rows, acc.to(out_ptr.dtype.element_ty), mask=mr)


def clip_scores(o: Tensor) -> Tensor:
    b, K, C = o.shape
    o = o if o.stride(-1) == 1 else o.contiguous()
    out = torch.empty((b, K), dtype=o.dtype, device=o.device)
    if b and K:
        cfg = LAUNCH["clip"]
        BC = min(triton.next_power_of_2(C), cfg["BC_MAX"])
        BK = min(max(1, cfg["TILE"] // BC), triton.next_power_of_2(K))
        with torch.cuda.device(o.device) if o.is_cuda else contextlib.nullcontext():
            _clip_score_kernel[(triton.cdiv(K, BK), b)](
                o, out, K, C, o.stride(0), o.stride(1), BK=BK, BC=BC,
                ACC=tl.float64 if o.dtype == torch.float64 else tl.float32, num_warps=cfg["num_warps"])
    return out


@triton.jit(do_not_specialize=["K", "P", "keep"])
def _select_kernel(s_ptr, prot_ptr, out_ptr, K, P, keep, s_sb, s_pb, s_pp, KP: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, KP)
    m = offs < K
    s = tl.load(s_ptr + b * s_sb + offs, mask=m, other=0.0).to(tl.float32)
    s = tl.where(s != s, float("-inf"), s)   # NaN ranks as -inf
    s = tl.where(s == 0.0, 0.0, s)            # -0.0 ties with +0.0, as in a sort
    u = s.to(tl.uint32, bitcast=True)
    # float bits -> unsigned integers in the floats' order (negatives reversed), then reversed: higher score first
    desc = ~tl.where((u >> 31) == 1, ~u, u | 0x80000000)
    other = tl.full((KP,), 1, tl.uint64)      # 1 for rows that are not protected: they sort after protected ones
    for p in range(P):
        row = tl.load(prot_ptr + b * s_pb + p * s_pp).to(tl.int32)
        other = tl.where(offs == row, 0, other)
    key = (other << 52) | (desc.to(tl.uint64) << 20) | offs.to(tl.uint64)
    key = tl.where(m, key, 0xFFFFFFFFFFFFFFFF)
    kth = tl.max(tl.where(offs == keep - 1, tl.sort(key), 0), axis=0)
    kept = m & (key <= kth)
    j = tl.cumsum(kept.to(tl.int32), 0) - 1
    tl.store(out_ptr + b * keep + j, offs.to(tl.int64), mask=kept)


def select_top(scores: Tensor, keep: int, protected: Optional[Tensor]) -> Tensor:
    b, K = scores.shape
    scores = scores if scores.stride(-1) == 1 else scores.contiguous()
    out = torch.empty((b, keep), dtype=torch.int64, device=scores.device)
    if b:
        KP = triton.next_power_of_2(K)
        prot = protected if protected is not None else scores  # not read when P = 0
        P = 0 if protected is None else protected.shape[-1]
        s_pb, s_pp = (prot.stride(0), prot.stride(1)) if protected is not None else (0, 0)
        with torch.cuda.device(scores.device) if scores.is_cuda else contextlib.nullcontext():
            _select_kernel[(b,)](scores, prot, out, K, P, keep, scores.stride(0), s_pb, s_pp, KP=KP,
                                 num_warps=max(1, min(8, KP // 256)))
    return out
