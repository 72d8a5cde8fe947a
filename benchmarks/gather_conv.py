"""Gather-conv kernels on one GPU: full-shape numerics against float64, then timings against the PyTorch/cuDNN path
that the models run today (fill the grid, dense depthwise conv, gather).

    python3 benchmarks/gather_conv.py                       # numerics + timings, every case, float32 and bfloat16
    python3 benchmarks/gather_conv.py --cases vim_s_fwd_hold vim_s_bwd_hold --dtypes bf16
    python3 benchmarks/gather_conv.py --launch fwd.TILE=4096 --launch fwd.BC=128   # other launch shapes
    python3 benchmarks/gather_conv.py --sweep fwd --dtypes bf16 --skip-numerics     # a few launch shapes per case
    python3 benchmarks/gather_conv.py --json out/gather_conv.json                   # also write every number
    python3 benchmarks/gather_conv.py --device cpu --small  # smoke test without a GPU: tiny shapes, interpreter

Columns: `triton` is the op (`gather_conv(..., backend="triton")`); `torch` is what the models run today: for a
pruned layer, the fill by `TokenLayout.scatter`, the conv on the (b, C, L) layout after a transpose (Vim's
backward direction also flips the sequence), then the gather at the kept positions; for a dense layer, the
transpose and the conv. `cudnn` is the conv alone on a ready (b, C, L) / (b, C, H, W) tensor: cuDNN's own time,
with no transposes or fills. Times are medians over repeats, each repeat CUDA-event timed around `--inner` calls
(eager launches: small cases include host overhead); `graph` replays the op's forward captured in a CUDA graph,
which also shows that it needs no host synchronisation. GB/s: x read once plus out written once plus the index
maps, over the forward time; `%copy` against a device-to-device copy measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = {
    # Vim-S: E = 768, 197 tokens; x is xz[..., :E] of in_proj's (b, L, 2E) output. Causal conv, KW = 4. The
    # backward direction's outputs are asked for in scan order (keep descending), as its scan reads them.
    "vim_s_fwd_dense": dict(b=128, C=768, grid=(1, 197), kernel=(1, 4), padding=(0, 3), flip=False, silu=True,
                            keep=None, fill=None, wide=2),
    "vim_s_bwd_dense": dict(b=128, C=768, grid=(1, 197), kernel=(1, 4), padding=(0, 3), flip=True, silu=True,
                            keep=None, fill=None, wide=2),
    "vim_s_fwd_hold": dict(b=128, C=768, grid=(1, 197), kernel=(1, 4), padding=(0, 3), flip=False, silu=True,
                           keep=101, fill="forward", wide=2),
    "vim_s_bwd_hold": dict(b=128, C=768, grid=(1, 197), kernel=(1, 4), padding=(0, 3), flip=True, silu=True,
                           keep=101, fill="backward", wide=2),
    # PlainMamba-L3: E = 896 on 14 x 14, 7 x 7 depthwise + SiLU
    "plainmamba_l3_dense": dict(b=128, C=896, grid=(14, 14), kernel=(7, 7), padding=(3, 3), flip=False, silu=True,
                                keep=None, fill=None, wide=2),
    # GroupMamba-T: each of 4 channel groups has its own mixer conv (3 x 3 + SiLU) on dim / 4 channels; the FFN's
    # 3 x 3 depthwise conv (+ GELU, fused) on mlp_ratio x dim. 70 % kept: 'hold' = nearest kept token.
    "groupmamba_t_s1_mixer_dense": dict(b=128, C=16, grid=(56, 56), kernel=(3, 3), padding=(1, 1), flip=False,
                                        silu=True, keep=None, fill=None, wide=2),
    "groupmamba_t_s1_mixer_hold70": dict(b=128, C=16, grid=(56, 56), kernel=(3, 3), padding=(1, 1), flip=False,
                                         silu=True, keep=2195, fill="grid", wide=2),
    "groupmamba_t_s1_ffn_dense": dict(b=128, C=512, grid=(56, 56), kernel=(3, 3), padding=(1, 1), flip=False,
                                      silu=False, keep=None, fill=None, wide=1, act="gelu"),
    "groupmamba_t_s1_ffn_hold70": dict(b=128, C=512, grid=(56, 56), kernel=(3, 3), padding=(1, 1), flip=False,
                                       silu=False, keep=2195, fill="grid", wide=1, act="gelu"),
    "groupmamba_t_s3_mixer_dense": dict(b=128, C=87, grid=(14, 14), kernel=(3, 3), padding=(1, 1), flip=False,
                                        silu=True, keep=None, fill=None, wide=2),
    "groupmamba_t_s3_mixer_hold70": dict(b=128, C=87, grid=(14, 14), kernel=(3, 3), padding=(1, 1), flip=False,
                                         silu=True, keep=137, fill="grid", wide=2),
    "groupmamba_t_s3_ffn_dense": dict(b=128, C=1392, grid=(14, 14), kernel=(3, 3), padding=(1, 1), flip=False,
                                      silu=False, keep=None, fill=None, wide=1, act="gelu"),
    "groupmamba_t_s3_ffn_hold70": dict(b=128, C=1392, grid=(14, 14), kernel=(3, 3), padding=(1, 1), flip=False,
                                       silu=False, keep=137, fill="grid", wide=1, act="gelu"),
}
LIMITS = {"fp32": 1e-5, "bf16": 1e-2}
# (TILE, BC, num_warps) for --sweep: the default, taller and shorter tiles, and one-warp programs (whose layouts
# keep every channel of a row in one warp); ROWS of "bwd_w" stays as LAUNCH has it
SWEEP = [(1024, 64, 4), (2048, 64, 4), (4096, 64, 4), (2048, 128, 4), (4096, 128, 8), (8192, 128, 8),
         (512, 128, 1), (1024, 256, 1)]


def small(case):
    """The smoke mode's version of a case: batch 2, at most 12 channels, grids of 13 tokens or 5 x 6."""
    c = dict(case, b=2, C=min(case["C"], 12))
    L = case["grid"][0] * case["grid"][1]
    c["grid"] = (1, 13) if case["grid"][0] == 1 else (5, 6)
    if case["keep"] is not None:
        c["keep"] = max(1, round(case["keep"] / L * c["grid"][0] * c["grid"][1]))
    return c


