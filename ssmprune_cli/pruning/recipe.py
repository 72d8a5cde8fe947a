"""Recipes: YAML as data, validated against recipe.schema.json (ssmprune_cli/schemas, published as
docs/schemas/recipe.schema.json); CLI flags override; the resolved recipe is written out.

Lookup: `recipes/<variant>.yaml` when the checkpoint matches a published variant, else `recipes/<family>.yaml`.
"""

from __future__ import annotations

import copy
import math
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

from ssmprune_cli import schemas
from ssmprune_cli.errors import RecipeError

SCHEMA: Dict[str, Any] = schemas.load_schema("recipe")  # docs/schemas/recipe.schema.json
DEFAULTS: Dict[str, Any] = schemas.defaults(SCHEMA)       # its `default` annotations, nested


def validate(recipe: Any, source: str = "recipe") -> Dict[str, Any]:
    """The recipe with null fields dropped (null means not set), or RecipeError: one line naming the source and
    the first field that breaks the schema."""
    if recipe is None:
        return {}
    recipe = _without_nulls(recipe)
    problem = schemas.first_problem(recipe, SCHEMA)
    if problem is not None:
        raise RecipeError(f"{source}: {problem}")
    return recipe


def _without_nulls(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_nulls(v) for k, v in node.items() if v is not None}
    return node


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
