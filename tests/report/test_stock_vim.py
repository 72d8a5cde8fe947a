"""benchmarks/stock_vim.py runs a Vim's weights through the official bimamba-v2 fast path written out on the stock
kernels; its layout code (channel-major xz, flipped copies, the rearranged x_proj/B/C/Δ, the mean of the two
directions) must reproduce the model. With the kernels emulated by PyTorch definitions it does, in float64."""

import importlib.util
import sys
from pathlib import Path

import torch

from ssmprune_cli.models import create_model

ROOT = Path(__file__).resolve().parents[2]


def _stock_module():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_stock_vim", ROOT / "benchmarks" / "stock_vim.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_stock_path_reproduces_the_model_in_float64():
    stock = _stock_module()
    torch.manual_seed(3)
    model = create_model("vim_test").double().eval()
    x = torch.randn(3, *model.input_size(), dtype=torch.float64)
    with torch.no_grad():
        want = model(x)
        got = stock.StockVim(model, stock.emulated_kernels())(x)
        # a layout slip (here Δ read in the wrong direction) shows far above the agreement level
        broken = stock.emulated_kernels()
        scan = broken["scan"]
        broken["scan"] = lambda u, delta, A, B, C, D, z, bias: scan(u, delta.flip(-1), A, B, C, D, z, bias)
        off = stock.StockVim(model, broken)(x)
    assert got.shape == want.shape == (3, 10)
    assert float((got - want).norm() / want.norm()) < 1e-10
    assert float((off - want).norm() / want.norm()) > 1e-6  # far above the agreement of 1e-10
