"""``stratacache.tiers`` exports exactly its public names, and importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import stratacache.tiers


def test_every_exported_name_resolves_and_classes_have_docstrings() -> None:
    for name in stratacache.tiers.__all__:
        value = getattr(stratacache.tiers, name)
        if isinstance(value, type):  # Clock is a type alias: documented where it is defined
            assert value.__doc__, name
    assert sorted(dir(stratacache.tiers)) == sorted(stratacache.tiers.__all__)


def test_importing_the_protocol_loads_no_implementation() -> None:
    code = (
        "import sys, stratacache.tiers; "
        "print(sorted(m for m in ('sqlite3', 'stratacache.engine') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
