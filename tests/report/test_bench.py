"""bench: timing statistics, alternating samples, dense against pruned in one run, gates, and the CLI command."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from ssmprune_cli.cli import app
from ssmprune_cli.report import bench as bench_module
from ssmprune_cli.errors import BadInputError, QualityGateError
from ssmprune_cli.io.safetensors_io import save_model
from ssmprune_cli.models import create_model
from ssmprune_cli.pruning.plan import PruningSpec, keep_from_rates, schedule_macs
from ssmprune_cli.pruning.pruned_model import PrunedModel
from ssmprune_cli.report.bench import (
    BenchSettings,
    Gates,
    Timing,
    bench_models,
    check_inputs_for_gates,
    evaluate_gates,
    time_calls,
    time_interleaved,
)
from ssmprune_cli.report.gates import raise_for_gates

CPU = torch.device("cpu")
pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")


def test_timing_quartiles_match_numpy():
    data = list(np.random.default_rng(3).exponential(0.01, size=17))
    t = Timing(batch=8, seconds=data)
    q1, med, q3 = np.percentile(np.array(data, dtype=np.float64), [25, 50, 75])
    d = t.to_dict()
    assert d["median_ms"] == pytest.approx(med * 1e3)
    assert d["iqr_ms"] == pytest.approx((q3 - q1) * 1e3)
    assert d["images_per_s"] == pytest.approx(8 / med)
    assert Timing(1, [0.5]).quartiles() == (0.5, 0.5, 0.5)


class _Clock:
    """A fake `time.perf_counter` that moves only when a fake call says so: timings exact, never flaky."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def spend(self, seconds):
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr(bench_module, "time", SimpleNamespace(perf_counter=c))
    return c


def test_time_calls_measures_per_call(clock):
    assert time_calls(lambda: clock.spend(0.01), 3, CPU) == pytest.approx(0.01, rel=1e-12)
    lengths = iter([0.01, 0.02, 0.06])
    assert time_calls(lambda: clock.spend(next(lengths)), 3, CPU) == pytest.approx(0.03, rel=1e-12)  # the mean


class _Recorder(nn.Module):
    """Records its name at each call; each call lasts `seconds` on the fake clock."""

    def __init__(self, name, log, seconds, clock):
        super().__init__()
        self.name, self.log, self.seconds, self.clock = name, log, seconds, clock

    def forward(self, x):
        self.log.append(self.name)
        self.clock.spend(self.seconds)
        return x


def test_samples_alternate_and_repeat_to_the_minimum_sample_time(clock):
    log = []
    # powers of two: the sample sizes and times below are exact in binary floating point
    models = {"a": _Recorder("a", log, 1 / 32, clock), "b": _Recorder("b", log, 1 / 8, clock)}
    s = BenchSettings(warmup=1, repeats=4, min_sample_s=1 / 4)
    timings, peak, modes = time_interleaved(models, torch.zeros(2), s, CPU)
    assert set(modes.values()) == {"eager"}
    assert peak == {"a": None, "b": None}
    ca, cb = timings["a"].calls_per_sample, timings["b"].calls_per_sample
    assert (ca, cb) == (8, 2)  # each sample repeats the call until it lasts min_sample_s
    warm = ["a", "a", "b", "b"]  # each model: one warm-up call, one call to size the samples
    n = {"a": ca, "b": cb}
    order = ["a", "b", "b", "a", "a", "b", "b", "a"]  # A B, B A, A B, B A
    assert log == warm + [k for name in order for k in [name] * n[name]]
    assert timings["a"].seconds == [1 / 32] * 4 and timings["b"].seconds == [1 / 8] * 4  # per call


def _pair(name="vim_test"):
    torch.manual_seed(0)
    model = create_model(name).eval()
    dense = create_model(name).eval()
    dense.load_state_dict(model.state_dict())
    points = keep_from_rates(model, model.prune_sites()[:2], [0.5, 0.5])
    return dense, PrunedModel(model, PruningSpec(points, delta_fill="bias")).eval()


