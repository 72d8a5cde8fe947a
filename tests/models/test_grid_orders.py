"""The cached scan orders of GroupMamba and VMamba (models/layers/grid_orders.py)."""

import pytest
import torch

from ssmprune_cli.models.layers.grid_orders import grid_order, grid_order_definition


@pytest.mark.parametrize("H,W", [(1, 1), (3, 5), (14, 14)])
def test_orders_are_the_official_cross_scans(H, W):
    """row: raster; col: the raster index of each cell visited column by column; *_rev: the same backwards."""
    raster = [r * W + c for r in range(H) for c in range(W)]
    columns = [r * W + c for c in range(W) for r in range(H)]
    want = {"row": raster, "col": columns, "row_rev": raster[::-1], "col_rev": columns[::-1]}
    for kind, seq in want.items():
        got = grid_order(kind, H, W)
        assert got.dtype == torch.int32 and got.tolist() == seq
        assert torch.equal(grid_order_definition(kind, H, W), got.long())


def test_made_once_per_grid_and_usable_outside_inference_mode():
    with torch.inference_mode():
        first = grid_order("col_rev", 6, 7, "cpu")
    assert grid_order("col_rev", 6, 7, torch.device("cpu")) is first      # the same tensor: no work per call
    assert not first.is_inference()                                         # a training graph may save it
    assert grid_order("col_rev", 7, 6) is not first
    with pytest.raises(ValueError, match="unknown scan order"):
        grid_order("diagonal", 2, 2)
