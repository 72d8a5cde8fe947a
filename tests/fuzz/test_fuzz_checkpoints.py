"""Property-based fuzzing of everything that reads a model file: official `.pth` checkpoints through the
restricted unpickler, `.safetensors` files and their headers, and the `ssmprune` description in the metadata.
Whatever the file holds, loading either succeeds or raises one of the documented errors (SsmpruneError and its
subclasses, docs/errors.md); anything else (a KeyError, a ZeroDivisionError, a MemoryError) would reach users as
an "internal error" and fails here. 1,000 examples a target, each a few milliseconds."""

import argparse
import io
import json
import struct
from collections import OrderedDict

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as save_safetensors

from ssmprune_cli.errors import SsmpruneError
from ssmprune_cli.io.load import load_checkpoint
from ssmprune_cli.io.safetensors_io import DTYPE_BYTES, _parse_description, describe
from ssmprune_cli.models import create_model

FUZZ = settings(max_examples=1000, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

# The tiny test variants cut to one block: the restricted unpickler's cost grows with the number of tensors, and
# 1,000 files of a few dozen tensors each keep a target within seconds. (VMamba and GroupMamba keep a hundred or
# more tensors even then; their loaders share every step fuzzed here but the family's own key mapping.)
STATE = {"vim_test": create_model("vim_test", depth=1).state_dict(),
         "plainmamba_test": create_model("plainmamba_test", depth=1).state_dict()}
FAMILIES = tuple(STATE)


def loads_or_refuses(path, **options):
    """Load `path`; a documented refusal with a message is a pass (the CLI prints it as one line), any other
    exception a failure."""
    try:
        load_checkpoint(path, **options)
        event("loaded")
    except SsmpruneError as exc:
        assert str(exc).strip()
        event(f"refused: {type(exc).__name__}")  # --hypothesis-show-statistics shows the mix


# ---------------------------------------------------------------------------------------------- .pth: structure
small_ints = st.integers(min_value=0, max_value=6)
shapes = st.lists(small_ints, min_size=0, max_size=4).map(tuple)
dtypes = st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.uint8,
                          torch.bool, torch.complex64])
junk = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                 max_size=3), max_leaves=6)


@st.composite
def mutated_state_dicts(draw):
    """A family's real state dict, mutated the ways damaged or foreign files differ: keys dropped, renamed or
    added, shapes and dtypes changed, values non-finite, non-tensor entries mixed in."""
    sd = OrderedDict(STATE[draw(st.sampled_from(FAMILIES))])
    keys = list(sd)
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.sampled_from(keys))
        op = draw(st.sampled_from(["drop", "shape", "dtype", "rename", "nan", "junk", "scalar"]))
        if not isinstance(sd.get(key), torch.Tensor):
            continue
        if op == "drop":
            del sd[key]
        elif op == "shape":
            sd[key] = torch.zeros(draw(shapes))
        elif op == "dtype":
            sd[key] = sd[key].to(draw(dtypes))
        elif op == "rename":
            sd[draw(st.sampled_from(["module.", "backbone.", "head.fc.", "x", ""])) + key + draw(
                st.sampled_from(["", "_ema", ".0"]))] = sd.pop(key)
        elif op == "nan":
            sd[key] = torch.full(sd[key].shape, draw(st.sampled_from([float("nan"), float("inf")])))
        elif op == "junk":
            sd[key] = draw(junk)
        else:
            sd[key] = torch.tensor(draw(st.integers(-3, 3)))
    for _ in range(draw(st.integers(0, 2))):
        sd[draw(st.text(max_size=12))] = draw(st.one_of(junk, shapes.map(torch.zeros)))
    return sd


@st.composite
def wrapped(draw, inner):
    """The wrappers official releases use (and some they do not): nested dicts, EMA copies, argparse."""
    obj = draw(inner)
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(["model", "model_ema", "state_dict", "state_dict_ema", "module", "weights"]))
        obj = {key: obj}
        if draw(st.booleans()):
            obj["args"] = argparse.Namespace(lr=draw(st.floats(allow_nan=True)), model=draw(st.text(max_size=5)))
        if draw(st.booleans()):
            obj["epoch"] = draw(junk)
    return draw(st.sampled_from([obj, [obj], (obj, 1)])) if draw(st.integers(0, 9)) == 0 else obj


@FUZZ
@given(obj=wrapped(mutated_state_dicts()), ema=st.booleans(),
       family=st.sampled_from([None, None, None, "vim", "plainmamba", "vmamba", "groupmamba"]),
       img_size=st.sampled_from([None, None, None, 0, 1, 8, 17, 64]), zipped=st.booleans())
def test_official_checkpoints_load_or_are_refused(tmp_path_factory, obj, ema, family, img_size, zipped):
    path = tmp_path_factory.getbasetemp() / "fuzz.pth"
    torch.save(obj, path, _use_new_zipfile_serialization=zipped)  # both formats of official releases
    loads_or_refuses(path, ema=ema, family=family, img_size=img_size)


# ---------------------------------------------------------------------------------------------- .pth: bytes
def _pth_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


SMALL_PTH = _pth_bytes({"model": {k: v for k, v in list(STATE["vim_test"].items())[:8]},
                        "args": argparse.Namespace(model="vim_test")})
LEGACY_PTH = (lambda b: (torch.save({"w": torch.ones(3)}, b, _use_new_zipfile_serialization=False), b.getvalue())[1])(
    io.BytesIO())


