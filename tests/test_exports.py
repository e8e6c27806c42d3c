"""The package root exports exactly its public API, and importing it stays cheap."""

from __future__ import annotations

import subprocess
import sys

import pytest

import stratacache
import stratacache.errors


def test_every_exported_name_resolves_and_is_documented() -> None:
    for name in stratacache.__all__:
        value = getattr(stratacache, name)
        if isinstance(value, type):
            assert value.__doc__, f"{name} has no docstring"
    assert sorted(dir(stratacache)) == sorted(stratacache.__all__)


def test_every_error_class_is_exported_from_the_root() -> None:
    errors = {
        name
        for name, value in vars(stratacache.errors).items()
        if isinstance(value, type) and issubclass(value, stratacache.errors.StrataError)
    }
    missing = errors - set(stratacache.__all__)
    # Tier-internal validation errors are reachable through stratacache.errors.
    assert missing <= {"InvalidEntryError"}, missing


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        _ = stratacache.NoSuchThing  # type: ignore[attr-defined]


def test_importing_the_package_loads_nothing_heavy() -> None:
    heavy = ("starlette", "httpx", "aiohttp", "sqlite3", "torch", "orjson", "msgpack", "redis")
    code = f"import sys, stratacache; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
