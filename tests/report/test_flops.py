"""fvcore FLOPs: the scan traced as one op with its own handle, no op left uncounted or undecided, and counts of
dense and pruned models of every family against the analytic cost model and the published PlainMamba numbers."""

import pytest
import torch
from torch import nn

from ssmprune_cli.models import create_model
from ssmprune_cli.ops import selective_scan, selective_scan_ref
from ssmprune_cli.ops.selective_scan import traced_scan_shapes_only
from ssmprune_cli.pruning.plan import PruningSpec, keep_from_rates, schedule_macs, tokens_per_block
from ssmprune_cli.pruning.pruned_model import PrunedModel
from ssmprune_cli.report.flops import SCAN_OP, _fvcore_analysis, count_flops, scan_flop_jit

FAMILIES = ["vim_test", "plainmamba_test", "groupmamba_test"]
pytestmark = [pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
              pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")]  # tracing is how fvcore works


class _Scan(nn.Module):
    def __init__(self, with_d: bool, with_z: bool):
        super().__init__()
        self.with_d, self.with_z = with_d, with_z

    def forward(self, u, delta, A, B, C, D, z):
        return selective_scan(u, delta, A, B, C, D if self.with_d else None, z if self.with_z else None)


def _scan_inputs(b=2, e=6, l=9, n=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return (r(b, e, l), 0.5 * r(b, e, l), -torch.rand(e, n, generator=g, dtype=dtype) - 0.5, r(b, n, l),
            r(b, n, l), r(e), r(b, e, l))


@pytest.mark.parametrize("with_d,with_z", [(True, True), (True, False), (False, True), (False, False)])
def test_scan_is_one_traced_op_counted_by_its_handle(with_d, with_z):
    args = _scan_inputs()
    b, e, l = args[0].shape
    n = args[2].shape[1]
    analysis = _fvcore_analysis()(_Scan(with_d, with_z), args).set_op_handle(SCAN_OP, scan_flop_jit)
    analysis.unsupported_ops_warnings(False).tracer_warnings("none")
    assert analysis.total() == b * l * e * (9 * n + 2)  # DESIGN 3: with or without D and z
    assert analysis.by_operator() == {"selective_scan": analysis.total()}
    assert not analysis.unsupported_ops()


def test_traced_scan_computes_the_scan():
    """A traced model runs the same scan as the float64 loop (TracedScan must not change results)."""
    args = _scan_inputs()
    traced = torch.jit.trace(_Scan(True, True), args, check_trace=False)
    fresh = _scan_inputs(b=2, e=6, l=9, n=4)
    fresh = tuple(t + 0.1 * torch.randn_like(t) for t in fresh)
    fresh = (fresh[0], fresh[1], -fresh[2].abs() - 0.1) + fresh[3:]
    torch.testing.assert_close(traced(*fresh), selective_scan_ref(*fresh[:5], D=fresh[5], z=fresh[6]))


def test_shapes_only_applies_to_tracing_alone():
    args = _scan_inputs()
    with traced_scan_shapes_only():
        eager = _Scan(True, True)(*args)
        traced = torch.jit.trace(_Scan(True, True), args, check_trace=False)
    torch.testing.assert_close(eager, selective_scan_ref(*args[:5], D=args[5], z=args[6]))
    torch.testing.assert_close(traced(*args), eager)  # the recorded op computes when run later


def _pruned(model, rates=(0.6, 0.5)):
    sites = model.prune_sites()
    points = keep_from_rates(model, [sites[0], sites[1]], list(rates))
    return PrunedModel(model, PruningSpec(points, delta_fill="bias")).eval()


@pytest.mark.parametrize("name", FAMILIES)
def test_dense_and_pruned_counts_agree_with_the_analytic_model(name):
    model = create_model(name).eval()
    dense = count_flops(model)
    assert dense.unsupported == {}
    assert dense.macs == schedule_macs(model, [])  # integers, equal: fvcore and the cost model count alike
    assert set(dense.by_operator) == {"conv", "gather_conv", "linear", "selective_scan"}
    assert sum(dense.by_operator.values()) == dense.macs
    pruned_model = _pruned(model)
    pruned = count_flops(pruned_model, batch=2)  # per image whatever the batch
    assert pruned.unsupported == {}
    analytic = schedule_macs(model, pruned_model.spec.points)
    assert pruned.macs == analytic
    assert pruned.analytic_macs == analytic
    assert pruned.macs < dense.macs
    # per block: tokens follow the schedule and each block's count follows its token count
    assert [b["tokens"] for b in pruned.blocks] == tokens_per_block(model, pruned_model.spec.points)
    for b in pruned.blocks + dense.blocks:
        assert b["macs"] == b["analytic_macs"]
    assert pruned.agreement == 0.0
    assert sum(b["macs"] for b in pruned.blocks) < dense.macs
    assert "aten::sort" in pruned.not_counted and "aten::sort" not in dense.not_counted  # the selection


def test_vim_head_and_patch_embedding_counted_exactly():
    model = create_model("vim_test").eval()
    c = model.cfg
    fc = count_flops(model)
    patches = model.grid[0] * model.grid[1]
    assert fc.by_module["head"] == c.embed_dim * c.num_classes  # the class token alone reaches the head
    assert fc.by_module["patch_embed"] == patches * c.embed_dim * c.in_chans * c.patch_size ** 2


def test_published_plainmamba_numbers_analytic():
    """PlainMamba README: L1/L2/L3 3.0/8.1/14.4 G (MACs + scan, 224 px) within 3%."""
    for name, published in (("plainmamba_l1", 3.0), ("plainmamba_l2", 8.1), ("plainmamba_l3", 14.4)):
        with torch.device("meta"):
            model = create_model(name)
        assert schedule_macs(model, []) / 1e9 == pytest.approx(published, rel=0.03)


def test_published_plainmamba_l1_fvcore():
    torch.manual_seed(0)
    model = create_model("plainmamba_l1").eval()
    fc = count_flops(model)
    assert fc.unsupported == {}
    assert fc.macs == schedule_macs(model, [])  # exactly the cost model, which is within 3 % of 3.0 G
    assert fc.gmacs == pytest.approx(3.0, rel=0.03)


def test_counting_leaves_every_module_in_its_mode():
    """A PrunedModel wrapper is in training mode around an eval-mode model; counting must not switch the model
    to training (BatchNorm statistics, drop path, GroupMamba's two heads) by restoring the wrapper's flag."""
    model = create_model("vim_test").eval()
    pruned = PrunedModel(model, PruningSpec(keep_from_rates(model, model.prune_sites()[:1], [0.5]),
                                            delta_fill="bias"))
    before = {name: m.training for name, m in pruned.named_modules()}
    assert before[""] and not before["model"]
    count_flops(pruned)
    assert {name: m.training for name, m in pruned.named_modules()} == before
