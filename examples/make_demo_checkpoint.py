"""Write a tiny Vim checkpoint in the official release layout, to try `ssmprune` without downloading anything.

    python examples/make_demo_checkpoint.py out/vim_demo.pth
    ssmprune analyze out/vim_demo.pth

The file mimics hustvl/Vim's training checkpoints: {'model': ..., 'model_ema': ..., 'args': argparse.Namespace},
so it exercises the same loading path (weights-only unpickle with the Namespace allow-listed) as a real release.
The weights are random: the model is the registered `vim_test` variant (16x16 input, 17 tokens, 4 blocks).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ssmprune_cli.models import create_model


def make_demo(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = create_model("vim_test")
    sd = model.state_dict()
    # An EMA copy differs slightly from the raw weights, as in a real training run.
    ema = {k: v + 1e-3 * torch.randn_like(v) if v.is_floating_point() else v.clone() for k, v in sd.items()}
    args = argparse.Namespace(model="vim_test", input_size=16, batch_size=128, epochs=300, lr=5e-4,
                              model_ema=True, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": sd, "model_ema": ema, "epoch": 299, "args": args}, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="out/vim_demo.pth", type=Path, help="where to write the .pth")
    parser.add_argument("--seed", type=int, default=0)
    ns = parser.parse_args()
    print(make_demo(ns.out, ns.seed))


if __name__ == "__main__":
    main()
