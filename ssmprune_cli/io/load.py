"""One entry point for every model file: official `.pth`/`.pt`/`.bin` checkpoints and ssmprune `.safetensors`.

    path → read (allow-listed unpickle, or safetensors) → unwrap → family (detected or forced)
         → config (stored, or inferred from shapes) → build → [rebuild pruning] → strict load → eval()
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import Tensor, nn

from ssmprune_cli.errors import BadInputError, CheckpointError
from ssmprune_cli.models import create_model, get_family, list_models
from ssmprune_cli.models._registry import Family

from .checkpoint import check_file, detect_family, load_strict, read_pickle, unwrap
from .safetensors_io import is_safetensors, read_safetensors

log = logging.getLogger("ssmprune.io")

# The normalisation every official release of the supported families was trained with (timm's IMAGENET_DEFAULT_*).
IMAGENET_MEAN_STD = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


@dataclass
class LoadedCheckpoint:
    """A loaded model and what is known about it."""

    model: nn.Module  # eval mode; a PrunedModel when `pruning` is set
    family: str
    variant: Optional[str]  # registered variant whose config matches, or None
    config: Dict[str, Any]
    path: Path
    pruning: Optional[Dict[str, Any]] = None
    weights: str = "bare"  # which part of the file: model, model_ema, state_dict, bare, ssmprune
    dense: Optional[nn.Module] = field(default=None, repr=False)  # the family model (inside a PrunedModel)
    nonfinite: Dict[str, int] = field(default_factory=dict)  # weight name → how many values are NaN or ±inf

    def summary(self) -> Dict[str, Any]:
        """A JSON-ready description: architecture, parameters, input size, tokens after every block."""
        core = self.dense if self.dense is not None else self.model
        return {
            "path": str(self.path),
            "family": self.family,
            "variant": self.variant,
            "weights": self.weights,
            "params": count_params(self.model),
            "input_size": list(core.input_size()),
            "layers": site_tokens(core, self.pruning),
            "pruning": self.pruning,
            "config": self.config,
            "nonfinite": self.nonfinite,
        }


# ---------------------------------------------------------------------------------------------- entry points
def load_checkpoint(path, *, family: Optional[str] = None, ema: bool = False, trust_pickle: bool = False,
                    **overrides: Any) -> LoadedCheckpoint:
    """Load any supported file. `family` skips detection; `ema` prefers EMA weights where the file has them;
    `trust_pickle` allows a full unpickle (runs code from the file); `overrides` replace config fields
    (e.g. img_size)."""
    path = Path(path)
    check_file(path)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if path.suffix == ".safetensors" or is_safetensors(path):
        tensors, doc = read_safetensors(path)
        if doc is not None:
            return _load_described(path, tensors, doc, family, overrides)
        sd, weights = unwrap(tensors)
    else:
        sd, weights = unwrap(read_pickle(path, trust_pickle=trust_pickle), ema=ema)
    return _load_foreign(path, sd, weights, family, overrides)


def load_model(path, **kwargs: Any) -> nn.Module:
    """The model alone, in eval mode (see load_checkpoint for the options)."""
    return load_checkpoint(path, **kwargs).model


# ---------------------------------------------------------------------------------------------- two sources
# What a family's config inference and constructor raise on values no release has (tests/fuzz/ finds them).
_UNBUILDABLE = (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError, ZeroDivisionError,
                OverflowError, MemoryError)


def _load_foreign(path: Path, sd: Dict[str, Tensor], weights: str, family: Optional[str],
                  overrides: Dict[str, Any]) -> LoadedCheckpoint:
    """Official (or any non-ssmprune) weights: infer the config from tensor shapes."""
    fam, sd = detect_family(sd, family)
    _check_overrides(fam, overrides)
    try:
        cfg = fam.config_from_state_dict(sd, **overrides)
        _check_size(path, fam, cfg, sd)
        model = fam.build(cfg)
    except BadInputError:
        raise
    except _UNBUILDABLE as exc:
        # Shapes no release has (damaged or foreign weights): they imply no model this family can build.
        raise CheckpointError(f"cannot infer a {fam.name} configuration from {path}: "
                              f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}") from None
    model = load_strict(model, sd, f"{path} ({weights} weights)")
    config = _as_json(dataclasses.asdict(cfg))
    if "mean" not in overrides and "std" not in overrides and \
            (config.get("mean"), config.get("std")) == IMAGENET_MEAN_STD:
        log.info(f"{path.name}: the file does not say how inputs were normalised; using the ImageNet mean/std "
                 f"(right for the official {fam.name} releases; for weights trained otherwise pass "
                 "--model-config with mean and std)")
    return LoadedCheckpoint(model.eval(), fam.name, match_variant(fam.name, config), config, path,
                            weights=weights, dense=model, nonfinite=check_finite(path, sd))


def _load_described(path: Path, tensors: Dict[str, Tensor], doc: Mapping[str, Any], family: Optional[str],
                    overrides: Dict[str, Any]) -> LoadedCheckpoint:
    """ssmprune's own files: the stored description rebuilds the model exactly, pruning included."""
    if family is not None and family != doc["family"]:
        raise BadInputError(f"{path} holds a {doc['family']} model, not {family}")
    fam = get_family(doc["family"])
    _check_overrides(fam, overrides)
    config = _as_json({**doc["config"], **overrides})
    try:
        cfg = config_from_dict(fam.config_cls, config)
        _check_size(path, fam, cfg, tensors)
        dense = fam.build(cfg)
        model = dense
        if doc.get("pruning") is not None:
            # Imported here: plain dense files must load without the pruning engine.
            from ssmprune_cli.pruning.pruned_model import rebuild

            model = rebuild(dense, doc["pruning"])
    except CheckpointError:
        raise
    except _UNBUILDABLE + (BadInputError,) as exc:
        # A description that no ssmprune wrote (edited, damaged or made up): its fields do not build a model.
        raise CheckpointError(f"{path}: its stored description does not build a {fam.name} model "
                              f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]})") from None
    load_strict(dense, tensors, str(path))  # the pruned wrapper owns no tensors: keys are the dense model's
    variant = doc.get("variant") or match_variant(fam.name, config)
    return LoadedCheckpoint(model.eval(), fam.name, variant, config, path, pruning=doc.get("pruning"),
                            weights="ssmprune", dense=dense, nonfinite=check_finite(path, tensors))


