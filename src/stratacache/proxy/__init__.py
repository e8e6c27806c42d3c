"""The caching proxy: an OpenAI-compatible HTTP endpoint over ``stratacache.llm.cache.LLMCache``.

Importing this package is cheap; :func:`create_app` loads the HTTP stack (the ``proxy`` extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stratacache.proxy.app import Proxy, build_proxy, create_app

__all__ = ["Proxy", "build_proxy", "create_app"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'stratacache.proxy' has no attribute {name!r}")
    try:
        from stratacache.proxy import app
    except ImportError as exc:
        from stratacache.errors import MissingExtraError

        raise MissingExtraError(exc.name or "starlette", "proxy") from exc
    value = getattr(app, name)
    globals()[name] = value
    return value
