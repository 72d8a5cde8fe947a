"""Every example in examples/ runs here, on the embedded demo model and a few real CIFAR-10 images: the Python
API script, the official-layout checkpoint writer, the custom recipe through the CLI, and the GitHub Actions
workflow, whose shell steps run as written with `ssmprune` on PATH (only the install steps are left out)."""

import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import ssmprune_cli
from ssmprune_cli import schemas
from ssmprune_cli.assets import demo_checkpoint
from ssmprune_cli.io import load_checkpoint
from ssmprune_cli.pruning.pruned_model import PrunedModel

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod



def test_every_example_is_covered_here():
    files = sorted(str(p.relative_to(EXAMPLES)) for p in EXAMPLES.rglob("*") if p.is_file())
    assert files == ["README.md", "ci/compress.yml", "make_demo_checkpoint.py", "python_api.py",
                     "recipes/demo_late.yaml"]
    readme = (EXAMPLES / "README.md").read_text()
    for f in files[1:]:
        assert f in readme, f"examples/README.md does not describe {f}"


# ------------------------------------------------------------------------------------------------ Python
def test_make_demo_checkpoint_writes_the_official_layout(tmp_path):
    path = _module("make_demo_checkpoint").make_demo(tmp_path / "vim_demo.pth")
    loaded = load_checkpoint(path)
    assert (loaded.family, loaded.variant, loaded.weights) == ("vim", "vim_test", "model")
    assert load_checkpoint(path, ema=True).weights == "model_ema"


def test_python_api_end_to_end_on_the_demo_model(cifar_test_dir, tmp_path, capsys):
    result = _module("python_api").run(None, tmp_path / "api", ratio=0.4, calib=cifar_test_dir, calib_images=8,
                                       val=cifar_test_dir, val_limit=20)
    assert result["same_logits"] and 0.4 <= result["reduction"] < 0.45
    assert 0 <= result["pruned_top1"] <= 100 and 0 <= result["dense_top1"] <= 100
    reloaded = ssmprune_cli.load(result["path"])
    assert isinstance(reloaded, PrunedModel) and [(p.site, p.keep) for p in reloaded.spec.points] == \
        result["points"]
    assert reloaded.spec.delta_fill == "calib" and all(m.delta_hat is not None for m in reloaded.mixers())
    out = capsys.readouterr().out
    assert "loaded demo_vim_cifar10.safetensors" in out and "same logits as in memory: True" in out


def test_python_api_takes_an_official_pth(tmp_path):
    pth = _module("make_demo_checkpoint").make_demo(tmp_path / "vim_demo.pth")
    result = _module("python_api").run(pth, tmp_path / "api", ratio=0.3)
    assert result["same_logits"] and result["reduction"] >= 0.3
    assert ssmprune_cli.load(result["path"]).spec.delta_fill == "bias"  # no --calib: no data needed


# ------------------------------------------------------------------------------------------------ recipe
def test_custom_recipe_through_the_cli(ssmprune, cifar_test_dir, tmp_path):
    recipe = EXAMPLES / "recipes" / "demo_late.yaml"
    out = tmp_path / "late"
    res = ssmprune("prune", "--recipe", recipe, "--calib", cifar_test_dir, "--calib-images", "8", "-o", out,
                  "--json", "--no-progress")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert [s["site"] for s in report["schedule"]] == ["6", "8", "10"]
    keeps = [s["keep"] for s in report["schedule"]]
    assert keeps == sorted(keeps, reverse=True)  # split late: fewer tokens kept at the later points
    assert 0.25 <= report["flops"]["reduction"] < 0.3 and report["calibration"]["images"] == 8
    resolved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert resolved["prune"]["split"] == "late" and resolved["prune"]["keep"] == keeps
    assert resolved["calib"]["images"] == 8  # the flag overrode the recipe's 128


# ------------------------------------------------------------------------------------------------ CI workflow
WORKFLOW = EXAMPLES / "ci" / "compress.yml"


