"""Distillation fine-tuning of a pruned model: it learns (loss and teacher KL fall on the training images), keeps
its pruning, and reloads alone."""

import json
import re
from pathlib import Path

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
from ssmprune_cli.train.finetune import TrainConfig, loss_fn, lr_at, train

pytestmark = pytest.mark.slow  # training steps, torchrun processes


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
    # 4 steps of 15 images (the CPU time goes into the demo model's forwards and backwards, batch by batch)
    cfg = TrainConfig(epochs=2, batch_size=15, lr=5e-4, warmup_steps=2, distill_alpha=0.5, augment=False,
                      label_smoothing=0.0)
    out = tmp_path / "ft"
    result = run_finetune(FinetuneRequest(model=pruned_file, train=cifar_test_dir, out=out, config=cfg,
                                          train_images=30))
    assert result["summary"]["steps"] == 4 and result["train_images"] == 30
    before, after = ssmprune_cli.load(pruned_file), ssmprune_cli.load(out / "model.safetensors")
    assert isinstance(after, PrunedModel) and after.spec == before.spec
    teacher = ssmprune_cli.load(pruned_file).detach()
    images = TensorImages.from_image_set(find_images(cifar_test_dir, limit=30, seed=0), (32, 32))
    x = normalise(images.images, *before.normalization())
    assert _kl(after, teacher, x) < _kl(before, teacher, x)   # closer to its teacher on what it trained on
    with torch.no_grad():
        ce_before = float(F.cross_entropy(before(x), images.labels))
        ce_after = float(F.cross_entropy(after(x), images.labels))
    assert ce_after < ce_before
    assert json.loads((out / "finetune.json").read_text())["summary"]["steps"] == 4
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
    """DDP under torchrun (gloo on the CPU), through the CLI: rank 0 alone writes and reports."""
    torch.manual_seed(0)
    dense = create_model("vim_test", img_size=32, num_classes=10)
    path = save_model(PrunedModel(dense, PruningSpec([PrunePoint("2", 30)], delta_fill="bias")),
                      tmp_path / "m.safetensors")
    out = tmp_path / "out"
    cmd = ["-m", "ssmprune_cli", "finetune", str(path), "--train", str(cifar_test_dir), "--train-images", "81",
           "--epochs", "1", "--batch-size", "20", "-o", str(out), "--json", "--no-progress"]
    proc = _torchrun(cmd, 29533)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)  # exactly one JSON document: rank 1 printed nothing
    assert doc["world_size"] == 2 and doc["rank"] == 0
    assert doc["train_images"] == 81 and doc["summary"]["steps"] == 2  # 40 images a rank, batch 20
    tuned = ssmprune_cli.load(out / "model.safetensors")
    assert isinstance(tuned, PrunedModel)
    assert not torch.equal(tuned.model.head.weight, dense.head.weight)


def test_ddp_ranks_agree_and_equal_one_process_with_the_global_batch(tmp_path):
    """Two ranks of batch 4 end with identical weights, equal to one process trained with batch 8 on the same
    images: every step sees the same 8 images (one shuffle shared by the ranks, each rank its interleaved half)
    and DDP averages the two halves' gradients."""
    import _ddp_worker as w

    proc = _torchrun([str(Path(w.__file__)), str(tmp_path)], 29534)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["steps"] == r1["steps"] == 4
    student, teacher, data = w.build()
    start = {k: v.clone() for k, v in student.model.state_dict().items()}
    summary = train(student, data, w.config(2 * w.PER_RANK_BATCH), w.MEAN, w.STD, teacher=teacher)
    assert summary["steps"] == 4
    single = student.model.state_dict()
    moved = 0.0
    for k, v in single.items():
        assert torch.equal(r0["state"][k], r1["state"][k]), k  # DDP keeps the ranks bit-identical
        torch.testing.assert_close(r0["state"][k], v, rtol=1e-4, atol=1e-5, msg=k)
        moved = max(moved, float((v - start[k]).abs().max()))
    assert moved > 1e-3  # the weights did move: the comparison is not between two untouched models


def _torchrun(args, port):
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent)] + sys.path)}
    return subprocess.run(cmd + args, capture_output=True, text=True, timeout=240, env=env)


def _run_in_thread(fn, seconds):
    """fn() in a daemon thread: a hang fails the test after `seconds` instead of stalling the suite."""
    import threading

    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s (a hang)"
    if "error" in box:
        raise box["error"]
    return box["value"]


