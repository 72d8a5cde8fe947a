"""ssmprune's own files: self-describing safetensors + config.json, round trips, pruned models, atomic writes."""

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import ssmprune_cli
from ssmprune_cli.errors import BadInputError, CheckpointError
from ssmprune_cli.io import safetensors_io
from ssmprune_cli.io.atomic import atomic_path, atomic_write_text
from ssmprune_cli.io.load import load_checkpoint
from ssmprune_cli.io.safetensors_io import FORMAT_VERSION, save_model
from ssmprune_cli.models import create_model

# The tiny registered variant of each family (as in conftest.py).
TEST_VARIANTS = {"vim": "vim_test", "plainmamba": "plainmamba_test", "groupmamba": "groupmamba_test"}


@pytest.mark.parametrize("family", sorted(TEST_VARIANTS))
def test_round_trip_is_bit_identical(tmp_path, random_model, family):
    name = TEST_VARIANTS[family]
    model = random_model(name)
    x = torch.randn(2, *model.input_size())
    with torch.no_grad():
        ref = model(x)
    path = save_model(model, tmp_path / "out" / "model.safetensors", variant=name)
    loaded = load_checkpoint(path)
    assert (loaded.family, loaded.variant, loaded.weights, loaded.pruning) == (family, name, "ssmprune", None)
    with torch.no_grad():
        out = loaded.model(x)
    assert out.shape == (2, model.cfg.num_classes)
    assert torch.equal(out, ref)
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(), model.state_dict().values()))


def test_metadata_is_strings_only_and_config_json_matches(tmp_path):
    model = create_model("vim_test")
    path = save_model(model, tmp_path / "model.safetensors", variant="vim_test")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert list(meta) == ["ssmprune"] and all(isinstance(v, str) for v in meta.values())
    doc = json.loads(meta["ssmprune"])
    assert doc == {"format_version": 1, "family": "vim", "variant": "vim_test",  # dense files stay version 1
                   "config": json.loads(json.dumps(model.config_dict())), "pruning": None}
    assert json.loads((tmp_path / "config.json").read_text()) == doc
    assert (path.stat().st_mode & 0o777) == (0o666 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("how", ["pruned_model", "dense_plus_spec"])
def test_pruned_model_round_trip(tmp_path, random_model, how):
    from ssmprune_cli.pruning.plan import PruningSpec
    from ssmprune_cli.pruning.pruned_model import rebuild

    dense = random_model("vim_test")
    spec = PruningSpec.from_dict({"points": [{"site": "2", "keep": 9}], "conv_fill": "hold",
                                  "delta_fill": "calib"}).to_dict()
    pruned = rebuild(dense, spec).eval()
    for mixer in dense.mixers():  # calibrated Δ̂ travels in the file
        mixer.delta_hat = torch.rand_like(mixer.delta_hat)
    x = torch.randn(3, *dense.input_size())
    with torch.no_grad():
        ref, full = pruned(x), dense(x)
    if how == "pruned_model":  # the spec comes from the model itself
        path = save_model(pruned, tmp_path / "model.safetensors")
    else:
        path = save_model(dense, tmp_path / "model.safetensors", pruning=spec)
    loaded = load_checkpoint(path)
    assert loaded.pruning == spec and type(loaded.model).__name__ == "PrunedModel"
    with torch.no_grad():
        out = loaded.model(x)
    assert torch.equal(out, ref) and not torch.equal(out, full)  # it prunes, exactly as before saving
    kept = [row["kept"] for row in loaded.summary()["layers"]]
    assert kept == [17, 9, 9, 9]
    assert isinstance(ssmprune_cli.load(path), torch.nn.Module)


def test_plain_safetensors_state_dict_is_detected(tmp_path, random_model):
    model = random_model("plainmamba_test")
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = load_checkpoint(path)
    assert (loaded.family, loaded.variant, loaded.weights) == ("plainmamba", "plainmamba_test", "bare")
    x = torch.randn(2, *model.input_size())
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))


def test_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    doc = {"format_version": FORMAT_VERSION + 1, "family": "vim", "variant": None, "config": {}, "pruning": None}
    save_file({"x": torch.zeros(1)}, str(path), metadata={"ssmprune": json.dumps(doc)})
    with pytest.raises(CheckpointError, match="format version .*upgrade"):
        load_checkpoint(path)


def test_never_overwrites_an_input(tmp_path):
    model = create_model("vim_test")
    src = save_model(model, tmp_path / "model.safetensors")
    before = src.read_bytes()
    with pytest.raises(BadInputError, match="refusing to overwrite"):
        save_model(model, tmp_path / "." / "model.safetensors", protect=[src])
    with pytest.raises(BadInputError, match="refusing to overwrite"):
        save_model(model, tmp_path / "other.safetensors", protect=[tmp_path / "config.json"])
    assert src.read_bytes() == before


def test_atomic_write_leaves_nothing_partial(tmp_path):
    target = tmp_path / "report.json"
    atomic_write_text(target, "old")
    with pytest.raises(ZeroDivisionError):
        with atomic_path(target) as tmp:
            tmp.write_text("half of the new conte")
            raise ZeroDivisionError
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_failed_model_write_leaves_no_file(tmp_path, monkeypatch):
    def broken_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors_io, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_model(create_model("vim_test"), tmp_path / "model.safetensors")
    assert list(tmp_path.iterdir()) == []
