"""A pruned layout's index maps (ops/layout_maps.py): the PyTorch forms against definitions written here one image
and one step at a time, and the Triton kernels (interpreter on CPU) against the PyTorch forms, on fresh random
keep sets, orders and grids, with blocks small enough that every carry between blocks is exercised.
"""

import math

import pytest
import torch

from ssmprune_cli.models.layers.token_layout import TokenLayout
from ssmprune_cli.ops.layout_maps import nearest_kept, nearest_kept_ref, order_maps, order_maps_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _keep(b, L, K, gen):
    return torch.stack([torch.randperm(L, generator=gen)[:K].sort().values for _ in range(b)])


def _rank(keep, L):
    return TokenLayout(keep, L).rank()


def _order_definition(keep, L, order, reverse):
    """Per image: walk the order; a step is kept when the position it visits is kept."""
    out = []
    for row in keep.tolist():
        rows = {p: i for i, p in enumerate(row)}
        visit = order.tolist() if order is not None else [L - 1 - t if reverse else t for t in range(L)]
        steps, src, pos, gap, hold = [], [], [], [], [-1] * L
        last_kept, last_row = -1, -1
        for t, p in enumerate(visit):
            if p in rows:
                steps.append(t), src.append(rows[p]), pos.append(p), gap.append(t - last_kept - 1)
                last_kept, last_row = t, rows[p]
            hold[p] = last_row
        out.append((steps, src, pos, gap, hold))
    return [torch.tensor([o[i] for o in out]) for i in range(5)]


@pytest.mark.parametrize("kind", ["order", "forward", "backward"])
def test_order_maps_reference_matches_definition(kind):
    gen = torch.Generator().manual_seed(len(kind))
    b, L, K = 3, 23, 9
    keep = _keep(b, L, K, gen)
    order = torch.randperm(L, generator=gen) if kind == "order" else None
    got = order_maps_ref(_rank(keep, L), K, order, kind == "backward", hold=True)
    steps, src, pos, gap, hold = _order_definition(keep, L, order, kind == "backward")
    assert got.steps.dtype == got.src.dtype == got.pos.dtype == got.hold.dtype == torch.int32
    assert got.gap.dtype == torch.float32 and got.steps.shape == (b, K) and got.hold.shape == (b, L)
    for mine, want in zip(got, (steps, src, pos, gap, hold)):
        assert torch.equal(mine.long(), want.long())


def test_raster_holds_are_the_1d_hold_fill():
    """'forward': the last kept position at or before each one; 'backward': the first at or after it."""
    gen = torch.Generator().manual_seed(5)
    keep = _keep(2, 17, 6, gen)
    rank = _rank(keep, 17)
    fwd = order_maps_ref(rank, 6, hold=True).hold
    bwd = order_maps_ref(rank, 6, reverse=True, hold=True).hold
    for i, row in enumerate(keep.tolist()):
        for p in range(17):
            before = [j for j, q in enumerate(row) if q <= p]
            after = [j for j, q in enumerate(row) if q >= p]
            assert fwd[i, p] == (before[-1] if before else -1)
            assert bwd[i, p] == (after[0] if after else -1)


@pytest.fixture
def small_blocks(monkeypatch):
    from ssmprune_cli.kernels import layout_maps as km

    monkeypatch.setitem(km.LAUNCH, "order", {"BLOCK": 16, "num_warps": 1})
    monkeypatch.setitem(km.LAUNCH, "nearest", {"BL": 8, "BK": 8, "num_warps": 1})


@pytest.mark.parametrize("kind", ["order", "forward", "backward"])
@pytest.mark.parametrize("L,K", [(37, 11), (37, 37), (16, 1), (50, 49)])
def test_order_maps_kernel_matches_reference(kind, L, K, small_blocks):
    """L = 37 over three blocks of 16 steps (the kept count and the last kept step cross blocks), keep-all, one
    kept token, and a block boundary right after a pruned step."""
    gen = torch.Generator().manual_seed(L * 100 + K)
    b = 3
    keep = _keep(b, L, K, gen)
    order = torch.randperm(L, generator=gen) if kind == "order" else None
    rank = _rank(keep, L)
    want = order_maps_ref(rank, K, order, kind == "backward", hold=True)
    got = order_maps(rank.to(DEVICE), K, None if order is None else order.to(DEVICE), kind == "backward",
                     hold=True, backend="triton")
    for name, mine, ref in zip(want._fields, got, want):
        assert mine.dtype == ref.dtype and mine.shape == ref.shape, name
        assert torch.equal(mine.cpu(), ref), name


