"""benchmarks/models.py end to end on the CPU at test sizes: the script imports what the package exports today and
writes a dense/pruned record per case (it once broke silently when a helper moved)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_models_benchmark_runs_on_cpu(tmp_path):
    out = tmp_path / "models.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "models.py"), "--cases", "vim_test", "plainmamba_test",
         "--device", "cpu", "--dtype", "fp32", "--batch", "2", "--repeats", "2", "--warmup", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads(out.read_text())
    assert set(rec) == {"vim_test", "plainmamba_test"}
    for case in rec.values():
        assert case["case"]["points"], "a pruned model has prune points"
        dense, pruned = case["models"]["baseline"], case["models"]["model"]
        assert pruned["flops"]["gmacs"] < dense["flops"]["gmacs"]
        for m in (dense, pruned):
            assert m["flops"]["gmacs"] == m["flops"]["analytic_gmacs"] and not m["flops"]["unsupported_ops"]
            assert m["throughput"]["batch"] == 2 and m["throughput"]["median_ms"] > 0
        cmp = case["comparison"]
        assert abs(cmp["flops_ratio"] - pruned["flops"]["gmacs"] / dense["flops"]["gmacs"]) < 1e-9
