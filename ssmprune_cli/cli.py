"""The `ssmprune` command line: parse, call the package, render. No model logic lives here.

Output streams: `--json` prints exactly one JSON document on stdout; everything for people (tables, notes,
errors) goes to the stderr console in ssmprune_cli.report.console. Errors cross one seam (`_Seam.invoke`):
SsmpruneError → one red line and its exit code; anything else → one "internal error" line and exit 1
(SSMPRUNE_DEBUG=1 re-raises for the traceback); Ctrl-C → 130. Exit codes are listed in docs/cli.md.
"""

from __future__ import annotations

import json
import os
from itertools import groupby
from pathlib import Path
from typing import Annotated, Any, Dict, List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ssmprune_cli import __version__
from ssmprune_cli.errors import SsmpruneError
from ssmprune_cli.report.console import console, error, note

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
            error("interrupted")
            raise typer.Exit(130) from None
        except Exception as exc:
            if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                raise
            console.print(f"[bold red]internal error:[/] {escape(type(exc).__name__)}: {escape(_one_line(exc))} "
                          f"(rerun with {DEBUG_ENV}=1 for a traceback)", soft_wrap=True)
            raise typer.Exit(1) from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


app = typer.Typer(
    cls=_Seam,
    name="ssmprune",
    help="Token pruning with hidden-state alignment for vision state-space models (Vim, PlainMamba, GroupMamba).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


# ---------------------------------------------------------------------------------------------- shared options
# Later commands (prune, eval, bench, finetune) reuse these so every command spells an option the same way.
FamilyOpt = Annotated[Optional[str], typer.Option("--family", help="Force the architecture family instead of "
                                                  "detecting it from the weights (vim, plainmamba, groupmamba).")]
ImgSizeOpt = Annotated[Optional[int], typer.Option("--img-size", min=1, help="Input resolution to build the model "
                                                   "for, when it differs from the checkpoint's.")]
EmaOpt = Annotated[bool, typer.Option("--ema", help="Use the EMA weights where the checkpoint has them.")]
TrustPickleOpt = Annotated[bool, typer.Option("--trust-pickle", help="Allow a full unpickle of the checkpoint. "
                                              "This runs code from the file: only for files you trust.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout (tables go to stderr).")]


def emit_json(doc: Any) -> None:
    """The machine-readable result: one JSON document, alone on stdout."""
    typer.echo(json.dumps(doc, indent=2))


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"ssmprune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Token pruning with hidden-state alignment for vision state-space models (Vim, PlainMamba, GroupMamba)."""


# ---------------------------------------------------------------------------------------------- models
@app.command()
def models(
    family: Annotated[Optional[str], typer.Option("--family", help="Only this family.")] = None,
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
    console.print(table)


# ---------------------------------------------------------------------------------------------- analyze
@app.command()
def analyze(
    ckpt: Annotated[Path, typer.Argument(help="Checkpoint: official .pth/.pt/.bin or ssmprune .safetensors.")],
    family: FamilyOpt = None,
    img_size: ImgSizeOpt = None,
    ema: EmaOpt = False,
    trust_pickle: TrustPickleOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Describe a checkpoint: architecture, variant, parameter count, image size, tokens per layer."""
    from ssmprune_cli.io.load import load_checkpoint

    loaded = load_checkpoint(ckpt, family=family, ema=ema, trust_pickle=trust_pickle, img_size=img_size)
    summary = loaded.summary()
    if as_json:
        emit_json(summary)
        return
    _render_summary(summary)


def _render_summary(s: Dict[str, Any]) -> None:
    head = Table(show_header=False, title=str(s["path"]))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("family", s["family"])
    head.add_row("variant", s["variant"] or "(no registered variant matches)")
    head.add_row("weights", s["weights"])
    head.add_row("parameters", f"{s['params']:,} ({_millions(s['params'])})")
    head.add_row("input", "×".join(map(str, s["input_size"])))
    console.print(head)
    pruned = s["pruning"] is not None
    layers = Table(title="tokens per layer")
    for col in ("after block", "tokens", "grid", "class/protected") + (("kept",) if pruned else ()):
        layers.add_column(col, justify="right")
    for key, group in groupby(s["layers"], key=lambda r: (r["tokens"], r["grid"], r["protected"], r.get("kept"))):
        sites = [r["site"] for r in group]
        span = sites[0] if len(sites) == 1 else f"{sites[0]}–{sites[-1]}"
        grid = "" if key[1] is None else "×".join(map(str, key[1]))
        row = [span, str(key[0]), grid, ", ".join(map(str, key[2])) or "-"]
        layers.add_row(*(row + ([str(key[3])] if pruned else [])))
    console.print(layers)
    if pruned:
        note(f"pruned: {json.dumps(s['pruning'])}")


# ---------------------------------------------------------------------------------------------- formatting
def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def _image(input_size: List[int]) -> str:
    h, w = input_size[-2:]
    return str(h) if h == w else f"{h}×{w}"


def _tokens(layers: List[Dict[str, Any]]) -> str:
    """Token counts along the network, each distinct run once (a hierarchical model: 3136→784→196→49)."""
    counts = [k for k, _ in groupby(r["tokens"] for r in layers)]
    return "→".join(map(str, counts))


# ---------------------------------------------------------------------------------------------- later commands
# prune, finetune, eval and bench are added here by their owners, each as a thin @app.command() that parses
# its options (reusing the *Opt aliases above), calls one package function and renders the result.


def main() -> None:
    """Console-script entry point (`ssmprune`)."""
    app()
