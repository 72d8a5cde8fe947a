"""report.json / report.md: fvcore counts beside the analytic model, per-block GMACs, speed and accuracy sections,
and the environment record."""

from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ssmprune_cli.models import create_model
from ssmprune_cli.pruning.plan import PruningSpec, keep_from_rates, schedule_macs
from ssmprune_cli.pruning.pruned_model import PrunedModel
from ssmprune_cli.report.bench import BenchSettings, bench_models
from ssmprune_cli.report.env import environment
from ssmprune_cli.report.prune_report import build_prune_report, render_prune_markdown

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = create_model("plainmamba_test").eval()
    spec = PruningSpec(keep_from_rates(model, ["1", "2"], [0.5, 0.5]), delta_fill="bias")
    loaded = SimpleNamespace(path=Path("x.pth"), family="plainmamba", variant="plainmamba_test")
    return loaded, model, spec


def test_report_counts_with_fvcore_beside_the_analytic_model(setup):
    loaded, model, spec = setup
    r = build_prune_report(loaded, model, spec, {"prune": {"ratio": None}})
    f = r["flops"]
    assert f["convention"] == "GMACs (fvcore)"
    assert f["analytic"]["pruned_gmacs"] * 1e9 == pytest.approx(schedule_macs(model, spec.points))
    assert f["pruned_gmacs"] == f["analytic"]["pruned_gmacs"] and f["agreement_with_analytic"] == 0.0
    assert f["dense_gmacs"] == f["analytic"]["dense_gmacs"]
    assert f["reduction"] == pytest.approx(1 - f["pruned_gmacs"] / f["dense_gmacs"])
    assert f["unsupported_ops"] == {"dense": {}, "pruned": {}}
    assert f["not_counted"]["aten::layer_norm"]["why"] == "normalisation"
    assert f["not_counted"]["aten::sort"]["calls_dense"] == 0 and f["not_counted"]["aten::sort"]["calls_pruned"] > 0
    blocks = r["tokens_per_block"]
    assert sum(b["pruned_gmacs"] for b in blocks) < sum(b["dense_gmacs"] for b in blocks)
    assert blocks[0]["pruned_gmacs"] == pytest.approx(blocks[0]["dense_gmacs"])  # before the first prune point
    # the temporary pruned model used for counting left no hooks behind
    assert all(not m._forward_pre_hooks for m in model.modules())
    md = render_prune_markdown(r)
    assert "## FLOPs" in md and "Ops fvcore could not count: none." in md and "`sort`" in md


def test_report_speed_and_accuracy_sections(setup):
    loaded, model, spec = setup
    dense = create_model("plainmamba_test").eval()
    dense.load_state_dict(model.state_dict())
    pruned = PrunedModel(model, spec)
    try:
        speed = bench_models({"model": pruned, "baseline": dense},
                             BenchSettings(batch=2, warmup=1, repeats=2, min_sample_s=0.0), torch.device("cpu"))
        r = build_prune_report(loaded, model, spec, {"prune": {}}, pruned_model=pruned, speed=speed,
                               accuracy={"images": 20, "top1": 70.0, "baseline_top1": 72.5})
    finally:
        pruned.detach()
    assert r["accuracy"]["acc_drop"] == pytest.approx(2.5)
    assert r["speed"]["comparison"]["throughput_speedup"] == speed["comparison"]["throughput_speedup"]
    md = render_prune_markdown(r)
    assert "## Speed" in md and "## Accuracy" in md and "+2.50 points" in md


def test_environment_record():
    env = environment(torch.device("cpu"), dtype="bf16", compiled=True)
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["autocast"] and env["compile"]
    assert env["triton"] == metadata.version("triton") and env["fvcore"] == metadata.version("fvcore")
    assert env["scan_backend"].startswith("reference") and "gpu" not in env
