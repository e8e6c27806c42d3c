"""Every KVStore implementation passes the same contract (see ``contract.py``)."""

from __future__ import annotations

from .contract import KVStoreContract


class TestKVStoreContract(KVStoreContract):
    """Runs :class:`KVStoreContract` over ``STORE_FACTORIES`` (memory, disk, redis, tiers)."""
