"""Placeholder until the family lands."""

FAMILY = "vim"