def _check_size(path: Path, fam: Family, cfg: Any, tensors: Mapping[str, Tensor]) -> None:
    """Refuse a description that builds a model far larger than the weights stored with it, before building it
    for real (a made-up `embed_dim: 100000` must not allocate gigabytes): the model is first built without
    memory (meta tensors) to count its elements."""
    try:
        with torch.device("meta"):
            probe = fam.build(cfg)
    except (RuntimeError, NotImplementedError):
        return  # an initialiser meta tensors cannot run: the strict load after the build still checks shapes
    need = sum(t.numel() for t in probe.state_dict().values())
    have = sum(t.numel() for t in tensors.values())
    if need > 2 * have + 2**20:  # room for a resized position embedding (--img-size), nothing like a new model
        raise CheckpointError(f"{path}: its description builds a model of {need:,} values but the file holds "
                              f"{have:,}; the description does not belong to these weights")


def nonfinite_weights(sd: Mapping[str, Tensor]) -> Dict[str, int]:
    """Weight name → number of NaN / ±inf values, for the floating-point tensors that hold any."""
    out = {}
    for key, t in sd.items():
        if t.is_floating_point() or t.is_complex():
            bad = int(t.numel() - torch.isfinite(t).sum())
            if bad:
                out[key] = bad
    return out


