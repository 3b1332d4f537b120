"""Charger kinds, by the name a ``[[connector]]`` section gives as ``kind``.

Each entry is imported only when a config uses it, so a wall unit selling through a TWC
never imports the OCPP stack, and the reverse.
"""

from __future__ import annotations

import importlib
from typing import Any

from distributedcharge.chargers.base import Charger, ChargerEvent

KINDS: dict[str, str] = {
    "twc": "distributedcharge.chargers.twc:TwcCharger",
}


def load(kind: str) -> Any:
    """The adapter class for ``kind``; KeyError names the kinds there are."""
    try:
        module_name, _, class_name = KINDS[kind].partition(":")
    except KeyError:
        raise KeyError(f"unknown charger kind {kind!r}; known: {', '.join(sorted(KINDS))}") from None
    return getattr(importlib.import_module(module_name), class_name)


__all__ = ["KINDS", "Charger", "ChargerEvent", "load"]
