"""benchmarks/train_reference.py and benchmarks/results.py in their CPU smoke modes on real CIFAR-10 images: training
resumed across runs gives the same weights as one run, the results run fills every stage of its cells with the
commands that made them, and the paired statistics match hand-computed values."""

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _script(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cifar_root(cifar_test_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar") / "cifar10"
    root.mkdir()
    (root / "train").symlink_to(cifar_test_dir)  # a smoke test: the same small folder for both splits
    (root / "test").symlink_to(cifar_test_dir)
    return root


def test_reference_training_resumes_to_the_same_weights(cifar_root, tmp_path):
    train_reference = _script("train_reference")
    common = ["--data", str(cifar_root), "--models", "vim", "--small", "--device", "cpu", "--epochs", "2",
              "--batch-size", "16", "--train-images", "16", "--test-images", "16"]
    split = tmp_path / "split"
    assert train_reference.main(common + ["--out", str(split), "--max-minutes", "1e-9"]) == 10  # one epoch, stop
    assert [p.name for p in sorted((split / "vim").glob("state.part*"))] == ["state.part00"]
    assert train_reference.main(common + ["--out", str(split), "--max-minutes", "1e-9"]) == 0
    whole = tmp_path / "whole"
    assert train_reference.main(common + ["--out", str(whole)]) == 0
    a = json.loads((split / "vim" / "reference.json").read_text())
    b = json.loads((whole / "vim" / "reference.json").read_text())
    assert [(r["from_epoch"], r["to_epoch"]) for r in a["runs"]] == [(0, 1), (1, 2)]
    assert a["checkpoint"]["sha256"] == b["checkpoint"]["sha256"]
    ckpt = split / "vim" / "model.safetensors"
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == a["checkpoint"]["sha256"]
    assert not list((split / "vim").glob("state.part*"))
    assert len((split / "vim" / "log.jsonl").read_text().splitlines()) == 2


def test_results_run_and_render(cifar_root, tmp_path):
    from ssmprune_cli.io.safetensors_io import save_model
    from ssmprune_cli.models import create_model

    results = _script("results")
    ref = tmp_path / "ref" / "model.safetensors"
    save_model(create_model("vim_test", img_size=32, patch_size=8, stride=8, depth=3).eval(), ref)
    summary = tmp_path / "vim.json"
    args = ["run", "--family", "vim", "--reference", str(ref), "--data", str(cifar_root), "--work",
            str(tmp_path / "work"), "--summary", str(summary), "--rows", "ours", "--ratios", "0.3",
            "--epochs", "1", "--small", "--device", "cpu"]
    assert results.main(args) == 0
    s = json.loads(summary.read_text())
    assert len(s["dense"]["tf"]["correct"]) == 16 and "ft1" in s["dense"]
    assert s["dense"]["ft1"]["command"].startswith("ssmprune finetune") and "--teacher" in s["dense"]["ft1"]["command"]
    cell = s["cells"]["ours@0.3"]
    assert abs(cell["prune"]["reduction"] - 0.3) < 0.01  # equal FLOPs within 1 %
    assert cell["prune"]["command"].startswith("ssmprune prune") and "--ratio 0.3" in cell["prune"]["command"]
    assert cell["bench"]["speedup"] > 0 and cell["bench"]["command"].startswith("ssmprune bench")
    for stage in ("tf", "ft1"):
        bits = cell[stage]["correct"]
        assert cell[stage]["top1"] == pytest.approx(100 * bits.count("1") / len(bits))
    assert results.main(args) == 0  # resumed: nothing left to do
    # a peer cell beside it (hand-made: one more image right than ours) renders with its paired difference
    peer = json.loads(json.dumps(cell))
    peer["row"] = "evit"
    flipped = peer["tf"]["correct"].index("0")
    peer["tf"]["correct"] = peer["tf"]["correct"][:flipped] + "1" + peer["tf"]["correct"][flipped + 1:]
    peer["tf"]["top1"] = 100 * peer["tf"]["correct"].count("1") / 16
    s["cells"]["evit@0.3"] = peer
    summary.write_text(json.dumps(s))
    doc, plot = tmp_path / "results.md", tmp_path / "results.png"
    assert results.main(["render", str(summary), "--doc", str(doc), "--plot", str(plot)]) == 0
    text = doc.read_text()
    assert "The numbers await the GPU run" in text  # other rows and families are still empty
    section = text.split("### 30 % fewer FLOPs")[1].split("###")[0]
    ours_row = next(line for line in section.splitlines() if line.startswith("| ours"))
    assert f"**{cell['tf']['top1']:.2f}**" in ours_row
    assert f"{cell['prune']['reduction'] * 100:.1f} %" in ours_row
    evit_row = next(line for line in section.splitlines() if line.startswith("| EViT: top-k + one fused token, packed"))
    assert f"{peer['tf']['top1']:.2f} (+6.25 [" in evit_row and "p=1)" in evit_row  # 1 of 16 images: +6.25 points
    assert plot.stat().st_size > 1000


def test_paired_statistics_by_hand():
    results = _script("results")
    a = torch.tensor([True] * 10 + [False] * 10)
    b = torch.tensor([True] * 15 + [False] * 5)  # 5 images gained, none lost
    d = results.paired_difference(a, b)
    assert d["diff"] == pytest.approx(25.0)
    assert 0.0 <= d["lo"] <= 25.0 <= d["hi"]
    assert d["p"] == pytest.approx(2 * 0.5 ** 5)  # exact McNemar: both tails of Binomial(5, 1/2) at 0
    swapped = torch.tensor([False, True] * 3 + [True] * 4)
    assert results.mcnemar_p(torch.tensor([True, False] * 3 + [True] * 4), swapped) == pytest.approx(1.0)
    assert results.unbits(results.bits(a)).equal(a)
