"""What `ssmprune prune` writes as report.json and report.md: schedule, tokens per layer, FLOPs before/after."""

from __future__ import annotations

import datetime as _dt
from typing import Any, Dict, List, Optional

import ssmprune_cli
from ssmprune_cli.pruning.plan import PruningSpec, dense_macs, schedule_macs, tokens_per_block

from .bench import throughput_cell
from .env import describe, environment
from .flops import CONVENTION, CONVENTION_NOTE, count_flops

ANALYTIC = "GMACs (analytic cost model: 1 multiply-add = 1; scan 9·L·E·N + 2·L·E per direction)"


def build_prune_report(loaded, model, spec: PruningSpec, recipe: Dict[str, Any], calib_images: int = 0,
                       holdout_images: int = 0, agreement: Optional[float] = None,
                       auto: Optional[Dict[str, Any]] = None, pruned_model=None, fvcore: bool = True,
                       speed: Optional[Dict[str, Any]] = None,
                       accuracy: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The report. FLOPs are fvcore counts of the dense and the pruned model (`pruned_model`, or one built from
    `spec` for the count) with the analytic cost model beside them; `fvcore=False` keeps the analytic count
    only. `speed`: a `report.bench.bench_models` result (model = pruned, baseline = dense); `accuracy`:
    {"images", "top1", "baseline_top1"} when measured."""
    report = _base_report(loaded, model, spec, recipe, calib_images, holdout_images, agreement, auto)
    if fvcore:
        add_fvcore_counts(report, model, spec, pruned_model)
    if speed is not None:
        report["speed"] = speed_section(speed)
        report["environment"] = speed["environment"]
    if accuracy is not None:
        report["accuracy"] = accuracy_section(accuracy)
    return report


def _base_report(loaded, model, spec: PruningSpec, recipe: Dict[str, Any], calib_images: int,
                 holdout_images: int, agreement: Optional[float], auto: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    dense = dense_macs(model)
    pruned = schedule_macs(model, spec.points)
    blocks = model.block_costs()
    counts = tokens_per_block(model, spec.points)
    dense_counts = tokens_per_block(model, [])
    target = recipe["prune"].get("ratio")
    return {
        "tool": "ssmprune",
        "version": ssmprune_cli.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"checkpoint": str(loaded.path), "family": loaded.family, "variant": loaded.variant},
        "params": sum(p.numel() for p in model.parameters()),
        "pruning": spec.to_dict(),
        "schedule": [{"site": p.site, "keep": p.keep,
                      "before": counts[[b["site"] for b in blocks].index(p.site)]} for p in spec.points],
        "tokens_per_block": [{"block": i + 1, "site": b["site"], "stage": b["stage"], "dense": d, "pruned": k}
                             for i, (b, d, k) in enumerate(zip(blocks, dense_counts, counts))],
        "flops": {"convention": ANALYTIC, "dense_gmacs": dense / 1e9, "pruned_gmacs": pruned / 1e9,
                  "reduction": 1.0 - pruned / dense, "target_reduction": target},
        "calibration": {"images": calib_images, "holdout_images": holdout_images,
                        "agreement_with_dense": agreement},
        "auto": auto,
        "environment": environment(next(model.parameters()).device),
    }


def render_prune_markdown(r: Dict[str, Any]) -> str:
    f = r["flops"]
    lines: List[str] = [
        f"# ssmprune report: {r['source']['variant'] or r['source']['family']}",
        "",
        f"- source: `{r['source']['checkpoint']}` ({r['source']['family']})",
        f"- parameters: {r['params'] / 1e6:.3f} M",
        f"- {f['convention']}: dense {f['dense_gmacs']:.4f}, pruned {f['pruned_gmacs']:.4f}, "
        f"reduction **{f['reduction']:.1%}**" + (f" (target {f['target_reduction']:.1%})"
                                                   if f.get("target_reduction") else ""),
        f"- score `{r['pruning']['score']}`, align `{r['pruning']['align']}`, conv_fill "
        f"`{r['pruning']['conv_fill']}`, delta_fill `{r['pruning']['delta_fill']}`",
    ]
    cal = r["calibration"]
    if cal["images"]:
        lines.append(f"- calibration images: {cal['images']}")
    if cal.get("agreement_with_dense") is not None:
        lines.append(f"- top-1 agreement with the dense model on {cal['holdout_images']} held-out images: "
                     f"{cal['agreement_with_dense']:.1%}")
    lines += ["", "## Schedule", "", "| prune point | tokens before | kept |", "|---|---|---|"]
    lines += [f"| {s['site']} | {s['before']} | {s['keep']} |" for s in r["schedule"]]
    lines += ["", "## Tokens per block", "", "| block | stage | dense | pruned |", "|---|---|---|---|"]
    lines += [f"| {t['block']} | {t['stage']} | {t['dense']} | {t['pruned']} |" for t in r["tokens_per_block"]]
    if r.get("auto"):
        lines += auto_markdown(r["auto"])
    lines += measurement_markdown(r)
    return "\n".join(lines) + "\n"


def auto_markdown(a: Dict[str, Any]) -> List[str]:
    """The --auto section: every candidate's score ± standard error, and why the chosen one was chosen."""
    lines = ["", "## Policy search (--auto)", "",
             f"Scored on {a['holdout_images']} held-out calibration images (not those that calibrated Δ̂): "
             f"{a['measure']}, ± its standard error. A candidate replaces the default only when its paired "
             f"difference to the default is below zero by more than z = {a['z']:.2f} standard errors (a "
             f"{a['alpha']:.0%} chance over all candidates of replacing it when none is better).", "",
             f"**Decision:** {a['decision']}.", "",
             "| conv_fill | delta_fill | split | keep | GMACs | KL to dense | KL − default's | top-1 agreement |",
             "|---|---|---|---|---|---|---|---|"]
    for c in a["candidates"]:
        role = [w for w, on in (("default", c == a["default"]), ("chosen", c == a["chosen"])) if on]
        mark = f" **({', '.join(role)})**" if role else ""
        diff = "-" if c == a["default"] else f"{c['kl_vs_default']:+.3g} ± {c['kl_vs_default_se']:.2g}"
        lines.append(f"| {c['conv_fill']} | {c['delta_fill']} | {c['split']} | {c['keep']} | "
                     f"{c['macs'] / 1e9:.4f} | {c['kl']:.4g} ± {c['kl_se']:.2g} | {diff} | "
                     f"{c['agreement']:.1%} ± {c['agreement_se']:.1%}{mark} |")
    return lines


# ------------------------------------------------------------------------------------------------ measurements
def add_fvcore_counts(report: Dict[str, Any], model, spec: PruningSpec, pruned_model=None) -> None:
    """Replace the headline FLOPs with fvcore counts (the analytic ones move to flops.analytic) and add each
    block's count to tokens_per_block."""
    from ssmprune_cli.pruning.pruned_model import PrunedModel

    own = pruned_model is None
    pruned_model = PrunedModel(model, spec) if own else pruned_model
    try:
        dense, pruned = count_flops(model), count_flops(pruned_model)
    finally:
        if own:
            pruned_model.detach()  # the capture hooks were only for this count
    f = report["flops"]
    analytic = {k: f[k] for k in ("convention", "dense_gmacs", "pruned_gmacs", "reduction")}
    f.update({"convention": CONVENTION, "note": CONVENTION_NOTE, "dense_gmacs": dense.gmacs,
              "pruned_gmacs": pruned.gmacs, "reduction": 1.0 - pruned.macs / dense.macs, "analytic": analytic,
              "agreement_with_analytic": pruned.agreement,
              "unsupported_ops": {"dense": dense.unsupported, "pruned": pruned.unsupported},
              "not_counted": {op: {"why": dense.dropped.get(op) or pruned.dropped.get(op),
                                   "calls_dense": dense.not_counted.get(op, 0),
                                   "calls_pruned": pruned.not_counted.get(op, 0)}
                              for op in sorted(set(dense.not_counted) | set(pruned.not_counted))},
              "by_module": {"dense": _gmacs(dense.by_module), "pruned": _gmacs(pruned.by_module)},
              "by_operator": {"dense": _gmacs(dense.by_operator), "pruned": _gmacs(pruned.by_operator)}})
    for row, d, p in zip(report["tokens_per_block"], dense.blocks, pruned.blocks):
        row["dense_gmacs"], row["pruned_gmacs"] = d["macs"] / 1e9, p["macs"] / 1e9


def _gmacs(counts: Dict[str, int]) -> Dict[str, float]:
    return {k: v / 1e9 for k, v in counts.items()}


def speed_section(bench: Dict[str, Any]) -> Dict[str, Any]:
    """The parts of a bench result a report keeps: settings, per-model latency/throughput, the comparison."""
    keep = ("name", "latency", "throughput", "flops", "top1")
    return {"settings": bench["settings"], "comparison": bench.get("comparison"),
            "models": {n: {k: m[k] for k in keep if k in m} for n, m in bench["models"].items()}}


def accuracy_section(acc: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(acc)
    if out.get("top1") is not None and out.get("baseline_top1") is not None:
        out["acc_drop"] = out["baseline_top1"] - out["top1"]
    return out


def measurement_markdown(r: Dict[str, Any]) -> List[str]:
    """Sections for fvcore counts, speed and accuracy, when the report has them."""
    lines: List[str] = []
    f = r["flops"]
    if "analytic" in f:
        a = f["analytic"]
        lines += ["", "## FLOPs", "", f"{f['convention']}: {f['note']}.", "",
                  "| count | dense | pruned | reduction |", "|---|---|---|---|",
                  f"| {f['convention']} | {f['dense_gmacs']:.4f} | {f['pruned_gmacs']:.4f} | {f['reduction']:.2%} |",
                  f"| analytic cost model | {a['dense_gmacs']:.4f} | {a['pruned_gmacs']:.4f} | {a['reduction']:.2%} |",
                  "", f"fvcore / analytic for the pruned model: {f['agreement_with_analytic']:+.3%}."]
        unsupported = sorted(set(f["unsupported_ops"]["dense"]) | set(f["unsupported_ops"]["pruned"]))
        lines.append("Ops fvcore could not count: " + (", ".join(f"`{o}`" for o in unsupported) or "none") + ".")
        if f["not_counted"]:
            by_why: Dict[str, List[str]] = {}
            for op, d in f["not_counted"].items():
                by_why.setdefault(d["why"], []).append(f"`{op.split('::')[-1]}`")
            lines.append("Not counted by convention: " + "; ".join(f"{w}: {', '.join(o)}" for w, o in
                                                                   by_why.items()) + ".")
        rows = [t for t in r["tokens_per_block"] if "dense_gmacs" in t]
        if rows:
            lines += ["", "| block | tokens dense → pruned | GMACs dense | GMACs pruned |", "|---|---|---|---|"]
            lines += [f"| {t['block']} | {t['dense']} → {t['pruned']} | {t['dense_gmacs']:.4f} | "
                      f"{t['pruned_gmacs']:.4f} |" for t in rows]
    if r.get("speed"):
        lines += speed_markdown(r["speed"], r.get("environment"))
    if r.get("accuracy"):
        a = r["accuracy"]
        lines += ["", "## Accuracy", "", f"- images: {a.get('images')}"]
        if a.get("top1") is not None:
            lines.append(f"- top-1 pruned: {a['top1']:.2f}%")
        if a.get("baseline_top1") is not None:
            lines.append(f"- top-1 dense: {a['baseline_top1']:.2f}%")
        if a.get("acc_drop") is not None:
            lines.append(f"- drop: {a['acc_drop']:+.2f} points")
    return lines


def speed_markdown(speed: Dict[str, Any], env: Optional[Dict[str, Any]] = None) -> List[str]:
    s = speed["settings"]
    lines = ["", "## Speed", ""]
    if env is not None and "date" in env:
        lines += [f"Measured on {describe(env)}.", ""]
    lines += [f"Median of {s['repeats']} samples after {s['warmup']} warm-up calls, dense and pruned alternating; "
              "IQR in brackets.", "",
              "| model | latency ms (batch {}) | throughput img/s (batch {}) |".format(s["latency_batch"], s["batch"]),
              "|---|---|---|"]
    for name, m in speed["models"].items():
        lat, thr = m["latency"], m["throughput"]
        lines.append(f"| {m.get('name', name)} | {lat['median_ms']:.3f} [{lat['iqr_ms']:.3f}] | "
                     f"{throughput_cell(thr)} |")
    c = speed.get("comparison")
    if c:
        lines += ["", f"Throughput speedup {c['throughput_speedup']:.3f}× (latency {c['latency_speedup']:.3f}×) "
                      f"against a FLOPs ratio of {c['flops_ratio']:.3f} (ideal {c['ideal_speedup']:.3f}×): "
                      f"{c['efficiency']:.1%} of ideal."]
    return lines
