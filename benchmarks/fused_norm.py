"""Fused residual add + norm (+ gate) on one GPU: numerics against the float64 reference at model shapes, then
timings against the eager PyTorch chain each model runs today, forward and forward + backward.

    python benchmarks/fused_norm.py                              # all shapes, bf16 and fp32
    python benchmarks/fused_norm.py --shapes vim_s --dtypes bf16 --variants   # also time other launch shapes
    python benchmarks/fused_norm.py --json out/fused_norm.json   # also write every number
    python benchmarks/fused_norm.py --device cpu --small         # smoke run of this script on a CPU (interpreter)

Shapes (rows = batch 128 x tokens):
    vim_s                  rows 128*197, D 384: add + RMSNorm, x in the dtype, residual stream float32 (VimBlock)
    plainmamba_l3          rows 128*196, D 448: add + LayerNorm, residual stream in the dtype (PlainMambaLayer)
    groupmamba_t_out_norm  rows 128*196, D 87: LayerNorm(y) * z, no residual (SS2D out_norm, stage 3, one group)

Numerics: ||x - ref|| / ||ref|| of every output and gradient against `add_norm_ref` in float64 on the same
(rounded) inputs, with the limits of tests/ops/test_fused_norm.py: 1e-5 for float32 results; bfloat16 results
element by element within 2^-8 relative (rounding; 2^-7 under the interpreter, which truncates) plus 1e-5 of the
largest element.
Timings: medians of CUDA-event-timed repeats, each repeat `--inner` calls back to back. "graph": the calls captured
in a CUDA graph and replayed, i.e. device time alone (what a captured model pays). "eager": the same calls
launched from Python, i.e. whichever of host and device is slower. "host": CPU time to enqueue one call.
GB/s: bytes the fused forward must move (inputs read once, outputs written once) over its graph time; "%copy"
relates that to a device-to-device copy measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssmprune_cli.ops.fused_norm import add_norm, add_norm_ref  # noqa: E402  (does not import triton)

SHAPES = {
    "vim_s": dict(rows=128 * 197, D=384, kind="rms", residual="fp32", bias=False, gate=False, eps=1e-5),
    "plainmamba_l3": dict(rows=128 * 196, D=448, kind="layer", residual="x", bias=True, gate=False, eps=1e-5),
    "groupmamba_t_out_norm": dict(rows=128 * 196, D=87, kind="layer", residual=None, bias=True, gate=True,
                                  eps=1e-5),
}
SMALL_ROWS = 16  # --small: rows per shape (widths stay the models')
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
GRAD_NAMES = ("x", "residual", "weight", "bias", "gate")


# ---------------------------------------------------------------------------------------------------- inputs
def inputs(shape, dtype, device, rows, seed=0):
    """[x, residual, weight, bias, gate]: activations like a trained block's (non-zero mean, unit-ish scale)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    D = shape["D"]
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    rdt = {"fp32": torch.float32, "x": dtype, None: None}[shape["residual"]]
    return [(rnd(rows, D) * 1.5 + 0.3).to(device=device, dtype=dtype),
            None if rdt is None else (rnd(rows, D) * 4.0).to(device=device, dtype=rdt),
            (1.0 + 0.3 * rnd(D)).to(device),
            (0.3 * rnd(D)).to(device) if shape["bias"] else None,
            rnd(rows, D).to(device=device, dtype=dtype) if shape["gate"] else None]


def _res_dtype(shape, dtype):
    """The residual stream's dtype: float32 or wider for Vim (residual_in_fp32), the activations' otherwise."""
    return torch.promote_types(dtype, torch.float32) if shape["residual"] == "fp32" else dtype


def leaves(ts, dtype=None):
    return [None if t is None else t.detach().to(dtype=dtype or t.dtype).requires_grad_() for t in ts]


def fused(shape):
    """The op as a model would call it for this shape (the residual stream in the model's dtype)."""
    def run(x, r, w, b, g):
        res_dtype = None if r is None else _res_dtype(shape, x.dtype)
        return add_norm(x, r, w, b, shape["eps"], shape["kind"], residual_dtype=res_dtype, gate=g, backend="triton")
    return run