# ----------------------------------------------------------------------------------------------- inputs
def make(case, dtype, device, seed=0):
    """Inputs as the models pass them: activations in `dtype`, conv parameters float32, maps from TokenLayout."""
    import torch

    from ssmprune_cli.models.layers.token_layout import TokenLayout

    g = torch.Generator().manual_seed(seed)
    b, C, (H, W), (KH, KW) = case["b"], case["C"], case["grid"], case["kernel"]
    L = H * W
    K = L if case["keep"] is None else case["keep"]
    wide = torch.randn(b, K, case["wide"] * C, generator=g).to(device=device, dtype=dtype)
    t = {"wide": wide, "x": wide[..., :C], "layout": None, "keep": None, "src": None, "steps": None,
         "weight": (torch.randn(C, KH, KW, generator=g) / (KH * KW) ** 0.5).to(device),
         "bias": (0.1 * torch.randn(C, generator=g)).to(device)}
    order = torch.arange(L, device=device)
    if case["flip"]:
        order = order.flip(0)
    if case["keep"] is not None:
        keep = torch.stack([torch.randperm(L, generator=g)[:K].sort().values for _ in range(b)]).to(device)
        layout = TokenLayout(keep, L, grid=(H, W) if H > 1 else None)
        t.update(layout=layout, src=layout.fill_index(case["fill"]), keep=keep.flip(1) if case["flip"] else keep)
        if H == 1:
            t["steps"] = layout.scan_steps(order)[0]
    elif case["flip"]:
        t["keep"] = order.expand(b, L)  # outputs in scan order: the reversed sequence, read in place
    return t


def op(case, t, x, weight, bias, backend="triton"):
    from ssmprune_cli.ops.gather_conv import gather_conv, gather_conv_ref

    args = (x, weight, bias, case["grid"], case["padding"], t["keep"], t["src"], case["flip"], case["silu"])
    act = case.get("act")
    return gather_conv(*args, backend=backend, act=act) if backend != "ref" else gather_conv_ref(*args, act=act)


