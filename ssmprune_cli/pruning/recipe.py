"""Recipes: YAML as data, validated field by field; CLI flags override; the resolved recipe is written out.

Lookup: `recipes/<variant>.yaml` when the checkpoint matches a published variant, else `recipes/<family>.yaml`.
"""

from __future__ import annotations

import copy
import math
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

from ssmprune_cli.errors import RecipeError


class ListOf:
    """A list whose items are all of `types` (YAML reads `at: [2, 5]` as integers, `at: ["1.2"]` as strings)."""

    def __init__(self, *types: type):
        self.types = types
        self.__name__ = "a list of " + " or ".join(t.__name__ for t in types)


SCHEMA: Dict[str, Any] = {
    "model": str,
    "note": str,
    "seed": int,
    "prune": {
        "at": ListOf(str, int),
        "at_fraction": ListOf(float),
        "stage": (int, ListOf(int)),
        "keep": ListOf(float),
        "ratio": float,
        "split": str,
        "score": str,
        "align": str,
        "conv_fill": str,
        "delta_fill": str,
    },
    "calib": {"images": int, "batch_size": int, "holdout": int},
    "auto": {"enabled": bool, "conv_fill": ListOf(str), "delta_fill": ListOf(str), "split": ListOf(str)},
}
# Inclusive bounds of integer fields (None: unbounded); a seed must fit the 64-bit generators it seeds.
RANGES: Dict[str, Tuple[int, Optional[int]]] = {"seed": (0, 2**63 - 1), "calib.images": (1, None),
                                                 "calib.batch_size": (1, None), "calib.holdout": (0, None)}

DEFAULTS: Dict[str, Any] = {
    "seed": 0,
    "prune": {"split": "uniform", "score": "clip", "align": "aligned"},
    "calib": {"images": 256, "batch_size": 32, "holdout": 128},
    "auto": {"enabled": False, "conv_fill": ["hold", "zero", "packed"], "delta_fill": ["calib", "bias", "zero"],
             "split": ["uniform", "early", "late"]},
}


def validate(recipe: Any, source: str = "recipe") -> Dict[str, Any]:
    if recipe is None:
        return {}
    if not isinstance(recipe, dict):
        raise RecipeError(f"{source}: expected a mapping at the top level")
    _check(recipe, SCHEMA, source, "")
    return recipe


def _check(node: Dict[str, Any], schema: Dict[str, Any], source: str, path: str) -> None:
    for key, value in node.items():
        where = f"{path}{key}"
        if key not in schema:
            raise RecipeError(f"{source}: unknown field '{where}' (known: {', '.join(sorted(schema))})")
        expected = schema[key]
        if isinstance(expected, dict):
            if not isinstance(value, dict):
                raise RecipeError(f"{source}: '{where}' must be a mapping")
            _check(value, expected, source, where + ".")
        elif value is not None:
            kinds = expected if isinstance(expected, tuple) else (expected,)
            if not any(_is(value, kind) for kind in kinds):
                names = " or ".join(k.__name__ for k in kinds)
                raise RecipeError(f"{source}: '{where}' must be {names}, got {_show(value)}")
            low, high = RANGES.get(where, (None, None))
            if (low is not None and value < low) or (high is not None and value > high):
                bounds = f"at least {low}" if high is None else f"between {low} and {high}"
                raise RecipeError(f"{source}: '{where}' must be {bounds}, got {value!r}")


def _is(value: Any, kind: Any) -> bool:
    """YAML typing as users mean it: an int is a float, a bool is neither, a float must be finite."""
    if isinstance(kind, ListOf):
        return isinstance(value, list) and all(any(_is(v, k) for k in kind.types) for v in value)
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, kind)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def merge(base: Dict[str, Any], override: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        elif v is not None:
            out[k] = copy.deepcopy(v)
    return out


def read_recipe(path) -> Dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise RecipeError(f"cannot read recipe {p}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise RecipeError(f"recipe {p} is not UTF-8 text (byte {e.start}); save it as UTF-8 YAML") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    except RecursionError:
        raise RecipeError(f"recipe {p} nests too deeply to be a recipe") from None
    return validate(data, str(p))


def builtin_recipe(variant: Optional[str], family: str) -> Dict[str, Any]:
    root = resources.files("ssmprune_cli") / "recipes"
    for name in ([variant] if variant else []) + [family]:
        f = root / f"{name}.yaml"
        if f.is_file():
            return validate(yaml.safe_load(f.read_text()), f"recipes/{name}.yaml")
    return {}


def resolve(variant: Optional[str], family: str, user_file=None, overrides: Optional[Dict[str, Any]] = None
            ) -> Dict[str, Any]:
    """Defaults ← built-in recipe ← user recipe file ← CLI overrides."""
    recipe = merge(DEFAULTS, builtin_recipe(variant, family))
    if user_file is not None:
        recipe = merge(recipe, read_recipe(user_file))
    if overrides:
        recipe = merge(recipe, validate(overrides, "command-line options"))
    return recipe


def resolve_sites(model, prune: Dict[str, Any]) -> List[str]:
    """Prune sites from `at` (names) or `at_fraction` (fractions of the blocks; with `stage`, of that stage's
    blocks: one stage for every fraction, or a list with one stage per fraction)."""
    if prune.get("at"):
        return [str(s) for s in prune["at"]]
    fractions = prune.get("at_fraction") or []
    stages = prune.get("stage")
    if not isinstance(stages, list):
        stages = [stages] * len(fractions)
    if len(stages) != len(fractions):
        raise RecipeError(f"recipe: {len(stages)} stages for {len(fractions)} at_fraction entries")
    out = []
    for f, stage in zip(fractions, stages):
        if not (0.0 < float(f) < 1.0):
            raise RecipeError(f"at_fraction entries must be in (0, 1), got {f}")
        sites = model.prune_sites()
        if stage is not None:
            sites = [s for s in sites if s.split(".")[0] == str(stage)]
        if not sites:
            raise RecipeError(f"recipe stage {stage} has no prune points in this model")
        out.append(sites[max(0, min(len(sites) - 1, round(float(f) * len(sites)) - 1))])
    return list(dict.fromkeys(out))