def _workflow():
    wf = yaml.safe_load(WORKFLOW.read_text())
    return wf, wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as true


def test_workflow_is_a_gated_pipeline_that_always_uploads_the_report():
    wf, on = _workflow()
    assert "push" in on and "workflow_dispatch" in on
    job = wf["jobs"]["compress"]
    steps = job["steps"]
    install = next(s for s in steps if s.get("name", "").startswith("Install"))
    assert "pip install torch==2.13.0" in install["run"] and "pip install ssmprune" in install["run"]
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["if"] == "always()" and upload["with"]["path"] == "${{ env.OUT }}"
    runs = " ".join(s.get("run", "") for s in steps)
    for flag in ("--max-flops", "--max-acc-drop", "--min-speedup", "--val-limit"):
        assert flag in runs, flag


def _shell_steps():
    steps = _workflow()[0]["jobs"]["compress"]["steps"]
    return [s for s in steps if "run" in s and "pip install" not in s["run"]]  # every shell step but the install


def _run_step(step, env):
    return subprocess.run(["bash", "-e", "-c", step["run"]], env=env, capture_output=True, text=True,
                          cwd=env["WORKDIR"], timeout=900)


@pytest.mark.slow
def test_workflow_steps_run_on_a_small_model(cifar_test_dir, tmp_path):
    """The workflow's own shell steps, in order, with the job's env where the test's tiny sizes replace it (a small
    CIFAR-sized Vim checkpoint as CKPT): all pass; then with a FLOPs limit no model meets, the prune step exits 3
    with the annotation and still leaves the report for the upload step."""
    import torch

    from ssmprune_cli.io.safetensors_io import save_model
    from ssmprune_cli.models import create_model

    torch.manual_seed(0)
    ckpt = save_model(create_model("vim_test", img_size=32, num_classes=10), tmp_path / "dense.safetensors")
    wf, _ = _workflow()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "ssmprune"  # the console script of this checkout, whatever is installed elsewhere
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m ssmprune_cli "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, **{k: str(v) for k, v in wf["jobs"]["compress"]["env"].items()}}
    env.update(CKPT=str(ckpt), CALIB=str(cifar_test_dir), VAL=str(cifar_test_dir), VAL_LIMIT="20",
               CALIB_IMAGES="8", MAX_GMACS="1", MAX_ACC_DROP="100", MIN_SPEEDUP="0.01", BENCH_BATCH="2",
               BENCH_WARMUP="1", BENCH_REPEATS="2", GITHUB_STEP_SUMMARY=str(tmp_path / "summary.md"),
               PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", WORKDIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    steps = _shell_steps()
    assert [s["name"] for s in steps] == ["Prune, gated on FLOPs and accuracy", "Speed gate",
                                          "Report in the run's summary"]
    for step in steps:
        res = _run_step(step, env)
        assert res.returncode == 0, (step["name"], res.stderr[-2000:])
    out = tmp_path / env["OUT"]
    report = json.loads((out / "report.json").read_text())
    assert schemas.first_problem(report, schemas.load_schema("report")) is None
    assert [g["gate"] for g in report["gates"]] == ["--max-flops", "--max-acc-drop"]
    assert all(g["passed"] for g in report["gates"]) and report["accuracy"]["images"] == 20
    bench = json.loads((out / "bench.json").read_text())
    assert bench["gates"][0]["gate"] == "--min-speedup" and bench["gates"][0]["passed"]
    assert "# ssmprune report" in (tmp_path / "summary.md").read_text()

    failing = _run_step(steps[0], {**env, "MAX_GMACS": "0.001"})
    assert failing.returncode == 3, failing.stderr[-2000:]
    assert "::error::a quality gate failed" in failing.stdout
    assert "error: quality gate failed: --max-flops" in failing.stderr
    assert (out / "report.json").exists() and (out / "model.safetensors").exists()  # for the upload step
