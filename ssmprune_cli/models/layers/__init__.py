"""Pieces the model families share, one small module each."""

from .reference_mode import alignment_reference, reference_active
from .token_layout import CONV_FILLS, DELTA_FILLS, TokenLayout

__all__ = ["CONV_FILLS", "DELTA_FILLS", "TokenLayout", "alignment_reference", "reference_active"]
