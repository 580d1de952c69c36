"""Modules that load on first use, so a command pays only for what it touches."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

__all__ = ["lazy"]


def lazy(name: str) -> ModuleType:
    """The module ``name``, run on first attribute access rather than now.

    redis-py (with asyncio) and psutil cost 100 ms to import: ``--help``, ``--version``
    and ``start`` need neither. Callers bind the result under ``if not TYPE_CHECKING``
    so type checkers still see the real module.
    """
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ImportError(f"no module named {name!r}")
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module
