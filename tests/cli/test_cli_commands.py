"""The CLI through typer's CliRunner: exit codes, one-line errors, `--json` alone on stdout, `models`."""

import argparse
import json

import pytest
import torch

import ssmprune_cli
from ssmprune_cli.errors import QualityGateError
from ssmprune_cli.io import load as load_module
from ssmprune_cli.models import create_model, list_models
from _runner import run




@pytest.fixture
def vim_file(tmp_path):
    model = create_model("vim_test")
    path = tmp_path / "vim.pth"
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(model="vim_test")}, path)
    return path, model


def _one_error_line(result):
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    return lines[0]


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"ssmprune {ssmprune_cli.__version__}"


def test_models_lists_every_registered_variant():
    result = run("models")
    assert result.exit_code == 0 and result.stderr == ""  # the table is the result: stdout
    assert all(name in result.stdout for name in list_models())
    rows = json.loads(run("models", "--json").stdout)
    assert [r["name"] for r in rows] == list_models()
    test_row = next(r for r in rows if r["name"] == "vim_test")
    model = create_model("vim_test")
    assert test_row["params"] == sum(p.numel() for p in model.parameters())
    assert test_row["input_size"] == list(model.input_size())
    assert {r["tokens"] for r in test_row["layers"]} == {model.cfg.num_tokens}


def test_analyze_json_is_alone_on_stdout(vim_file):
    path, model = vim_file
    result = run("analyze", path, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["family"], doc["variant"], doc["weights"]) == ("vim", "vim_test", "model")
    assert doc["params"] == sum(p.numel() for p in model.parameters())
    assert doc["input_size"] == [3, model.cfg.img_size, model.cfg.img_size]
    assert [r["site"] for r in doc["layers"]] == model.prune_sites()
    assert all(r["tokens"] == model.cfg.num_tokens for r in doc["layers"])


def test_analyze_tables_go_to_stdout(vim_file):
    path, _ = vim_file
    result = run("analyze", path)
    assert result.exit_code == 0, result.stderr
    assert "vim_test" in result.stdout and "tokens per layer" in result.stdout
    assert "tokens per layer" not in result.stderr


def test_analyze_img_size_override(vim_file):
    path, _ = vim_file
    doc = json.loads(run("analyze", path, "--img-size", 24, "--json").stdout)
    assert doc["input_size"] == [3, 24, 24]
    assert all(r["tokens"] == 6 * 6 + 1 for r in doc["layers"])


@pytest.mark.parametrize("args, code", [
    (("analyze", "does-not-exist.pth"), 2),
    (("analyze", "{tmp}"), 2),
    (("analyze", "{vim}", "--family", "nosuchfamily"), 2),
    (("models", "--family", "nosuchfamily"), 2),
])
def test_bad_input_is_one_line_exit_2(tmp_path, vim_file, args, code):
    args = [a.format(tmp=tmp_path, vim=vim_file[0]) for a in args]
    result = run(*args)
    assert result.exit_code == code
    assert _one_error_line(result).startswith("error: ")


class _Payload:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_unsafe_pickle_exit_4_and_trust_opt_in(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": create_model("vim_test").state_dict(), "x": _Payload(marker)}, path)
    result = run("analyze", path, "--json")
    assert result.exit_code == 4
    assert "--trust-pickle" in _one_error_line(result)
    assert not marker.exists()
    trusted = run("analyze", path, "--trust-pickle", "--json")
    assert trusted.exit_code == 0 and json.loads(trusted.stdout)["family"] == "vim"
    assert marker.exists()


def _raise(exc):
    def fake(*args, **kwargs):
        raise exc
    return fake


def test_internal_error_is_one_line_exit_1(vim_file, monkeypatch):
    monkeypatch.setattr(load_module, "load_checkpoint", _raise(ZeroDivisionError("boom\nsecond line")))
    result = run("analyze", vim_file[0], env={"SSMPRUNE_DEBUG": ""})
    assert result.exit_code == 1
    line = _one_error_line(result)
    assert line.startswith("internal error: ZeroDivisionError: boom second line")
    assert "SSMPRUNE_DEBUG=1" in line


def test_debug_env_reraises(vim_file, monkeypatch):
    monkeypatch.setattr(load_module, "load_checkpoint", _raise(ZeroDivisionError("boom")))
    result = run("analyze", vim_file[0], env={"SSMPRUNE_DEBUG": "1"})
    assert result.exit_code == 1 and isinstance(result.exception, ZeroDivisionError)


@pytest.mark.parametrize("exc, code", [(KeyboardInterrupt(), 130), (QualityGateError("speedup 1.1 < 1.3"), 3)])
def test_exit_codes_of_the_seam(vim_file, monkeypatch, exc, code):
    monkeypatch.setattr(load_module, "load_checkpoint", _raise(exc))
    result = run("analyze", vim_file[0])
    assert result.exit_code == code
    _one_error_line(result)


def test_usage_error_exits_2():
    result = run("analyze", "x.pth", "--no-such-option")
    assert result.exit_code == 2
