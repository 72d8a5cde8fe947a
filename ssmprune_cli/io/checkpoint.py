"""Reading official `.pth` checkpoints safely, unwrapping them and telling which family they belong to.

Unpickling can run arbitrary code, so files are read with `torch.load(weights_only=True)`: a restricted
unpickler that builds tensors and plain containers only. The allow-list adds `argparse.Namespace`, which the
Vim release files carry under 'args', and reads VMamba's yacs `CfgNode` ('config') as a plain OrderedDict.
Any other global is refused before it is built (nothing is executed);
`--trust-pickle` opts into a full unpickle for files the user trusts. See docs/checkpoints.md.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import pickle
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ssmprune_cli.errors import CheckpointError, UnsafeCheckpointError
from ssmprune_cli.models import get_family, list_families
from ssmprune_cli.models._registry import Family

# Globals a weights-only load may build beyond torch's own list; each entry says which release needs it. A
# (class, "module.Name") pair reads the named global as that class, so its own code is neither imported nor run.
SAFE_GLOBALS: Tuple[Any, ...] = (
    argparse.Namespace,  # hustvl/Vim: checkpoint['args']
    (collections.OrderedDict, "yacs.config.CfgNode"),  # MzeroMiko/VMamba: checkpoint['config'], a plain mapping
)

# Wrapper keys in the order they are tried; EMA weights first when asked for.
MODEL_KEYS = ("model", "state_dict")  # Vim / VMamba training scripts; mmcv (PlainMamba)
EMA_KEYS = ("model_ema", "state_dict_ema")  # timm-style EMA copies
# Prefixes added by training wrappers rather than by the architecture.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel; torch.compile

_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")
_SHOW = 3  # how many keys of each kind a mismatch message names


# ---------------------------------------------------------------------------------------------- reading
def check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"no such file: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; expected a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty")


def _refused_globals(path: Path, exc: BaseException) -> List[str]:
    """Names of the globals the weights-only unpickler refused; empty when the failure was something else."""
    names = set(_REFUSED_GLOBAL.findall(str(exc)))
    allowed = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS}
    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch ≥ 2.5
    try:
        # Static scan of the whole pickle (zip-format files only): lists every refused global, not just the first.
        if scan is not None:
            names.update(scan(str(path)))
    except Exception:  # noqa: BLE001 - the scan parses a damaged pickle too (EOFError, ...): best effort only
        pass  # legacy (non-zip) or unreadable file: the message above is all there is
    return sorted(names - allowed)


def _allow_listed():
    """The allow-list for the duration of one load (torch ≥ 2.5); torch 2.4 only has the process-wide list."""
    if hasattr(torch.serialization, "safe_globals"):
        return torch.serialization.safe_globals(list(SAFE_GLOBALS))
    torch.serialization.add_safe_globals(list(SAFE_GLOBALS))
    return contextlib.nullcontext()


def read_pickle(path, *, trust_pickle: bool = False) -> Any:
    """The object stored by `torch.save` in `path`, tensors on the CPU."""
    path = Path(path)
    check_file(path)
    try:
        if trust_pickle:
            return torch.load(path, map_location="cpu", weights_only=False)
        with _allow_listed():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = [] if trust_pickle else _refused_globals(path, exc)
        if refused:
            raise UnsafeCheckpointError(
                f"refused to unpickle {path}: it asks for {', '.join(refused)}, outside the allow-list "
                "(nothing was run); if you trust this file, rerun with --trust-pickle"
            ) from None
        raise CheckpointError(_unreadable(path, exc)) from None
    except Exception as exc:  # torch.load raises many types for foreign or damaged files; all mean the same
        raise CheckpointError(_unreadable(path, exc)) from None


def _unreadable(path: Path, exc: BaseException) -> str:
    return (f"cannot read {path} as a PyTorch checkpoint: the file is truncated, corrupted or in another "
            f"format ({type(exc).__name__})")


# ---------------------------------------------------------------------------------------------- unwrapping
def _tensors(d: Mapping[Any, Any]) -> Dict[str, Tensor]:
    return {k: v for k, v in d.items() if isinstance(k, str) and isinstance(v, Tensor)}


def unwrap(obj: Any, *, ema: bool = False) -> Tuple[Dict[str, Tensor], str]:
    """(state dict, where it came from) out of a checkpoint object.

    Tries the wrapper keys (`model`, `state_dict`; with ema=True `model_ema`, `state_dict_ema` first), falls
    back to the other kind where only that is present, and finally treats the object as a bare state dict.
    Wrappers nest (timm's EMA helper stores {'state_dict_ema': ...}), so the search repeats on the result.
    """
    keys = EMA_KEYS + MODEL_KEYS if ema else MODEL_KEYS + EMA_KEYS
    trail: List[str] = []
    while isinstance(obj, Mapping):
        inner = next((k for k in keys if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        trail.append(inner)
        obj = obj[inner]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a state dict or a dict wrapping one, found {type(obj).__name__}")
    sd = _tensors(obj)
    if not sd:
        top = ", ".join(map(str, list(obj)[:8])) or "nothing"
        raise CheckpointError(f"no weights found in the checkpoint (top-level keys: {top})")
    return strip_prefixes(sd), "/".join(trail) or "bare"


def strip_prefixes(sd: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    out = {}
    for key, value in sd.items():
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


# ---------------------------------------------------------------------------------------------- family
def detect_family(sd: Dict[str, Tensor], family: Optional[str] = None) -> Tuple[Family, Dict[str, Tensor]]:
    """(family, state dict in that family's key layout). `family` forces one instead of detecting."""
    if family is not None:
        fam = get_family(family)
        return fam, fam.filter_fn(dict(sd))
    hits = []
    for name in list_families():
        fam = get_family(name)
        mapped = _try_family(fam, sd)
        if mapped is not None:
            hits.append((fam, mapped))
    if len(hits) == 1:
        return hits[0]
    known = ", ".join(list_families()) or "none registered"
    if not hits:
        raise CheckpointError(f"unrecognised architecture: the weights match none of the supported families "
                              f"({known}); pass --family to force one and see which keys differ")
    names = ", ".join(f.name for f, _ in hits)
    raise CheckpointError(f"the weights match several families ({names}); pass --family to choose one")


def _try_family(fam: Family, sd: Dict[str, Tensor]) -> Optional[Dict[str, Tensor]]:
    # A family's remapping may trip over another family's keys; that only means "not this family".
    try:
        mapped = fam.filter_fn(dict(sd))
        return mapped if fam.detect(mapped) else None
    except (KeyError, ValueError, IndexError, TypeError, AttributeError, RuntimeError):
        return None


# ---------------------------------------------------------------------------------------------- strict load
def mismatch(model: nn.Module, sd: Mapping[str, Tensor]) -> Optional[str]:
    """A one-line account of how `sd` differs from `model`'s state dict, or None when they match."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shaped = [k for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_first(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_first(unexpected)})")
    if shaped:
        shown = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in shaped[:_SHOW]]
        parts.append(f"{len(shaped)} mis-shaped ({'; '.join(shown)}{', …' if len(shaped) > _SHOW else ''})")
    return "; ".join(parts) or None


def _first(keys: Sequence[str]) -> str:
    return ", ".join(keys[:_SHOW]) + (", …" if len(keys) > _SHOW else "")


def load_strict(model: nn.Module, sd: Mapping[str, Tensor], what: str) -> nn.Module:
    """Load every tensor or fail with a message naming the missing, unexpected and mis-shaped keys.

    The model's own load hooks run first (Vim resizes pos_embed for a new image size), so the shapes are
    compared only once torch has refused the state dict.
    """
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        problem = mismatch(model, sd) or " ".join(str(exc).split())
        raise CheckpointError(f"{what} does not match the model built from it: {problem}") from None
    return model
