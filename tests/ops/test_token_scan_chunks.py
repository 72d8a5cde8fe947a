"""The token scan's forward split over chunks of steps (launches with few programs: batch 1, narrow channel groups):
a summary pass writes each chunk's end state and decay sum, the output pass starts each chunk from the earlier
chunks' summaries. The result must equal the one-pass scan's definition (a float64 loop) for every index form and
option, write every output row, and be chosen only where the grid leaves the GPU idle.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from ssmprune_cli.kernels import token_scan as ts
from ssmprune_cli.ops.token_scan import token_scan

from test_token_scan import CASES, _case, _loop_of, _on_device, rel


@pytest.fixture
def chunked(monkeypatch):
    """Chunks at tiny sizes: every launch counts as too small for the GPU, chunks of 3 steps (N > 1) or one
    8-step tile (N = 1); every output buffer NaN-poisoned, so a row no chunk writes fails the comparison."""
    monkeypatch.setitem(ts.LAUNCH, "states", {"num_warps": 1, "chunk_below": 1e9, "chunk_target": 1e9,
                                              "chunk_min": 3})
    monkeypatch.setitem(ts.LAUNCH, "one_state", {"BT": 8, "BE": 16, "num_warps": 1, "tail_warps_per_sm": 10 ** 6,
                                                 "chunk_below": 1e9, "chunk_target": 1e9, "chunk_min": 8})
    monkeypatch.setattr(ts, "_empty", lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype,
                                                                              device=device))
    launches = []
    for name in ("_token_scan_kernel", "_token_scan_one_state_kernel"):
        kernel = getattr(ts, name)

        class Counting:
            def __getitem__(self, grid, kernel=kernel, name=name):
                def launch(*args, **kw):
                    launches.append((name, tuple(grid), kw.get("PHASE", 0)))
                    return kernel[grid](*args, **kw)
                return launch

        monkeypatch.setattr(ts, name, Counting())
    return launches


@pytest.mark.slow
@pytest.mark.parametrize("N,S,P", [(16, 11, 4), (4, 13, 5), (1, 29, 4), (1, 16, 2)],
                         ids=["N16", "N4", "N1-tail", "N1-whole"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_chunked_forward_matches_definition(N, S, P, case, chunked):
    """P chunks: N > 1 in chunks of 3 steps (11 = 3 · 3 + 2, 13 = 3 · 4 + 1); N = 1 in chunks of one 8-step tile
    (29 = 3 · 8 + 5, the last chunk a tail tile; 16 = 8 + 8). 20 channels: one partial channel block (N > 1), two
    (N = 1, the second partial); the chunks split the steps, and the interpreter's time grows with the blocks."""
    kw = _case(N=N, S=S, T=S + 4, E=20, acc=case % 2 == 0, B_bias="batch", **CASES[case], seed=N * 100 + case)
    out = token_scan(**_on_device(kw), backend="triton")
    want = _loop_of(kw)
    assert out.shape == want.shape and torch.isfinite(out).all()
    assert rel(out, want) < 1e-5
    # a summary launch over all chunks but the last, then the output launch over every chunk
    phases = [(grid[2], phase) for _name, grid, phase in chunked]
    assert phases == [(P - 1, 1), (P, 2)], phases