def test_dense_and_pruned_side_by_side():
    dense, pruned = _pair()
    s = BenchSettings(batch=2, warmup=1, repeats=2, min_sample_s=0.0, stages=True)
    r = bench_models({"model": pruned, "baseline": dense}, s, CPU)
    m, b, c = r["models"]["model"], r["models"]["baseline"], r["comparison"]
    analytic = schedule_macs(dense, pruned.spec.points) / schedule_macs(dense, [])
    assert c["flops_ratio"] == pytest.approx(analytic, rel=1e-12)  # equal counts; only the division rounds
    assert c["ideal_speedup"] == pytest.approx(1 / c["flops_ratio"])
    assert c["throughput_speedup"] == pytest.approx(m["throughput"]["images_per_s"] / b["throughput"]["images_per_s"])
    assert c["efficiency"] == pytest.approx(c["throughput_speedup"] / c["ideal_speedup"])
    assert m["latency"]["batch"] == 1 and m["throughput"]["batch"] == 2
    assert m["tokens_per_block"] == [17, 9, 5, 5] and b["tokens_per_block"] == [17] * 4
    assert len(m["stages"]) == 5 and all(st["ms"] >= 0 for st in m["stages"])
    assert m["stages_timer"] == "time between the block's forward hooks"  # the CPU has no device ranges
    assert m["ops"]["categories"] and r["environment"]["device"] == "cpu"
    json.dumps(r)  # JSON-ready


def test_own_kernels_are_named_in_the_profile():
    """The scan, gather conv and fused norm run inside named profiler ranges (a Triton launch has no aten op of
    its own), and those names land in their categories."""
    from ssmprune_cli.report.bench import _category, op_breakdown

    dense, pruned = _pair()
    x = torch.randn(2, 3, 16, 16)
    for model in (dense, pruned):
        ops = op_breakdown(model, x, BenchSettings(batch=2), CPU, calls=1, top=1000)
        names = {r["op"]: r["count"] for r in ops["top_ops"]}
        assert names.get("ssmprune::token_scan") == 8  # 4 blocks, 2 directions
        assert names.get("ssmprune::gather_conv") == 8
    assert _category("ssmprune::token_scan") == "scan"
    assert _category("ssmprune::gather_conv") == "conv"
    assert _category("ssmprune::add_norm") == "norm"
    from ssmprune_cli.ops.layout_maps import RANGE
    assert _category(RANGE + " (kernel)") == "pruning / index"  # the prune points' index-map kernels


def test_kernels_no_op_claims_are_counted_by_their_range():
    """On the GPU the profiler ties a kernel's time to the op that launched it; kernels it ties to none (the Triton
    scan on an H100) are counted by the device-side range they ran in, else by their own name, and only the part
    of a kernel name's time that no op claims."""
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import FunctionEvent

    from ssmprune_cli.report.bench import _category, unclaimed_kernels

    ids = iter(range(100))

    def ev(name, t0, t1, device=DeviceType.CUDA, note=False):
        return FunctionEvent(next(ids), name, 0, t0, t1, device_type=device, is_user_annotation=note)

    mm = ev("aten::mm", 0, 5, DeviceType.CPU)
    mm.append_kernel("gemm_kernel", 0, 30.0)                       # claimed: not listed again
    events = [mm, ev("gemm_kernel", 10, 40),
              ev("ssmprune::token_scan", 100, 200, note=True),     # a device-side range: names, is not a kernel
              ev("_token_scan_kernel", 110, 150), ev("_token_scan_kernel", 150, 190),
              ev("_pack_bc_kernel", 300, 307),                     # outside any range: its own name
              ev("copy_kernel", 400, 410), ev("copy_kernel", 420, 430)]
    half = ev("aten::copy_", 395, 396, DeviceType.CPU)
    half.append_kernel("copy_kernel", 0, 10.0)                     # one of the two copies is claimed
    got = unclaimed_kernels(events + [half])
    assert set(got) == {"ssmprune::token_scan", "_pack_bc_kernel", "copy_kernel"}
    assert got["ssmprune::token_scan"] == (pytest.approx(80.0), 2)
    assert got["_pack_bc_kernel"] == (pytest.approx(7.0), 1)
    assert got["copy_kernel"][0] == pytest.approx(10.0)
    assert _category("ssmprune::token_scan (kernel)") == "scan"
    assert unclaimed_kernels([mm, ev("gemm_kernel", 10, 40)]) == {}