def torch_path(case, t, x, weight, bias):
    """What the models compute today (vim.py `_kept`/`_conv`, plainmamba.py `_conv`, groupmamba.py
    `conv_tokens`), outputs in the same order as `op`'s."""
    import torch.nn.functional as F

    b, K, C = x.shape
    (H, W), (KH, KW) = case["grid"], case["kernel"]
    layout = t["layout"]
    full = x if layout is None else layout.scatter(x, case["fill"])
    w = weight.to(x.dtype)[:, None]
    bias = bias.to(x.dtype)
    if H == 1:
        if case["flip"]:
            full = full.flip(1)
        y = F.conv1d(F.pad(full.transpose(1, 2), (KW - 1, 0)), w[:, :, 0], bias, groups=C)
        y = F.silu(y) if case["silu"] else y
        y = y.transpose(1, 2)
        return y if layout is None else layout.take(y, t["steps"])
    y = F.conv2d(full.transpose(1, 2).reshape(b, C, H, W), w, bias, padding=case["padding"], groups=C)
    y = F.silu(y) if case["silu"] else (F.gelu(y) if case.get("act") == "gelu" else y)
    y = y.flatten(2).transpose(1, 2)
    return y if layout is None else layout.gather(y)


def cudnn_only(case, t, weight, bias):
    """The dense conv alone on a ready channel-major tensor (no transposes, no fill): a closure."""
    import torch
    import torch.nn.functional as F

    b, C, (H, W), (KH, KW) = case["b"], case["C"], case["grid"], case["kernel"]
    dtype = t["x"].dtype
    w, bb = weight.to(dtype)[:, None], bias.to(dtype)
    if H == 1:
        xc = torch.randn(b, C, W + KW - 1, device=t["x"].device, dtype=dtype)
        return lambda: F.conv1d(xc, w[:, :, 0], bb, groups=C)
    xc = torch.randn(b, C, H, W, device=t["x"].device, dtype=dtype)
    return lambda: F.conv2d(xc, w, bb, padding=case["padding"], groups=C)


def rel(x, ref):
    import torch

    x, ref = x.detach().double(), ref.detach().double()
    return ((x - ref).norm() / ref.norm()).item() if torch.isfinite(x).all() else float("inf")


