"""`ssmprune prune` and `ssmprune eval` through the CLI: the embedded demo model, real CIFAR-10 images, --json,
gates (exit 3) and bad input (exit 2)."""

import json

import pytest
import torch

import ssmprune_cli
from ssmprune_cli import schemas
from ssmprune_cli.assets import demo_checkpoint
from ssmprune_cli.data.images import find_images
from ssmprune_cli.io.safetensors_io import save_model
from ssmprune_cli.runtime import predictions
from ssmprune_cli.models import create_model
from ssmprune_cli.pruning.pruned_model import PrunedModel
from _runner import run




@pytest.fixture(scope="module")
def demo_out(cifar_test_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "demo"
    result = run("prune", "--ratio", "0.4", "--calib", cifar_test_dir, "--calib-images", "16", "--val",
                 cifar_test_dir, "--val-limit", "20", "-o", out, "--json", "--no-progress")
    return result, out


def test_prune_demo_json(demo_out):
    result, out = demo_out
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)  # one JSON document, alone on stdout
    assert json.loads((out / "report.json").read_text()) == report
    assert schemas.first_problem(report, schemas.load_schema("report")) is None  # docs/schemas/report.schema.json
    assert report["source"]["family"] == "vim"
    assert report["flops"]["convention"] == "GMACs (fvcore)"
    assert 0.4 <= report["flops"]["reduction"] < 0.45
    assert report["accuracy"]["images"] == 20
    assert "embedded demo model" in result.stderr
    model = ssmprune_cli.load(out / "model.safetensors")
    assert isinstance(model, PrunedModel)
    assert [p.keep for p in model.spec.points] == [p["keep"] for p in report["pruning"]["points"]]


def test_demo_is_the_trained_model():
    loaded = ssmprune_cli.io.load.load_checkpoint(demo_checkpoint())
    assert loaded.family == "vim" and loaded.config["img_size"] == 32 and loaded.config["depth"] == 12


def test_eval_with_baseline_and_gate(demo_out, cifar_test_dir):
    _, out = demo_out
    ok = run("eval", out / "model.safetensors", "--val", cifar_test_dir, "--baseline", demo_checkpoint(),
             "--val-limit", "20", "--json", "--no-progress")
    assert ok.exit_code == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["images"] == 20 and 0 <= doc["agreement"] <= 100
    assert doc["acc_drop"] == pytest.approx(doc["baseline_top1"] - doc["top1"])
    gate = run("eval", out / "model.safetensors", "--val", cifar_test_dir, "--baseline", demo_checkpoint(),
               "--val-limit", "20", "--max-acc-drop", "-100", "--no-progress")
    assert gate.exit_code == 3
    assert "max-acc-drop" in gate.stderr and "Traceback" not in gate.stderr


def test_prune_gate_exit_3_keeps_outputs(cifar_test_dir, tmp_path):
    out = tmp_path / "g"
    result = run("prune", "--ratio", "0.3", "--delta-fill", "bias", "--max-flops", "0.001", "-o", out,
                 "--no-progress")
    assert result.exit_code == 3
    assert "max-flops" in result.stderr and "Traceback" not in result.stderr
    assert (out / "model.safetensors").exists()


@pytest.mark.parametrize("args, code, text", [
    (["--ratio", "1.5", "--delta-fill", "bias"], 2, "(0, 1)"),
    (["--ratio", "0.3"], 2, "--calib"),
    (["--ratio", "0.3", "--keep", "0.5", "--delta-fill", "bias"], 2, "not both"),
    (["--ratio", "0.3", "--conv-fill", "sideways", "--delta-fill", "bias"], 2, "conv_fill"),
])
def test_prune_bad_input(tmp_path, args, code, text):
    result = run("prune", *args, "-o", tmp_path / "x", "--no-progress")
    assert result.exit_code == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("no checkpoint given")  # the note naming the demo model, then one error line
    assert len(lines) == 2 and lines[1].startswith("error:") and text in lines[1]
    assert not (tmp_path / "x").exists()