@pytest.mark.slow
def test_chunked_bf16_with_fills_and_no_options(chunked):
    """bf16 activations (outputs rounded once) and the bare scan (no D, z, bias, gap), chunked."""
    for extras in (dict(dtype=torch.bfloat16), dict(D=False, z=False, bias=False, gap=False)):
        kw = _case(N=16, S=14, E=40, idx="perm", seed=9, **extras)
        out = token_scan(**_on_device(kw), backend="triton")
        want = _loop_of({k: (v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                         for k, v in kw.items()})
        assert out.dtype == kw["u"].dtype
        assert rel(out.float(), want) < (1e-2 if out.dtype == torch.bfloat16 else 1e-5)


@pytest.mark.slow
def test_chunked_at_a_width_divisible_by_16(chunked):
    """64 channels in bf16, N = 16: the launch specialises E as a multiple of 16, which on sm_90 let the chunk
    states' (NP, BE) load and store re-lay the scan loop out with several threads per channel under the 16-wide B/C
    row loads (a misaligned-address fault on the H100 at Vim-S batch 1; the states now move a row at a time). Here the
    values; on a GPU, also the fault."""
    kw = _case(N=16, S=10, E=64, idx="perm", seed=11, dtype=torch.bfloat16)
    out = token_scan(**_on_device(kw), backend="triton")
    want = _loop_of({k: (v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                     for k, v in kw.items()})
    assert out.shape == want.shape and torch.isfinite(out.float()).all()
    assert rel(out.float(), want) < 1e-2
    assert [(grid[2], phase) for _name, grid, phase in chunked] == [(3, 1), (4, 2)]


# Compiles the N = 16 forward for sm_90 (no GPU needed) in each phase, with E, the pointers and the row strides
# specialised as multiples of 16 as a launch on Vim's widths does, and prints the layout of the state the step loop
# carries. A fresh interpreter: under TRITON_INTERPRET the kernels are interpreted functions, not compilable.
_LAYOUT_PROBE = r"""
import json, re, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from ssmprune_cli.kernels import token_scan as ts
fn = ts._token_scan_kernel
found = {}
for phase in (0, 1, 2):
    flags = dict(BE=32, NP=16, HAS_D=phase != 1, HAS_Z=phase != 1, HAS_BIAS=True, SOFTPLUS=True, HAS_GAP=True,
                 HAS_ACC=False, U_IDX=True, P_IDX=True, O_IDX=phase != 1, REVERSE=False, FAST=True, TERMS=4,
                 SAVE=False, PHASE=phase)
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in flags:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*i32" if name in ("ui_ptr", "pi_ptr", "oi_ptr") else (
                "*bf16" if name in ("u_ptr", "dl_ptr", "z_ptr", "acc_ptr", "out_ptr") else "*fp32")
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[name] = "fp32" if name == "out_scale" else "i32"
            if name in ("E", "Lp", "s_ub", "s_ur", "s_db", "s_dr", "s_zb", "s_zr", "s_ob", "s_or", "s_gb"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    ir = triton.compile(ASTSource(fn, sig, flags, attrs), target=GPUTarget("cuda", 90, 32),
                        options={"num_warps": 1}).asm["ttgir"]
    step_loop = [l for l in ir.splitlines() if "scf.for" in l and "t_begin" in l]
    name = re.search(r"tensor<16x32xf32, (#\w+)>", step_loop[0]).group(1)
    spec = re.search(re.escape(name) + r" = #ttg\.blocked<\{sizePerThread = (\[[^]]*\]), threadsPerWarp = "
                     r"(\[[^]]*\])", ir)
    found[phase] = [json.loads(spec.group(1)), json.loads(spec.group(2))]
print(json.dumps(found))
"""


@pytest.mark.slow
def test_every_phase_keeps_one_thread_per_channel():
    """The 16-wide B/C row loads hand each thread one channel's 16 states in order, which holds only while the step
    loop keeps each thread on one channel (threads 1 x 32 over states x channels). The first chunked version's
    (NP, BE) state tiles made Triton lay phases 1 and 2 out otherwise, and the H100 faulted (misaligned address)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", _LAYOUT_PROBE], capture_output=True, text=True, env=env,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    layouts = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(layouts) == {"0", "1", "2"}
    for phase, (per_thread, threads) in layouts.items():
        assert per_thread == [1, 1] and threads == [1, 32], (phase, per_thread, threads)


def test_chunk_choice_follows_the_grid(monkeypatch):
    """On a 132-SM GPU: Vim-S at batch 1 (24 programs of 197 steps) splits into 13 chunks of 16 steps once N > 1
    chunks are on (off by default until timed on a GPU); at batch 128 it is one pass; GroupMamba-T's first-stage
    group (16 channels, one program, 3,136 steps) splits into whole 128-step tiles; the training forward never
    splits."""
    monkeypatch.setattr(ts, "_sms", lambda u: 132)
    u = torch.zeros(1)
    assert ts._chunks(24, 197, ts.LAUNCH["states"], u, 1, save=False) == (1, 197)   # the default: off
    states, one = dict(ts.LAUNCH["states"], chunk_below=1.0), ts.LAUNCH["one_state"]
    assert ts._chunks(24, 197, states, u, 1, save=False) == (13, 16)
    assert ts._chunks(24 * 128, 197, states, u, 1, save=False) == (1, 197)
    assert ts._chunks(24, 197, states, u, 1, save=True) == (1, 197)
    assert ts._chunks(24, 20, states, u, 1, save=False) == (1, 20)        # too few steps to split
    P, CL = ts._chunks(1, 3136, one, u, 128, save=False)
    assert (P, CL) == (25, 128)
    assert ts._chunks(128, 3136, one, u, 128, save=False) == (1, 3136)     # batch 128 fills the GPU
    for programs in (1, 3, 7, 24, 60):
        for S in (33, 197, 785, 3136):
            for cfg, align in ((states, 1), (one, 128)):
                P, CL = ts._chunks(programs, S, cfg, u, align, save=False)
                assert CL % align == 0 or P == 1
                assert (P - 1) * CL < S <= P * CL                          # no empty chunk, every step covered
