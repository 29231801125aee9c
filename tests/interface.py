"""Which members of the model interface (nudge_local/engine/interface.py) a model leaves to the
interface's own stubs: a declared method it does not define answers None, silently."""

from __future__ import annotations

from typing import Protocol

from nudge_local.engine.interface import ScoringModel


def members() -> set[str]:
    """Every name the interface declares: its annotations, methods and properties."""
    declared = set(ScoringModel.__annotations__)
    declared |= {n for n in vars(ScoringModel) if not n.startswith("_") or n in ("__enter__", "__exit__")}
    return declared - {"_is_protocol", "_is_runtime_protocol"}


def unimplemented(model) -> list[str]:
    """The declared members that `model` neither holds itself nor has from a class of its own."""
    missing = []
    for name in sorted(members()):
        if name in getattr(model, "__dict__", {}):
            continue
        owner = next((c for c in type(model).__mro__ if name in vars(c)), None)
        if owner is None or owner in (ScoringModel, Protocol, object):
            missing.append(name)
    return missing
