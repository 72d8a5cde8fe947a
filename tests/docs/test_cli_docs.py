"""docs/cli.md and docs/schemas/ are generated from the code (ssmprune_cli/docs.py): the committed files must be
what the generator writes, and the generator must document every command and option."""

from pathlib import Path

import pytest

from ssmprune_cli import docs

ROOT = Path(__file__).resolve().parents[2]


def test_committed_docs_are_what_the_generator_writes():
    stale = docs.stale_files(ROOT)
    assert not stale, (f"stale: {', '.join(str(p.relative_to(ROOT)) for p in stale)}; run "
                       "`python -m ssmprune_cli.docs` and commit the result")


def test_every_visible_command_and_option_is_on_the_page():
    page = (ROOT / "docs" / "cli.md").read_text()
    group, ctx, commands = docs.command_tree()
    assert set(commands) == {"models", "analyze", "prune", "eval", "finetune", "bench"}
    for name, (cmd, cctx) in commands.items():
        assert f"### `ssmprune {name}`" in page
        for p in cmd.get_params(cctx):
            if p.param_type_name == "option" and p.name != "help" and not p.hidden:
                assert f"`{', '.join(p.opts)}" in page, (name, p.opts)
    # a hidden option (eval's deprecated --limit) stays off the page; its note in the prose is hand-written
    assert "`--limit N`" not in page


def test_a_block_shows_help_defaults_required_and_examples():
    ref = docs.cli_reference()
    prune = ref["ssmprune prune"]
    assert prune.splitlines()[0] == "### `ssmprune prune`"
    assert "ssmprune prune [OPTIONS] [CKPT]" in prune
    assert "| `-o, --out DIR` | Output folder (must not exist unless --force). [default: ssmprune-out] |" in prune
    assert "| `--method NAME` |" in prune and "| `--merge-layers NAME` |" in prune and "mtr" in prune
    assert "```bash\nssmprune prune --ratio 0.4 --calib data/cifar10/test -o out/demo" in prune
    assert "| `--val DIR` | Labelled images (ImageFolder), or a flat folder for agreement only. [required] |" \
        in ref["ssmprune eval"]
    assert "ssmprune analyze [OPTIONS] CKPT" in ref["ssmprune analyze"]
    assert "`--flops / --no-flops` | Count FLOPs with fvcore (GMACs), per block beside the analytic cost model. " \
           "[default: --flops]" in ref["ssmprune analyze"]
    assert "[`bench`](#ssmprune-bench)" in ref["ssmprune"]


def test_prose_between_blocks_is_kept_and_blocks_are_rewritten():
    text = ("# page\n\nhand-written intro\n\n<!-- generated: ssmprune -->\nold\n<!-- end generated -->\n\nmy prose\n"
            + "".join(f"<!-- generated: ssmprune {n} -->\n<!-- end generated -->\nabout {n}\n"
                      for n in docs.command_tree()[2]))
    out = docs.render_cli_doc(text)
    assert out.startswith("# page\n\nhand-written intro\n\n<!-- generated: ssmprune -->\n### `ssmprune`\n")
    assert "\nold\n" not in out and "\nmy prose\n" in out and "\nabout bench\n" in out
    assert docs.render_cli_doc(out) == out  # generating again changes nothing


def test_a_missing_or_unknown_block_is_an_error_that_says_what_to_do():
    with pytest.raises(ValueError, match="no generated block for ssmprune, ssmprune models"):
        docs.render_cli_doc("# page\n")
    with pytest.raises(ValueError, match="'ssmprune frobnicate', which is no command"):
        docs.render_cli_doc("<!-- generated: ssmprune frobnicate -->\n<!-- end generated -->\n")
    with pytest.raises(ValueError, match="has no '<!-- end generated -->' line"):
        docs.render_cli_doc("<!-- generated: ssmprune -->\n")


def test_check_mode_names_stale_files_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    page = (ROOT / "docs" / "cli.md").read_text()
    (tmp_path / "docs" / "cli.md").write_text(page.replace("[default: ssmprune-out]", "[default: elsewhere]"))
    assert docs.main(["--root", str(tmp_path), "--check"]) == 1
    err = capsys.readouterr().err
    assert "stale: docs/cli.md" in err and "stale: docs/schemas/recipe.schema.json" in err
    assert not (tmp_path / "docs" / "schemas").exists()
    assert docs.main(["--root", str(tmp_path)]) == 0
    assert (tmp_path / "docs" / "cli.md").read_text() == page
    assert docs.main(["--root", str(tmp_path), "--check"]) == 0
