"""`ssmprune prune --method / --merge-layers / --score mtr` through the CLI on a small Vim: the written model, its
description and resolved recipe, and bad combinations refused with one line and exit code 2."""

import json

import pytest
import yaml

import ssmprune_cli
from ssmprune_cli.io.safetensors_io import save_model
from ssmprune_cli.models import create_model
from _runner import run




@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("methods") / "vim8.safetensors"
    save_model(create_model("vim_test", depth=8).eval(), path)  # 17 tokens, prune points 1..8
    return path


def test_merge_with_a_famba_strategy(ckpt, tmp_path):
    out = tmp_path / "merge"
    result = run("prune", ckpt, "--ratio", "0.2", "--method", "merge", "--merge-layers", "alternate",
                 "--align", "none", "--delta-fill", "bias", "-o", out, "--json", "--no-progress")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["pruning"]["method"] == "merge" and report["pruning"]["extra"] == {"merge_layers": "alternate"}
    assert [p["site"] for p in report["pruning"]["points"]] == ["2", "4", "6"]
    assert 0.19 <= report["flops"]["reduction"] and report["flops"]["pruned_gmacs"] > 0
    assert json.loads((out / "config.json").read_text())["format_version"] == 2
    resolved = yaml.safe_load((out / "recipe.yaml").read_text())["prune"]
    assert resolved["method"] == "merge" and resolved["merge"]["layers"] == "points"  # reruns as it ran
    assert resolved["at"] == ["2", "4", "6"]
    model = ssmprune_cli.load(out / "model.safetensors")
    assert model.spec.method == "merge" and model.spec.conv_fill == "packed"


def test_fuse_with_the_mtr_score(ckpt, tmp_path):
    result = run("prune", ckpt, "--keep", "0.6", "--at", "3", "--method", "fuse", "--score", "mtr",
                 "--delta-fill", "bias", "-o", tmp_path / "fuse", "--json", "--no-progress")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["pruning"]["method"] == "fuse" and report["pruning"]["score"] == "mtr"
    assert report["pruning"]["options"] == {"at": "best"}


@pytest.mark.parametrize("args,message", [
    (["--method", "tome"], "unknown method 'tome'"),
    (["--merge-layers", "all"], "need --method merge"),
    (["--method", "merge", "--score", "l1"], "reads no --score"),
    (["--method", "merge", "--merge-layers", "all", "--at", "2"], "not both"),
    (["--method", "merge", "--keep", "5", "--at", "2"], "more than one bipartite merge can"),
    (["--score", "attention"], "unknown score 'attention'"),
])
def test_bad_combinations_exit_2(ckpt, tmp_path, args, message):
    base = ["--ratio", "0.2", "--at", "2,4"] if "--keep" not in args and "--at" not in args else []
    result = run("prune", ckpt, *base, *args, "--delta-fill", "bias", "-o", tmp_path / "x", "--no-progress")
    assert result.exit_code == 2, result.output
    err = result.stderr if hasattr(result, "stderr") else result.output
    assert message in " ".join(err.split())
    assert len(err.strip().splitlines()) == 1
