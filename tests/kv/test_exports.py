"""``stratacache.kv`` exports exactly its public names, and importing it loads no heavy dependency."""

from __future__ import annotations

import subprocess
import sys

import stratacache.kv
import stratacache.kv.tiers


def test_every_exported_name_resolves_and_is_documented() -> None:
    for module in (stratacache.kv, stratacache.kv.tiers):
        for name in module.__all__:
            value = getattr(module, name)
            assert value.__doc__, f"{module.__name__}.{name}"
        assert sorted(dir(module)) == sorted(module.__all__)


def test_importing_the_package_and_the_cli_command_loads_no_heavy_dependency() -> None:
    code = (
        "import sys, stratacache.kv, stratacache.kv.cli, stratacache.kv.tiers; "
        "print(sorted(m for m in ('torch', 'transformers', 'safetensors', 'redis', "
        "'stratacache.engine', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
