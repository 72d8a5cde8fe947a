"""One fine-tuning run, the same under torchrun (every rank saves its final weights) and in one process: the
DDP test compares them. Run as `torchrun --nproc_per_node 2 _ddp_worker.py OUT`."""

import sys
from pathlib import Path

import torch

from ssmprune_cli.data.tensor_data import TensorImages
from ssmprune_cli.models import create_model
from ssmprune_cli.pruning.plan import PrunePoint, PruningSpec
from ssmprune_cli.pruning.pruned_model import PrunedModel
from ssmprune_cli.train.finetune import TrainConfig, train

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
IMAGES, PER_RANK_BATCH = 16, 4


def build():
    """A pruned vim_test, its dense teacher and 16 seeded 16 px images with labels."""
    torch.manual_seed(0)
    dense = create_model("vim_test")
    teacher = create_model("vim_test").eval()
    teacher.load_state_dict(dense.state_dict())
    student = PrunedModel(dense, PruningSpec([PrunePoint("2", 9)], delta_fill="bias"))
    g = torch.Generator().manual_seed(1)
    data = TensorImages(torch.randint(0, 256, (IMAGES, 3, 16, 16), generator=g, dtype=torch.uint8),
                        torch.randint(0, 10, (IMAGES,), generator=g))
    return student, teacher, data


def config(batch_size: int) -> TrainConfig:
    # no augmentation (its draws are per rank); two epochs of two steps; a learning rate that moves the weights
    return TrainConfig(epochs=2, batch_size=batch_size, lr=2e-3, warmup_steps=1, augment=False, seed=3)


if __name__ == "__main__":
    import os

    torch.set_num_threads(1)
    student, teacher, data = build()
    summary = train(student, data, config(PER_RANK_BATCH), MEAN, STD, teacher=teacher)
    rank = int(os.environ["RANK"])
    torch.save({"state": student.model.state_dict(), "steps": summary["steps"]},
               Path(sys.argv[1]) / f"rank{rank}.pt")