def check_finite(path: Path, sd: Mapping[str, Tensor]) -> Dict[str, int]:
    """`nonfinite_weights`, with a warning naming the first few: a model with NaN or inf weights loads (analyze
    shows where), but its outputs, scores and accuracy will be NaN or meaningless."""
    bad = nonfinite_weights(sd)
    if bad:
        shown = ", ".join(f"{k} ({n} of {sd[k].numel()})" for k, n in list(bad.items())[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        log.warning(f"{path.name}: {len(bad)} weight tensor(s) hold NaN or inf values: {shown}{more}; the "
                    "model's outputs will be NaN or wrong")
    return bad


# ---------------------------------------------------------------------------------------------- configs
def config_from_dict(config_cls: type, d: Mapping[str, Any]) -> Any:
    """Rebuild a config dataclass from its JSON form; unknown fields are an error."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise CheckpointError(f"{config_cls.__name__} has no field(s) {', '.join(unknown)}; "
                              "the file was written by another ssmprune version")
    return config_cls(**d)


def _as_json(d: Mapping[str, Any]) -> Dict[str, Any]:
    """Tuples → lists, so configs compare equal whichever way they were made."""
    return json.loads(json.dumps(d))


def _check_overrides(fam: Family, overrides: Mapping[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(fam.config_cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise BadInputError(f"{fam.name} models have no option {', '.join(unknown)}")


# ---------------------------------------------------------------------------------------------- variants
@functools.lru_cache(maxsize=None)
def _variant_model(name: str) -> nn.Module:
    """The registered variant built without memory (meta tensors): enough for its config and shapes."""
    try:
        with torch.device("meta"):
            return create_model(name)
    except (RuntimeError, NotImplementedError):
        return create_model(name)  # an initialiser that meta tensors cannot run: build it for real


def variant_config(name: str) -> Dict[str, Any]:
    model = _variant_model(name)
    return _as_json(model.config_dict())


# A variant names an architecture: the input size (a load-time choice, invisible in GroupMamba's weights) and
# training-only settings do not change which variant a checkpoint is.
_NOT_ARCHITECTURE = ("img_size", "drop_path_rate")


def match_variant(family: str, config: Mapping[str, Any]) -> Optional[str]:
    """The registered variant of `family` whose config equals `config` (input size aside), or None."""
    def arch(c: Mapping[str, Any]) -> Dict[str, Any]:
        return {k: v for k, v in _as_json(c).items() if k not in _NOT_ARCHITECTURE}

    want = arch(config)
    return next((n for n in list_models(family) if arch(variant_config(n)) == want), None)


def variant_summaries(family: Optional[str] = None) -> List[Dict[str, Any]]:
    """One row per registered variant: family, name, parameters, input size, tokens at each prune site."""
    rows = []
    for name in list_models(family):
        model = _variant_model(name)
        rows.append({"family": model.family, "name": name, "params": count_params(model),
                     "input_size": list(model.input_size()), "layers": site_tokens(model)})
    return rows


# ---------------------------------------------------------------------------------------------- shapes
def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def site_tokens(model: nn.Module, pruning: Optional[Mapping[str, Any]] = None) -> List[Dict[str, Any]]:
    """Per prune site (after every block): the dense token count, the grid, the protected positions and,
    for a pruned model, how many tokens go on to the next block."""
    keep = {str(p["site"]): int(p["keep"]) for p in (pruning or {}).get("points", [])}
    out, stage, kept = [], None, None
    for site in model.prune_sites():
        tokens, grid, protected = model.site_tokens(site)
        # Hierarchical sites are "stage.block": each stage starts dense again (the grid is refilled).
        site_stage = site.split(".")[0] if "." in site else ""
        if site_stage != stage:
            stage, kept = site_stage, None
        kept = keep.get(site, kept)
        row = {"site": site, "tokens": int(tokens), "grid": None if grid is None else list(grid),
               "protected": [int(p) for p in protected]}
        if pruning is not None:
            row["kept"] = int(tokens) if kept is None else kept
        out.append(row)
    return out
