"""The contract every :class:`~stratacache.kv.KVStore` must pass: memory, disk, Redis, tiers.

:class:`KVStoreContract` is a mixin of test methods; ``test_contract.py`` runs it against the
``kv_store`` fixture of ``conftest.py``, parametrised over every implementation. What it pins down:

* ``lookup`` counts *leading* blocks: a gap ends the count even if later blocks are present.
* ``load`` returns the leading run, bit-identical to what was stored (every dtype), in order.
* ``store`` returns how many of the offered blocks are held; storing a held key again is a no-op.
* ``delete`` returns how many were present; ``clear`` empties the store.
* Bad input raises :class:`~stratacache.errors.InvalidEntryError` and changes nothing.
* After ``close`` every call raises :class:`~stratacache.errors.TierError`; closing twice is fine.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from stratacache.errors import InvalidEntryError, TierError
from stratacache.kv import KVStore

from .helpers import blocks_for, chain, make_block, same

__all__ = ["KVStoreContract"]


class KVStoreContract:
    """Test methods every KV store passes, run against the ``kv_store`` fixture."""

    def test_empty_store_has_nothing(self, kv_store: KVStore) -> None:
        keys = chain(3)
        assert kv_store.lookup(keys) == 0
        assert kv_store.load(keys) == []
        assert kv_store.lookup([]) == 0
        assert kv_store.load([]) == []
        assert kv_store.store({}) == 0

    def test_stored_blocks_come_back_identical_in_order(self, kv_store: KVStore) -> None:
        keys = chain(4)
        blocks = blocks_for(keys)
        assert kv_store.store(blocks) == 4
        assert kv_store.lookup(keys) == 4
        loaded = kv_store.load(keys)
        assert len(loaded) == 4
        for key, block in zip(keys, loaded, strict=True):
            assert same(block, blocks[key])

    def test_lookup_and_load_stop_at_the_first_gap(self, kv_store: KVStore) -> None:
        keys = chain(5)
        blocks = blocks_for(keys)
        kv_store.store({k: blocks[k] for i, k in enumerate(keys) if i != 2})
        assert kv_store.lookup(keys) == 2
        assert [same(b, blocks[k]) for b, k in zip(kv_store.load(keys), keys, strict=False)] == [
            True,
            True,
        ]
        assert kv_store.lookup(keys[3:]) == 2
        assert kv_store.lookup(keys[2:]) == 0
        assert kv_store.load(keys[2:]) == []

    def test_storing_a_held_key_again_keeps_the_first_copy(self, kv_store: KVStore) -> None:
        key = chain(1)[0]
        first = make_block(1)
        assert kv_store.store({key: first}) == 1
        stored = kv_store.stats().stored_blocks
        # Same key, same content by construction; a store need not even look at the new copy.
        assert kv_store.store({key: make_block(1)}) == 1
        assert kv_store.stats().stored_blocks == stored
        assert same(kv_store.load([key])[0], first)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
    def test_every_dtype_round_trips_exactly(self, kv_store: KVStore, dtype: torch.dtype) -> None:
        key = chain(1)[0]
        block = make_block(7, dtype=dtype, layers=3, heads=4, dim=16)
        kv_store.store({key: block})
        (loaded,) = kv_store.load([key])
        assert same(loaded, block)
        assert loaded.keys[0].dtype == dtype

    def test_delete_and_clear(self, kv_store: KVStore) -> None:
        keys = chain(3)
        kv_store.store(blocks_for(keys))
        assert kv_store.delete([keys[1]]) == 1
        assert kv_store.delete([keys[1]]) == 0
        assert kv_store.lookup(keys) == 1
        kv_store.clear()
        assert kv_store.lookup(keys) == 0
        assert kv_store.load(keys) == []

    def test_load_counts_in_stats(self, kv_store: KVStore) -> None:
        keys = chain(2)
        blocks = blocks_for(keys)
        kv_store.store(blocks)
        before = kv_store.stats()
        kv_store.load(keys)
        after = kv_store.stats()
        assert after.loaded_blocks - before.loaded_blocks == 2
        assert after.loaded_bytes - before.loaded_bytes == sum(b.nbytes for b in blocks.values())
        assert after.stored_blocks >= 2

    @pytest.mark.parametrize(
        "bad",
        [
            {"not-a-key": None},
            {b"\0" * 32: None},
        ],
    )
    def test_bad_keys_are_refused_and_change_nothing(
        self, kv_store: KVStore, bad: dict[Any, Any]
    ) -> None:
        good = chain(1)[0]
        mixed: dict[Any, Any] = {good: make_block(0)}
        mixed.update({k: make_block(1) for k in bad})
        with pytest.raises(InvalidEntryError):
            kv_store.store(mixed)
        assert kv_store.lookup([good]) == 0
        with pytest.raises(InvalidEntryError):
            kv_store.lookup(list(bad))
        with pytest.raises(InvalidEntryError):
            kv_store.load(list(bad))
        with pytest.raises(InvalidEntryError):
            kv_store.delete(list(bad))

    def test_bad_values_are_refused_and_change_nothing(self, kv_store: KVStore) -> None:
        keys = chain(2)
        with pytest.raises(InvalidEntryError):
            kv_store.store({keys[0]: make_block(0), keys[1]: b"not a block"})  # type: ignore[dict-item]
        assert kv_store.lookup(keys) == 0
        with pytest.raises(InvalidEntryError):
            kv_store.store([(keys[0], make_block(0))])  # type: ignore[arg-type]
        with pytest.raises(InvalidEntryError):
            kv_store.lookup(keys[0].hex())  # type: ignore[arg-type]

    def test_closed_store_refuses_every_call(self, kv_store: KVStore) -> None:
        keys = chain(1)
        kv_store.store(blocks_for(keys))
        kv_store.close()
        kv_store.close()
        for call in (
            lambda: kv_store.lookup(keys),
            lambda: kv_store.load(keys),
            lambda: kv_store.store(blocks_for(keys)),
            lambda: kv_store.delete(keys),
            kv_store.clear,
        ):
            with pytest.raises(TierError):
                call()

    def test_is_a_kv_store_with_a_name(self, kv_store: KVStore) -> None:
        assert isinstance(kv_store, KVStore)
        assert kv_store.name in {"memory", "disk", "redis", "tiered"}
