"""The public API of stratacache.semantic is complete, documented, and cheap to import."""

from __future__ import annotations

import inspect
import subprocess
import sys

from stratacache import semantic


def test_all_is_complete_and_documented() -> None:
    public = {
        n for n, v in vars(semantic).items() if not n.startswith("_") and not inspect.ismodule(v)
    }
    assert public - {"annotations"} == set(semantic.__all__)
    for name in semantic.__all__:
        obj = getattr(semantic, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), name


def test_import_loads_no_heavy_dependency() -> None:
    code = (
        "import sys, stratacache.semantic; "
        "print(sorted(m for m in ('numpy', 'torch', 'sentence_transformers', 'usearch', 'httpx')"
        " if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
