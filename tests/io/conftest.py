"""Checkpoints written in each family's official release layout, from the tiny registered test variants."""

import argparse

import pytest
import torch

from ssmprune_cli.models import create_model

TEST_VARIANTS = {"vim": "vim_test", "plainmamba": "plainmamba_test", "groupmamba": "groupmamba_test"}


def _randomize(model: torch.nn.Module) -> torch.nn.Module:
    # Fresh random values everywhere (BatchNorm statistics included), so equal outputs mean equal weights.
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if name.endswith("running_var") else 0.1 * torch.randn_like(t))
    return model.eval()


def official_layout(family: str, sd: dict) -> object:
    """What the official release files hold (see ../shared/reference/architectures.md)."""
    if family == "vim":  # hustvl/Vim main.py: training state with EMA copy and the argparse namespace
        ema = {k: v + 1.0 for k, v in sd.items()}
        return {"model": sd, "model_ema": ema, "epoch": 3, "args": argparse.Namespace(model="vim_test", lr=1e-3)}
    if family == "plainmamba":  # mmcls: {'meta', 'state_dict'} with backbone. / head.fc. prefixes
        keys = {(("head.fc." + k[5:]) if k.startswith("head.") else "backbone." + k): v for k, v in sd.items()}
        return {"meta": {"epoch": 3}, "state_dict": keys}
    return dict(sd)  # GroupMamba: a bare EMA state dict


@pytest.fixture
def random_model():
    """random_model(name) → the registered variant with fresh random weights, in eval mode."""
    return lambda name: _randomize(create_model(name))


@pytest.fixture
def make_official(tmp_path):
    """make_official(family) → (path of an official-layout .pth, the dense model whose weights it holds)."""

    def make(family: str):
        model = _randomize(create_model(TEST_VARIANTS[family]))
        path = tmp_path / f"{family}_official.pth"
        torch.save(official_layout(family, model.state_dict()), path)
        return path, model

    return make
