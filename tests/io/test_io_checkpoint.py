"""Reading official checkpoints: wrappers, prefixes, the pickle allow-list, damaged files, family detection."""

import argparse

import pytest
import torch

from ssmprune_cli.errors import BadInputError, CheckpointError, UnsafeCheckpointError
from ssmprune_cli.io.checkpoint import read_pickle, unwrap
from ssmprune_cli.io.load import load_checkpoint
from ssmprune_cli.models import create_model, list_families

# The tiny registered variant of each family (as in conftest.py).
TEST_VARIANTS = {"vim": "vim_test", "plainmamba": "plainmamba_test", "groupmamba": "groupmamba_test"}


def _sd(seed: int, n: int = 3):
    g = torch.Generator().manual_seed(seed)
    return {f"w{i}": torch.randn(2, 3, generator=g) for i in range(n)}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------- unwrapping
@pytest.mark.parametrize("ema", [False, True])
def test_unwrap_picks_model_or_ema_weights(ema):
    raw, avg = _sd(1), _sd(2)
    for wrapped, key_raw, key_ema in [
        ({"model": raw, "model_ema": avg, "args": argparse.Namespace(a=1)}, "model", "model_ema"),
        ({"state_dict": raw, "state_dict_ema": avg, "epoch": 7}, "state_dict", "state_dict_ema"),
        ({"model": raw, "model_ema": {"state_dict_ema": avg}}, "model", "model_ema/state_dict_ema"),
    ]:
        sd, where = unwrap(wrapped, ema=ema)
        assert _same(sd, avg if ema else raw)
        assert where == (key_ema if ema else key_raw)


def test_unwrap_bare_and_ema_fallback():
    raw = _sd(3)
    sd, where = unwrap(dict(raw, epoch=4), ema=True)  # bare dict: non-tensor entries are not weights
    assert _same(sd, raw) and where == "bare"
    sd, where = unwrap({"model": raw}, ema=True)  # no EMA copy in the file: the model weights
    assert _same(sd, raw) and where == "model"


def test_unwrap_strips_wrapper_prefixes():
    raw = _sd(4)
    sd, _ = unwrap({"model": {("module." + k if i % 2 else "module._orig_mod." + k): v
                              for i, (k, v) in enumerate(raw.items())}})
    assert _same(sd, raw)


def test_unwrap_without_weights_is_an_error():
    with pytest.raises(CheckpointError, match="no weights found.*epoch"):
        unwrap({"epoch": 3, "optimizer": {"lr": 0.1}})
    with pytest.raises(CheckpointError, match="list"):
        unwrap([torch.zeros(2)])


# ---------------------------------------------------------------------------------------------- allow-list
def test_namespace_is_allowed_without_trust(tmp_path):
    raw = _sd(5)
    path = tmp_path / "vim_like.pth"
    torch.save({"model": raw, "args": argparse.Namespace(lr=0.5, model="vim")}, path)
    obj = read_pickle(path)
    assert _same(obj["model"], raw) and obj["args"].lr == 0.5


class _Payload:
    """Unpickling this creates a file: the proof that code from the checkpoint ran."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("zipfile", [True, False])
def test_unsafe_pickle_is_refused_and_nothing_runs(tmp_path, zipfile):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": _sd(6), "x": _Payload(marker)}, path, _use_new_zipfile_serialization=zipfile)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "io.open" in msg and "--trust-pickle" in msg and "\n" not in msg
    assert info.value.exit_code == 4
    assert not marker.exists()
    # The opt-in really unpickles: the same file now runs its payload (so the check above can fail).
    read_pickle(path, trust_pickle=True)
    assert marker.exists()


# ---------------------------------------------------------------------------------------------- bad files
def _damaged(tmp_path, kind):
    path = tmp_path / f"{kind}.pth"
    if kind == "missing":
        return path
    if kind == "directory":
        path.mkdir()
        return path
    if kind == "empty":
        path.write_bytes(b"")
        return path
    if kind == "garbage":
        path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
        return path
    if kind == "text":
        path.write_text("not a checkpoint\n")
        return path
    whole = tmp_path / "whole.pth"
    torch.save({"model": _sd(7, 20)}, whole, _use_new_zipfile_serialization=(kind == "truncated_zip"))
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "garbage", "text", "truncated_zip",
                                  "truncated_legacy"])
def test_damaged_files_give_one_line_checkpoint_errors(tmp_path, kind):
    path = _damaged(tmp_path, kind)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg
    assert info.value.exit_code == 2


def test_garbage_safetensors_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(path)


# ---------------------------------------------------------------------------------------------- families
@pytest.mark.parametrize("family", sorted(TEST_VARIANTS))
def test_official_layouts_load_and_run_like_the_source(make_official, family):
    path, source = make_official(family)
    loaded = load_checkpoint(path)
    assert (loaded.family, loaded.variant) == (family, TEST_VARIANTS[family])
    assert not loaded.model.training
    x = torch.randn(2, *source.input_size())
    with torch.no_grad():
        ref, out = source(x), loaded.model(x)
    assert out.shape == ref.shape == (2, source.cfg.num_classes)
    assert torch.equal(out, ref)  # the same weights in the same places: bit-identical


def test_ema_flag_picks_the_ema_weights(make_official):
    path, source = make_official("vim")
    dense = load_checkpoint(path)
    ema = load_checkpoint(path, ema=True)
    assert (dense.weights, ema.weights) == ("model", "model_ema")
    ref = source.state_dict()
    got_dense, got_ema = dense.model.state_dict(), ema.model.state_dict()
    for k in ref:
        assert torch.equal(got_dense[k], ref[k])
        assert torch.equal(got_ema[k], ref[k] + 1.0)


def test_unknown_architecture_lists_the_families(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.randn(4, 3, 3, 3), "fc.weight": torch.randn(10, 4)}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "unrecognised architecture" in msg and "--family" in msg
    assert all(name in msg for name in list_families())


def test_forcing_the_wrong_family_is_a_one_line_error(make_official):
    path, _ = make_official("vim")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, family="groupmamba")
    assert "\n" not in str(info.value)
    with pytest.raises(BadInputError, match="unknown architecture family"):
        load_checkpoint(path, family="resnet")


def test_mismatched_keys_are_named_and_counted(tmp_path):
    sd = create_model("vim_test").state_dict()
    sd["layers.1.mixer.A_log"] = torch.randn(5, 3)  # mis-shaped
    sd["layers.2.mixer.D"] = torch.randn(7)  # mis-shaped
    del sd["layers.3.mixer.D_b"]  # missing
    sd["layers.0.mixer.extra"] = torch.randn(1)  # unexpected
    path = tmp_path / "broken.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "1 missing (layers.3.mixer.D_b)" in msg
    assert "1 unexpected (layers.0.mixer.extra)" in msg
    assert "2 mis-shaped" in msg and "layers.1.mixer.A_log: file (5, 3) vs model (64, 8)" in msg
    assert "\n" not in msg


def test_unknown_override_is_bad_input(make_official):
    path, _ = make_official("groupmamba")
    with pytest.raises(BadInputError, match="no option colour"):
        load_checkpoint(path, colour=3)
