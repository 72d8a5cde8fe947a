"""Same command, same seed, same bytes: two `ssmprune prune` runs in separate processes (different hash seeds,
so set and dict order may differ) write a byte-identical model.safetensors and config.json on the CPU."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open

from ssmprune_cli.models import create_model

REPO = Path(__file__).resolve().parents[2]


def _start_prune(tmp_path, dense, calib, out, hash_seed):
    env = dict(os.environ, PYTHONHASHSEED=str(hash_seed),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "ssmprune_cli", "prune", str(dense), "--ratio", "0.3",
                             "--calib", str(calib), "--calib-images", "12", "--batch-size", "4", "--seed", "3",
                             "--score", "random", "-o", str(out), "--no-progress"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finished(proc, out):
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-2000:]
    return out


def test_the_same_prune_twice_writes_the_same_bytes(tmp_path, cifar_test_dir):
    dense = tmp_path / "vim.pth"
    torch.save({"model": create_model("vim_test").state_dict(), "args": argparse.Namespace()}, dense)
    # the two processes run side by side (each spends most of its time starting up and importing)
    procs = [_start_prune(tmp_path, dense, cifar_test_dir, tmp_path / out, hash_seed=seed) for out, seed in
             (("a", 1), ("b", 2))]
    try:
        first, second = (_finished(proc, tmp_path / out) for proc, out in zip(procs, ("a", "b")))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    with safe_open(str(first / "model.safetensors"), framework="pt") as f:
        assert any(k.endswith("delta_hat") for k in f.keys())  # calibrated from the seeded image subset
    for name in ("model.safetensors", "config.json", "recipe.yaml"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