def test_model_config_file_sets_what_shapes_cannot_tell(tmp_path):
    cfg = tmp_path / "cifar.yaml"
    cfg.write_text("mean: [0.4914, 0.4822, 0.4465]\nstd: [0.247, 0.2435, 0.2616]\n")
    ok = run("analyze", demo_checkpoint(), "--model-config", cfg, "--no-flops", "--json")
    assert ok.exit_code == 0, ok.stderr
    assert json.loads(ok.stdout)["config"]["std"] == [0.247, 0.2435, 0.2616]
    bad = tmp_path / "bad.yaml"
    bad.write_text("colour: blue\n")
    res = run("analyze", demo_checkpoint(), "--model-config", bad, "--no-flops")
    assert res.exit_code == 2 and "colour" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_prune_bench_speed_in_report_and_gate(tmp_path):
    torch.manual_seed(0)  # a small CIFAR-sized Vim: what is tested is the bench and its gate, not the model
    ckpt = save_model(create_model("vim_test", img_size=32, num_classes=10), tmp_path / "dense.safetensors")
    out = tmp_path / "b"
    res = run("prune", ckpt, "--ratio", "0.4", "--delta-fill", "bias", "--bench", "--bench-batch", "4",
              "--bench-repeats", "3", "--min-speedup", "1000", "-o", out, "--json", "--no-progress")
    assert res.exit_code == 3, res.stderr  # no model gets 1000x faster: the gate fails on purpose
    report = json.loads(res.stdout)
    assert schemas.first_problem(report, schemas.load_schema("report")) is None  # with speed and gates
    comp = report["speed"]["comparison"]
    assert comp["ideal_speedup"] == pytest.approx(1 / (1 - report["flops"]["reduction"]))
    assert comp["throughput_speedup"] > 0 and report["speed"]["settings"]["batch"] == 4
    assert report["speed"]["settings"]["repeats"] == 3
    assert [g["gate"] for g in report["gates"]] == ["--min-speedup"] and not report["gates"][0]["passed"]
    assert "min-speedup" in res.stderr
    assert "Speed" in (out / "report.md").read_text()
    no_bench = run("prune", ckpt, "--ratio", "0.4", "--delta-fill", "bias", "--min-speedup", "1.1", "-o",
                   tmp_path / "c", "--no-progress")
    assert no_bench.exit_code == 2 and "--bench" in no_bench.stderr


@pytest.fixture(scope="module")
def small_pruned(cifar_test_dir, tmp_path_factory):
    """A CIFAR-sized vim_test (random weights) pruned with --seed 1, its report measured on 30 --val images."""
    tmp = tmp_path_factory.mktemp("small")
    torch.manual_seed(0)
    ckpt = save_model(create_model("vim_test", img_size=32, num_classes=10), tmp / "dense.safetensors")
    out = tmp / "p"
    pr = run("prune", ckpt, "--ratio", "0.4", "--delta-fill", "bias", "--seed", "1", "--val", cifar_test_dir,
             "--val-limit", "30", "-o", out, "--json", "--no-progress")
    assert pr.exit_code == 0, pr.stderr
    return ckpt, out / "model.safetensors", json.loads(pr.stdout)


def test_every_command_evaluates_the_same_images(small_pruned, cifar_test_dir, tmp_path):
    """--val-limit N means the same N images in prune (whatever its --seed), eval, finetune --val and bench
    --val: the same model gets the same top-1 from each, and so does the dense model."""
    ckpt, model, report = small_pruned
    acc = report["accuracy"]
    ev = run("eval", model, "--val", cifar_test_dir, "--val-limit", "30", "--baseline", ckpt, "--json",
             "--no-progress")
    assert ev.exit_code == 0, ev.stderr
    ft = run("finetune", model, "--train", cifar_test_dir, "--train-images", "8", "--batch-size", "8",
             "--epochs", "1", "--val", cifar_test_dir, "--val-limit", "30", "--seed", "2", "-o", tmp_path / "ft",
             "--json", "--no-progress")
    assert ft.exit_code == 0, ft.stderr
    bn = run("bench", model, "--val", cifar_test_dir, "--val-limit", "30", "--batch", "2", "--warmup", "0",
             "--repeats", "1", "--json")
    assert bn.exit_code == 0, bn.stderr
    ev, ft, bn = json.loads(ev.stdout), json.loads(ft.stdout)["val"], json.loads(bn.stdout)["models"]
    assert acc["images"] == ev["images"] == ft["images"] == bn["model"]["val_images"] == 30
    assert acc["top1"] == ev["top1"] == ft["top1_before"]
    assert acc["baseline_top1"] == ev["baseline_top1"]
    # every command counts correct images exactly (2 of 30 is 6.666..., never a float32 mean's 6.666667014)
    assert bn["model"]["top1"] == acc["top1"] and bn["baseline"]["top1"] == acc["baseline_top1"]
    # the check has teeth: on the subsets seeds 1 and 2 would draw, this model scores differently
    for seed in (1, 2):
        drawn = find_images(cifar_test_dir, limit=30, seed=seed)
        pred = predictions(ssmprune_cli.load(model), drawn, 30, torch.device("cpu"), torch.float32)
        assert 100 * int((pred == torch.tensor(drawn.labels)).sum()) / 30 != acc["top1"]


def test_eval_keeps_limit_as_a_hidden_alias(small_pruned, cifar_test_dir):
    _, model, _ = small_pruned
    new = run("eval", model, "--val", cifar_test_dir, "--val-limit", "20", "--json", "--no-progress")
    old = run("eval", model, "--val", cifar_test_dir, "--limit", "20", "--json", "--no-progress")
    assert new.exit_code == old.exit_code == 0, new.stderr + old.stderr
    assert json.loads(new.stdout) == json.loads(old.stdout) and json.loads(new.stdout)["images"] == 20
    assert "--limit is deprecated" in old.stderr
    help_text = run("eval", "--help").stdout
    assert "--val-limit" in help_text and "--limit " not in help_text
