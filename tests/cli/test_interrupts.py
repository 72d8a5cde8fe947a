"""Ctrl-C: a real SIGINT delivered to `ssmprune` in the middle of calibration, fine-tuning and bench ends the run
with exit code 130 and one line on stderr saying what was (not) saved, and leaves nothing half-written: no new
output folder, no temporary files, an earlier output untouched; fine-tuning keeps its last complete resume state
and says so. The tiny registered vim_test variant keeps each run to seconds."""

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ssmprune_cli import cli
from ssmprune_cli.errors import Interrupted
from ssmprune_cli.io import atomic
from ssmprune_cli.models import create_model
from ssmprune_cli.train import finetune as train_mod
from _runner import selected_here

# One worker under pytest-xdist runs the whole module: its fixture starts the selected tests' subprocesses up
# front, from the tests pytest collected.
pytestmark = pytest.mark.xdist_group("interrupts")

REPO = Path(__file__).resolve().parents[2]

# Wraps one function of the package so that its `at`-th call sends SIGINT to the process, then runs the CLI.
# Python's own Ctrl-C handler first: a process started in the background by a shell inherits SIGINT ignored.
WRAPPER = """
import os, signal, sys, importlib
signal.signal(signal.SIGINT, signal.default_int_handler)
module = importlib.import_module({module!r})
original = getattr(module, {name!r})
calls = [0]
def interrupting(*args, **kwargs):
    calls[0] += 1
    if calls[0] == {at}:
        os.kill(os.getpid(), signal.SIGINT)
    return original(*args, **kwargs)
setattr(module, {name!r}, interrupting)
from ssmprune_cli.cli import main
sys.argv = ["ssmprune"] + {args!r}
main()
"""


def _start(tmp_path, module, name, at, args) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    code = WRAPPER.format(module=module, name=name, at=at, args=[str(a) for a in args])
    return subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _run(tmp_path, module, name, at, args):
    return _wait(_start(tmp_path, module, name, at, args))


def _leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))


def _interrupted(proc):
    assert proc.returncode == 130, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: interrupted") and "Traceback" not in proc.stderr
    return last


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(official-layout vim_test .pth, a pruned copy of it) in a folder of their own."""
    folder = tmp_path_factory.mktemp("tiny")
    dense = folder / "vim.pth"
    torch.save({"model": create_model("vim_test").state_dict(), "args": argparse.Namespace()}, dense)
    res = CliRunner().invoke(cli.app, ["prune", str(dense), "--keep", "0.5", "--at", "2", "--delta-fill", "bias",
                                       "-o", str(folder / "pruned"), "--no-progress"])
    assert res.exit_code == 0, res.output
    return dense, folder / "pruned" / "model.safetensors"


def _finetune_args(tiny, cifar_test_dir, *epochs):
    return ["finetune", tiny[1], "--train", cifar_test_dir, "--train-images", "8", "--batch-size", "4",
            *epochs, "-o", "tuned", "--no-progress"]


@pytest.fixture(scope="module")
def started(request, tiny, cifar_test_dir, tmp_path_factory):
    """The interrupted runs of the tests below, started together, each in an empty folder of its own: test name ->
    (folder, process). Each is a fresh interpreter that spends most of its seconds starting up; side by side they
    share the cores instead of taking turns. Only the runs of the tests selected start."""
    selected = selected_here(request)
    runs = {}

    def start(test, module, name, at, args, prepare=None):
        if test not in selected:
            return
        folder = tmp_path_factory.mktemp("sigint")
        if prepare is not None:
            prepare(folder)
        runs[test] = folder, _start(folder, module, name, at, args)

    def earlier_output(folder):
        (folder / "out").mkdir()
        (folder / "out" / "model.safetensors").write_text("an earlier output")

    start("test_sigint_during_calibration", "ssmprune_cli.jobs.prune", "model_batches", 1,
          ["prune", tiny[0], "--keep", "0.5", "--at", "2", "--calib", cifar_test_dir, "--calib-images", "8",
           "--batch-size", "4", "-o", "out", "--force", "--no-progress"], earlier_output)
    start("test_sigint_during_bench", "ssmprune_cli.report.bench", "time_calls", 3,
          ["bench", tiny[1], "--batch", "2", "--warmup", "1", "--repeats", "2", "--json"])
    # 2 steps an epoch: the 4th loss is computed in epoch 2, after the state of step 2 was saved
    start("test_sigint_during_finetuning_keeps_the_last_epoch_and_resumes", "ssmprune_cli.train.finetune",
          "loss_fn", 4, _finetune_args(tiny, cifar_test_dir, "--epochs", "3"))
    start("test_sigint_before_the_first_epoch_says_nothing_was_written", "ssmprune_cli.train.finetune", "loss_fn",
          1, _finetune_args(tiny, cifar_test_dir))
    yield runs
    for _, proc in runs.values():
        if proc.poll() is None:  # a test that failed before waiting for its run
            proc.kill()
            proc.communicate()


def _finished(started, request):
    """(folder, completed process) of this test's run from `started`."""
    folder, proc = started[request.node.originalname]
    return folder, _wait(proc)


