"""ssmprune's own model files: `.safetensors` weights that describe themselves, plus `config.json` beside them.

The safetensors header's `__metadata__` must map strings to strings, so the whole description is one JSON
string under the key "ssmprune":

    {"format_version": 1, "family": "vim", "variant": "vim_tiny" | null,
     "config": {...the family's config dataclass...}, "pruning": {...pruning spec...} | null}

Format versions: 1, the first; 2 adds `method` and `options` to the pruning spec (token merging or fusing instead
of pruning). A file is written with the lowest version that describes it, so a pruned model of the default
method is still version 1, byte for byte, and an older ssmprune refuses a version-2 file with one clear line.

`config.json` holds the same document, pretty-printed, for people and tools that do not parse headers.
Loading needs no pickle and runs no code from the file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ssmprune_cli.errors import CheckpointError

from .atomic import atomic_path, atomic_write_text, check_not_input

FORMAT_VERSION = 2  # the newest this code reads and writes
META_KEY = "ssmprune"
CONFIG_NAME = "config.json"
MAX_HEADER = 100 * 2**20  # the safetensors format's own limit on the JSON header (100 MB)
# Bytes per element of every dtype the format names (F8 variants included).
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def describe(family: str, config: Mapping[str, Any], variant: Optional[str] = None,
             pruning: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The description document; a JSON round trip turns tuples into lists, as reading it back will."""
    doc = {"format_version": required_version(pruning), "family": family, "variant": variant,
           "config": dict(config), "pruning": None if pruning is None else dict(pruning)}
    return json.loads(json.dumps(doc))


def required_version(pruning: Optional[Mapping[str, Any]]) -> int:
    """The lowest format version that describes a file with this pruning spec."""
    return 2 if pruning is not None and "method" in pruning else 1


def _model_config(model: nn.Module) -> Dict[str, Any]:
    if hasattr(model, "config_dict"):
        return model.config_dict()
    cfg = getattr(model, "cfg", None)
    if is_dataclass(cfg):
        return asdict(cfg)
    raise TypeError(f"{type(model).__name__} carries no config; pass config= to save_model")


def _dense_and_spec(model: nn.Module, pruning: Optional[Mapping[str, Any]]):
    """A PrunedModel owns no tensors: the file holds its dense model's (calibrated Δ̂ included) plus its spec."""
    from ssmprune_cli.pruning.pruned_model import PrunedModel

    if isinstance(model, PrunedModel):
        return model.model, pruning if pruning is not None else model.spec.to_dict()
    return model, pruning


def _plain_tensors(sd: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """CPU, contiguous, and no two entries sharing memory (safetensors refuses aliased tensors)."""
    out: Dict[str, Tensor] = {}
    seen = set()
    for key, value in sd.items():
        t = value.detach().cpu().contiguous()
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        out[key] = t.clone() if ptr in seen else t
        if ptr is not None:
            seen.add(ptr)
    return out


def save_model(model: nn.Module, path, *, family: Optional[str] = None, variant: Optional[str] = None,
               config: Optional[Mapping[str, Any]] = None, pruning: Optional[Mapping[str, Any]] = None,
               protect: Iterable = ()) -> Path:
    """Write `model`'s state dict to `path` (.safetensors) and its description to config.json beside it.

    A PrunedModel is saved as its dense model plus its pruning spec (the one given, else its own). family and
    config default to the model's own (`model.family`, `model.config_dict()` / `model.cfg`).
    `protect` lists input files that must never be overwritten. Both files are written atomically.
    """
    model, pruning = _dense_and_spec(model, pruning)
    path = Path(path)
    protect = list(protect)
    cfg_path = path.with_name(CONFIG_NAME)
    check_not_input(path, protect)
    check_not_input(cfg_path, protect)
    doc = describe(family or getattr(model, "family"), config if config is not None else _model_config(model),
                   variant, pruning)
    tensors = _plain_tensors(model.state_dict())
    with atomic_path(path, protect) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(doc, sort_keys=True)})
    atomic_write_text(cfg_path, json.dumps(doc, indent=2, sort_keys=True) + "\n", protect)
    return path


