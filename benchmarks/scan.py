"""Selective-scan kernels on one GPU: full-shape numerics against float64, then timings against the roofline.

    python benchmarks/scan.py                          # numerics + timings, all shapes, float32 and bfloat16
    python benchmarks/scan.py --shapes vim_s --dtypes bf16 --skip-numerics --variants
    python benchmarks/scan.py --json out/scan.json     # also write every number

Timings are medians of CUDA-event timed repeats after warm-up (triton.testing.do_bench); kernel-only times come
from the PyTorch profiler. Achieved bandwidth = bytes moved / time with the byte formula of the kernel notes
(reference/kernels.md section 4), against a device-to-device copy measured in the same run (read + write).
The exp ceiling is B*L*E*N exponentials at the ex2 rate measured in the same run (`exp_rate`: independent
ex2.approx chains, 8 per thread; the notes estimate 132 SMs x 16/clk x 1.98 GHz = 4.2e12/s).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssmprune_cli.kernels import selective_scan_fn as fn_mod  # noqa: E402
from ssmprune_cli.kernels import selective_scan_triton  # noqa: E402
from ssmprune_cli.ops import selective_scan_chunked, selective_scan_ref  # noqa: E402

EXP_RATE = 132 * 16 * 1.98e9  # the notes' estimate; main() replaces it with the measured rate
SHAPES = {
    # Vim-S: d_model 384, E = 768, 196 patches + class token, both directions have this shape
    "vim_s": dict(b=128, e=768, l=197, n=16, z=True, B_bias=None),
    # PlainMamba-L3: E = 896, 14 x 14 tokens; 32 images x 4 scan orders sharing Δ/B/C, per-order direction bias on B
    "plainmamba_l3": dict(b=128, e=896, l=196, n=16, z=False, B_bias="batch"),
    "long": dict(b=8, e=2048, l=4096, n=16, z=True, B_bias=None),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LIMITS = {"fp32": (1e-5, 1e-4), "bf16": (1e-2, 1e-2)}


def inputs(shape, dtype, device, aligned=False, seed=0):
    """Trained-model-like values: Δ around inverse-softplus of 1e-3..0.1, A = -(1..N) with noise."""
    g = torch.Generator(device=device).manual_seed(seed)
    b, e, l, n = shape["b"], shape["e"], shape["l"], shape["n"]
    rnd = lambda *s: torch.randn(*s, device=device, generator=g)  # noqa: E731
    dt0 = torch.exp(torch.rand(e, device=device, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    A = -(torch.arange(1, n + 1, device=device).float()[None, :].expand(e, n)) * torch.exp(0.1 * rnd(e, n))
    args = [rnd(b, e, l).to(dtype), (0.5 * rnd(b, e, l)).to(dtype), A, rnd(b, n, l).to(dtype),
            rnd(b, n, l).to(dtype), torch.ones(e, device=device) + 0.1 * rnd(e),
            rnd(b, e, l).to(dtype) if shape["z"] else None, torch.log(torch.expm1(dt0)), True,
            0.1 * rnd(b, n, l) if shape["B_bias"] == "batch" else None, None, None]
    if aligned:  # a pruned layer: 60 % of the steps kept, each kept step decays over the pruned ones before it
        args[10] = torch.randint(0, 3, (b, l), device=device, generator=g).to(dtype)
        args[11] = dt0.clone()
    return args


def need_grad(args):
    return [a.detach().requires_grad_(i != 10) if isinstance(a, torch.Tensor) else a for i, a in enumerate(args)]


def rel(x, ref):
    return ((x.double() - ref).norm() / ref.norm()).item() if torch.isfinite(x).all() else float("inf")


def numerics(shape, dname, aligned=False):
    """Relative errors of the output and of every gradient against a float64 run of the exact loop."""
    dev = "cuda"
    args = inputs(shape, DTYPES[dname], dev, aligned)
    mine = need_grad(args)
    ref = need_grad([a.double() if isinstance(a, torch.Tensor) else a for a in args])
    out = selective_scan_triton(*mine)
    expect = selective_scan_ref(*ref)
    dout = torch.randn(expect.shape, device=dev, dtype=torch.float64).to(DTYPES[dname])
    out.backward(dout)
    expect.backward(dout.double())
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "-", "B_bias", "gap", "delta_fill")
    res = {"out": rel(out, expect)}
    for name, a, r in zip(names, mine, ref):
        if isinstance(a, torch.Tensor) and r.grad is not None and name != "gap":
            res["d" + name] = rel(a.grad, r.grad)
    del expect, ref
    torch.cuda.empty_cache()
    return res


def bench(fn, ms=300):
    import triton.testing

    return triton.testing.do_bench(fn, warmup=50, rep=ms, return_mode="median") * 1e-3


def wall(fn, reps=3):
    """For slow references: median of a few synchronised wall-clock runs after one warm-up."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def kernel_time(fn, name, iters=20):
    """Median device time of the kernels whose name contains `name` (seconds)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    times = [getattr(ev, "device_time", None) or ev.cuda_time for ev in prof.events()
             if ev.device_type == torch.autograd.DeviceType.CUDA and name in ev.name]
    return statistics.median(times) * 1e-6 if times else float("nan")


def host_time(fn, n=40):
    """Seconds of CPU time to enqueue one call (no synchronisation inside the loop)."""
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - t) / n
    torch.cuda.synchronize()
    return host


def exp_rate():
    """Measured MUFU ex2 throughput (results per second): 8 independent chains of ex2.approx.ftz per thread."""
    import triton
    import triton.language as tl

    @triton.jit
    def ex2(x):
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)

    @triton.jit
    def chains(x_ptr, o_ptr, ITERS: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        a0 = tl.load(x_ptr + offs)
        a1, a2, a3, a4, a5, a6, a7 = a0 + 0.01, a0 + 0.02, a0 + 0.03, a0 + 0.04, a0 + 0.05, a0 + 0.06, a0 + 0.07
        for _ in range(ITERS):  # a <- 2^(-0.9 a) stays in (0.5, 1]
            a0, a1, a2, a3 = ex2(a0 * -0.9), ex2(a1 * -0.9), ex2(a2 * -0.9), ex2(a3 * -0.9)
            a4, a5, a6, a7 = ex2(a4 * -0.9), ex2(a5 * -0.9), ex2(a6 * -0.9), ex2(a7 * -0.9)
        tl.store(o_ptr + offs, a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7)

    n, iters = 132 * 2048 * 16, 256
    x = torch.rand(n, device="cuda")
    o = torch.empty_like(x)
    t = bench(lambda: chains[(n // 256,)](x, o, ITERS=iters, BLOCK=256, num_warps=8), ms=300)
    return n * iters * 8 / t


def copy_bandwidth():
    src = torch.randn(1 << 29, device="cuda")  # 2 GiB
    dst = torch.empty_like(src)
    t = bench(lambda: dst.copy_(src), ms=500)
    return 2 * src.numel() * 4 / t


def notes_bytes(shape, s):
    """Compulsory bytes per the notes: activations s bytes each, B/C per token, fp32 chunk states every 2048."""
    b, e, l, n, z = shape["b"], shape["e"], shape["l"], shape["n"], int(shape["z"])
    nc = math.ceil(l / 2048)
    fwd = b * l * (e * (2 + z) * s + e * (1 + z) * s + 2 * n * s) + b * e * nc * 2 * n * 4 + 4 * e * n + 8 * e
    bwd = b * l * (e * (3 + 2 * z) * s + e * (2 + z) * s + 2 * n * s + 2 * n * 4) + b * e * nc * 2 * n * 4
    return fwd, bwd


def timings(shape, dname, copy_bw, with_reference=True, ex2_rate=EXP_RATE):
    args = inputs(shape, DTYPES[dname], "cuda")
    leaves = need_grad(args)
    grad_in = [a for i, a in enumerate(leaves) if isinstance(a, torch.Tensor) and i != 10]
    g = torch.randn(shape["b"], shape["e"], shape["l"], device="cuda").to(DTYPES[dname])

    def fwd():
        with torch.no_grad():
            return selective_scan_triton(*args)

    def fwd_bwd():
        return torch.autograd.grad(selective_scan_triton(*leaves), grad_in, g)

    r = {"fwd": bench(fwd), "fwd_bwd": bench(fwd_bwd), "fwd_host": host_time(fwd),
         "fwd_kernel": kernel_time(fwd, "_fwd_kernel"), "bwd_kernel": kernel_time(fwd_bwd, "_bwd_kernel"),
         "fwd_save_kernel": kernel_time(fwd_bwd, "_fwd_kernel"),
         "fwd_kernel_name": "tpc" if fn_mod._use_tpc(args[0], False, shape["b"], shape["e"]) else "rows"}
    fb, bb = notes_bytes(shape, 2 if dname == "bf16" else 4)
    n_exp = shape["b"] * shape["l"] * shape["e"] * shape["n"]
    r.update(fwd_bytes=fb, bwd_bytes=bb, exp_time=n_exp / ex2_rate,
             fwd_bw_frac=fb / r["fwd_kernel"] / copy_bw, bwd_bw_frac=bb / r["bwd_kernel"] / copy_bw,
             fwd_exp_frac=n_exp / ex2_rate / r["fwd_kernel"])
    if with_reference:
        ref_leaves = need_grad(args)
        ref_in = [a for i, a in enumerate(ref_leaves) if isinstance(a, torch.Tensor) and i != 10]
        for tag, ref in (("loop", selective_scan_ref), ("chunked", selective_scan_chunked)):
            if tag == "chunked" and shape["l"] > 1024:
                continue  # its (b, e, n, 16, 16) chunks for every step would not fit with autograd
            with torch.no_grad():
                r[f"ref_{tag}_fwd"] = wall(lambda: ref(*args))
            r[f"ref_{tag}_fwd_bwd"] = wall(lambda: torch.autograd.grad(ref(*ref_leaves), ref_in, g))
            torch.cuda.empty_cache()
        best_f = min(v for k, v in r.items() if k.startswith("ref_") and k.endswith("_fwd"))
        best_fb = min(v for k, v in r.items() if k.startswith("ref_") and k.endswith("_fwd_bwd"))
        r.update(speedup_fwd=best_f / r["fwd"], speedup_fwd_bwd=best_fb / r["fwd_bwd"])
    return r


def variants(shape, dname):
    """Kernel time of other launch shapes (channels per program, warps) for the three kernels."""
    args = inputs(shape, DTYPES[dname], "cuda")
    leaves = need_grad(args)
    grad_in = [a for i, a in enumerate(leaves) if isinstance(a, torch.Tensor) and i != 10]
    g = torch.randn(shape["b"], shape["e"], shape["l"], device="cuda").to(DTYPES[dname])
    out = {}
    saved = {k: dict(v) for k, v in fn_mod.LAUNCH.items()}

    def run(key, cfg, train):
        fn_mod.LAUNCH.clear()
        fn_mod.LAUNCH.update({k: dict(v) for k, v in saved.items()})
        fn_mod.LAUNCH[key].update(cfg)
        if key == "fwd" and not train:
            fn_mod.LAUNCH["fwd_tpc"]["min_warps_per_sm"] = 10 ** 9  # the general forward, also for inference
        if train:
            return kernel_time(lambda: torch.autograd.grad(selective_scan_triton(*leaves), grad_in, g),
                               "_bwd_kernel" if key == "bwd" else "_fwd_kernel")
        with torch.no_grad():
            return kernel_time(lambda: selective_scan_triton(*args), "_fwd_kernel")

    try:
        for be, nw in ((32, 1), (64, 2), (128, 4)):
            out[f"fwd_tpc BE={be} w={nw}"] = run("fwd_tpc", {"BE": be, "num_warps": nw}, False)
        out["fwd_tpc softplus 7 terms"] = run("fwd_tpc", {"TERMS": 7}, False)
        for be, nw in ((16, 1), (32, 2), (64, 4)):
            out[f"fwd BE={be} w={nw}"] = run("fwd", {"BE": be, "num_warps": nw}, False)
            out[f"fwd+save BE={be} w={nw}"] = run("fwd", {"BE": be, "num_warps": nw}, True)
        for be, nw in ((8, 1), (16, 1), (32, 2)):
            out[f"bwd BE={be} w={nw}"] = run("bwd", {"BE": be, "num_warps": nw}, True)
    finally:
        fn_mod.LAUNCH.clear()
        fn_mod.LAUNCH.update(saved)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--skip-numerics", action="store_true")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--variants", action="store_true", help="also time other launch shapes (Vim-S bf16)")
    p.add_argument("--json", type=Path)
    p.add_argument("--once", action="store_true", help="one forward and one forward+backward (for ncu), no timing")
    a = p.parse_args()
    if a.once:
        for s in a.shapes.split(","):
            for d in a.dtypes.split(","):
                args = need_grad(inputs(SHAPES[s], DTYPES[d], "cuda"))
                with torch.no_grad():
                    selective_scan_triton(*args)
                selective_scan_triton(*args).float().sum().backward()
        torch.cuda.synchronize()
        return
    shapes, dnames = a.shapes.split(","), a.dtypes.split(",")
    rec = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "triton": __import__("triton").__version__, "launch": fn_mod.LAUNCH, "numerics": {}, "timings": {}}
    rec["copy_bw"] = copy_bw = copy_bandwidth()
    rec["exp_rate"] = ex2_rate = exp_rate()
    print(f"# {rec['device']}  torch {rec['torch']}  triton {rec['triton']}  copy {copy_bw / 1e12:.2f} TB/s  "
          f"ex2 {ex2_rate / 1e12:.2f} T/s (notes' estimate {EXP_RATE / 1e12:.2f})", flush=True)
    if not a.skip_numerics:
        for s in shapes:
            for d in dnames:
                for aligned in ((False, True) if s == "vim_s" else (False,)):
                    key = f"{s}{'+aligned' if aligned else ''} {d}"
                    rec["numerics"][key] = res = numerics(SHAPES[s], d, aligned)
                    lim = LIMITS[d]
                    ok = res["out"] <= lim[0] and max(v for k, v in res.items() if k != "out") <= lim[1]
                    res["pass"] = ok
                    print(f"numerics {key:24s} out {res['out']:.1e}  worst grad "
                          f"{max((v, k) for k, v in res.items() if k not in ('out', 'pass'))}  "
                          f"{'PASS' if ok else 'FAIL'}", flush=True)
    for s in shapes:
        for d in dnames:
            rec["timings"][f"{s} {d}"] = timings(SHAPES[s], d, copy_bw, not a.skip_reference, ex2_rate)
            if a.json:
                a.json.write_text(json.dumps(rec, indent=1))
    if a.variants:
        rec["variants"] = variants(SHAPES["vim_s"], "bf16")
        for k, v in rec["variants"].items():
            print(f"variant {k:24s} {v * 1e6:8.1f} us")
    if a.json:
        a.json.write_text(json.dumps(rec, indent=1))
    print(f"\n{'shape dtype':22s} {'host':>5s} {'fwd us':>8s} {'kern':>7s} {'(k)':>4s} {'%copy':>6s} {'%exp':>5s} "
          f"{'f+save':>7s} {'bwd kern':>8s} {'%copy':>6s} {'f+b us':>8s} {'x ref f':>7s} {'x ref f+b':>9s}")
    for k, r in rec["timings"].items():
        print(f"{k:22s} {r['fwd_host'] * 1e6:5.0f} {r['fwd'] * 1e6:8.1f} {r['fwd_kernel'] * 1e6:7.1f} "
              f"{r['fwd_kernel_name']:>4s} {100 * r['fwd_bw_frac']:6.1f} "
              f"{100 * r['fwd_exp_frac']:5.1f} {r['fwd_save_kernel'] * 1e6:7.1f} "
              f"{r['bwd_kernel'] * 1e6:8.1f} {100 * r['bwd_bw_frac']:6.1f} {r['fwd_bwd'] * 1e6:8.1f} "
              f"{r.get('speedup_fwd', float('nan')):7.1f} {r.get('speedup_fwd_bwd', float('nan')):9.1f}")


if __name__ == "__main__":
    main()