# ----------------------------------------------------------------------------------------------- numerics
def numerics(case, dname, device):
    """Relative errors of the output and of dx, dweight, dbias against float64 (same rounded inputs), and of the
    models' current path against the reference in float64 (that the benchmark compares like with like)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dname]
    t = make(case, dtype, device)
    C = case["C"]
    mine = [t["wide"].detach().requires_grad_(), t["weight"].detach().requires_grad_(),
            t["bias"].detach().requires_grad_()]
    ref = [v.detach().double().requires_grad_() for v in mine]
    out = op(case, t, mine[0][..., :C], mine[1], mine[2])
    expect = op(case, t, ref[0][..., :C], ref[1], ref[2], backend="ref")
    dout = torch.randn(expect.shape, device=device, dtype=torch.float64).to(dtype)
    got = torch.autograd.grad(out, mine, dout)
    want = torch.autograd.grad(expect, ref, dout.double())
    res = {"out": rel(out, expect), "dx": rel(got[0], want[0]), "dweight": rel(got[1], want[1]),
           "dbias": rel(got[2], want[2])}
    with torch.no_grad():
        res["torch_path_vs_ref_fp64"] = rel(torch_path(case, t, ref[0][..., :C], ref[1], ref[2]), expect)
    res["ok"] = all(v < LIMITS[dname] for k, v in res.items() if k != "torch_path_vs_ref_fp64") and \
        res["torch_path_vs_ref_fp64"] < 1e-10
    return res


# ----------------------------------------------------------------------------------------------- timing
class Timer:
    def __init__(self, device, reps, inner):
        self.cuda = device != "cpu"
        self.reps, self.inner = reps, inner

    def __call__(self, fn):
        """Median seconds per call."""
        import torch

        for _ in range(3 if self.cuda else 1):
            fn()
        times = []
        for _ in range(self.reps):
            if self.cuda:
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(self.inner):
                    fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) * 1e-3 / self.inner)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def graph(self, fn):
        """Median seconds per replay of `fn` captured in a CUDA graph (None on the CPU)."""
        import torch

        if not self.cuda:
            return None
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return self(graph.replay)


def copy_bandwidth(timer, device):
    import torch

    if device == "cpu":
        return float("nan")
    src = torch.empty(1 << 28, device=device)  # 1 GiB
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / timer(lambda: dst.copy_(src))


def fwd_bytes(case, t):
    x, s = t["x"], t["x"].element_size()
    b, K, C = x.shape
    M = case["grid"][0] * case["grid"][1] if t["keep"] is None else t["keep"].shape[1]
    maps = sum(v.numel() * v.element_size() for v in (t["keep"], t["src"]) if v is not None and v.stride(0))
    return b * (K + M) * C * s + maps


def timings(case, dname, device, timer, copy_bw):
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dname]
    t = make(case, dtype, device)
    C = case["C"]
    x, w, b = t["x"], t["weight"], t["bias"]
    res = {}
    with torch.no_grad():
        res["triton"] = timer(lambda: op(case, t, x, w, b))
        res["torch"] = timer(lambda: torch_path(case, t, x, w, b))
        res["cudnn"] = timer(cudnn_only(case, t, w, b))
        try:
            res["triton_graph"] = timer.graph(lambda: op(case, t, x, w, b))
        except Exception as e:  # noqa: BLE001 - reported, not fatal: capture needs no host syncs
            res["triton_graph"] = None
            res["graph_error"] = f"{type(e).__name__}: {e}"[:200]
    leaves = [t["wide"].detach().requires_grad_(), w.detach().requires_grad_(), b.detach().requires_grad_()]
    dout = torch.randn(t["x"].shape[0], op(case, t, x, w, b).shape[1], C, device=device, dtype=dtype)

    def train(fn):
        def step():
            out = fn(case, t, leaves[0][..., :C], leaves[1], leaves[2])
            torch.autograd.grad(out, leaves, dout)
        return step

    res["triton_fwd_bwd"] = timer(train(op))
    res["torch_fwd_bwd"] = timer(train(torch_path))
    res["GBps"] = fwd_bytes(case, t) / res["triton"]
    res["pct_copy"] = 100 * res["GBps"] / copy_bw
    res["speedup"] = res["torch"] / res["triton"]
    res["speedup_fwd_bwd"] = res["torch_fwd_bwd"] / res["triton_fwd_bwd"]
    return res


def sweep(case, dname, device, timer, kind):
    """Median time of the forward (kind 'fwd', graph replays on CUDA) or of forward + backward (the backward kinds,
    eager) per launch shape."""
    import torch

    from ssmprune_cli.kernels import gather_conv as gk

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dname]
    t = make(case, dtype, device)
    C = case["C"]
    leaves = [t["wide"].detach().requires_grad_(), t["weight"].requires_grad_(), t["bias"].requires_grad_()]
    saved = dict(gk.LAUNCH[kind])
    out = {}
    for tile, bc, warps in SWEEP:
        gk.LAUNCH[kind] = dict(saved, TILE=tile, BC=bc, num_warps=warps)
        if kind == "fwd":
            # replayed from a CUDA graph: eager calls of these sizes time the host's launch (about 100 µs a call
            # on the H100 host), not the kernel
            with torch.no_grad():
                fwd = lambda: op(case, t, leaves[0][..., :C], leaves[1], leaves[2])  # noqa: E731
                sec = timer.graph(fwd) if device != "cpu" else timer(fwd)
        else:
            def step():
                y = op(case, t, leaves[0][..., :C], leaves[1], leaves[2])
                torch.autograd.grad(y, leaves, torch.ones_like(y))
            sec = timer(step)
        out[f"TILE={tile},BC={bc},warps={warps}"] = sec
    gk.LAUNCH[kind] = saved
    return out


# ----------------------------------------------------------------------------------------------- main
def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    p.add_argument("--dtypes", nargs="+", choices=sorted(LIMITS), default=None,
                   help="default: fp32 and bf16 (fp32 alone with --small)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --small: interpreted kernels)")
    p.add_argument("--small", action="store_true", help="tiny shapes: a smoke test of the script itself")
    p.add_argument("--skip-numerics", action="store_true")
    p.add_argument("--skip-timings", action="store_true")
    p.add_argument("--reps", type=int, default=None, help="timed repeats (default 30, 2 with --small)")
    p.add_argument("--inner", type=int, default=10, help="calls per CUDA-event timed repeat")
    p.add_argument("--launch", action="append", default=[], metavar="KIND.KEY=VALUE",
                   help="override a LAUNCH entry of ssmprune_cli/kernels/gather_conv.py, e.g. fwd.TILE=4096")
    p.add_argument("--sweep", choices=["fwd", "bwd_pre", "bwd_w", "bwd_x"],
                   help="time the SWEEP launch shapes of one kernel")
    p.add_argument("--json", type=Path, help="write every number to this file")
    return p.parse_args(argv)


def main(argv=None):
    a = parse(argv)
    if a.device == "cpu":
        if not a.small:
            sys.exit("--device cpu runs the kernels in Triton's interpreter: use it with --small")
        os.environ["TRITON_INTERPRET"] = "1"  # read when the kernel module is imported, below
    import torch

    from ssmprune_cli.kernels import gather_conv as gk

    if a.device != "cpu" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --device cpu --small for a smoke test")
    for item in a.launch:
        key, value = item.split("=")
        kind, field = key.split(".")
        gk.LAUNCH[kind] = dict(gk.LAUNCH[kind], **{field: int(value)})
    dnames = a.dtypes or (["fp32"] if a.small else ["fp32", "bf16"])
    cases = {name: small(CASES[name]) if a.small else CASES[name] for name in a.cases}
    timer = Timer(a.device, a.reps or (2 if a.small else 30), 1 if a.device == "cpu" else a.inner)
    rec = {"env": {"torch": torch.__version__, "triton": _triton_version(), "device": _device_name(a.device),
                   "small": a.small},
           "launch": gk.LAUNCH, "limits": LIMITS, "numerics": {}, "timings": {}, "sweep": {}}
    failed = []
    if not a.skip_numerics:
        for name, case in cases.items():
            for d in dnames:
                r = rec["numerics"][f"{name} {d}"] = numerics(case, d, a.device)
                print(f"numerics {name:30s} {d}  out {r['out']:.1e}  dx {r['dx']:.1e}  dw {r['dweight']:.1e}  "
                      f"db {r['dbias']:.1e}  torch path {r['torch_path_vs_ref_fp64']:.0e}  "
                      f"{'ok' if r['ok'] else 'FAIL'}", flush=True)
                if not r["ok"]:
                    failed.append(f"{name} {d}")
    if not a.skip_timings and not a.sweep:
        rec["copy_GBps"] = copy_bandwidth(timer, a.device) / 1e9 if a.device != "cpu" else None
        copy_bw = (rec["copy_GBps"] or float("nan")) * 1e9
        for name, case in cases.items():
            for d in dnames:
                rec["timings"][f"{name} {d}"] = timings(case, d, a.device, timer, copy_bw)
                _write(a.json, rec)
        _table(rec)
    if a.sweep:
        for name, case in cases.items():
            for d in dnames:
                r = rec["sweep"][f"{name} {d}"] = sweep(case, d, a.device, timer, a.sweep)
                best = min(r, key=r.get)
                print(f"sweep {a.sweep} {name:30s} {d}  best {best} {r[best] * 1e6:.1f} us  "
                      f"(current {r.get(_current(gk.LAUNCH[a.sweep]), float('nan')) * 1e6:.1f} us)", flush=True)
    _write(a.json, rec)
    if failed:
        sys.exit(f"numerics out of limits: {', '.join(failed)}")


def _current(cfg):
    return f"TILE={cfg['TILE']},BC={cfg['BC']},warps={cfg['num_warps']}"


def _table(rec):
    us = lambda v: f"{v * 1e6:9.1f}" if v is not None else f"{'-':>9s}"  # noqa: E731
    print(f"\n{'case dtype':36s} {'triton':>9s} {'graph':>9s} {'torch':>9s} {'cudnn':>9s} {'x torch':>7s} "
          f"{'GB/s':>6s} {'%copy':>5s} {'tri f+b':>9s} {'tor f+b':>9s} {'x f+b':>6s}   (us)")
    for k, r in rec["timings"].items():
        print(f"{k:36s} {us(r['triton'])} {us(r['triton_graph'])} {us(r['torch'])} {us(r['cudnn'])} "
              f"{r['speedup']:7.2f} {r['GBps'] / 1e9:6.0f} {r['pct_copy']:5.1f} {us(r['triton_fwd_bwd'])} "
              f"{us(r['torch_fwd_bwd'])} {r['speedup_fwd_bwd']:6.2f}")
        if "graph_error" in r:
            print(f"    graph capture failed: {r['graph_error']}")
    if rec.get("copy_GBps"):
        print(f"device-to-device copy: {rec['copy_GBps']:.0f} GB/s (read + write)")


def _write(path, rec):
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rec, indent=1, default=str))


def _triton_version():
    import triton

    return triton.__version__


def _device_name(device):
    import torch

    return torch.cuda.get_device_name() if device != "cpu" else "cpu"


if __name__ == "__main__":
    main()