def is_safetensors(path) -> bool:
    """True when the file starts like a safetensors file (8-byte header length, then a JSON object)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= Path(path).stat().st_size - 8


def check_header(path) -> Dict[str, Any]:
    """The file's JSON header, after checking that it describes the file honestly; refuses (CheckpointError)
    before any tensor memory is allocated: at most the header itself (≤ MAX_HEADER bytes) is read.

    Checked: the header length fits the file and the format's limit; the header is a JSON object; every entry
    has a known dtype, a shape of non-negative integers and [begin, end] offsets inside the data section whose
    length is exactly shape × dtype size (so a huge claimed shape is refused, not allocated); no two tensors
    overlap; `__metadata__` maps strings to strings."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is not a safetensors file: {size} bytes, shorter than its 8-byte header "
                                  "length")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER or n > size - 8:
            raise CheckpointError(f"{path}: the header claims {n} bytes but the file holds {size - 8} after the "
                                  f"length (the format allows at most {MAX_HEADER}); the file is truncated or "
                                  "not a safetensors file")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path}: the safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object")
    data = size - 8 - n
    spans = []
    for key, entry in header.items():
        if key == "__metadata__":
            if not (isinstance(entry, dict) and all(isinstance(v, str) for v in entry.values())):
                raise CheckpointError(f"{path}: the safetensors __metadata__ must map strings to strings")
            continue
        spans.append(_check_entry(path, key, entry, data))
    spans.sort()
    for (b0, e0, k0), (b1, e1, k1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise CheckpointError(f"{path}: tensors {k0!r} and {k1!r} overlap in the file (bytes {b1}–{e0}); the "
                                  "header is corrupt")
    return header


def _check_entry(path, key: str, entry: Any, data: int) -> Tuple[int, int, str]:
    bad = f"{path}: the header's entry for tensor {key!r}"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise CheckpointError(f"{bad} lacks dtype, shape or data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise CheckpointError(f"{bad} has an unknown dtype {str(dtype)[:20]!r}")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise CheckpointError(f"{bad} has a shape that is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise CheckpointError(f"{bad} has data_offsets that are not two integers")
    begin, end = offsets
    if not 0 <= begin <= end <= data:
        raise CheckpointError(f"{bad} points at bytes {begin}–{end}, outside the {data} data bytes of the file")
    need = math.prod(shape) * DTYPE_BYTES[dtype]
    if end - begin != need:
        raise CheckpointError(f"{bad} claims shape {shape[:8]} ({need} bytes of {dtype}) but spans "
                              f"{end - begin} bytes")
    return begin, end, key


def read_safetensors(path) -> Tuple[Dict[str, Tensor], Optional[Dict[str, Any]]]:
    """(tensors, description or None when the file was not written by ssmprune). The header is checked first
    (`check_header`): a lying header is refused before anything is allocated."""
    check_header(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path} as safetensors: {_first_line(exc)}") from None
    raw = meta.get(META_KEY)
    if raw is None:
        return tensors, None
    return tensors, _parse_description(path, raw)


def _parse_description(path, raw: str) -> Dict[str, Any]:
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: the '{META_KEY}' metadata is not valid JSON") from None
    if not isinstance(doc, dict) or not {"format_version", "family", "config"} <= doc.keys():
        raise CheckpointError(f"{path}: the '{META_KEY}' metadata lacks format_version, family or config")
    kinds = {"family": (str,), "config": (dict,), "variant": (str, type(None)), "pruning": (dict, type(None))}
    for key, types in kinds.items():
        if not isinstance(doc.get(key), types):
            raise CheckpointError(f"{path}: the '{META_KEY}' metadata's {key!r} is a {type(doc.get(key)).__name__}")
    version = doc["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} uses format version {version!r}; this ssmprune reads up to "
                              f"{FORMAT_VERSION}: upgrade ssmprune")
    doc.setdefault("variant", None)
    doc.setdefault("pruning", None)
    return doc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
