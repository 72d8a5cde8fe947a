"""`ssmprune bench`: latency and throughput of a model beside its baseline, measured in one run, with FLOPs.

How time is taken (docs/reports.md):
- warm-up calls first (and `torch.compile`'s compilation, when asked), then `repeats` timed samples per model;
- dense and pruned alternate sample by sample (A B, B A, ...) so clock boosts and thermal drift hit both alike;
- a sample times enough back-to-back calls to last `min_sample_s`, with CUDA events on the GPU (synchronised
  before and after) and `time.perf_counter` on the CPU; it is reported per call;
- medians and the interquartile range of the samples; throughput = batch / median time per call.
bf16 means autocast (weights stay float32), as in training and in the published throughput numbers.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ssmprune_cli.errors import BadInputError
from ssmprune_cli.report.gates import gate_row

from .env import environment
from .flops import block_module_names, core_and_points, count_flops, example_input
from .progress import progress_bar

DTYPES = ("fp32", "bf16")


@dataclass
class BenchSettings:
    device: Optional[str] = None      # None / "auto": CUDA when available
    dtype: str = "fp32"               # fp32 | bf16 (autocast)
    batch: int = 128                  # throughput batch
    latency_batch: int = 1
    warmup: int = 10                  # calls per model and batch size before timing
    repeats: int = 20                 # timed samples per model and batch size
    min_sample_s: float = 0.05        # a sample repeats the call until it lasts this long
    compile: bool = False
    graphs: bool = True               # on CUDA, replay each model from a CUDA graph (no launch overhead)
    stages: bool = False              # also time each block and list the ops that take the time
    seed: int = 0

    def check(self) -> None:
        if self.dtype not in DTYPES:
            raise BadInputError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        for name in ("batch", "latency_batch", "repeats"):
            if getattr(self, name) < 1:
                raise BadInputError(f"--{name.replace('_', '-')} must be at least 1")
        if self.warmup < 0:
            raise BadInputError("--warmup must be 0 or more")


# ------------------------------------------------------------------------------------------------ timing
@dataclass
class Timing:
    """Seconds per call, one value per timed sample."""

    batch: int
    seconds: List[float]
    calls_per_sample: int = 1

    def quartiles(self) -> Tuple[float, float, float]:
        s = sorted(self.seconds)
        if len(s) == 1:
            return s[0], s[0], s[0]
        q1, q2, q3 = statistics.quantiles(s, n=4, method="inclusive")
        return q1, q2, q3

    @property
    def median(self) -> float:
        return self.quartiles()[1]

    def to_dict(self) -> Dict[str, Any]:
        q1, q2, q3 = self.quartiles()
        # images/s at the quartiles of the time: the slow quartile (q3) gives the lower rate
        return {"batch": self.batch, "median_ms": q2 * 1e3, "q1_ms": q1 * 1e3, "q3_ms": q3 * 1e3,
                "iqr_ms": (q3 - q1) * 1e3, "images_per_s": self.batch / q2,
                "iqr_images_per_s": self.batch / q1 - self.batch / q3, "samples": len(self.seconds),
                "calls_per_sample": self.calls_per_sample}


def autocast(device: torch.device, dtype: str):
    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], calls: int, device: torch.device) -> float:
    """Seconds per call of `calls` back-to-back calls (CUDA events on the GPU, synchronised)."""
    _sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / calls
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def time_interleaved(models: Dict[str, nn.Module], x: Tensor, settings: BenchSettings, device: torch.device,
                     what: str = "timing") -> Tuple[Dict[str, Timing], Dict[str, Optional[int]], Dict[str, str]]:
    """Warm up every model, then alternate their timed samples. Returns timings, peak CUDA memory (bytes) and the
    mode each model was timed in ('cuda graph', 'eager', with '+ compile' when compiled)."""
    names = list(models)
    calls: Dict[str, int] = {}
    peak: Dict[str, Optional[int]] = {}
    runners: Dict[str, Callable[[], Any]] = {}
    modes: Dict[str, str] = {}
    with torch.inference_mode():
        for name in names:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            runners[name], modes[name] = _runner(models[name], x, settings, device)
            run = runners[name]
            for _ in range(max(settings.warmup, 1)):
                run()
            per_call = time_calls(run, 1, device)
            peak[name] = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
            calls[name] = max(1, math.ceil(settings.min_sample_s / max(per_call, 1e-9)))
        samples: Dict[str, List[float]] = {n: [] for n in names}
        with progress_bar(what, settings.repeats * len(names)) as advance:
            for r in range(settings.repeats):
                for name in (names if r % 2 == 0 else names[::-1]):
                    samples[name].append(time_calls(runners[name], calls[name], device))
                    advance(1)
    return {n: Timing(x.shape[0], samples[n], calls[n]) for n in names}, peak, modes


def _runner(model: nn.Module, x: Tensor, settings: BenchSettings, device: torch.device
            ) -> Tuple[Callable[[], Any], str]:
    """A no-argument call of the model on x, and how it runs: from a CUDA graph on CUDA unless disabled (a model
    that cannot be captured falls back to eager, and the mode says why), eager elsewhere."""
    suffix = " + compile" if settings.compile else ""
    dtype = torch.bfloat16 if settings.dtype == "bf16" else None
    if device.type == "cuda" and settings.graphs:
        from ssmprune_cli.ops.graphs import GraphedForward

        try:
            g = GraphedForward(model, x, dtype)
            return (lambda: g(g.static_in)), "cuda graph" + suffix
        except Exception as exc:  # capture can fail in many ways; eager timing stays meaningful
            torch.cuda.synchronize(device)
            reason = " ".join(str(exc).split())[:120]
            mode = f"eager{suffix} (graph capture failed: {type(exc).__name__}: {reason})"
    else:
        mode = "eager" + suffix

    def run():
        with autocast(device, settings.dtype):
            return model(x)
    return run, mode


# ------------------------------------------------------------------------------------------------ where the time goes
def stage_times(model: nn.Module, x: Tensor, settings: BenchSettings, device: torch.device, calls: int = 5
                ) -> Tuple[List[Dict[str, Any]], str]:
    """Milliseconds per call spent in each block, plus the rest (stem, prune points' scoring and selection, head),
    and what the numbers are. Run on the uncompiled model.

    On the GPU: the device time of the kernels each block ran (the profiler's kernels inside the block's range on
    the GPU timeline), so an eager forward bound by its host launches does not make every block look equally slow;
    the rest is the forward's other kernels. On the CPU (or a profiler that records no GPU ranges): the time between
    forward hooks (CUDA events on the GPU), the rest being the whole call's time minus the blocks'."""
    core, points, prefix = core_and_points(model)
    modules = dict(model.named_modules())
    names = block_module_names(core, prefix)
    from ssmprune_cli.pruning.plan import tokens_per_block

    tokens = tokens_per_block(core, points)
    blocks = {n: modules[n] for n in names}
    per_block = None
    if device.type == "cuda":
        per_block, rest = _device_block_times(model, x, settings, blocks, calls)
        timer = "device time of the block's kernels"
    if per_block is None:
        per_block, rest = _hook_block_times(model, x, settings, device, blocks, calls)
        timer = "time between the block's forward hooks"
    rows = [{"block": i + 1, "module": n[len(prefix):], "tokens": tokens[i], "ms": per_block[n]}
            for i, n in enumerate(names)]
    rows.append({"block": None, "module": "outside blocks (stem, prune points, head)", "tokens": None, "ms": rest})
    return rows, timer


def _hook_block_times(model, x, settings, device, blocks: Dict[str, nn.Module], calls: int
                      ) -> Tuple[Dict[str, float], float]:
    marks: Dict[str, List[Tuple[Any, Any]]] = {n: [] for n in blocks}
    handles = []
    for n, module in blocks.items():
        handles.append(module.register_forward_pre_hook(_mark(marks[n], 0, device)))
        handles.append(module.register_forward_hook(_mark(marks[n], 1, device)))
    totals = []
    try:
        with torch.inference_mode(), autocast(device, settings.dtype):
            for _ in range(2):
                model(x)  # warm-up with the hooks in place
            for m in marks.values():
                m.clear()
            for _ in range(calls):
                totals.append(time_calls(lambda: model(x), 1, device))
    finally:
        for h in handles:
            h.remove()
    _sync(device)
    per = {n: sum(_elapsed(a, b) for a, b in marks[n]) / calls * 1e3 for n in blocks}
    return per, max(statistics.median(totals) * 1e3 - sum(per.values()), 0.0)


BLOCK_RANGE = "ssmprune_block::"


def _device_block_times(model, x, settings, blocks: Dict[str, nn.Module], calls: int
                        ) -> Tuple[Optional[Dict[str, float]], float]:
    """(ms per call of each block's kernels, ms of the other kernels), or (None, 0) when the profiler recorded no
    GPU-side block ranges."""
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    open_ranges: Dict[str, List[Any]] = {n: [] for n in blocks}

    def enter(name):
        def hook(module, args):
            r = record_function(BLOCK_RANGE + name)
            r.__enter__()
            open_ranges[name].append(r)
        return hook

    def leave(name):
        def hook(module, args, out):
            open_ranges[name].pop().__exit__(None, None, None)
        return hook

    handles = []
    for n, module in blocks.items():
        handles += [module.register_forward_pre_hook(enter(n)), module.register_forward_hook(leave(n))]
    try:
        with torch.inference_mode(), autocast(x.device, settings.dtype):
            model(x)
            _sync(x.device)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(calls):
                    model(x)
                _sync(x.device)
    finally:
        for h in handles:
            h.remove()
    per, other = kernel_time_by_range(prof.events(), BLOCK_RANGE)
    if not per:
        return None, 0.0
    return ({n: per.get(BLOCK_RANGE + n, 0.0) / 1e3 / calls for n in blocks}, other / 1e3 / calls)


def kernel_time_by_range(events, prefix: str) -> Tuple[Dict[str, float], float]:
    """Summed durations (µs) of the GPU kernels that start inside each GPU-side range whose name starts with
    `prefix`, by range name, and of the kernels outside them. Ranges of one prefix must not nest (blocks do not)."""
    import bisect

    from torch.autograd import DeviceType

    ranges, kernels = [], []
    for ev in events:
        if getattr(ev, "device_type", DeviceType.CPU) == DeviceType.CPU:
            continue
        if getattr(ev, "is_user_annotation", False):
            if ev.name.startswith(prefix):
                ranges.append((ev.time_range.start, ev.time_range.end, ev.name))
        else:
            kernels.append(ev)
    ranges.sort()
    starts = [r[0] for r in ranges]
    per: Dict[str, float] = {}
    other = 0.0
    for k in kernels:
        t0, us = k.time_range.start, float(k.time_range.elapsed_us())
        i = bisect.bisect_right(starts, t0) - 1
        if i >= 0 and t0 < ranges[i][1]:
            per[ranges[i][2]] = per.get(ranges[i][2], 0.0) + us
        else:
            other += us
    return per, other


def _mark(store: List[Tuple[Any, Any]], which: int, device: torch.device):
    def hook(module, *args):
        if device.type == "cuda":
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
        else:
            ev = time.perf_counter()
        if which == 0:
            store.append((ev, None))
        else:
            store[-1] = (store[-1][0], ev)
    return hook


def _elapsed(a, b) -> float:
    return a.elapsed_time(b) / 1e3 if hasattr(a, "elapsed_time") else b - a


CATEGORIES = (("scan", ("scan",)), ("matmul", ("mm", "gemm", "matmul", "linear", "addmm", "bmm")),
              ("conv", ("conv", "cudnn")),
              ("pruning / index", ("gather", "scatter", "index", "topk", "sort", "cdist", "cummax", "cummin",
                                   "argmin", "where", "masked")),
              ("copies (casts, cat, flip)", ("copy", "cat", "flip", "clone", "contiguous")),
              ("norm", ("norm",)))


def op_breakdown(model: nn.Module, x: Tensor, settings: BenchSettings, device: torch.device, calls: int = 3,
                 top: int = 12) -> Dict[str, Any]:
    """Self time per op (torch.profiler; on the GPU the device time of the kernels each op launched, kernels
    themselves not listed again), per call, grouped into categories."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.inference_mode(), autocast(device, settings.dtype):
        model(x)
        _sync(device)
        with profile(activities=activities) as prof:
            for _ in range(calls):
                model(x)
            _sync(device)
    rows = []
    for ev in prof.key_averages():
        if getattr(ev, "device_type", DeviceType.CPU) != DeviceType.CPU:
            continue  # a kernel: its time is already its launching op's self device time
        t = _self_time(ev, device)
        if t > 0:
            rows.append({"op": ev.key, "ms": t / 1e3 / calls, "count": ev.count // calls})
    if device.type == "cuda":
        # kernels no op claims (Triton launches through the driver API can go untied): listed by kernel name
        for name, (us, n) in unclaimed_kernels(prof.events()).items():
            rows.append({"op": f"{name} (kernel)", "ms": us / 1e3 / calls, "count": n // calls})
    rows.sort(key=lambda r: -r["ms"])
    total = sum(r["ms"] for r in rows) or 1.0
    cats: Dict[str, float] = {}
    for r in rows:
        cats[_category(r["op"])] = cats.get(_category(r["op"]), 0.0) + r["ms"]
    return {"timer": "device self time" if device.type == "cuda" else "CPU self time",
            "total_ms": total, "categories": {k: {"ms": v, "share": v / total} for k, v in
                                              sorted(cats.items(), key=lambda kv: -kv[1])},
            "top_ops": [dict(r, share=r["ms"] / total) for r in rows[:top]]}


def unclaimed_kernels(events) -> Dict[str, Tuple[float, int]]:
    """Device time (µs) and launches of the kernels no CPU event lists among the kernels it launched, by the name
    of the device-side range they ran in (the package's `ssmprune::…` op ranges) or else their own name.

    The profiler adds a kernel's time to the op whose launch it correlates with; a kernel it cannot tie to one (seen
    on an H100 for the Triton scan: no op showed its time) would otherwise be missing from the breakdown. Range
    annotations themselves are not kernels: they only name the kernels inside them."""
    from torch.autograd import DeviceType

    kernels, ranges = [], []
    claimed: Dict[str, float] = {}
    for ev in events:
        if getattr(ev, "device_type", DeviceType.CPU) == DeviceType.CPU:
            for k in getattr(ev, "kernels", ()):
                claimed[k.name] = claimed.get(k.name, 0.0) + float(k.duration)
        elif getattr(ev, "is_user_annotation", False):
            ranges.append((ev.time_range.start, ev.time_range.end, ev.name))
        else:
            kernels.append(ev)
    ran: Dict[str, float] = {}
    for ev in kernels:
        ran[ev.name] = ran.get(ev.name, 0.0) + float(ev.time_range.elapsed_us())
    out: Dict[str, Tuple[float, int]] = {}
    for ev in kernels:
        total = ran[ev.name]
        left = 1.0 - claimed.get(ev.name, 0.0) / total if total > 0 else 0.0
        if left <= 1e-3:
            continue  # the profiler tied this kernel's launches to ops
        t0 = ev.time_range.start
        label = next((n for a, b, n in ranges if a <= t0 < b), ev.name)
        us, n = out.get(label, (0.0, 0))
        out[label] = (us + left * float(ev.time_range.elapsed_us()), n + 1)
    return out


def _self_time(ev, device: torch.device) -> float:
    """Microseconds of self time (attribute names differ between torch versions)."""
    if device.type == "cuda":
        for name in ("self_device_time_total", "self_cuda_time_total"):
            if hasattr(ev, name):
                return float(getattr(ev, name))
        return 0.0
    return float(ev.self_cpu_time_total)


def _category(op: str) -> str:
    low = op.lower()
    for name, keys in CATEGORIES:
        if any(k in low for k in keys):
            return name
    return "elementwise / other"


# ------------------------------------------------------------------------------------------------ one run
@dataclass
class BenchRequest:
    model: Path
    baseline: Optional[Path] = None
    settings: BenchSettings = field(default_factory=BenchSettings)
    val: Optional[Path] = None
    val_limit: Optional[int] = None
    val_batch: int = 64
    load_options: Dict[str, Any] = field(default_factory=dict)


def load_pair(req: BenchRequest) -> Tuple[nn.Module, Optional[nn.Module], Dict[str, str]]:
    """(model, baseline or None, sources: what each was loaded from). A pruned file with no --baseline is
    measured against its own dense model (the same weights without the pruning spec)."""
    from ssmprune_cli.io.load import load_checkpoint

    loaded = load_checkpoint(req.model, **req.load_options)
    labels = {"model": str(req.model)}
    if req.baseline is not None:
        labels["baseline"] = str(req.baseline)
        return loaded.model, load_checkpoint(req.baseline, **req.load_options).model, labels
    if loaded.pruning is not None:
        dense = load_checkpoint(req.model, **req.load_options).model.detach()  # hooks removed: plain dense
        labels["baseline"] = f"{req.model} (dense, pruning removed)"
        return loaded.model, dense, labels
    return loaded.model, None, labels


def run_bench(req: BenchRequest, gates: Optional["Gates"] = None) -> Dict[str, Any]:
    """Load, measure, and judge the gates (result["gates"]); raising for a missed gate is the caller's call,
    after it has shown the result."""
    from ssmprune_cli.runtime import pick_device

    req.settings.check()
    device = pick_device(req.settings.device)
    model, baseline, labels = load_pair(req)
    if gates is not None:
        check_inputs_for_gates(gates, baseline is not None, req.val is not None)
    models = {"model": model}
    if baseline is not None:
        models["baseline"] = baseline
    result = bench_models(models, req.settings, device, labels, req.val, req.val_limit, req.val_batch)
    if gates is not None and gates.any():
        result["gates"] = evaluate_gates(result, gates)
    return result


def bench_models(models: Dict[str, nn.Module], settings: BenchSettings, device: torch.device,
                 labels: Optional[Dict[str, str]] = None, val: Optional[Path] = None,
                 val_limit: Optional[int] = None, val_batch: int = 64) -> Dict[str, Any]:
    """Measure `models` ({"model": ..., "baseline": ...}) side by side: FLOPs, parameters, batch-1 latency,
    large-batch throughput, optional top-1, optional per-stage timing; ratios of model against baseline."""
    settings.check()
    torch.manual_seed(settings.seed)
    labels = labels or {}
    eager = {n: m.to(device).eval() for n, m in models.items()}
    result: Dict[str, Any] = {"environment": environment(device, settings.dtype, settings.compile),
                              "settings": asdict(settings), "models": {}}
    names = display_names(eager)
    for name, m in eager.items():
        fc = count_flops(m, seed=settings.seed)
        result["models"][name] = {
            "name": names[name], "source": labels.get(name, name), "params": sum(p.numel() for p in m.parameters()),
            "flops": {"convention": fc.convention, "gmacs": fc.gmacs, "analytic_gmacs": fc.analytic_macs / 1e9,
                      "unsupported_ops": fc.unsupported},
            "tokens_per_block": [b["tokens"] for b in fc.blocks],
        }
    run = {n: _compiled(m, settings.compile) for n, m in eager.items()}
    ref = next(iter(eager.values()))
    for key, batch in (("latency", settings.latency_batch), ("throughput", settings.batch)):
        x = example_input(ref, batch, settings.seed).to(device)
        timings, peak, modes = _time_or_explain(run, x, settings, device, f"{key} (batch {batch})")
        for n, t in timings.items():
            result["models"][n][key] = dict(t.to_dict(), mode=modes[n])
            if peak[n] is not None:
                result["models"][n][key]["peak_memory_mib"] = peak[n] / 2**20
    if val is not None:
        _accuracy(eager, result, val, val_limit, val_batch, device, settings)
    if settings.stages:
        x = example_input(ref, settings.batch, settings.seed).to(device)
        for n, m in eager.items():
            result["models"][n]["stages"], result["models"][n]["stages_timer"] = stage_times(m, x, settings, device)
            try:
                result["models"][n]["ops"] = op_breakdown(m, x, settings, device)
            except RuntimeError as exc:  # a profiler without CUPTI, say: keep the block timings
                result["models"][n]["ops"] = {"error": " ".join(str(exc).split())[:200], "categories": {},
                                              "timer": "profiler unavailable"}
    if "baseline" in result["models"]:
        result["comparison"] = compare(result["models"]["model"], result["models"]["baseline"])
    return result


def display_names(models: Dict[str, nn.Module]) -> Dict[str, str]:
    """What to call each model in tables: "pruned" and "dense" where that is what they are (a pruned model and
    a dense baseline), else the roles "model" and "baseline"."""
    kinds = {n: "pruned" if getattr(m, "spec", None) is not None else "dense" for n, m in models.items()}
    if len(set(kinds.values())) == len(kinds):
        return kinds
    return {n: n for n in models}


def _compiled(model: nn.Module, compile_: bool) -> nn.Module:
    return torch.compile(model) if compile_ else model


def _time_or_explain(run, x, settings, device, what):
    if not settings.compile:
        return time_interleaved(run, x, settings, device, what)
    try:
        return time_interleaved(run, x, settings, device, what)
    except Exception as exc:  # compilation errors surface at the first call, with many possible types
        raise BadInputError(f"--compile failed for this model ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:200]}); run without --compile") from None


def compare(m: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Any]:
    """Model against baseline. ideal_speedup = baseline FLOPs / model FLOPs = 1 / (1 - reduction);
    efficiency = measured throughput speedup / ideal speedup."""
    ratio = m["flops"]["gmacs"] / b["flops"]["gmacs"]
    out = {"flops_ratio": ratio, "flops_reduction": 1.0 - ratio, "ideal_speedup": 1.0 / ratio,
           "latency_speedup": b["latency"]["median_ms"] / m["latency"]["median_ms"],
           "throughput_speedup": m["throughput"]["images_per_s"] / b["throughput"]["images_per_s"]}
    out["efficiency"] = out["throughput_speedup"] / out["ideal_speedup"]
    if m.get("top1") is not None and b.get("top1") is not None:
        out["acc_drop"] = b["top1"] - m["top1"]
    if m.get("predictions_agree") is not None:
        out["agreement"] = m["predictions_agree"]
    return out


def _accuracy(models, result, val, limit, batch_size, device, settings) -> None:
    from ssmprune_cli.data.images import validation_images
    from ssmprune_cli.runtime import predictions, top1

    images = validation_images(val, limit)
    labels = torch.tensor(images.labels)
    labelled = bool(len(images)) and all(lbl >= 0 for lbl in images.labels)
    preds = {}
    for name, m in models.items():
        dtype = next(m.parameters()).dtype
        with autocast(device, settings.dtype), progress_bar(f"top-1 of {name}", len(images)) as advance:
            preds[name] = predictions(m, images, batch_size, device, dtype, advance)
        entry = result["models"][name]
        entry["val_images"] = len(images)
        entry["top1"] = top1(preds[name], labels) if labelled else None  # exact: a count, not a float32 mean
    if "baseline" in preds:
        result["models"]["model"]["predictions_agree"] = top1(preds["model"], preds["baseline"])


# ------------------------------------------------------------------------------------------------ gates
@dataclass
class Gates:
    max_flops: Optional[float] = None      # GMACs (fvcore) of the model
    min_speedup: Optional[float] = None    # throughput speedup against the baseline
    max_acc_drop: Optional[float] = None   # top-1 points lost against the baseline

    def any(self) -> bool:
        return any(v is not None for v in asdict(self).values())


def check_inputs_for_gates(gates: Gates, has_baseline: bool, has_val: bool) -> None:
    """Refuse, before measuring, gates that the run could not decide (exit 2, not 3)."""
    if gates.min_speedup is not None and not has_baseline:
        raise BadInputError("--min-speedup needs a baseline: pass --baseline CKPT or bench a pruned model")
    if gates.max_acc_drop is not None and not (has_baseline and has_val):
        raise BadInputError("--max-acc-drop needs accuracy of both models: pass --val DIR (labelled images) "
                            "and a baseline")


def evaluate_gates(result: Dict[str, Any], gates: Gates) -> List[Dict[str, Any]]:
    """One entry per gate given: name, measured value, limit, passed."""
    model, comp = result["models"]["model"], result.get("comparison", {})
    rows = []
    if gates.max_flops is not None:
        rows.append(gate_row("--max-flops", model["flops"]["gmacs"], gates.max_flops, "GMACs (fvcore)", upper=True))
    if gates.min_speedup is not None:
        rows.append(gate_row("--min-speedup", comp.get("throughput_speedup"), gates.min_speedup,
                          "x throughput vs baseline", upper=False))
    if gates.max_acc_drop is not None:
        rows.append(gate_row("--max-acc-drop", comp.get("acc_drop"), gates.max_acc_drop, "top-1 points", upper=True))
    return rows


# ------------------------------------------------------------------------------------------------ for people
def render_bench(result: Dict[str, Any]) -> None:
    """The result for people, on stdout: per model FLOPs, latency, throughput (median [IQR], each in its
    column's unit); the ratios; gates. How it was measured goes to stderr as notes."""
    from rich.table import Table

    from .console import note, results
    from .env import describe

    table = Table(title="bench")
    for col in ("", "GMACs (fvcore)", "params", "latency ms", "throughput img/s", "top-1"):
        table.add_column(col, justify="right")
    for name, m in result["models"].items():
        lat, thr = m["latency"], m["throughput"]
        top1 = "-" if m.get("top1") is None else f"{m['top1']:.2f}"
        table.add_row(m.get("name", name), f"{m['flops']['gmacs']:.5g}", f"{m['params'] / 1e6:.2f}M",
                      f"{lat['median_ms']:.3f} [{lat['iqr_ms']:.3f}]", throughput_cell(thr), top1)
    results.print(table)
    s = result["settings"]
    modes = sorted({m[k].get("mode", "eager") for m in result["models"].values() for k in ("latency", "throughput")})
    note(f"batch {s['latency_batch']} latency, batch {s['batch']} throughput; median [IQR] of {s['repeats']} "
         f"alternating samples after {s['warmup']} warm-up calls; timed as: {'; '.join(modes)}")
    c = result.get("comparison")
    if c:
        line = (f"throughput ×{c['throughput_speedup']:.3f}, latency ×{c['latency_speedup']:.3f}; FLOPs ratio "
                f"{c['flops_ratio']:.3f} (ideal ×{c['ideal_speedup']:.3f}); {c['efficiency']:.1%} of ideal")
        if c.get("acc_drop") is not None:
            line += f"; top-1 drop {c['acc_drop']:+.2f} points"
        results.print(line)
    for name, m in result["models"].items():
        if "stages" in m:
            _render_stages(m.get("name", name), m, results)
    for g in result.get("gates", []):
        value = "-" if g["value"] is None else f"{g['value']:.4g}"
        results.print(f"gate {g['gate']} {g['limit']:g} ({g['unit']}): {value} → "
                      + ("[green]pass[/]" if g["passed"] else "[bold red]FAIL[/]"))
    note(describe(result["environment"]))


def throughput_cell(thr: Dict[str, Any]) -> str:
    """Images per second, median [IQR], both in images per second (results written before the IQR was kept in
    img/s show it from the quartiles of the time)."""
    iqr = thr.get("iqr_images_per_s")
    if iqr is None:
        iqr = thr["batch"] / (thr["q1_ms"] / 1e3) - thr["batch"] / (thr["q3_ms"] / 1e3)
    return f"{thr['images_per_s']:.1f} [{iqr:.1f}]"


def _render_stages(name: str, m: Dict[str, Any], console) -> None:
    from rich.table import Table

    timer = m.get("stages_timer", "time between the block's forward hooks")
    table = Table(title=f"where the time goes: {name} (batch {m['throughput']['batch']}; {timer})")
    for col in ("block", "tokens", "ms"):
        table.add_column(col, justify="right")
    for r in m["stages"]:
        table.add_row(r["module"], "-" if r["tokens"] is None else str(r["tokens"]), f"{r['ms']:.3f}")
    console.print(table)
    ops = Table(title=f"{m['ops']['timer']} by category: {name}")
    for col in ("category", "ms", "share"):
        ops.add_column(col, justify="right")
    for cat, v in m["ops"]["categories"].items():
        ops.add_row(cat, f"{v['ms']:.3f}", f"{v['share']:.1%}")
    console.print(ops)