def test_sigint_during_calibration(started, request):
    tmp_path, proc = _finished(started, request)
    assert "no output was written" in _interrupted(proc)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["model.safetensors"]
    assert (tmp_path / "out" / "model.safetensors").read_text() == "an earlier output"
    assert _leftovers(tmp_path) == []


def test_sigint_during_bench(started, request):
    tmp_path, proc = _finished(started, request)
    _interrupted(proc)
    assert proc.stdout == "" and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_sigint_during_finetuning_keeps_the_last_epoch_and_resumes(started, request, tiny, cifar_test_dir):
    tmp_path, proc = _finished(started, request)
    args = _finetune_args(tiny, cifar_test_dir, "--epochs", "3")
    last = _interrupted(proc)
    state = tmp_path / ".tuned.train_state.pt"
    assert "tuned was not written" in last and "after step 2 of 6" in last and str(state.name) in last
    assert torch.load(state, weights_only=True)["step"] == 2  # complete, loadable
    assert not (tmp_path / "tuned").exists() and _leftovers(tmp_path) == [state.name]
    resumed = _run(tmp_path, "ssmprune_cli.train.finetune", "loss_fn", 0, args)  # no interrupt this time
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr and "at step 2" in resumed.stderr
    assert (tmp_path / "tuned" / "model.safetensors").is_file() and _leftovers(tmp_path) == []


def test_sigint_before_the_first_epoch_says_nothing_was_written(started, request):
    tmp_path, proc = _finished(started, request)
    assert _interrupted(proc) == "error: interrupted before the first epoch ended; nothing was written"
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_state_save_keeps_the_previous_state(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    train_mod.save_state(path, {"step": 1})
    real_save = torch.save

    def half_then_interrupt(obj, f):
        real_save(obj, f)
        Path(f).write_bytes(Path(f).read_bytes()[:10])  # half-written
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_mod.save_state(path, {"step": 2})
    monkeypatch.undo()
    assert train_mod.saved_step(path) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]


def test_sigint_during_the_final_swap_is_held_until_the_output_is_complete(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("earlier output")
    real_swap = atomic._swap

    def interrupted_swap(tmp, target):
        os.kill(os.getpid(), signal.SIGINT)  # arrives mid-swap: held, not raised here
        real_swap(tmp, target)

    monkeypatch.setattr(atomic, "_swap", interrupted_swap)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted, match="after the output was complete"):
        with atomic.atomic_dir(out) as tmp:
            (tmp / "new.txt").write_text("new output")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in out.iterdir()] == ["new.txt"]
    assert signal.getsignal(signal.SIGINT) is before  # Ctrl-C does what it did before


def test_an_error_while_writing_a_folder_leaves_the_earlier_one(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("earlier output")
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_dir(out) as tmp:
            (tmp / "half.txt").write_text("half of the new")
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in out.iterdir()] == ["old.txt"]
