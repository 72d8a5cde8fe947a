"""Placeholder until the family lands."""

FAMILY = "groupmamba"
