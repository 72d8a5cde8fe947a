"""The `ssmprune` command line: parse, call the package, render. No model logic lives here.

Output streams (ssmprune_cli.report.console): a command's result goes to stdout, as tables for people or, with
`--json`, as exactly one JSON document alone there; progress bars, notes, warnings and errors go to stderr.
Errors cross one seam (`_Seam.invoke`): SsmpruneError → one red line and its exit code; anything else → one
"internal error" line and exit 1 (SSMPRUNE_DEBUG=1 re-raises for the traceback); Ctrl-C → 130. Exit codes and
messages: docs/errors.md. docs/cli.md is generated from this file (`python -m ssmprune_cli.docs`).
"""

from __future__ import annotations

import os
from itertools import groupby
from pathlib import Path
from typing import Annotated, Any, Dict, List, Optional

import typer
from rich.table import Table

from ssmprune_cli import __version__
from ssmprune_cli.errors import SsmpruneError
from ssmprune_cli.report.console import error, log_to_console, note, results

DEBUG_ENV = "SSMPRUNE_DEBUG"
# Usage errors (bad options) keep click's handling and exit code 2. typer ≥ 0.28 vendors click and older
# versions re-export it, so the base class is found through a public subclass rather than imported.
_USAGE_ERRORS = tuple(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class _Seam(typer.core.TyperGroup):
    """Every command runs inside this group's invoke, so commands added later get the same error handling."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort) + _USAGE_ERRORS:
            raise  # deliberate exits and usage errors keep typer's behaviour
        except SsmpruneError as exc:
            error(_one_line(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            error("interrupted; no output was written")  # jobs write through temporary names, renamed at the end
            raise typer.Exit(130) from None
        except Exception as exc:
            if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                raise
            error(f"{type(exc).__name__}: {_one_line(exc)} (rerun with {DEBUG_ENV}=1 for a traceback)",
                  label="internal error")
            raise typer.Exit(1) from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def examples(*lines: str) -> str:
    """A --help epilog: example command lines, kept as typed (click rewraps paragraphs not marked with \\b)."""
    return "Examples:\n\n\b\n" + "\n".join(f"  {line}" for line in lines)


app = typer.Typer(
    cls=_Seam,
    name="ssmprune",
    help="Token pruning with hidden-state alignment for vision state-space models (Vim, PlainMamba, GroupMamba, "
         "VMamba).",
    epilog="Results go to stdout (tables, or one JSON document with --json); progress, notes and errors to "
           "stderr. Exit codes: 0 ok, 1 internal error, 2 bad input, 3 quality gate failed, 4 refused an unsafe "
           "pickle, 130 interrupted (docs/errors.md).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # plain help, as click prints it: no colour panels, no type labels on flags
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    pretty_exceptions_show_locals=False,
)


# ---------------------------------------------------------------------------------------------- shared options
# Later commands (prune, eval, bench, finetune) reuse these so every command spells an option the same way.
FamilyOpt = Annotated[Optional[str], typer.Option("--family", metavar="NAME", help="Force the architecture "
                                                  "family instead of detecting it from the weights (vim, "
                                                  "plainmamba, groupmamba, vmamba).")]
ImgSizeOpt = Annotated[Optional[int], typer.Option("--img-size", min=1, metavar="PX", help="Input resolution to "
                                                   "build the model for, when it differs from the checkpoint's.")]
EmaOpt = Annotated[bool, typer.Option("--ema", help="Use the EMA weights where the checkpoint has them.")]
TrustPickleOpt = Annotated[bool, typer.Option("--trust-pickle", help="Allow a full unpickle of the checkpoint. "
                                              "This runs code from the file: only for files you trust.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as one JSON document on stdout, instead "
                                      "of tables.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", metavar="DEV", help="cpu, cuda or cuda:N (default: "
                                                 "CUDA when available).")]
NoProgressOpt = Annotated[bool, typer.Option("--no-progress", help="No progress bars.")]
ValLimitOpt = Annotated[Optional[int], typer.Option(
    "--val-limit", min=1, metavar="N", help="Use this many --val images: the same ones in prune, eval, bench and "
    "finetune (a fixed subset of the folder, whatever --seed).")]
ModelConfigOpt = Annotated[Optional[Path], typer.Option(
    "--model-config", metavar="FILE", help="YAML/JSON mapping of model config fields the weights cannot tell "
    "(mean, std, stride, img_size, ...).")]


def model_overrides(model_config: Optional[Path], **fields: Any) -> Dict[str, Any]:
    """Config overrides from --model-config and single options such as --img-size (those win)."""
    from ssmprune_cli.io.config_file import read_model_config

    out = read_model_config(model_config) if model_config is not None else {}
    out.update({k: v for k, v in fields.items() if v is not None})
    return out


def emit_json(doc: Any) -> None:
    """The machine-readable result: one JSON document, alone on stdout."""
    from ssmprune_cli.report.jsondoc import dumps

    typer.echo(dumps(doc))


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"ssmprune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Token pruning with hidden-state alignment for vision state-space models (Vim, PlainMamba, GroupMamba,
    VMamba)."""
    log_to_console()


# ---------------------------------------------------------------------------------------------- models
@app.command(epilog=examples("ssmprune models", "ssmprune models | grep vim_small",
                             "ssmprune models --family groupmamba --json"))
def models(
    family: Annotated[Optional[str], typer.Option("--family", metavar="NAME", help="Only this family.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List the registered model variants: family, name, parameters, image size, tokens."""
    from ssmprune_cli.io.load import variant_summaries
    from ssmprune_cli.models import get_family

    if family is not None:
        get_family(family)  # unknown family → one-line error
    rows = variant_summaries(family)
    if as_json:
        emit_json(rows)
        return
    table = Table(title="registered variants")
    for col, justify in (("family", "left"), ("name", "left"), ("params", "right"), ("image", "right"),
                         ("tokens", "right")):
        table.add_column(col, justify=justify)
    for r in rows:
        table.add_row(r["family"], r["name"], _millions(r["params"]), _image(r["input_size"]), _tokens(r["layers"]))
    results.print(table)


# ---------------------------------------------------------------------------------------------- analyze
@app.command(epilog=examples("ssmprune analyze vim_t_midclstok_76p1acc.pth",
                             "ssmprune analyze out/model.safetensors --calib data/val --json > info.json",
                             "ssmprune analyze release.pth --family plainmamba --no-flops"))
def analyze(
    ckpt: Annotated[Path, typer.Argument(metavar="CKPT", help="Checkpoint: official .pth/.pt/.bin or ssmprune "
                                         ".safetensors.")],
    family: FamilyOpt = None,
    img_size: ImgSizeOpt = None,
    ema: EmaOpt = False,
    trust_pickle: TrustPickleOpt = False,
    flops: Annotated[bool, typer.Option("--flops/--no-flops", help="Count FLOPs with fvcore (GMACs), per block "
                                        "beside the analytic cost model.")] = True,
    calib: Annotated[Optional[Path], typer.Option("--calib", metavar="DIR", help="Folder of images: add per-layer "
                                                  "token-importance statistics.")] = None,
    calib_images: Annotated[int, typer.Option("--calib-images", min=1, metavar="N", help="Images to use from "
                                              "--calib.")] = 64,
    device: DeviceOpt = None,
    model_config: ModelConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Describe a checkpoint: architecture, variant, parameters, image size, tokens per layer, FLOPs and, with
    --calib, how token importance is spread at each layer."""
    from ssmprune_cli.io.load import load_checkpoint
    from ssmprune_cli.report.flops import analyze_flops, render_flops
    from ssmprune_cli.runtime import pick_device
    from ssmprune_cli.report.pictures import calib_importance, render_importance_stats

    loaded = load_checkpoint(ckpt, family=family, ema=ema, trust_pickle=trust_pickle,
                             **model_overrides(model_config, img_size=img_size))
    summary = loaded.summary()
    if flops or calib is not None:
        loaded.model.to(pick_device(device))
    if flops:
        summary["flops"] = analyze_flops(loaded)
    if calib is not None:
        summary["importance"] = calib_importance(loaded.model, calib, calib_images)
    if as_json:
        emit_json(summary)
        return
    _render_summary(summary)
    if flops:
        render_flops(summary["flops"])
    if calib is not None:
        render_importance_stats(summary["importance"])


def _render_summary(s: Dict[str, Any]) -> None:
    head = Table(show_header=False, title=str(s["path"]))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("family", s["family"])
    head.add_row("variant", s["variant"] or "(no registered variant matches)")
    head.add_row("weights", s["weights"])
    head.add_row("parameters", f"{s['params']:,} ({_millions(s['params'])})")
    head.add_row("input", "×".join(map(str, s["input_size"])))
    head.add_row("normalisation", f"mean {_floats(s['config'].get('mean'))}, std {_floats(s['config'].get('std'))}")
    if s.get("pruning"):
        p = s["pruning"]
        head.add_row("pruning", f"score {p.get('score')}, align {p.get('align')}, conv_fill {p.get('conv_fill')}, "
                                f"delta_fill {p.get('delta_fill')}")
    if s.get("nonfinite"):
        head.add_row("non-finite weights", ", ".join(f"{k} ({v})" for k, v in s["nonfinite"].items()))
    results.print(head)
    results.print(layers_table(s["layers"], pruned=s["pruning"] is not None))


def layers_table(layers: List[Dict[str, Any]], pruned: bool) -> Table:
    """Tokens after every block, equal consecutive rows merged. `protected` counts the tokens never pruned
    (class tokens); a pruned model's `kept` (the tokens going on) stands right beside the dense count."""
    table = Table(title="tokens per layer")
    for col in ("after block", "grid", "protected") + (("tokens (dense)", "kept") if pruned else ("tokens",)):
        table.add_column(col, justify="right")
    for key, group in groupby(layers, key=lambda r: (r["tokens"], r["grid"], len(r["protected"]), r.get("kept"))):
        sites = [r["site"] for r in group]
        span = sites[0] if len(sites) == 1 else f"{sites[0]}–{sites[-1]}"
        grid = "" if key[1] is None else "×".join(map(str, key[1]))
        row = [span, grid, str(key[2]), str(key[0])]
        table.add_row(*(row + ([str(key[3])] if pruned else [])))
    return table


# ---------------------------------------------------------------------------------------------- formatting
def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def _floats(values: Optional[List[float]]) -> str:
    return "-" if values is None else "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _image(input_size: List[int]) -> str:
    h, w = input_size[-2:]
    return str(h) if h == w else f"{h}×{w}"


def _tokens(layers: List[Dict[str, Any]]) -> str:
    """Token counts along the network, each distinct run once (a hierarchical model: 3136→784→196→49)."""
    counts = [k for k, _ in groupby(r["tokens"] for r in layers)]
    return "→".join(map(str, counts))


# ---------------------------------------------------------------------------------------------- prune
def _csv(value: Optional[str]) -> Optional[List[str]]:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _numbers(value: Optional[str], what: str) -> Optional[List[float]]:
    items = _csv(value)
    if items is None:
        return None
    try:
        return [float(v) for v in items]
    except ValueError:
        raise typer.BadParameter(f"{what} takes comma-separated numbers, got {value!r}") from None


@app.command(epilog=examples(
    "ssmprune prune --ratio 0.4 --calib data/cifar10/test -o out/demo        # the embedded demo model",
    "ssmprune prune vim_s_midclstok_80p5acc.pth --ratio 0.3 --calib imagenet/val -o out/vim_s",
    "ssmprune prune CKPT --keep 0.7,0.7 --at 6,12 --delta-fill bias -o OUT   # no data needed",
    "ssmprune prune CKPT --ratio 0.4 --calib DIR --val DIR --max-acc-drop 1 --json -o OUT > report.json"))
def prune(
    ckpt: Annotated[Optional[Path], typer.Argument(
        metavar="[CKPT]", help="Dense checkpoint (official .pth or ssmprune .safetensors). Default: the embedded "
        "demo model.")] = None,
    out: Annotated[Path, typer.Option(
        "-o", "--out", metavar="DIR", help="Output folder (must not exist unless --force).")] = Path("ssmprune-out"),
    ratio: Annotated[Optional[float], typer.Option(
        "--ratio", metavar="R", help="Target FLOPs reduction in (0, 1): 0.4 = the pruned model costs at most 60% "
        "of the dense one.")] = None,
    keep: Annotated[Optional[str], typer.Option(
        "--keep", metavar="LIST", help="Explicit schedule: keep rates in (0, 1] or token counts, comma-separated, "
        "one per prune point.")] = None,
    at: Annotated[Optional[str], typer.Option(
        "--at", metavar="LIST", help="Prune points, comma-separated: blocks completed ('5,10,15'), or "
        "'stage.block' for hierarchical models.")] = None,
    calib: Annotated[Optional[Path], typer.Option(
        "--calib", metavar="DIR", help="Calibration images (ImageFolder or a flat folder); no labels needed.")
                     ] = None,
    calib_images: Annotated[Optional[int], typer.Option(
        "--calib-images", min=1, metavar="N", help="How many calibration images (recipe default 256).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", min=1, metavar="N", help="Calibration batch size.")] = None,
    recipe: Annotated[Optional[Path], typer.Option(
        "--recipe", metavar="FILE", help="YAML recipe (docs/schemas/recipe.schema.json); flags override it.")
                      ] = None,
    score: Annotated[Optional[str], typer.Option(
        "--score", metavar="NAME", help="Token importance: clip (default), l1, l2, noclip, random, mtr (MTR's "
        "Δ-based score).")] = None,
    method: Annotated[Optional[str], typer.Option(
        "--method", metavar="NAME", help="What happens at a prune point: prune (default: keep the top tokens), "
        "merge (R-MeeTo/Famba-V token merging in scan order) or fuse (EViT: keep the top tokens, fuse the rest "
        "into one).")] = None,
    merge_layers: Annotated[Optional[str], typer.Option(
        "--merge-layers", metavar="NAME", help="With --method merge: points (the recipe's prune points, default), "
        "or Famba-V's strategies all, alternate, lower, upper.")] = None,
    align: Annotated[Optional[str], typer.Option(
        "--align", metavar="NAME", help="aligned (default) or none (naive packing).")] = None,
    conv_fill: Annotated[Optional[str], typer.Option(
        "--conv-fill", metavar="NAME", help="hold, packed (1-D only) or zero.")] = None,
    delta_fill: Annotated[Optional[str], typer.Option(
        "--delta-fill", metavar="NAME", help="calib (needs --calib), bias or zero.")] = None,
    split: Annotated[Optional[str], typer.Option(
        "--split", metavar="NAME", help="With --ratio: uniform, early or late keep rates across the prune points.")
                     ] = None,
    auto: Annotated[bool, typer.Option(
        "--auto", help="Try conv_fill, delta_fill and the split against the dense model on held-out calibration "
        "images; keep the default unless one is better beyond its noise.")] = False,
    seed: Annotated[Optional[int], typer.Option(
        "--seed", metavar="N", help="Seeds the calibration subset, the held-out split and `random` scores (recipe "
        "default 0).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output folder.")] = False,
    device: DeviceOpt = None,
    val: Annotated[Optional[Path], typer.Option(
        "--val", metavar="DIR", help="Labelled images (ImageFolder): top-1 of the dense and the pruned model in "
        "the report.")] = None,
    val_limit: ValLimitOpt = None,
    max_flops: Annotated[Optional[float], typer.Option(
        "--max-flops", metavar="GMACS", help="Gate: exit 3 when the pruned model costs more GMACs (fvcore).")
                         ] = None,
    max_acc_drop: Annotated[Optional[float], typer.Option(
        "--max-acc-drop", metavar="POINTS", help="Gate: exit 3 when top-1 drops by more points (needs --val).")
                            ] = None,
    bench: Annotated[bool, typer.Option(
        "--bench", help="Measure latency and throughput of the dense and the pruned model side by side into the "
        "report.")] = False,
    bench_batch: Annotated[int, typer.Option(
        "--bench-batch", min=1, metavar="N", help="Throughput batch size for --bench.")] = 128,
    bench_dtype: Annotated[str, typer.Option(
        "--bench-dtype", metavar="DTYPE", help="fp32, or bf16 (autocast) for --bench.")] = "fp32",
    bench_repeats: Annotated[int, typer.Option(
        "--bench-repeats", min=1, metavar="N", help="Timed samples per model and batch size for --bench (median "
        "and IQR reported).")] = 20,
    min_speedup: Annotated[Optional[float], typer.Option(
        "--min-speedup", metavar="X", help="Gate: exit 3 when the measured throughput speed-up is lower (needs "
        "--bench).")] = None,
    no_progress: NoProgressOpt = False,
    family: FamilyOpt = None,
    img_size: ImgSizeOpt = None,
    ema: EmaOpt = False,
    trust_pickle: TrustPickleOpt = False,
    model_config: ModelConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score tokens, plan the schedule, calibrate Δ̂ and write a pruned model (model.safetensors,
    config.json, recipe.yaml, report.json, report.md, pictures) to OUT."""
    from ssmprune_cli.assets import demo_checkpoint
    from ssmprune_cli.jobs import PruneRequest, run_prune
    from ssmprune_cli.report.bench import BenchSettings
    from ssmprune_cli.report.gates import raise_for_gates
    from ssmprune_cli.report.progress import set_enabled

    set_enabled(not no_progress)
    if ckpt is None:
        ckpt = demo_checkpoint()
        note(f"no checkpoint given: pruning the embedded demo model ({ckpt.name})")
    req = PruneRequest(checkpoint=ckpt, out=out, ratio=ratio, keep=_numbers(keep, "--keep"), at=_csv(at),
                       recipe=recipe, calib=calib, calib_images=calib_images, batch_size=batch_size, score=score,
                       align=align, conv_fill=conv_fill, delta_fill=delta_fill, split=split, method=method,
                       merge_layers=merge_layers, auto=auto,
                       seed=seed, force=force, device=device, val=val, val_limit=val_limit,
                       max_flops=max_flops, max_acc_drop=max_acc_drop, min_speedup=min_speedup,
                       bench=BenchSettings(device=device, dtype=bench_dtype, batch=bench_batch,
                                           repeats=bench_repeats) if bench else None,
                       load_options={"family": family, "ema": ema, "trust_pickle": trust_pickle,
                                     **model_overrides(model_config, img_size=img_size)})
    report = run_prune(req)
    if as_json:
        emit_json(report)
    else:
        _render_prune(report, out)
    raise_for_gates(report["gates"])  # after the outputs: a missed gate still leaves them for inspection


def _render_prune(r: Dict[str, Any], out: Path) -> None:
    f = r["flops"]
    table = Table(title=f"pruned {r['source']['variant'] or r['source']['family']} → {out}")
    for col in ("prune point", "tokens before", "kept"):
        table.add_column(col, justify="right")
    for s in r["schedule"]:
        table.add_row(s["site"], str(s["before"]), str(s["keep"]))
    results.print(table)
    results.print(f"{f['convention'].split(':')[0]}: dense {f['dense_gmacs']:.4f} → pruned {f['pruned_gmacs']:.4f} "
                  f"([bold]{f['reduction']:.1%}[/] fewer)")
    sp = (r.get("speed") or {}).get("comparison")
    if sp:
        results.print(f"throughput speed-up {sp['throughput_speedup']:.2f}× (FLOPs-ideal "
                      f"{sp['ideal_speedup']:.2f}×), batch-1 latency speed-up {sp['latency_speedup']:.2f}×")
    acc = r.get("accuracy")
    if acc:
        results.print(f"top-1 on {acc['images']} images: dense {acc['baseline_top1']:.2f}, pruned "
                      f"{acc['top1']:.2f}")
    agree = r["calibration"].get("agreement_with_dense")
    if agree is not None:
        results.print(f"top-1 agreement with the dense model on held-out images: {agree:.1%}")
    if r.get("auto"):
        results.print(f"--auto {r['auto']['decision']}")
    for g in r.get("gates", []):
        results.print(gate_line(g))


def gate_line(g: Dict[str, Any]) -> str:
    value = "-" if g["value"] is None else f"{g['value']:.4g}"
    verdict = "[green]pass[/]" if g["passed"] else "[bold red]FAIL[/]"
    return f"gate {g['gate']} {g['limit']:g} ({g['unit']}): {value} → {verdict}"


# ---------------------------------------------------------------------------------------------- eval
@app.command("eval", epilog=examples(
    "ssmprune eval out/demo/model.safetensors --val data/cifar10/test --val-limit 1000",
    "ssmprune eval OUT/model.safetensors --val DIR --baseline CKPT --max-acc-drop 1.0 --json"))
def eval_(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="Dense or pruned model (any supported "
                                          "checkpoint).")],
    val: Annotated[Path, typer.Option(
        "--val", metavar="DIR", help="Labelled images (ImageFolder), or a flat folder for agreement only.")],
    baseline: Annotated[Optional[Path], typer.Option(
        "--baseline", metavar="CKPT", help="Also report agreement with (and the accuracy of) this model.")] = None,
    val_limit: ValLimitOpt = None,
    limit: Annotated[Optional[int], typer.Option(
        "--limit", min=1, metavar="N", hidden=True, help="Deprecated spelling of --val-limit.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, metavar="N", help="Images per batch.")] = 64,
    max_acc_drop: Annotated[Optional[float], typer.Option(
        "--max-acc-drop", metavar="POINTS", help="Gate: fail (exit 3) when top-1 is more points below "
        "--baseline's.")] = None,
    device: DeviceOpt = None,
    no_progress: NoProgressOpt = False,
    family: FamilyOpt = None,
    ema: EmaOpt = False,
    trust_pickle: TrustPickleOpt = False,
    model_config: ModelConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Top-1 accuracy of a dense or pruned model, and its agreement with a --baseline model."""
    from ssmprune_cli.errors import BadInputError
    from ssmprune_cli.jobs import EvalRequest, run_eval
    from ssmprune_cli.report.gates import gate_row, raise_for_gates
    from ssmprune_cli.report.progress import set_enabled

    set_enabled(not no_progress)
    if limit is not None:
        if val_limit is not None and val_limit != limit:
            raise BadInputError("--limit is the old name of --val-limit: give one of them")
        note("--limit is deprecated: use --val-limit (the same option in prune, bench and finetune)")
        val_limit = limit
    if max_acc_drop is not None and baseline is None:
        raise BadInputError("--max-acc-drop needs --baseline")
    load_options = {"family": family, "ema": ema, "trust_pickle": trust_pickle, **model_overrides(model_config)}
    result = run_eval(EvalRequest(model=model, val=val, baseline=baseline, val_limit=val_limit,
                                  batch_size=batch_size, device=device, load_options=load_options))
    gates = []
    if max_acc_drop is not None:
        drop = result.get("acc_drop")
        if drop is None:
            raise BadInputError("--max-acc-drop needs labelled --val images (an ImageFolder)")
        gates = [gate_row("--max-acc-drop", drop, max_acc_drop, "top-1 points", upper=True)]
        result["gates"] = gates
    if as_json:
        emit_json(result)
    else:
        table = Table(show_header=False, title=str(model))
        for key, label in (("images", "images"), ("top1", "top-1"), ("baseline_top1", "top-1 of the baseline"),
                           ("acc_drop", "top-1 drop (points)"), ("agreement", "top-1 agreement with the baseline")):
            if key in result:
                v = result[key]
                table.add_row(label, f"{v:.2f}" if isinstance(v, float) else str(v))
        results.print(table)
        for g in gates:
            results.print(gate_line(g))
    raise_for_gates(gates)


# ---------------------------------------------------------------------------------------------- finetune
@app.command(epilog=examples(
    "ssmprune finetune out/demo/model.safetensors --train data/cifar10/train --epochs 1 -o out/demo-ft",
    "ssmprune finetune OUT/model.safetensors --train DIR --val DIR --val-limit 1000 -o OUT2 --json",
    "torchrun --nproc-per-node 4 -m ssmprune_cli finetune OUT/model.safetensors --train DIR -o OUT2"))
def finetune(
    model: Annotated[Path, typer.Argument(
        metavar="MODEL", help="Pruned model (OUT/model.safetensors of `prune`), or a dense one with --teacher.")],
    train_dir: Annotated[Path, typer.Option("--train", metavar="DIR", help="Labelled training images "
                                            "(ImageFolder).")],
    out: Annotated[Path, typer.Option(
        "-o", "--out", metavar="DIR", help="Output folder (must not exist unless --force).")],
    teacher: Annotated[Optional[Path], typer.Option(
        "--teacher", metavar="CKPT", help="Teacher checkpoint (default: the dense model inside MODEL).")] = None,
    epochs: Annotated[float, typer.Option("--epochs", metavar="E", help="Epochs, more than 0 (fractions "
                                          "allowed).")] = 1.0,
    lr: Annotated[float, typer.Option("--lr", min=0.0, metavar="LR", help="Peak learning rate (AdamW, cosine).")
                  ] = 1e-4,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=1, metavar="N", help="Images per step (per process under torchrun); a smaller "
        "training set trains on one batch of all of it.")] = 64,
    distill_alpha: Annotated[float, typer.Option(
        "--distill-alpha", min=0.0, max=1.0, metavar="A", help="Weight of the soft-logit KL to the teacher (the "
        "rest: labels).")] = 0.5,
    train_images: Annotated[Optional[int], typer.Option(
        "--train-images", min=1, metavar="N", help="Use this many training images (seeded random subset).")
                            ] = None,
    val: Annotated[Optional[Path], typer.Option(
        "--val", metavar="DIR", help="Labelled images: top-1 before and after.")] = None,
    val_limit: ValLimitOpt = None,
    seed: Annotated[int, typer.Option(
        "--seed", metavar="N", help="Seeds the --train-images subset, shuffling and augmentation.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output folder.")] = False,
    device: DeviceOpt = None,
    no_progress: NoProgressOpt = False,
    family: FamilyOpt = None,
    trust_pickle: TrustPickleOpt = False,
    model_config: ModelConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Brief distillation fine-tuning of a pruned model: AdamW, warm-up + cosine, bf16 autocast on CUDA,
    resumable, DDP under torchrun. Writes OUT/model.safetensors (same pruning) and OUT/finetune.json."""
    from ssmprune_cli.jobs import FinetuneRequest, run_finetune
    from ssmprune_cli.report.progress import set_enabled
    from ssmprune_cli.train.finetune import TrainConfig

    set_enabled(not no_progress)
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, distill_alpha=distill_alpha, seed=seed,
                      warmup_steps=min(100, max(1, int(epochs * 10))))
    result = run_finetune(FinetuneRequest(model=model, train=train_dir, out=out, teacher=teacher,
                                          train_images=train_images, val=val, val_limit=val_limit, config=cfg,
                                          force=force, device=device,
                                          load_options={"family": family, "trust_pickle": trust_pickle,
                                                        **model_overrides(model_config)}))
    if result["rank"] != 0:
        return  # under torchrun, rank 0 alone writes and reports
    if as_json:
        emit_json(result)
        return
    hist = result["summary"]["history"]
    results.print(f"fine-tuned {result['summary']['steps']} steps on {result['train_images']} images → {out}"
                  + (f"; last loss {hist[-1]['loss']:.4f}" if hist else ""))
    if "val" in result:
        v = result["val"]
        results.print(f"top-1 on {v['images']} images: {v['top1_before']:.2f} → {v['top1_after']:.2f}")


# ---------------------------------------------------------------------------------------------- bench
@app.command(epilog=examples(
    "ssmprune bench out/demo/model.safetensors                 # pruned vs its own dense model",
    "ssmprune bench OUT/model.safetensors --device cuda --dtype bf16 --min-speedup 1.3",
    "ssmprune bench CKPT --baseline OTHER.pth --val DIR --val-limit 1000 --json > bench.json"))
def bench(
    model: Annotated[Path, typer.Argument(
        metavar="MODEL", help="Model to measure: a pruned .safetensors, or any checkpoint.")],
    baseline: Annotated[Optional[Path], typer.Option(
        "--baseline", metavar="CKPT", help="Checkpoint to compare against (default for a pruned MODEL: its own "
        "dense model).")] = None,
    device: DeviceOpt = None,
    dtype: Annotated[str, typer.Option("--dtype", metavar="DTYPE", help="fp32, or bf16 (autocast).")] = "fp32",
    batch: Annotated[int, typer.Option(
        "--batch", min=1, metavar="N", help="Batch size of the throughput measurement.")] = 128,
    latency_batch: Annotated[int, typer.Option(
        "--latency-batch", min=1, metavar="N", help="Batch size of the latency measurement.")] = 1,
    warmup: Annotated[int, typer.Option(
        "--warmup", min=0, metavar="N", help="Warm-up calls per model and batch size.")] = 10,
    repeats: Annotated[int, typer.Option(
        "--repeats", min=1, metavar="N", help="Timed samples per model and batch size (median and IQR "
        "reported).")] = 20,
    compile_: Annotated[bool, typer.Option("--compile", help="Measure torch.compile'd models.")] = False,
    stages: Annotated[bool, typer.Option("--stages", help="Also time each block and group the ops' time.")] = False,
    val: Annotated[Optional[Path], typer.Option(
        "--val", metavar="DIR", help="Labelled images (ImageFolder): measure top-1 of both models.")] = None,
    val_limit: ValLimitOpt = None,
    seed: Annotated[int, typer.Option(
        "--seed", metavar="N", help="Seeds the random inputs that are timed and counted.")] = 0,
    max_flops: Annotated[Optional[float], typer.Option(
        "--max-flops", metavar="GMACS", help="Gate: fail (exit 3) when MODEL costs more GMACs (fvcore).")] = None,
    min_speedup: Annotated[Optional[float], typer.Option(
        "--min-speedup", metavar="X", help="Gate: fail (exit 3) when the throughput speedup over the baseline is "
        "lower.")] = None,
    max_acc_drop: Annotated[Optional[float], typer.Option(
        "--max-acc-drop", metavar="POINTS", help="Gate: fail (exit 3) when top-1 drops by more points (needs "
        "--val).")] = None,
    family: FamilyOpt = None,
    ema: EmaOpt = False,
    trust_pickle: TrustPickleOpt = False,
    model_config: ModelConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Latency (batch 1) and throughput (large batch) of MODEL beside its baseline, measured in one run, with
    fvcore FLOPs and their ratio; quality gates end with exit code 3 when missed."""
    from ssmprune_cli.report.bench import BenchRequest, BenchSettings, Gates, render_bench, run_bench
    from ssmprune_cli.report.gates import raise_for_gates

    settings = BenchSettings(device=device, dtype=dtype, batch=batch, latency_batch=latency_batch, warmup=warmup,
                             repeats=repeats, compile=compile_, stages=stages, seed=seed)
    req = BenchRequest(model=model, baseline=baseline, settings=settings, val=val, val_limit=val_limit,
                       load_options={"family": family, "ema": ema, "trust_pickle": trust_pickle,
                                     **model_overrides(model_config)})
    result = run_bench(req, Gates(max_flops, min_speedup, max_acc_drop))
    if as_json:
        emit_json(result)
    else:
        render_bench(result)
    raise_for_gates(result.get("gates", []))


def main() -> None:
    """Console-script entry point (`ssmprune`)."""
    app()
