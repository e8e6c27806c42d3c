"""Lazy re-exports for package ``__init__`` modules (PEP 562).

A package lists its public names and the module that defines each; a name is imported on first
use and then cached in the package's namespace, so importing the package stays cheap however many
heavy modules stand behind it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, namespace: dict[str, Any], names: Mapping[str, str], public: Sequence[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return the ``__getattr__`` and ``__dir__`` for ``package``.

    ``namespace`` is the package's ``globals()``; ``names`` maps each lazily exported name to its
    module; ``public`` is the package's ``__all__``.
    """

    def getattr_(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # later look-ups skip this function
        return value

    def dir_() -> list[str]:
        return sorted(public)

    return getattr_, dir_
