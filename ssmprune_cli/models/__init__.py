"""Vision SSM families with official key layouts: Vim, PlainMamba, GroupMamba, VMamba."""

from ._registry import create_model, get_family, list_families, list_models, model_family, register_model

# Importing a family module registers it and its variants.
from . import groupmamba, plainmamba, vim, vmamba  # noqa: E402, F401  (after the registry they register in)

__all__ = ["create_model", "get_family", "list_families", "list_models", "model_family", "register_model"]
