"""JSON Schemas of the files ssmprune reads and writes (recipe.schema.json, report.schema.json), and the small
validator that checks documents against them.

The schemas are package data, published as docs/schemas/ (`python -m ssmprune_cli.docs` copies them there). They
are standard JSON Schema (draft 2020-12), written in the subset below, so any validator reads them; the package
checks them itself, so no validation library is needed at run time. The subset: `type` (one name or a list),
`properties`, `required`, `additionalProperties` (false or a schema), `items`, `enum`, `minimum`, `maximum`,
`exclusiveMinimum`, `exclusiveMaximum`, `minItems`, `$ref` to `#/$defs/NAME`, and the annotations `$schema`, `$id`,
`$defs`, `$comment`, `title`, `description`, `default`, `examples`. A schema that uses any other keyword is refused
(ValueError), so a schema can never ask for a check that silently does not happen.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from importlib import resources
from typing import Any, Dict, Iterator, List, Optional

NAMES = ("recipe", "report")
CHECKS = {"type", "properties", "required", "additionalProperties", "items", "enum", "minimum", "maximum",
          "exclusiveMinimum", "exclusiveMaximum", "minItems", "$ref"}
ANNOTATIONS = {"$schema", "$id", "$defs", "$comment", "title", "description", "default", "examples"}

_TYPE_WORDS = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
               "number": "a number", "boolean": "true or false", "null": "null"}


def filename(name: str) -> str:
    return f"{name}.schema.json"


def schema_text(name: str) -> str:
    """The schema file's text, as shipped in the package."""
    if name not in NAMES:
        raise ValueError(f"unknown schema {name!r}; one of {', '.join(NAMES)}")
    return (resources.files(__name__) / filename(name)).read_text(encoding="utf-8")


@lru_cache(maxsize=None)
def _load(name: str) -> str:
    return schema_text(name)


def load_schema(name: str) -> Dict[str, Any]:
    """The schema as a fresh dict (callers may not change the cached one), checked to use only the subset."""
    schema = json.loads(_load(name))
    check_schema(schema)
    return schema


