"""Where KV blocks live: host memory, local disk, Redis, and tiers of them.

* :class:`HostMemoryKVStore`: tensors in this process, byte-bounded on the engine's store, with pins.
* :class:`DiskKVStore`: safetensors files in a directory, written atomically, verified on load.
* :class:`RedisKVStore`: binary values on a shared server, pipelined.
* :class:`TieredKVStore`: the above fastest first: lookup across them, load with promotion.

The implementations load on first use, so importing this package imports none of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stratacache._lazy import lazy_exports

if TYPE_CHECKING:
    from stratacache.kv.tiers.disk import DiskKVStore, ScanReport, SkippedFile
    from stratacache.kv.tiers.memory import HostMemoryKVStore
    from stratacache.kv.tiers.redis import RedisKVStore
    from stratacache.kv.tiers.tiered import TieredKVStore

__all__ = [
    "DiskKVStore",
    "HostMemoryKVStore",
    "RedisKVStore",
    "ScanReport",
    "SkippedFile",
    "TieredKVStore",
]

_LAZY = {
    "DiskKVStore": "stratacache.kv.tiers.disk",
    "ScanReport": "stratacache.kv.tiers.disk",
    "SkippedFile": "stratacache.kv.tiers.disk",
    "HostMemoryKVStore": "stratacache.kv.tiers.memory",
    "RedisKVStore": "stratacache.kv.tiers.redis",
    "TieredKVStore": "stratacache.kv.tiers.tiered",
}


__getattr__, __dir__ = lazy_exports("stratacache.kv.tiers", globals(), _LAZY, __all__)
