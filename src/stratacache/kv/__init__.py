"""The KV tier: attention key/value blocks stored by token prefix, loaded instead of recomputed.

* :mod:`stratacache.kv.base`: :class:`BlockKey`, :class:`KVBlock` and the :class:`KVStore` protocol.
* :mod:`stratacache.kv.keys`: the SHA-256 hash chain that names blocks (:func:`block_keys`).
* :mod:`stratacache.kv.codec`: the safetensors format of a stored block, with its digest.
* :mod:`stratacache.kv.tiers`: host memory, local disk, Redis, and a tiered store over them.
* :mod:`stratacache.kv.transformers_adapter`: :class:`PrefixCachedLM`, a Hugging Face causal LM
  that loads cached prefixes and computes only the rest.

Importing this package imports neither torch nor transformers nor redis-py; they load when the
class that needs them is used (the ``kv`` extra, and ``redis`` for the Redis store).

>>> from stratacache.kv import ChainSeed, block_keys
>>> seed = ChainSeed(model="m@1", tokenizer="t@1", dtype="float16", layout="l", block_size=2)
>>> [k.hex()[:8] for k in block_keys(seed, [1, 2, 3])] == [block_keys(seed, [1, 2])[0].hex()[:8]]
True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stratacache._lazy import lazy_exports
from stratacache.kv.base import BlockKey, KVBlock, KVStats, KVStore, PinnableKVStore
from stratacache.kv.keys import ChainSeed, block_keys, chain_block

if TYPE_CHECKING:
    from stratacache.kv.codec import BlockCodec
    from stratacache.kv.tiers import (
        DiskKVStore,
        HostMemoryKVStore,
        RedisKVStore,
        ScanReport,
        SkippedFile,
        TieredKVStore,
    )
    from stratacache.kv.transformers_adapter import (
        KVLayout,
        Prefill,
        PrefillTimings,
        PrefixCachedLM,
        weights_fingerprint,
    )

__all__ = [
    "BlockCodec",
    "BlockKey",
    "ChainSeed",
    "DiskKVStore",
    "HostMemoryKVStore",
    "KVBlock",
    "KVLayout",
    "KVStats",
    "KVStore",
    "PinnableKVStore",
    "Prefill",
    "PrefillTimings",
    "PrefixCachedLM",
    "RedisKVStore",
    "ScanReport",
    "SkippedFile",
    "TieredKVStore",
    "block_keys",
    "chain_block",
    "weights_fingerprint",
]

_LAZY = {
    "BlockCodec": "stratacache.kv.codec",
    "DiskKVStore": "stratacache.kv.tiers.disk",
    "ScanReport": "stratacache.kv.tiers.disk",
    "SkippedFile": "stratacache.kv.tiers.disk",
    "HostMemoryKVStore": "stratacache.kv.tiers.memory",
    "RedisKVStore": "stratacache.kv.tiers.redis",
    "TieredKVStore": "stratacache.kv.tiers.tiered",
    "KVLayout": "stratacache.kv.transformers_adapter",
    "Prefill": "stratacache.kv.transformers_adapter",
    "PrefillTimings": "stratacache.kv.transformers_adapter",
    "PrefixCachedLM": "stratacache.kv.transformers_adapter",
    "weights_fingerprint": "stratacache.kv.transformers_adapter",
}


__getattr__, __dir__ = lazy_exports("stratacache.kv", globals(), _LAZY, __all__)
