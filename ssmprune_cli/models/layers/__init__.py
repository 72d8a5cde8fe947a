"""Pieces the model families share, one small module each."""

from .token_layout import CONV_FILLS, DELTA_FILLS, TokenLayout

__all__ = ["CONV_FILLS", "DELTA_FILLS", "TokenLayout"]
