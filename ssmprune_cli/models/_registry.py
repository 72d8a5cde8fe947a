"""The only way in: families register themselves, variants are named constructors (timm-style).

The family modules register on import; the package (`ssmprune_cli.models`) imports them, so this module never
imports a family (no import circle) and every look-up below sees all of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional

from torch import Tensor, nn

from ssmprune_cli.errors import BadInputError


@dataclass(frozen=True)
class Family:
    """What the loaders need to know about one architecture family.

    detect(sd)            True when a state dict already in our key layout belongs to this family.
    filter_fn(sd)         official keys/wrappers → our keys (one commented branch per official release).
    config_from_state_dict(sd, **overrides) → the family's config dataclass, inferred from shapes.
    build(cfg)            → model (a PrunableModel).
    config_cls            the config dataclass (rebuilt from JSON with config_cls(**d)).
    """

    name: str
    detect: Callable[[Mapping[str, Tensor]], bool]
    filter_fn: Callable[[Dict[str, Tensor]], Dict[str, Tensor]]
    config_from_state_dict: Callable[..., Any]
    build: Callable[[Any], nn.Module]
    config_cls: type


_FAMILIES: Dict[str, Family] = {}
_MODELS: Dict[str, Callable[..., nn.Module]] = {}
_MODEL_FAMILY: Dict[str, str] = {}


def register_family(family: Family) -> Family:
    _FAMILIES[family.name] = family
    return family


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a variant constructor under its function name; its module's FAMILY names the family."""
    _MODELS[fn.__name__] = fn
    _MODEL_FAMILY[fn.__name__] = getattr(__import__(fn.__module__, fromlist=["FAMILY"]), "FAMILY", "?")
    return fn


def list_models(family: Optional[str] = None) -> List[str]:
    return sorted(n for n in _MODELS if family is None or _MODEL_FAMILY[n] == family)


def model_family(name: str) -> str:
    return _MODEL_FAMILY[name]


def list_families() -> List[str]:
    return sorted(_FAMILIES)


def get_family(name: str) -> Family:
    if name not in _FAMILIES:
        raise BadInputError(f"unknown architecture family {name!r}; known: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[name]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    if name not in _MODELS:
        raise BadInputError(f"unknown model {name!r}; run `ssmprune models` to list the supported variants")
    return _MODELS[name](**kwargs)
