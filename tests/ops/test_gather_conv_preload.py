"""The gather conv's forward with its src rows read ahead (PRELOAD, for launches too small to fill the GPU): equal
to the float64 definition for every map form that has src rows, and chosen only for small grids through a map.
"""

import pytest
import torch

from test_gather_conv import KERNEL_CASES, check_kernel, poisoned  # noqa: F401  (poisoned: NaN output buffers)

from ssmprune_cli.kernels import gather_conv as gk

PRELOADED = [name for name, case in KERNEL_CASES.items() if case[5] is not None and
             case[1][0] * case[1][1] <= 16]


@pytest.fixture
def spy(monkeypatch):
    """Every forward launch's PRELOAD flag."""
    flags = []
    kernel = gk._conv_fwd_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kw):
                flags.append(kw["PRELOAD"])
                return kernel[grid](*args, **kw)
            return launch

    monkeypatch.setattr(gk, "_conv_fwd_kernel", Spy())
    return flags


@pytest.mark.slow
@pytest.mark.parametrize("preload", [True, False], ids=["preload", "per-row"])
@pytest.mark.parametrize("name", PRELOADED)
def test_kernel_with_and_without_preload(name, preload, spy, monkeypatch):
    monkeypatch.setitem(gk.LAUNCH, "fwd", dict(gk.LAUNCH["fwd"], preload_warps_per_sm=10 ** 6 if preload else 0))
    check_kernel(name, torch.float32, silu=name.startswith("causal"), act=None if name.startswith("causal")
                 else "gelu")
    assert spy and all(flag == preload for flag in spy)


def test_preload_only_for_one_wave_through_a_map(monkeypatch):
    monkeypatch.setattr(gk, "_sms", lambda x: 132)
    x = torch.zeros(1)
    src = torch.zeros(1, dtype=torch.int32)
    # GroupMamba-T's pruned stage-3 FFN conv at batch 1: 4 x 22 programs of 4 warps -> preloaded
    assert gk._preload(src, 9, (4, 22, 1), 4, x)
    assert not gk._preload(src, 9, (4, 22, 128), 4, x)      # batch 128: many waves, occupancy matters
    assert not gk._preload(None, 9, (4, 22, 1), 4, x)       # dense: no index loads to hide
    assert not gk._preload(src, 49, (4, 22, 1), 4, x)       # 7x7: 49 taps do not fit the 16-wide row tile
    assert gk._preload(src, 4, (1, 12, 1), 4, x)            # Vim's 1x4 causal conv at batch 1
    assert gk._preload(src, 9, (33, 16, 1), 4, x) and not gk._preload(src, 9, (34, 16, 1), 4, x)  # 16 warps/SM
