"""NaN and ±inf weights are reported, not silently loaded: a warning names the tensors and counts when a file
loads (official .pth and ssmprune .safetensors alike), and `analyze` shows them in its table and its JSON."""

import argparse
import json
import logging

import pytest
import torch
from typer.testing import CliRunner

from ssmprune_cli import cli
from ssmprune_cli.io.load import load_checkpoint
from ssmprune_cli.io.safetensors_io import save_model
from ssmprune_cli.models import create_model


@pytest.fixture
def warnings_seen(caplog):
    """The package's warnings, also after a CLI test in this process stopped `ssmprune` propagating to root."""
    logger = logging.getLogger("ssmprune")
    logger.addHandler(caplog.handler)
    with caplog.at_level(logging.WARNING, logger="ssmprune"):
        yield lambda: [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    logger.removeHandler(caplog.handler)


def _poisoned():
    model = create_model("vim_test")
    with torch.no_grad():
        model.head.weight[0, :3] = float("nan")
        model.head.weight[1, 0] = float("inf")
        model.patch_embed.proj.bias[:2] = float("-inf")
    return model, {"head.weight": 4, "patch_embed.proj.bias": 2}


@pytest.mark.parametrize("kind", ["official .pth", "ssmprune .safetensors"])
def test_nonfinite_weights_are_counted_and_warned(tmp_path, kind, warnings_seen):
    model, expected = _poisoned()
    if kind == "official .pth":
        path = tmp_path / "vim.pth"
        torch.save({"model": model.state_dict(), "args": argparse.Namespace()}, path)
    else:
        path = save_model(model, tmp_path / "model.safetensors", variant="vim_test")
    loaded = load_checkpoint(path)
    assert loaded.nonfinite == expected and loaded.summary()["nonfinite"] == expected
    warned = sorted(set(warnings_seen()))  # once, whether root also relays it or not
    assert len(warned) == 1
    assert "2 weight tensor(s) hold NaN or inf" in warned[0] and "head.weight (4 of" in warned[0]


def test_finite_weights_report_nothing(tmp_path, warnings_seen):
    path = save_model(create_model("vim_test"), tmp_path / "model.safetensors", variant="vim_test")
    assert load_checkpoint(path).nonfinite == {} and warnings_seen() == []


def _run(*args):
    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()
    return runner.invoke(cli.app, [str(a) for a in args])


def test_analyze_shows_nonfinite_weights(tmp_path):
    model, expected = _poisoned()
    path = save_model(model, tmp_path / "model.safetensors", variant="vim_test")
    res = _run("analyze", path, "--no-flops")
    assert res.exit_code == 0, res.stderr
    assert "non-finite weights" in res.stdout and "head.weight (4)" in res.stdout
    assert "warning: model.safetensors: 2 weight tensor(s) hold NaN or inf" in " ".join(res.stderr.split())
    doc = _run("analyze", path, "--no-flops", "--json")
    assert doc.exit_code == 0 and json.loads(doc.stdout)["nonfinite"] == expected
