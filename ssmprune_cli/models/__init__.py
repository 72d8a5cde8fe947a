"""Vision SSM families with official key layouts: Vim, PlainMamba, GroupMamba."""

from ._registry import create_model, get_family, list_families, list_models, model_family, register_model

__all__ = ["create_model", "get_family", "list_families", "list_models", "model_family", "register_model"]