@pytest.mark.parametrize("kind", ["order", "backward"])
def test_order_maps_kernel_at_its_own_block_width(kind):
    """With the shipped launch shape a short order runs as one block of the next power of two (37 steps: 64)."""
    gen = torch.Generator().manual_seed(len(kind) + 1)
    keep = _keep(2, 37, 20, gen)
    order = torch.randperm(37, generator=gen) if kind == "order" else None
    rank = _rank(keep, 37)
    want = order_maps_ref(rank, 20, order, kind == "backward", hold=True)
    got = order_maps(rank.to(DEVICE), 20, None if order is None else order.to(DEVICE), kind == "backward",
                     hold=True, backend="triton")
    for mine, ref in zip(got, want):
        assert torch.equal(mine.cpu(), ref)


def _nearest_definition(keep, H, W):
    out = torch.empty(keep.shape[0], H * W, dtype=torch.long)
    for i, row in enumerate(keep.tolist()):
        for p in range(H * W):
            r, c = divmod(p, W)
            dist = [math.hypot(r - q // W, c - q % W) for q in row]
            out[i, p] = min(range(len(row)), key=lambda j: (dist[j], row[j]))  # ties: lowest raster index
    return out


@pytest.mark.parametrize("H,W,K", [(5, 7, 6), (6, 6, 2), (9, 4, 30), (1, 11, 3)])
def test_nearest_kept_reference_matches_definition(H, W, K):
    gen = torch.Generator().manual_seed(H * W + K)
    keep = _keep(3, H * W, K, gen)
    got = nearest_kept_ref(keep, (H, W))
    assert got.dtype == torch.int32 and got.shape == (3, H * W)
    assert torch.equal(got.long(), _nearest_definition(keep, H, W))


@pytest.mark.parametrize("H,W,K", [(5, 7, 6), (6, 6, 2), (9, 4, 30), (7, 7, 49)])
def test_nearest_kept_kernel_matches_reference(H, W, K, small_blocks):
    """Several blocks of positions and of kept tokens (8 each here); integer distances on a grid tie often, and
    the reference breaks ties by the definition's rule (test above)."""
    gen = torch.Generator().manual_seed(H * W * K)
    keep = _keep(3, H * W, K, gen)
    want = nearest_kept_ref(keep, (H, W))
    got = nearest_kept(keep.to(DEVICE), (H, W), backend="triton")
    assert got.dtype == torch.int32 and torch.equal(got.cpu(), want)


def test_layout_uses_the_maps():
    """TokenLayout's fill maps and scan steps are these ops' results (long copies where torch indexes with them)."""
    gen = torch.Generator().manual_seed(3)
    keep = _keep(2, 20, 7, gen)
    layout = TokenLayout(keep, 20, grid=(4, 5))
    rank = layout.rank()
    assert torch.equal(layout.fill_index("forward"), order_maps_ref(rank, 7, hold=True).hold.long())
    assert torch.equal(layout.fill_index("backward"), order_maps_ref(rank, 7, reverse=True, hold=True).hold.long())
    assert torch.equal(layout.fill_index("grid"), nearest_kept_ref(keep, (4, 5)).long())
    assert torch.equal(layout.source_map("zero"), rank.to(torch.int32))
    order = torch.randperm(20, generator=gen)
    steps, src = layout.scan_steps(order, key="test")
    maps = order_maps_ref(rank, 7, order)
    assert torch.equal(steps, maps.steps.long()) and torch.equal(src, maps.src.long())


@pytest.mark.parametrize("with_parent", [False, True])
@pytest.mark.parametrize("L,K0,K,block", [(9, 7, 3, None), (197, 157, 125, None), (784, 549, 384, 64)])
def test_kept_maps(with_parent, L, K0, K, block, monkeypatch):
    """A prune point's new layout: keep = parent[idx], its int32 copy, and the rank of every position (-1 where
    pruned), against a definition written one image at a time; the kernel with blocks that split both loops."""
    from ssmprune_cli.kernels import layout_maps as kernels
    from ssmprune_cli.ops.layout_maps import kept_maps, kept_maps_ref

    gen = torch.Generator().manual_seed(L + K)
    b = 3
    parent = _keep(b, L, K0, gen) if with_parent else None
    rows = K0 if with_parent else L
    idx = torch.stack([torch.randperm(rows, generator=gen)[:K].sort().values for _ in range(b)])
    want_keep = torch.stack([(parent[i] if with_parent else torch.arange(L))[idx[i]] for i in range(b)])
    want_rank = torch.full((b, L), -1, dtype=torch.long)
    for i in range(b):
        for j, p in enumerate(want_keep[i].tolist()):
            want_rank[i, p] = j
    if block:
        monkeypatch.setitem(kernels.LAUNCH, "kept", dict(kernels.LAUNCH["kept"], BLOCK=block))
    for got in (kept_maps_ref(parent, idx, L),
                kept_maps(None if parent is None else parent.to(DEVICE), idx.to(DEVICE), L, backend="triton")):
        keep, keep32, rank = (t.cpu() for t in got)
        assert keep.dtype == torch.int64 and keep32.dtype == torch.int32 and rank.dtype == torch.int64
        assert torch.equal(keep, want_keep) and torch.equal(keep32, want_keep.int()) and torch.equal(rank, want_rank)


def test_select_hands_the_new_layout_its_maps():
    """TokenLayout.select: the same layout as one built from the kept positions, with rank and the int32 keep
    already made (no launch when the first block asks for them)."""
    gen = torch.Generator().manual_seed(0)
    full = TokenLayout.full(2, 16, grid=(4, 4))
    idx = _keep(2, 16, 10, gen)
    first = full.select(idx)
    second = first.select(_keep(2, 10, 6, gen))
    for lay in (first, second):
        assert {"rank", "keep32"} <= set(lay._cache)
        plain = TokenLayout(lay.keep, 16, grid=(4, 4))
        assert torch.equal(lay.rank(), plain.rank()) and torch.equal(lay.keep_index(), plain.keep_index())
    assert torch.equal(first.keep, idx)


def test_a_full_layout_makes_its_positions_only_when_read():
    full = TokenLayout.full(3, 12, grid=(3, 4))
    assert full._keep is None and (full.batch, full.num_kept) == (3, 12)
    full.select(torch.tensor([[0, 5, 11]] * 3))
    assert full._keep is None                                   # selecting from it read nothing
    assert torch.equal(full.keep, torch.arange(12).expand(3, 12))


@pytest.mark.parametrize("L,K", [(12, 5), (196, 137)])
def test_orders_prepared_together_equal_each_made_alone(L, K):
    """prepare_orders: the maps of several orders from one call (one launch on the GPU: the kernel's order axis)
    equal those made one at a time, position orders (with their 1-D hold fill) included; made maps are kept."""
    from ssmprune_cli.ops.layout_maps import order_maps_many

    gen = torch.Generator().manual_seed(L)
    keep = _keep(2, L, K, gen)
    perm = [torch.randperm(L, generator=gen) for _ in range(3)]
    specs = [(None, False, None), (perm[0], False, "a"), (None, True, None), (perm[1], False, "b"), (perm[2], False, "c")]
    together, alone = TokenLayout(keep, L), TokenLayout(keep, L)
    together.prepare_orders(specs)
    cached = dict(together._cache)
    for order, reverse, key in specs:
        a = together.order_maps(order, reverse, key)
        b = alone.order_maps(order, reverse, key)
        for x, y in zip(a, b):
            assert y is None or torch.equal(x.cpu(), y.cpu())  # explicit orders alone skip the hold fill
    assert together._cache.keys() == cached.keys()   # nothing made again
    rank = TokenLayout(keep, L).rank().to(DEVICE)
    got = order_maps_many(rank, K, [p.to(DEVICE) for p in perm], hold=True, backend="triton")
    for p, maps in zip(perm, got):
        for x, y in zip(maps, order_maps_ref(rank.cpu(), K, p, False, True)):
            assert torch.equal(x.cpu(), y)
