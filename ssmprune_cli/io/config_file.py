"""A small model-config file: the fields a checkpoint's shapes cannot tell (input normalisation, stride, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import yaml

from ssmprune_cli.errors import BadInputError


def read_model_config(path) -> Dict[str, Any]:
    """A YAML or JSON mapping of config field → value, e.g. `mean: [0.49, 0.48, 0.45]`."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())  # JSON is YAML
    except OSError as e:
        raise BadInputError(f"cannot read model config {p}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise BadInputError(f"model config {p} is not valid YAML/JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise BadInputError(f"model config {p} must be a mapping of config fields to values")
    return data