@st.composite
def damaged(draw, original: bytes):
    """`original` with bytes flipped, cut, inserted or spliced: what a disk, a download or an attacker does."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "splice"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[at:at + draw(st.integers(1, 4096))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[at:at + 8] = struct.pack("<q", draw(st.integers(-2**63, 2**63 - 1)))
    return bytes(data)


@FUZZ
@given(data=st.one_of(damaged(SMALL_PTH), damaged(LEGACY_PTH), st.binary(min_size=1, max_size=256)))
def test_damaged_pth_bytes_are_refused_or_load(tmp_path_factory, data):
    path = tmp_path_factory.getbasetemp() / "fuzz_bytes.pth"
    path.write_bytes(data)
    loads_or_refuses(path)


# ---------------------------------------------------------------------------------------------- .safetensors
@st.composite
def lying_headers(draw):
    """A safetensors file built byte by byte with a header that may lie about anything it declares."""
    data_len = draw(st.integers(0, 64))
    header = {}
    for i in range(draw(st.integers(0, 4))):
        entry = {"dtype": draw(st.one_of(st.sampled_from(sorted(DTYPE_BYTES)), junk)),
                 "shape": draw(st.one_of(st.lists(st.integers(-2, 2**40), max_size=4), junk)),
                 "data_offsets": draw(st.one_of(st.lists(st.integers(-2, 2**40), min_size=2, max_size=2),
                                                st.lists(st.integers(0, data_len), min_size=2, max_size=2).map(
                                                    sorted), junk))}
        if draw(st.integers(0, 9)) == 0:
            entry.pop(draw(st.sampled_from(sorted(entry))))
        header[draw(st.sampled_from([f"t{i}", "cls_token", "pos_embed", "head.weight"]))] = entry
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.one_of(st.dictionaries(st.text(max_size=8), st.text(max_size=8),
                                                                max_size=2), junk))
    text = json.dumps(header).encode()
    length = draw(st.one_of(st.just(len(text)), st.integers(0, 2**64 - 1)))
    return struct.pack("<Q", length) + text + draw(st.binary(min_size=data_len, max_size=data_len))


def _safetensors_bytes(model, description: bool) -> bytes:
    meta = {"ssmprune": json.dumps(describe(model.family, model.config_dict()))} if description else None
    return save_safetensors({k: v.contiguous() for k, v in model.state_dict().items()}, metadata=meta)


HONEST = _safetensors_bytes(create_model("vim_test", depth=1), description=True)  # an ssmprune file
PLAIN = _safetensors_bytes(create_model("plainmamba_test", depth=1), description=False)  # someone else's


@FUZZ
@given(data=st.one_of(lying_headers(), damaged(HONEST), damaged(PLAIN)))
def test_safetensors_files_are_refused_or_load(tmp_path_factory, data):
    path = tmp_path_factory.getbasetemp() / "fuzz.safetensors"
    path.write_bytes(data)
    loads_or_refuses(path)


# ---------------------------------------------------------------------------------------------- description
VIM = create_model("vim_test", depth=2)
config_values = st.one_of(st.integers(-2, 70), st.floats(allow_nan=True), st.booleans(), st.none(),
                          st.text(max_size=6), st.lists(st.integers(-1, 40), max_size=4), junk)


@st.composite
def descriptions(draw):
    """The `ssmprune` metadata of a (two-block) vim_test file, dense or pruned, with its fields changed, removed or
    replaced by junk."""
    cfg = VIM.config_dict()
    doc = describe("vim", cfg, None, draw(st.sampled_from([None, "pruned"])) and {
        "points": [{"site": "1", "keep": 9}], "score": "clip", "align": "aligned", "conv_fill": "hold",
        "delta_fill": "bias", "seed": 0, "extra": {}})
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(["config", "config", "pruning", "top"]))
        if where == "config" and isinstance(doc.get("config"), dict):
            doc["config"][draw(st.sampled_from(sorted(cfg) + ["nonsense"]))] = draw(config_values)
        elif where == "pruning" and isinstance(doc.get("pruning"), dict):
            field = draw(st.sampled_from(["points", "score", "align", "conv_fill", "delta_fill", "seed"]))
            doc["pruning"][field] = draw(st.one_of(
                junk, st.lists(st.fixed_dictionaries({"site": st.one_of(st.text(max_size=3), junk),
                                                      "keep": st.one_of(st.integers(-2, 40), junk)}), max_size=3)))
        else:
            key = draw(st.sampled_from(["format_version", "family", "variant", "config", "pruning"]))
            if draw(st.booleans()):
                doc.pop(key, None)
            else:
                doc[key] = draw(st.one_of(junk, st.sampled_from(["vim", "groupmamba", "vmamba"])))
    return json.dumps(doc) if draw(st.integers(0, 9)) else json.dumps(doc)[:draw(st.integers(0, 40))]


VIM_TENSORS = {k: v.contiguous() for k, v in VIM.state_dict().items()}


@FUZZ
@given(raw=descriptions())
def test_safetensors_descriptions_are_refused_or_load(tmp_path_factory, raw):
    try:
        _parse_description("m.safetensors", raw)
    except SsmpruneError:
        return
    path = tmp_path_factory.getbasetemp() / "fuzz_doc.safetensors"
    path.write_bytes(save_safetensors(VIM_TENSORS, metadata={"ssmprune": raw}))
    loads_or_refuses(path)
