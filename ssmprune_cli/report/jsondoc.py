"""JSON documents as ssmprune writes them (report.json, finetune.json, `--json`): standard JSON that any parser
reads. A measurement that is not a number (NaN, ±inf: e.g. a model with NaN weights) is written as null, never
as the `NaN` token that Python's json module would emit and strict parsers refuse."""

from __future__ import annotations

import json
import math
from typing import Any


def finite(doc: Any) -> Any:
    """`doc` with every non-finite float replaced by None (containers copied, everything else as is)."""
    if isinstance(doc, float):
        return doc if math.isfinite(doc) else None
    if isinstance(doc, dict):
        return {k: finite(v) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [finite(v) for v in doc]
    return doc


def dumps(doc: Any) -> str:
    """Indented standard JSON, no trailing newline."""
    return json.dumps(finite(doc), indent=2, allow_nan=False)