def eager(shape):
    """The PyTorch chain the models run today (ssmprune_cli/models/*.py), same outputs as `fused`."""
    eps, D = shape["eps"], shape["D"]
    if shape["kind"] == "rms":  # VimBlock: residual = fp32(residual + hidden); RMSNorm(residual).to(hidden.dtype)
        def run(x, r, w, b, g):
            s = r + x
            s = s.to(torch.promote_types(s.dtype, torch.float32))
            return (s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps) * w).to(x.dtype), s
    elif shape["gate"]:  # SS2D: out_norm(y) * z
        def run(x, r, w, b, g):
            return F.layer_norm(x, (D,), w, b, eps) * g, None
    else:  # PlainMambaLayer: x = x + mixer(...); the next layer's LayerNorm(x)
        def run(x, r, w, b, g):
            s = r + x
            return F.layer_norm(s, (D,), w, b, eps), s
    return run


# -------------------------------------------------------------------------------------------------- numerics
def error(got, want):
    """(relative error, within the limits) of one result against its float64 value."""
    bf16 = got.dtype == torch.bfloat16
    got, want = got.detach().double(), want.detach().double()
    if not torch.isfinite(got).all():
        return float("inf"), False
    rel = ((got - want).norm() / want.norm().clamp_min(1e-300)).item()
    if bf16:  # the interpreter's float32 -> bfloat16 conversion truncates: a whole unit in the last place there
        ulp_frac = 2.0 ** -7 if os.environ.get("TRITON_INTERPRET") == "1" else 2.0 ** -8
        excess = ((got - want).abs() - ulp_frac * want.abs()).max().item()
        return rel, excess <= 1e-5 * want.abs().max().item()
    return rel, rel <= 1e-5


def numerics(shape, dtype, device, rows):
    ts = inputs(shape, dtype, device, rows)
    mine, ref = leaves(ts), leaves(ts, torch.float64)
    y, res = fused(shape)(*mine)
    want_y, want_res = add_norm_ref(*ref[:4], shape["eps"], shape["kind"], gate=ref[4])
    out = {}
    pairs = [("out", y, want_y)] + ([("residual out", res, want_res)] if res is not None else [])
    g = torch.Generator(device="cpu").manual_seed(1)
    loss, want_loss = 0.0, 0.0
    for name, a, b in pairs:
        d = torch.randn(b.shape, generator=g, dtype=torch.float64).to(device=device, dtype=a.dtype)
        loss = loss + (a * d).float().sum()
        want_loss = want_loss + (b * d.double()).sum()
    loss.backward()
    want_loss.backward()
    pairs += [("d" + n, m.grad, r.grad) for n, m, r in zip(GRAD_NAMES, mine, ref) if m is not None]
    for name, a, b in pairs:
        out[name] = error(a, b)
    return {"errors": {k: v[0] for k, v in out.items()}, "pass": all(v[1] for v in out.values()),
            "dtypes_ok": y.dtype == dtype and (res is None or res.dtype == _res_dtype(shape, dtype))}




# --------------------------------------------------------------------------------------------------- timing
def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def event_median(fn, device, reps, inner):
    """Median seconds per call over `reps` repeats of `inner` back-to-back calls (CUDA events; wall clock on CPU)."""
    for _ in range(2):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e-3 / inner)
        else:
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            times.append((time.perf_counter() - t) / inner)
    return statistics.median(times)


