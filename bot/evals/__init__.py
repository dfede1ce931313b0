"""Evaluations: `bot eval ...`."""
