"""Deep merge of configuration fragments (pure).

Objects merge key by key, recursively; anything else (scalar, array, null) from a later
fragment replaces what came before. Inputs are never modified.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``; returns a new dict."""
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = value
    return merged


def merge_fragments(configs: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Merge fragments given lowest priority first; None when there is none."""
    merged: dict[str, Any] | None = None
    for config in configs:
        merged = deep_merge(merged or {}, config)
    return merged