def graph_median(fn, reps, inner):
    """Device seconds per call: `inner` calls captured in one CUDA graph, replayed `reps` times."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(inner):
            fn()
    return event_median(graph.replay, "cuda", reps, 1) / inner


def host_time(fn, device, n):
    """CPU seconds to enqueue one call (no synchronisation inside the loop)."""
    fn()
    _sync(device)
    t = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - t) / n
    _sync(device)
    return host


def calls(op, ts):
    """(forward call, forward + backward call) closures over fixed inputs and output gradients."""
    lv = leaves(ts)
    grad_in = [t for t in lv if t is not None]

    def fwd():
        with torch.no_grad():
            return op(*ts)

    outs = [o for o in op(*lv) if o is not None]
    gouts = [torch.randn_like(o) for o in outs]

    def fwd_bwd():
        outs = [o for o in op(*lv) if o is not None]
        return torch.autograd.grad(outs, grad_in, gouts)

    return fwd, fwd_bwd


def fwd_bytes(shape, ts, y_dtype):
    rows, D = ts[0].shape
    moved = sum(t.numel() * t.element_size() for t in ts if t is not None)
    moved += rows * D * torch.tensor([], dtype=y_dtype).element_size()
    if ts[1] is not None:
        moved += rows * D * torch.tensor([], dtype=_res_dtype(shape, ts[0].dtype)).element_size()
    return moved


def timings(shape, dtype, device, rows, reps, inner, copy_bw):
    ts = inputs(shape, dtype, device, rows)
    r = {}
    for tag, op in (("fused", fused(shape)), ("eager", eager(shape))):
        fwd, fwd_bwd = calls(op, ts)
        r[f"{tag}_fwd_eager"] = event_median(fwd, device, reps, inner)
        r[f"{tag}_fwd_bwd_eager"] = event_median(fwd_bwd, device, reps, inner)
        r[f"{tag}_fwd_host"] = host_time(fwd, device, reps)
        r[f"{tag}_fwd_bwd_host"] = host_time(fwd_bwd, device, reps)
        if device == "cuda":
            r[f"{tag}_fwd_graph"] = graph_median(fwd, reps, inner)
            r[f"{tag}_fwd_bwd_graph"] = graph_median(fwd_bwd, reps, inner)
    r["fwd_bytes"] = fwd_bytes(shape, ts, dtype)
    if device == "cuda":
        r["fused_fwd_gbps"] = r["fwd_bytes"] / r["fused_fwd_graph"] / 1e9
        r["fused_fwd_copy_frac"] = r["fwd_bytes"] / r["fused_fwd_graph"] / copy_bw
    for mode in ("graph", "eager"):
        for part in ("fwd", "fwd_bwd"):
            if f"fused_{part}_{mode}" in r:
                r[f"speedup_{part}_{mode}"] = r[f"eager_{part}_{mode}"] / r[f"fused_{part}_{mode}"]
    return r


def copy_bandwidth(device):
    if device != "cuda":
        return float("nan")
    src = torch.randn(1 << 28, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / event_median(lambda: dst.copy_(src), "cuda", 10, 5)


# ------------------------------------------------------------------------------------------- launch variants
def variants(K, shape, dtype, device, rows, reps, inner):
    """Device time of other launch shapes: forward (rows per program, warps) and backward (rows, warps,
    programs per SM), each changed alone from the table in ssmprune_cli/kernels/fused_norm.py."""
    ts = inputs(shape, dtype, device, rows)
    fwd, fwd_bwd = calls(fused(shape), ts)
    block_d = 1 << (shape["D"] - 1).bit_length()
    saved = {k: (dict(v) if isinstance(v, dict) else v) for k, v in K.LAUNCH.items()}
    timer = (lambda f: graph_median(f, reps, inner)) if device == "cuda" else \
        (lambda f: event_median(f, device, reps, inner))
    out = {}

    @contextlib.contextmanager
    def patched(key, value):
        K.LAUNCH[key] = value
        try:
            yield
        finally:
            K.LAUNCH.clear()
            K.LAUNCH.update({k: (dict(v) if isinstance(v, dict) else v) for k, v in saved.items()})

    for rows_pp in (1, 2, 4, 8, 16, 32):
        for warps in (1, 2, 4, 8):
            per_thread = rows_pp * block_d // (32 * warps)
            if not 2 <= per_thread <= 64:
                continue
            with patched("fwd", {K.MAX_WIDTH: (rows_pp, warps)}):
                out[f"fwd rows={rows_pp} warps={warps}"] = timer(fwd)
            with patched("bwd", {K.MAX_WIDTH: (rows_pp, warps)}):
                out[f"fwd+bwd, bwd rows={rows_pp} warps={warps}"] = timer(fwd_bwd)
    for per_sm in (1, 2, 4, 8, 16):
        with patched("programs_per_sm", per_sm):
            out[f"fwd+bwd, bwd programs_per_sm={per_sm}"] = timer(fwd_bwd)
    return out


def print_table(timings):
    """One line per shape, dtype and pass: fused op against the eager chain, in graph and eager mode, and host."""
    nan = float("nan")

    def us(r, key):
        return f"{r.get(key, nan) * 1e6:8.1f}"

    print(f"\n{'':33s} | {'graph (device) us':^24s} | {'eager us':^24s} | {'host us':^17s} |")
    print(f"{'shape dtype':28s} {'step':>4s} | {'fused':>8s} {'chain':>8s} {'x':>6s} | {'fused':>8s} {'chain':>8s} "
          f"{'x':>6s} | {'fused':>8s} {'chain':>8s} | {'GB/s':>6s} {'%copy':>5s}")
    for key, r in timings.items():
        for part, label in (("fwd", "fwd"), ("fwd_bwd", "f+b")):
            cells = [f"{key:28s} {label:>4s}"]
            for mode in ("graph", "eager"):
                cells.append(f"{us(r, f'fused_{part}_{mode}')} {us(r, f'eager_{part}_{mode}')} "
                             f"{r.get(f'speedup_{part}_{mode}', nan):6.2f}")
            cells.append(f"{us(r, f'fused_{part}_host')} {us(r, f'eager_{part}_host')}")
            if part == "fwd":
                cells.append(f"{r.get('fused_fwd_gbps', nan):6.0f} {100 * r.get('fused_fwd_copy_frac', nan):5.1f}")
            print(" | ".join(cells))


# ------------------------------------------------------------------------------------------------------ main
def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated, from: " + ", ".join(SHAPES))
    p.add_argument("--dtypes", default="bf16,fp32")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--small", action="store_true", help=f"{SMALL_ROWS} rows per shape (for --device cpu)")
    p.add_argument("--reps", type=int, default=None, help="timed repeats (default 50 on CUDA, 3 on the CPU)")
    p.add_argument("--inner", type=int, default=None, help="calls per repeat (default 20 on CUDA, 1 on the CPU)")
    p.add_argument("--skip-numerics", action="store_true")
    p.add_argument("--variants", action="store_true", help="also time other launch shapes")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    if a.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are imported: they then run on the CPU
    elif not torch.cuda.is_available():
        p.error("no CUDA device; use --device cpu --small for a smoke run")
    import triton

    from ssmprune_cli.kernels import fused_norm as K

    reps = a.reps or (50 if a.device == "cuda" else 3)
    inner = a.inner or (20 if a.device == "cuda" else 1)
    shapes, dnames = a.shapes.split(","), a.dtypes.split(",")
    rec = {"device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu (Triton interpreter)",
           "torch": torch.__version__, "triton": triton.__version__, "small": a.small,
           "launch": {k: (dict(v) if isinstance(v, dict) else v) for k, v in K.LAUNCH.items()},
           "numerics": {}, "timings": {}, "variants": {}}
    rec["copy_bw"] = copy_bw = copy_bandwidth(a.device)
    print(f"# {rec['device']}  torch {rec['torch']}  triton {rec['triton']}  copy {copy_bw / 1e12:.2f} TB/s",
          flush=True)
    failed = False

    def save():
        if a.json:
            a.json.parent.mkdir(parents=True, exist_ok=True)
            a.json.write_text(json.dumps(rec, indent=1, default=str))

    for s in shapes:
        rows = SMALL_ROWS if a.small else SHAPES[s]["rows"]
        for d in dnames:
            key = f"{s} {d}"
            if not a.skip_numerics:
                res = rec["numerics"][key] = numerics(SHAPES[s], DTYPES[d], a.device, rows)
                ok = res["pass"] and res["dtypes_ok"]
                failed |= not ok
                worst = max(res["errors"].items(), key=lambda kv: kv[1])
                print(f"numerics {key:28s} out {res['errors']['out']:.1e}  worst {worst[0]} {worst[1]:.1e}  "
                      f"{'PASS' if ok else 'FAIL'}", flush=True)
            rec["timings"][key] = timings(SHAPES[s], DTYPES[d], a.device, rows, reps, inner, copy_bw)
            if a.variants:
                rec["variants"][key] = v = variants(K, SHAPES[s], DTYPES[d], a.device, rows, reps, inner)
                for name, t in sorted(v.items(), key=lambda kv: kv[1]):
                    print(f"variant {key:28s} {name:40s} {t * 1e6:8.1f} us", flush=True)
            save()
    save()
    print_table(rec["timings"])
    sys.stdout.flush()
    if failed:
        sys.exit("numerics FAILED (see above)")


if __name__ == "__main__":
    main()
