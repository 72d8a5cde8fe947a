"""Where output lands: a command's result on stdout (tables, or with --json exactly one JSON document alone),
everything for people while it works (notes, warnings, progress, errors) on stderr."""

import argparse
import json
import subprocess
import sys

import pytest
import torch

from ssmprune_cli.models import create_model
from _runner import run, selected_here

# One worker under pytest-xdist runs the whole module: its fixture starts the selected tests' subprocesses up
# front, from the tests pytest collected.
pytestmark = pytest.mark.xdist_group("cli_streams")


def one_document(stdout: str):
    """The whole of stdout parses as one JSON value (json.loads refuses trailing text or a second document)."""
    return json.loads(stdout)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An official-layout vim_test .pth and a pruned copy of it (no data needed: Δ̂ from the dt bias)."""
    tmp = tmp_path_factory.mktemp("streams")
    path = tmp / "vim.pth"
    torch.save({"model": create_model("vim_test").state_dict(), "args": argparse.Namespace()}, path)
    res = run("prune", path, "--keep", "0.5", "--at", "2", "--delta-fill", "bias", "-o", tmp / "out",
              "--no-progress")
    assert res.exit_code == 0, res.stderr
    return path, tmp / "out" / "model.safetensors", res


def test_models_table_is_on_stdout_and_grep_finds_a_row():
    res = run("models")
    assert res.exit_code == 0 and res.stderr == ""
    rows = [line for line in res.stdout.splitlines() if "vim_small " in line]
    assert len(rows) == 1 and "25.80M" in rows[0] and "224" in rows[0] and "197" in rows[0]


def test_analyze_result_goes_to_stdout_notes_to_stderr(files):
    path, _, _ = files
    res = run("analyze", path, "--no-flops")
    assert res.exit_code == 0, res.stderr
    assert "tokens per layer" in res.stdout and "parameters" in res.stdout
    # an official file read with the ImageNet normalisation says so, as a note for people
    assert "ImageNet mean/std" in res.stderr and "ImageNet mean/std" not in res.stdout
    assert "┃" not in res.stderr  # no table on stderr


def test_analyze_json_is_one_document_with_notes_on_stderr(files):
    path, _, _ = files
    res = run("analyze", path, "--no-flops", "--json")
    assert res.exit_code == 0, res.stderr
    assert one_document(res.stdout)["family"] == "vim"
    assert "ImageNet mean/std" in res.stderr


def test_prune_summary_on_stdout(files):
    _, _, res = files
    assert "prune point" in res.stdout and "fewer" in res.stdout
    assert "prune point" not in res.stderr


def test_eval_table_on_stdout_json_alone(files, cifar_test_dir):
    _, pruned, _ = files
    res = run("eval", pruned, "--val", cifar_test_dir, "--val-limit", "4", "--no-progress")
    assert res.exit_code == 0, res.stderr
    assert "top-1" in res.stdout and "images" in res.stdout and res.stderr == ""
    doc = one_document(run("eval", pruned, "--val", cifar_test_dir, "--val-limit", "4", "--json").stdout)
    assert doc["images"] == 4


def test_bench_table_on_stdout_notes_on_stderr(files):
    _, pruned, _ = files
    res = run("bench", pruned, "--batch", "2", "--warmup", "0", "--repeats", "1")
    assert res.exit_code == 0, res.stderr
    assert "throughput img/s" in res.stdout and "pruned" in res.stdout and "dense" in res.stdout
    assert "median [IQR]" in res.stderr and "throughput img/s" not in res.stderr
    doc = one_document(run("bench", pruned, "--batch", "2", "--warmup", "0", "--repeats", "1", "--json").stdout)
    assert set(doc["models"]) == {"model", "baseline"}


def test_a_failed_gate_keeps_the_result_on_stdout_and_the_error_on_stderr(files):
    path, _, _ = files
    res = run("prune", path, "--keep", "0.5", "--at", "2", "--delta-fill", "bias", "--max-flops", "0", "-o",
              files[1].parent.parent / "gated", "--no-progress")
    assert res.exit_code == 3
    assert "gate --max-flops" in res.stdout and "FAIL" in res.stdout
    assert res.stderr.strip().splitlines()[-1].startswith("error: quality gate failed")


def test_pruned_layers_table_shows_protected_as_a_count_and_kept_beside_tokens(files):
    _, pruned, _ = files
    res = run("analyze", pruned, "--no-flops")
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    header = next(line for line in lines if "after block" in line)
    cells = [c.strip() for c in header.strip("┃ ").split("┃")]
    assert cells == ["after block", "grid", "protected", "tokens (dense)", "kept"]
    after_prune = next(line for line in lines if line.strip("│ ").startswith("2"))  # vim_test pruned after 2
    row = [c.strip() for c in after_prune.strip("│ ").split("│")]
    assert row[2] == "1"  # one class token, a count (its position, 8, is no longer shown)
    assert int(row[4]) < int(row[3])


def test_report_md_states_the_convention_without_internal_references(files):
    _, pruned, _ = files
    md = (pruned.parent / "report.md").read_text()
    assert "DESIGN" not in md and "the Mamba authors' convention" in md


def test_help_has_examples_and_no_type_labels_on_flags():
    for command in ("models", "analyze", "prune", "eval", "finetune", "bench"):
        res = run(command, "--help")
        assert res.exit_code == 0
        assert "Examples:" in res.stdout and f"ssmprune {command}" in res.stdout.split("Examples:")[1]
        assert "<bool>" not in res.stdout and "<str>" not in res.stdout
    prune_help = run("prune", "--help").stdout
    assert "--calib DIR" in prune_help and "--ratio R" in prune_help


@pytest.fixture(scope="module", autouse=True)
def real_pipe(request):
    """`ssmprune models | grep vim_small`, started as a shell runs it before this module's first test when
    test_models_through_a_real_pipe is selected: a fresh interpreter that builds every registered variant, so it runs
    beside the tests above instead of holding them up, and the test (last in this file) reads its result."""
    if "test_models_through_a_real_pipe" not in selected_here(request):
        yield None
        return
    proc = subprocess.Popen(f"{sys.executable} -m ssmprune_cli models | grep 'vim_small '", shell=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield proc
    if proc.poll() is None:  # the test failed before reading it
        proc.communicate(timeout=120)


def test_models_through_a_real_pipe(real_pipe):
    """`ssmprune models | grep vim_small`, as a shell runs it (started by the real_pipe fixture)."""
    stdout, stderr = real_pipe.communicate(timeout=120)
    assert real_pipe.returncode == 0, stderr
    assert stdout.count("\n") == 1 and "25.80M" in stdout