def check_schema(schema: Dict[str, Any], where: str = "#") -> None:
    """ValueError when any part of `schema` uses a keyword outside the subset this module checks."""
    unknown = set(schema) - CHECKS - ANNOTATIONS
    if unknown:
        raise ValueError(f"schema keyword(s) {', '.join(sorted(unknown))} at {where} are outside the subset "
                         "ssmprune_cli.schemas checks")
    for key in ("properties", "$defs"):
        for name, sub in schema.get(key, {}).items():
            check_schema(sub, f"{where}/{key}/{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            check_schema(schema[key], f"{where}/{key}")


def defaults(schema: Dict[str, Any]) -> Dict[str, Any]:
    """The `default` annotations of an object schema's properties, nested as the documents nest."""
    out: Dict[str, Any] = {}
    for key, sub in schema.get("properties", {}).items():
        if "default" in sub:
            out[key] = sub["default"]
        elif "properties" in sub:
            inner = defaults(sub)
            if inner:
                out[key] = inner
    return out


def first_problem(doc: Any, schema: Dict[str, Any]) -> Optional[str]:
    """The first way `doc` breaks `schema`, as one line naming the field (`prune.ratio`, `keep[1]`), or None."""
    return next(problems(doc, schema), None)


def problems(doc: Any, schema: Dict[str, Any]) -> Iterator[str]:
    """Every way `doc` breaks `schema`, depth-first, fields in the document's order."""
    check_schema(schema)
    yield from _problems(doc, schema, schema, "")


# ------------------------------------------------------------------------------------------------ the checks
def _is_type(value: Any, name: str) -> bool:
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "string":
        return isinstance(value, str)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "null":
        return value is None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if name == "number":
        return True
    if name == "integer":  # JSON Schema: 2.0 is an integer too
        return isinstance(value, int) or (math.isfinite(value) and float(value).is_integer())
    raise ValueError(f"unknown type {name!r} in a schema")


def _where(path: str) -> str:
    return f"'{path}'" if path else "the document"


def _leaf(path: str) -> str:
    """The field's own name: `prune.score` → score, `auto.split[2]` → split."""
    return path.rsplit(".", 1)[-1].split("[", 1)[0] or "value"


def _range(schema: Dict[str, Any]) -> Optional[str]:
    lo = ("(", schema["exclusiveMinimum"]) if "exclusiveMinimum" in schema else \
        ("[", schema["minimum"]) if "minimum" in schema else None
    hi = (")", schema["exclusiveMaximum"]) if "exclusiveMaximum" in schema else \
        ("]", schema["maximum"]) if "maximum" in schema else None
    if lo and hi:
        return f"in {lo[0]}{_num(lo[1])}, {_num(hi[1])}{hi[0]}"
    if lo:
        return f"{'>' if lo[0] == '(' else '>='} {_num(lo[1])}"
    if hi:
        return f"{'<' if hi[0] == ')' else '<='} {_num(hi[1])}"
    return None


def _num(bound: float) -> str:
    """Integers in full (a seed's bound is 2**63 - 1, not 9.22337e+18), other numbers short."""
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def _in_range(value: float, schema: Dict[str, Any]) -> bool:
    return (value > schema.get("exclusiveMinimum", -math.inf) and value >= schema.get("minimum", -math.inf)
            and value < schema.get("exclusiveMaximum", math.inf) and value <= schema.get("maximum", math.inf))


def _resolve(ref: str, root: Dict[str, Any]) -> Dict[str, Any]:
    prefix = "#/$defs/"
    if not ref.startswith(prefix) or ref[len(prefix):] not in root.get("$defs", {}):
        raise ValueError(f"unsupported $ref {ref!r}: only {prefix}NAME of the same schema")
    return root["$defs"][ref[len(prefix):]]


def _problems(doc: Any, schema: Dict[str, Any], root: Dict[str, Any], path: str) -> Iterator[str]:
    if "$ref" in schema:
        yield from _problems(doc, _resolve(schema["$ref"], root), root, path)
        return
    types: List[str] = [schema["type"]] if isinstance(schema.get("type"), str) else list(schema.get("type", []))
    if types and not any(_is_type(doc, t) for t in types):
        yield (f"{_where(path)} must be {' or '.join(_TYPE_WORDS[t] for t in types)}, got "
               f"{_shown(doc)}")
        return
    if "enum" in schema and doc not in schema["enum"]:
        yield (f"unknown {_leaf(path)} {_shown(doc)} ({_where(path)}); choose one of "
               f"{', '.join(str(v) for v in schema['enum'])}")
        return
    if _is_type(doc, "number") and not _in_range(doc, schema):
        yield f"{_where(path)} must be {_range(schema)}, got {_shown(doc)}"
        return
    if isinstance(doc, list):
        if len(doc) < schema.get("minItems", 0):
            yield f"{_where(path)} must have at least {schema['minItems']} item(s)"
        if "items" in schema:
            for i, item in enumerate(doc):
                yield from _problems(item, schema["items"], root, f"{path}[{i}]")
    if isinstance(doc, dict):
        yield from _object_problems(doc, schema, root, path)


def _object_problems(doc: Dict[str, Any], schema: Dict[str, Any], root: Dict[str, Any], path: str
                     ) -> Iterator[str]:
    props = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key in schema.get("required", []):
        if key not in doc:
            yield f"missing field '{path + '.' if path else ''}{key}'"
    for key, value in doc.items():
        where = f"{path}.{key}" if path else str(key)
        if key in props:
            yield from _problems(value, props[key], root, where)
        elif extra is False:
            yield f"unknown field '{where}' (known: {', '.join(sorted(props))})"
        elif isinstance(extra, dict):
            yield from _problems(value, extra, root, where)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
