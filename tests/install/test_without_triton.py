"""CPU machines install ssmprune without Triton (it is the `gpu` extra): nothing the CPU runs may import it.

Each test blocks `import triton` (None in sys.modules makes every import of it fail, as on a machine where it is
not installed) and checks what a CPU user runs: `import ssmprune_cli`, every module outside kernels/, every
command on the CPU; and that a CUDA path that needs a kernel fails with one line naming the extra.
"""

import importlib
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import ssmprune_cli
from ssmprune_cli.errors import MissingDependencyError
from ssmprune_cli.ops import _kernels

REPO = Path(__file__).resolve().parents[2]
BLOCK = "import sys; sys.modules['triton'] = None\n"
LOADED = ("def loaded():\n"
          "    return sorted(m for m, v in sys.modules.items() if v is not None\n"
          "                  and (m.split('.')[0] == 'triton' or m.startswith('ssmprune_cli.kernels.')))\n")


def _python(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, "-c", BLOCK + LOADED + code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


def test_every_module_outside_kernels_imports_without_triton(tmp_path):
    names = [m.name for m in pkgutil.walk_packages(ssmprune_cli.__path__, "ssmprune_cli.")
             if not m.name.startswith("ssmprune_cli.kernels.")]
    code = ("import importlib, json\n"
            f"for name in {names!r}: importlib.import_module(name)\n"
            "print(json.dumps(loaded()))")
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
    assert "ssmprune_cli.cli" in names and "ssmprune_cli.ops.selective_scan" in names


@pytest.mark.slow
def test_every_command_runs_on_the_cpu_without_triton(tmp_path, cifar_test_dir):
    """The README's job and the other commands, end to end on the demo model, with triton unimportable."""
    data = str(cifar_test_dir)
    commands = [
        ["prune", "--ratio", "0.4", "--calib", data, "--calib-images", "8", "--val", data, "--val-limit", "10",
         "-o", "out", "--json"],
        ["analyze", "out/model.safetensors", "--no-flops", "--calib", data, "--calib-images", "4", "--json"],
        ["eval", "out/model.safetensors", "--val", data, "--val-limit", "10", "--json"],
        ["bench", "out/model.safetensors", "--repeats", "1", "--warmup", "0", "--batch", "2", "--json"],
        ["finetune", "out/model.safetensors", "--train", data, "--train-images", "8", "--batch-size", "8",
         "-o", "tuned", "--json"],
    ]
    code = ("import json\n"
            "from typer.testing import CliRunner\n"
            "from ssmprune_cli.cli import app\n"
            f"codes = [CliRunner().invoke(app, args).exit_code for args in {commands!r}]\n"
            "print(json.dumps({'codes': codes, 'loaded': loaded()}))")
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc == {"codes": [0] * len(commands), "loaded": []}
    assert (tmp_path / "tuned" / "model.safetensors").is_file()


def test_a_kernel_without_triton_is_one_clear_error(monkeypatch):
    """A CUDA tensor reaching a kernel on a machine without Triton: MissingDependencyError naming the extra."""
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.delitem(sys.modules, "ssmprune_cli.kernels.gather_conv", raising=False)
    with pytest.raises(MissingDependencyError, match=r"pip install 'ssmprune\[gpu\]'") as info:
        _kernels.kernel_module("gather_conv")
    assert info.value.exit_code == 2 and "\n" not in str(info.value)


def test_other_import_errors_are_not_disguised(monkeypatch):
    with pytest.raises(ModuleNotFoundError):
        _kernels.kernel_module("no_such_kernel")


def test_triton_is_an_extra_not_a_dependency():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("triton") for d in project["dependencies"])
    assert any(d.startswith("triton") for d in project["optional-dependencies"]["gpu"])
    assert any(d.startswith("triton") for d in project["optional-dependencies"]["test"])
    importlib.import_module("triton")  # the test extra installed it: the kernel tests need the interpreter
