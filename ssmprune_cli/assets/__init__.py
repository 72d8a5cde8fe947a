"""Files shipped inside the package: the embedded demo model."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ssmprune_cli.errors import CheckpointError

DEMO_NAME = "demo_vim_cifar10.safetensors"


def demo_checkpoint() -> Path:
    """A small Vim (12 blocks, width 128, 32 px, patch 4: 65 tokens) trained on CIFAR-10 by
    benchmarks/cifar_study.py; see docs/demo.md."""
    path = Path(str(resources.files("ssmprune_cli") / "assets" / DEMO_NAME))
    if not path.is_file():
        raise CheckpointError(f"the embedded demo model {DEMO_NAME} is missing from this installation; "
                              "pass a checkpoint")
    return path
