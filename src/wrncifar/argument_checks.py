"""Checks for constructor arguments, raising one clear error at the point where a value enters."""

from __future__ import annotations


def require_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
