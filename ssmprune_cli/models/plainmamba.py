"""Placeholder until the family lands."""

FAMILY = "plainmamba"