class _Tiny(torch.nn.Module):
    """A linear classifier over 8x8 images: enough to count steps and batches."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 8 * 8, 10)
        self.batches = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        return self.fc(x.flatten(1))


def _tiny_data(n):
    g = torch.Generator().manual_seed(0)
    return TensorImages(torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8),
                        torch.randint(0, 10, (n,), generator=g))


@pytest.mark.parametrize("n, batch, epochs, steps, sizes", [
    (5, 64, 2, 2, [5, 5]),          # fewer images than one batch: one batch of all of them per epoch
    (10, 4, 1, 2, [4, 4]),          # full batches only; the 2 left over change with every epoch's shuffle
    (10, 4, 0.5, 1, [4]),
])
def test_training_steps_and_batches(n, batch, epochs, steps, sizes):
    model = _Tiny()
    cfg = TrainConfig(epochs=epochs, batch_size=batch, warmup_steps=1, augment=False)
    summary = _run_in_thread(lambda: train(model, _tiny_data(n), cfg, (0.5,) * 3, (0.25,) * 3), 60)
    assert summary["steps"] == steps and model.batches == sizes
    assert summary["batch_size"] == sizes[0]


def test_zero_epochs_are_refused():
    with pytest.raises(BadInputError, match="--epochs must be more than 0"):
        _run_in_thread(lambda: train(_Tiny(), _tiny_data(5), TrainConfig(epochs=0), (0.5,) * 3, (0.25,) * 3), 60)


def test_cli_small_training_set_and_zero_epochs(pruned_tiny, cifar_test_dir, tmp_path):
    """--train-images 6 with the default --batch-size 64 finishes (one batch of 6 a step, said on stderr);
    --epochs 0 is one error line and exit 2, before any image is read."""
    ok = _run_in_thread(lambda: _cli("finetune", pruned_tiny, "--train", cifar_test_dir, "--train-images", "6",
                                     "-o", tmp_path / "a", "--json", "--no-progress"), 120)
    assert ok.exit_code == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["summary"]["steps"] == 1 and doc["summary"]["batch_size"] == 6
    assert "6 training images" in ok.stderr and "--batch-size 64" in ok.stderr
    for epochs in ("0", "-1"):
        bad = _run_in_thread(lambda: _cli("finetune", pruned_tiny, "--train", cifar_test_dir, "--train-images",
                                          "6", "--epochs", epochs, "--batch-size", "4", "-o", tmp_path / "b",
                                          "--no-progress"), 60)
        lines = bad.stderr.strip().splitlines()
        assert bad.exit_code == 2 and len(lines) == 1 and "--epochs must be more than 0" in lines[0], bad.stderr
    assert not (tmp_path / "b").exists()


def test_progress_bar_has_a_total_and_the_running_loss(pruned_tiny, cifar_test_dir, tmp_path, monkeypatch):
    import contextlib

    from ssmprune_cli.jobs import finetune as job

    calls = []

    @contextlib.contextmanager
    def recorder(description, total):
        calls.append(("open", description, total))
        yield lambda n=1, **kw: calls.append(("update", description, n, kw))

    monkeypatch.setattr(job, "progress_bar", recorder)
    cfg = TrainConfig(epochs=3, batch_size=2, warmup_steps=1, augment=False)
    run_finetune(FinetuneRequest(model=pruned_tiny, train=cifar_test_dir, out=tmp_path / "o", config=cfg,
                                 train_images=2))
    assert ("open", "fine-tuning", 3) in calls  # the total is known before the first step: 3 epochs x 1 step
    updates = [c[3] for c in calls if c[0] == "update" and c[1] == "fine-tuning"]
    assert [u["completed"] for u in updates] == [1, 2, 3] and all(u["total"] == 3 for u in updates)
    assert all(re.fullmatch(r"loss \d+\.\d{4}", u["info"]) for u in updates)


@pytest.fixture(scope="module")
def pruned_tiny(tmp_path_factory):
    torch.manual_seed(0)
    dense = create_model("vim_test", img_size=32, num_classes=10)
    return save_model(PrunedModel(dense, PruningSpec([PrunePoint("2", 30)], delta_fill="bias")),
                      tmp_path_factory.mktemp("tiny") / "m.safetensors")


def _cli(*args):
    from typer.testing import CliRunner

    from ssmprune_cli.cli import app

    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()
    return runner.invoke(app, [str(a) for a in args])
