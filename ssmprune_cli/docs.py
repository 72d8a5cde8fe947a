"""Reference docs generated from the code: docs/cli.md's command reference from the CLI's own command tree, and
docs/schemas/ from the package's JSON Schemas.

    python -m ssmprune_cli.docs            # rewrite docs/cli.md's generated blocks and docs/schemas/*.json
    python -m ssmprune_cli.docs --check    # exit 1, naming the stale files, when either differs

docs/cli.md is prose written by hand with one generated block per command, between
`<!-- generated: ssmprune COMMAND -->` and `<!-- end generated -->` (`<!-- generated: ssmprune -->` for the
program's own usage and options). A block holds what `ssmprune COMMAND --help` prints: the usage line, the
description, every argument and option with its help and default, and the examples; the prose around the blocks
is kept as it is. Every command must have its block and every block its command, so a new command cannot go
undocumented. tests/docs/test_cli_docs.py fails when the committed files differ from what this module writes.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import typer

from ssmprune_cli import schemas

CLI_DOC = Path("docs") / "cli.md"
SCHEMA_DIR = Path("docs") / "schemas"
BEGIN = re.compile(r"^<!-- generated: (ssmprune(?: [a-z_-]+)?) -->$")
END = "<!-- end generated -->"


# ------------------------------------------------------------------------------------------------ the CLI
def command_tree(app: Optional[typer.Typer] = None) -> Tuple[Any, Any, Dict[str, Tuple[Any, Any]]]:
    """(the root click group, its context, {name: (command, context)}) of the `ssmprune` app."""
    if app is None:
        from ssmprune_cli.cli import app
    group = typer.main.get_command(app)
    ctx = typer.Context(group, info_name="ssmprune")
    commands = {}
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is not None and not getattr(cmd, "hidden", False):
            commands[name] = (cmd, typer.Context(cmd, info_name=name, parent=ctx))
    return group, ctx, commands


def _paragraphs(text: Optional[str]) -> List[str]:
    """Help text as markdown paragraphs (click's `\\b` marks a block kept line by line: a code block here)."""
    if not text:
        return []
    out: List[str] = []
    for block in re.split(r"\n\s*\n", inspect.cleandoc(text)):
        if block.startswith("\b\n"):
            lines = inspect.cleandoc(block[2:]).splitlines()
            out.append("```bash\n" + "\n".join(lines) + "\n```")
        else:
            out.append(" ".join(block.split()))
    return out


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _default(p: Any) -> Optional[str]:
    """The default as a user would type it, or None where there is nothing to say (unset, a flag left off)."""
    d = p.default
    if callable(d) or d is None or (getattr(p, "is_flag", False) and not p.secondary_opts and d is False):
        return None
    if getattr(p, "is_flag", False) and p.secondary_opts:
        return (p.opts if d else p.secondary_opts)[-1]
    return str(d)


def _row(p: Any) -> Tuple[str, str]:
    """(how to write it, what it means): built from the parameter's data, not from a help formatter, so the page
    does not change with typer's layout."""
    if p.param_type_name == "argument":
        spelling = (p.metavar or p.name.upper()).strip("[]")
    else:
        spelling = ", ".join(p.opts)
        if p.secondary_opts:
            spelling += " / " + ", ".join(p.secondary_opts)
        elif not getattr(p, "is_flag", False):
            spelling += f" {p.metavar or 'VALUE'}"
    meaning = (p.help or "").strip()
    extra = "required" if p.required else (f"default: {_default(p)}" if _default(p) is not None else "")
    if extra:
        meaning = f"{meaning} [{extra}]".strip()
    return spelling, meaning


def _params(cmd: Any, ctx: Any, arguments: bool) -> List[Any]:
    return [p for p in cmd.get_params(ctx) if not getattr(p, "hidden", False) and p.name != "help"
            and (p.param_type_name == "argument") == arguments]


def _table(params: List[Any], head: str) -> List[str]:
    if not params:
        return []
    return [f"| {head} | meaning |", "|---|---|",
            *(f"| `{_cell(name)}` | {_cell(meaning)} |" for name, meaning in map(_row, params))]


def _usage(title: str, cmd: Any, ctx: Any) -> str:
    words = [title, "[OPTIONS]"]
    for p in _params(cmd, ctx, arguments=True):
        name = (p.metavar or p.name.upper()).strip("[]")
        words.append(name if p.required else f"[{name}]")
    if hasattr(cmd, "list_commands"):
        words.append("COMMAND [ARGS]...")
    return " ".join(words)


def render_command(name: str, cmd: Any, ctx: Any, commands: Optional[Dict[str, Tuple[Any, Any]]] = None) -> str:
    """One command's reference: usage, description, arguments, options (with defaults), examples; for the
    program itself (`commands` given) also the list of commands."""
    title = "ssmprune" if commands is not None else f"ssmprune {name}"
    parts = [f"### `{title}`", f"```text\n{_usage(title, cmd, ctx)}\n```", *_paragraphs(cmd.help)]
    for table in (_table(_params(cmd, ctx, True), "argument"), _table(_params(cmd, ctx, False), "option")):
        if table:
            parts.append("\n".join(table))
    if commands:
        parts.append("| command | what it does |\n|---|---|\n" + "\n".join(
            f"| [`{n}`](#ssmprune-{n}) | {_cell(c.get_short_help_str(limit=300))} |"
            for n, (c, _) in commands.items()))
    parts += _paragraphs(cmd.epilog)
    return "\n\n".join(parts)


def cli_reference() -> Dict[str, str]:
    """{"ssmprune": the program's block, "ssmprune NAME": each command's block}."""
    group, ctx, commands = command_tree()
    out = {"ssmprune": render_command("ssmprune", group, ctx, commands)}
    for name, (cmd, cctx) in commands.items():
        out[f"ssmprune {name}"] = render_command(name, cmd, cctx)
    return out


def render_cli_doc(current: str) -> str:
    """`current` (docs/cli.md) with every generated block rewritten from the CLI; ValueError when a block has no
    command or a command no block."""
    blocks = cli_reference()
    lines = current.splitlines()
    out: List[str] = []
    seen: List[str] = []
    i = 0
    while i < len(lines):
        m = BEGIN.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        key = m.group(1)
        if key not in blocks:
            raise ValueError(f"{CLI_DOC} has a generated block for {key!r}, which is no command; remove it")
        end = next((j for j in range(i + 1, len(lines)) if lines[j] == END), None)
        if end is None:
            raise ValueError(f"{CLI_DOC}: the generated block for {key!r} has no '{END}' line")
        out += [lines[i], blocks[key], END]
        seen.append(key)
        i = end + 1
    missing = [k for k in blocks if k not in seen]
    if missing:
        raise ValueError(f"{CLI_DOC} has no generated block for {', '.join(missing)}; add the lines "
                         f"'<!-- generated: {missing[0]} -->' and '{END}' where it belongs")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------ files
def generated_files(root: Path) -> Dict[Path, str]:
    """{path under root: the text it must have}."""
    files = {root / CLI_DOC: render_cli_doc((root / CLI_DOC).read_text(encoding="utf-8"))}
    for name in schemas.NAMES:
        files[root / SCHEMA_DIR / schemas.filename(name)] = schemas.schema_text(name)
    return files


def stale_files(root: Path) -> List[Path]:
    return [p for p, text in generated_files(root).items()
            if not p.exists() or p.read_text(encoding="utf-8") != text]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssmprune_cli.docs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the repository (default: the one holding this package)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is stale")
    args = parser.parse_args(argv)
    if not (args.root / CLI_DOC).is_file():
        parser.error(f"{args.root / CLI_DOC} not found: pass --root, the repository's folder")
    stale = stale_files(args.root)
    if args.check:
        for p in stale:
            print(f"stale: {p.relative_to(args.root)} (run python -m ssmprune_cli.docs)", file=sys.stderr)
        return 1 if stale else 0
    for p, text in generated_files(args.root).items():
        if p in stale:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text, encoding="utf-8")
            print(f"wrote {p.relative_to(args.root)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
