"""A safetensors file whose header lies (lengths past the end, overlapping tensors, huge shapes, a header longer
than the file, a description that does not fit its weights) is refused with one CheckpointError line (exit 2),
before any memory is allocated from the sizes it declares."""

import json
import struct
import tracemalloc

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from ssmprune_cli import cli
from ssmprune_cli.errors import CheckpointError
from ssmprune_cli.io import safetensors_io
from ssmprune_cli.io.load import load_checkpoint
from ssmprune_cli.io.safetensors_io import check_header, save_model
from ssmprune_cli.models import create_model


def raw_file(path, header, data=b"", length=None):
    """A safetensors file byte by byte: 8-byte little-endian header length, JSON header, data section."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return path


def f32(offsets, shape):
    return {"dtype": "F32", "shape": shape, "data_offsets": offsets}


LIES = {
    "header longer than the file": (dict(header={"x": f32([0, 4], [1])}, data=b"\0" * 4, length=10**6),
                                    "header claims 1000000 bytes"),
    "header length past the format's limit": (dict(header={}, length=2**63), "header claims"),
    "offsets past the end": (dict(header={"x": f32([0, 4 * 2**30], [2**30])}, data=b"\0" * 16),
                             "outside the 16 data bytes"),
    "end before begin": (dict(header={"x": f32([8, 4], [1])}, data=b"\0" * 8), "outside"),
    "overlapping tensors": (dict(header={"a": f32([0, 16], [4]), "b": f32([8, 24], [4])}, data=b"\0" * 24),
                            "'a' and 'b' overlap"),
    "huge shape in a small span": (dict(header={"x": f32([0, 16], [2**31, 2**31, 2**31])}, data=b"\0" * 16),
                                   "claims shape"),
    "negative dimension": (dict(header={"x": f32([0, 16], [-4])}, data=b"\0" * 16), "non-negative integers"),
    "unknown dtype": (dict(header={"x": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}},
                           data=b"\0" * 16), "unknown dtype"),
    "offsets not integers": (dict(header={"x": f32([0, 4.0], [1])}, data=b"\0" * 4), "two integers"),
    "entry without offsets": (dict(header={"x": {"dtype": "F32", "shape": [1]}}, data=b"\0" * 4),
                              "lacks dtype, shape or data_offsets"),
    "metadata not strings": (dict(header={"__metadata__": {"k": 1}}), "map strings to strings"),
    "header not an object": (dict(header=[1, 2]), "not a JSON object"),
    "header not JSON": (dict(header=b"{not json"), "not valid JSON"),
    "header nested past the recursion limit": (dict(header=b"[" * 100_000), "not valid JSON"),
    "header not UTF-8": (dict(header=b'{"\xff": 1}'), "not valid JSON"),
}


@pytest.mark.parametrize("name", sorted(LIES))
def test_a_lying_header_is_refused_with_one_line(tmp_path, name, monkeypatch):
    kwargs, words = LIES[name]
    path = raw_file(tmp_path / "model.safetensors", **kwargs)

    def must_not_run(*args, **kwargs):
        raise AssertionError("tensors were read from a header that was not checked")

    monkeypatch.setattr(safetensors_io, "load_file", must_not_run)
    monkeypatch.setattr(safetensors_io, "safe_open", must_not_run)
    with pytest.raises(CheckpointError, match=words) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_file_shorter_than_the_length_field_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x05\0\0")
    with pytest.raises(CheckpointError, match="shorter than its 8-byte header length"):
        check_header(path)


def test_refusing_a_huge_claim_allocates_almost_nothing(tmp_path):
    """A 1 KB file that claims a 2**40-element tensor is refused within a few hundred KB of Python memory."""
    path = raw_file(tmp_path / "model.safetensors", {"x": f32([0, 4 * 2**40], [2**40])}, b"\0" * 1000)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError):
            load_checkpoint(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 512 * 1024, peak


def test_an_honest_file_passes_the_check(tmp_path):
    path = tmp_path / "ok.safetensors"
    save_file({"a": torch.zeros(3, 2), "b": torch.ones(5, dtype=torch.int64), "e": torch.zeros(0)}, str(path),
              metadata={"k": "v"})
    header = check_header(path)
    assert header["a"]["shape"] == [3, 2] and header["__metadata__"] == {"k": "v"}


def _described(tmp_path, **changes):
    path = save_model(create_model("vim_test"), tmp_path / "model.safetensors", variant="vim_test")
    tensors = dict(load_checkpoint(path).dense.state_dict())
    doc = json.loads((tmp_path / "config.json").read_text())
    for key, value in changes.items():
        if key == "config":
            doc["config"].update(value)
        else:
            doc[key] = value
    save_file(tensors, str(path), metadata={"ssmprune": json.dumps(doc)})
    return path


@pytest.mark.parametrize("changes, words", [
    ({"config": {"embed_dim": 100_000}}, "does not belong to these weights"),   # would allocate gigabytes
    ({"config": {"depth": "twelve"}}, "does not build a vim model"),
    ({"family": 7}, "'family' is a int"),
    ({"pruning": [1, 2]}, "'pruning' is a list"),
    ({"pruning": {"points": "all"}}, "does not build a vim model"),
])
def test_a_description_that_does_not_fit_its_weights_is_refused(tmp_path, changes, words):
    path = _described(tmp_path, **changes)
    with pytest.raises(CheckpointError, match=words) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_the_command_line_shows_one_line_and_exit_code_2(tmp_path):
    path = raw_file(tmp_path / "model.safetensors", {"x": f32([0, 4 * 2**30], [2**30])}, b"\0" * 16)
    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()
    res = runner.invoke(cli.app, ["analyze", str(path), "--no-flops"])
    assert res.exit_code == 2 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "outside the 16 data bytes" in lines[0]
