"""stratacache: a layered cache for LLM applications.

The public API is re-exported here; everything else is private. Importing the package is cheap: heavy
dependencies (the HTTP stack, torch, redis-py) load only when the feature that needs them is used.

>>> from stratacache import Store
>>> store = Store(max_entries=1000)
>>> store.set("greeting", b"hello")
True
>>> store.get("greeting")
b'hello'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stratacache._lazy import lazy_exports
from stratacache.errors import (
    ConfigError,
    EngineError,
    InvalidKeyError,
    InvalidTTLError,
    MissingExtraError,
    NotAnIntegerError,
    RecordError,
    RecordFormatError,
    RequestError,
    SignatureError,
    StrataError,
    TierError,
    TierUnavailableError,
    UpstreamError,
    UpstreamTimeoutError,
    WeigherError,
)

if TYPE_CHECKING:
    from stratacache.config import Settings
    from stratacache.engine import RemovalCause, Store, StoreStats
    from stratacache.llm.cache import LLMCache, RoutePolicy
    from stratacache.tiers import MemoryTier, SQLiteTier, Tier, TierChain, TierEntry

__version__ = "0.1.0"

# Public name -> the module that defines it. Resolved on first use (PEP 562) so that
# ``import stratacache`` stays cheap however many faces the package grows.
_LAZY = {
    "LLMCache": "stratacache.llm.cache",
    "MemoryTier": "stratacache.tiers",
    "RemovalCause": "stratacache.engine",
    "RoutePolicy": "stratacache.llm.cache",
    "SQLiteTier": "stratacache.tiers",
    "Settings": "stratacache.config",
    "Store": "stratacache.engine",
    "StoreStats": "stratacache.engine",
    "Tier": "stratacache.tiers",
    "TierChain": "stratacache.tiers",
    "TierEntry": "stratacache.tiers",
}


__all__ = [
    "ConfigError",
    "EngineError",
    "InvalidKeyError",
    "InvalidTTLError",
    "LLMCache",
    "MemoryTier",
    "MissingExtraError",
    "NotAnIntegerError",
    "RecordError",
    "RecordFormatError",
    "RemovalCause",
    "RequestError",
    "RoutePolicy",
    "SQLiteTier",
    "Settings",
    "SignatureError",
    "Store",
    "StoreStats",
    "StrataError",
    "Tier",
    "TierChain",
    "TierEntry",
    "TierError",
    "TierUnavailableError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "WeigherError",
    "__version__",
]

__getattr__, __dir__ = lazy_exports("stratacache", globals(), _LAZY, __all__)
