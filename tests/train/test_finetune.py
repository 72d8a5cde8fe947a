"""Distillation fine-tuning of a pruned model: it learns (loss and teacher KL fall on the training images), keeps
its pruning, and reloads alone."""

import json

import pytest
import torch
import torch.nn.functional as F

import ssmprune_cli
from ssmprune_cli.assets import demo_checkpoint
from ssmprune_cli.data.images import find_images
from ssmprune_cli.data.tensor_data import TensorImages, normalise
from ssmprune_cli.errors import BadInputError
from ssmprune_cli.io.safetensors_io import save_model
from ssmprune_cli.jobs import FinetuneRequest, run_finetune
from ssmprune_cli.models import create_model
from ssmprune_cli.pruning.plan import PrunePoint, PruningSpec
from ssmprune_cli.pruning.pruned_model import PrunedModel
from ssmprune_cli.train.finetune import TrainConfig, loss_fn, lr_at


def _kl(student, teacher, x):
    with torch.no_grad():
        s, t = student(x), teacher(x)
    return float(F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="batchmean", log_target=True))


@pytest.fixture(scope="module")
def pruned_file(tmp_path_factory):
    """The trained demo Vim, pruned hard (65 → 20 → 10 tokens): far enough from its dense self to learn from it."""
    dense = ssmprune_cli.load(demo_checkpoint())
    pm = PrunedModel(dense, PruningSpec([PrunePoint("2", 20), PrunePoint("4", 10)], delta_fill="bias"))
    return save_model(pm, tmp_path_factory.mktemp("ft") / "model.safetensors")


def test_finetune_learns_and_reloads(pruned_file, cifar_test_dir, tmp_path):
    cfg = TrainConfig(epochs=4, batch_size=30, lr=5e-4, warmup_steps=2, distill_alpha=0.5, augment=False,
                      label_smoothing=0.0)
    out = tmp_path / "ft"
    result = run_finetune(FinetuneRequest(model=pruned_file, train=cifar_test_dir, out=out, config=cfg,
                                          train_images=60))
    assert result["summary"]["steps"] == 8 and result["train_images"] == 60
    before, after = ssmprune_cli.load(pruned_file), ssmprune_cli.load(out / "model.safetensors")
    assert isinstance(after, PrunedModel) and after.spec == before.spec
    teacher = ssmprune_cli.load(pruned_file).detach()
    images = TensorImages.from_image_set(find_images(cifar_test_dir, limit=60, seed=0), (32, 32))
    x = normalise(images.images, *before.normalization())
    assert _kl(after, teacher, x) < _kl(before, teacher, x)   # closer to its teacher on what it trained on
    with torch.no_grad():
        ce_before = float(F.cross_entropy(before(x), images.labels))
        ce_after = float(F.cross_entropy(after(x), images.labels))
    assert ce_after < ce_before
    assert json.loads((out / "finetune.json").read_text())["summary"]["steps"] == 8
    assert not list(tmp_path.glob(".ft*"))  # the resume state is removed after a finished run


def test_dense_model_needs_a_teacher(tmp_path, cifar_test_dir):
    path = save_model(create_model("vim_test", img_size=32, num_classes=10), tmp_path / "dense.safetensors")
    with pytest.raises(BadInputError, match="--teacher"):
        run_finetune(FinetuneRequest(model=path, train=cifar_test_dir, out=tmp_path / "o"))


def test_loss_and_schedule_definitions():
    torch.manual_seed(1)
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    cfg = TrainConfig(distill_alpha=0.25, distill_tau=2.0, label_smoothing=0.0)
    ce = F.cross_entropy(s.double(), y)
    ps, pt = F.softmax(s.double() / 2, -1), F.softmax(t.double() / 2, -1)
    kl = (pt * (pt.log() - ps.log())).sum(-1).mean() * 4
    torch.testing.assert_close(loss_fn(s, y, t, cfg).double(), 0.75 * ce + 0.25 * kl, rtol=1e-5, atol=1e-6)
    # two heads (GroupMamba in training): CE on the first, KL on the distillation head
    d = torch.randn(4, 5)
    pd = F.softmax(d.double() / 2, -1)
    kl_d = (pt * (pt.log() - pd.log())).sum(-1).mean() * 4
    torch.testing.assert_close(loss_fn((s, d), y, t, cfg).double(), 0.75 * ce + 0.25 * kl_d, rtol=1e-5,
                               atol=1e-6)
    c = TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=10)
    assert lr_at(0, 110, c) == pytest.approx(0.1) and lr_at(9, 110, c) == pytest.approx(1.0)
    assert lr_at(60, 110, c) == pytest.approx(0.5) and lr_at(110, 110, c) == pytest.approx(0.0)


def test_torchrun_two_processes_one_writer(tmp_path, cifar_test_dir):
    """DDP under torchrun (gloo on the CPU): each rank trains on its shard, rank 0 alone writes and reports."""
    import subprocess
    import sys

    torch.manual_seed(0)
    dense = create_model("vim_test", img_size=32, num_classes=10)
    path = save_model(PrunedModel(dense, PruningSpec([PrunePoint("2", 30)], delta_fill="bias")),
                      tmp_path / "m.safetensors")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "ssmprune_cli", "finetune", str(path), "--train", str(cifar_test_dir), "--train-images", "80",
           "--epochs", "1", "--batch-size", "20", "-o", str(out), "--json", "--no-progress"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)  # exactly one JSON document: rank 1 printed nothing
    assert doc["world_size"] == 2 and doc["rank"] == 0
    assert doc["train_images"] == 80 and doc["summary"]["steps"] == 2  # 40 images a rank, batch 20
    tuned = ssmprune_cli.load(out / "model.safetensors")
    assert isinstance(tuned, PrunedModel)
    assert not torch.equal(tuned.model.head.weight, dense.head.weight)