def test_block_device_time_sums_the_kernels_inside_each_blocks_gpu_range():
    """--stages on the GPU: a block's time is the kernels that start inside its device-side range (however long
    the range stays open waiting for the host), other ranges only name kernels, the rest is outside."""
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import FunctionEvent

    from ssmprune_cli.report.bench import BLOCK_RANGE, kernel_time_by_range

    ids = iter(range(100))

    def ev(name, t0, t1, device=DeviceType.CUDA, note=False):
        return FunctionEvent(next(ids), name, 0, t0, t1, device_type=device, is_user_annotation=note)

    b1, b2 = BLOCK_RANGE + "layers.0", BLOCK_RANGE + "layers.1"
    events = [ev("stem_conv", 0, 9),
              ev(b1, 10, 500, note=True),                      # open long: the host was slow, the GPU idle
              ev("ssmprune::token_scan", 20, 60, note=True),   # an op range nested in the block: not a block
              ev("_token_scan_kernel", 20, 60), ev("gemm", 60, 70), ev("gemm", 400, 403),
              ev(b2, 500, 600, note=True), ev("gemm", 500, 507),
              ev(b1, 700, 720, note=True), ev("gemm", 705, 710),  # the same block in a second forward
              ev("head_gemm", 800, 802),
              ev(b1, 0, 1000, DeviceType.CPU, note=True),      # the CPU-side range: ignored
              ev("aten::mm", 60, 61, DeviceType.CPU)]
    per, other = kernel_time_by_range(events, BLOCK_RANGE)
    assert per == {b1: pytest.approx(40 + 10 + 3 + 5), b2: pytest.approx(7.0)}
    assert other == pytest.approx(9 + 2)
    assert kernel_time_by_range([ev("gemm", 0, 5)], BLOCK_RANGE) == ({}, pytest.approx(5.0))


def test_gates_judge_and_raise_with_exit_code_3():
    result = {"models": {"model": {"flops": {"gmacs": 2.5}}},
              "comparison": {"throughput_speedup": 1.2, "acc_drop": 0.4}}
    rows = evaluate_gates(result, Gates(max_flops=3.0, min_speedup=1.3, max_acc_drop=0.5))
    assert [r["passed"] for r in rows] == [True, False, True]
    with pytest.raises(QualityGateError) as err:
        raise_for_gates(rows)
    assert err.value.exit_code == 3
    msg = str(err.value)
    assert "--min-speedup" in msg and "1.2" in msg and "1.3" in msg and "--max-flops" not in msg
    raise_for_gates(evaluate_gates(result, Gates(max_flops=2.5)))  # at the limit passes
    with pytest.raises(BadInputError):
        check_inputs_for_gates(Gates(min_speedup=1.1), has_baseline=False, has_val=False)
    with pytest.raises(BadInputError):
        check_inputs_for_gates(Gates(max_acc_drop=1.0), has_baseline=True, has_val=False)


@pytest.fixture(scope="module")
def pruned_file(tmp_path_factory):
    _, pruned = _pair()
    return save_model(pruned, tmp_path_factory.mktemp("bench") / "pruned.safetensors")


def test_cli_bench_json_and_gate_exit_codes(pruned_file):
    runner = CliRunner()
    args = ["bench", str(pruned_file), "--device", "cpu", "--batch", "2", "--warmup", "1", "--repeats", "1",
            "--json"]
    res = runner.invoke(app, args + ["--max-flops", "1e-9"])
    assert res.exit_code == 3, res.output
    doc = json.loads(res.stdout)
    assert doc["gates"][0]["gate"] == "--max-flops" and not doc["gates"][0]["passed"]
    assert doc["comparison"]["flops_ratio"] < 1.0
    assert "dense, pruning removed" in doc["models"]["baseline"]["source"]
    res = runner.invoke(app, args + ["--max-flops", "1.0"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["gates"][0]["passed"]
    res = runner.invoke(app, args + ["--max-acc-drop", "1.0"])
    assert res.exit_code == 2 and "--val" in res.stderr


def test_cli_analyze_counts_flops(pruned_file):
    res = CliRunner().invoke(app, ["analyze", str(pruned_file), "--json"])
    assert res.exit_code == 0, res.output
    f = json.loads(res.stdout)["flops"]
    assert f["model"]["unsupported"] == {} and f["dense"]["unsupported"] == {}
    assert f["reduction"] == pytest.approx(1 - f["model"]["macs"] / f["dense"]["macs"])
    assert f["model"]["agreement"] == 0.0 and f["model"]["macs"] == f["model"]["analytic_macs"]
