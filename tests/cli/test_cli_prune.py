"""`ssmprune prune` and `ssmprune eval` through the CLI: the embedded demo model, real CIFAR-10 images, --json,
gates (exit 3) and bad input (exit 2)."""

import json

import pytest
from typer.testing import CliRunner

import ssmprune_cli
from ssmprune_cli import cli
from ssmprune_cli.assets import demo_checkpoint
from ssmprune_cli.pruning.pruned_model import PrunedModel


def run(*args):
    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()
    return runner.invoke(cli.app, [str(a) for a in args])


@pytest.fixture(scope="module")
def demo_out(cifar_test_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "demo"
    result = run("prune", "--ratio", "0.4", "--calib", cifar_test_dir, "--calib-images", "32", "--val",
                 cifar_test_dir, "--val-limit", "40", "-o", out, "--json", "--no-progress")
    return result, out


def test_prune_demo_json(demo_out):
    result, out = demo_out
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)  # one JSON document, alone on stdout
    assert report["source"]["family"] == "vim"
    assert report["flops"]["convention"] == "GMACs (fvcore)"
    assert 0.4 <= report["flops"]["reduction"] < 0.45
    assert report["accuracy"]["images"] == 40
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
             "--limit", "40", "--json", "--no-progress")
    assert ok.exit_code == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["images"] == 40 and 0 <= doc["agreement"] <= 100
    assert doc["acc_drop"] == pytest.approx(doc["baseline_top1"] - doc["top1"])
    gate = run("eval", out / "model.safetensors", "--val", cifar_test_dir, "--baseline", demo_checkpoint(),
               "--limit", "40", "--max-acc-drop", "-100", "--no-progress")
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


def test_prune_bench_speed_in_report_and_gate(tmp_path):
    out = tmp_path / "b"
    res = run("prune", "--ratio", "0.4", "--delta-fill", "bias", "--bench", "--bench-batch", "4",
              "--min-speedup", "1000", "-o", out, "--json", "--no-progress")
    assert res.exit_code == 3, res.stderr  # no model gets 1000x faster: the gate fails on purpose
    report = json.loads(res.stdout)
    comp = report["speed"]["comparison"]
    assert comp["ideal_speedup"] == pytest.approx(1 / (1 - report["flops"]["reduction"]))
    assert comp["throughput_speedup"] > 0 and report["speed"]["settings"]["batch"] == 4
    assert [g["gate"] for g in report["gates"]] == ["--min-speedup"] and not report["gates"][0]["passed"]
    assert "min-speedup" in res.stderr
    assert "Speed" in (out / "report.md").read_text()
    no_bench = run("prune", "--ratio", "0.4", "--delta-fill", "bias", "--min-speedup", "1.1", "-o",
                   tmp_path / "c", "--no-progress")
    assert no_bench.exit_code == 2 and "--bench" in no_bench.stderr
