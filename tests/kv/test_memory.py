"""The host-memory store: byte budget from the engine, and pins that eviction cannot break."""

from __future__ import annotations

import random

import pytest
import torch

from stratacache.errors import ConfigError, InvalidEntryError
from stratacache.kv import BlockKey, HostMemoryKVStore, KVBlock

from .helpers import chain, make_block, same

BLOCK = make_block(0)
WEIGHT = BLOCK.nbytes + 32  # what the store weighs a block at
KEYS = chain(40)


def _store(blocks: int) -> HostMemoryKVStore:
    return HostMemoryKVStore(max_bytes=blocks * WEIGHT, rng=random.Random(7))


def _push_out(store: HostMemoryKVStore, victim: BlockKey) -> None:
    """Store blocks that the engine prefers over ``victim`` until it would be evicted."""
    for key in KEYS[4:30]:
        # Offered and read several times: the admission sketch then ranks them above the victim,
        # which was stored once and never read.
        for _ in range(3):
            store.store({key: make_block(1)})
            store.load([key])


def test_the_byte_budget_is_kept() -> None:
    store = _store(4)
    for key in KEYS[:30]:
        store.store({key: make_block(2)})
        assert store.resident_bytes <= store.max_bytes
    assert len(store) <= 4
    assert store.evictions >= 26


def test_without_a_pin_the_victim_is_evicted() -> None:
    # The control for the next test: the same sequence does evict the block.
    store = _store(4)
    store.store({KEYS[0]: BLOCK})
    _push_out(store, KEYS[0])
    assert store.lookup([KEYS[0]]) == 0
    assert store.load([KEYS[0]]) == []


def test_a_pinned_block_is_never_evicted_and_goes_when_unpinned() -> None:
    store = _store(4)
    store.store({KEYS[0]: BLOCK})
    assert store.pin([KEYS[0], KEYS[1]]) == [KEYS[0]]  # only present blocks are pinned
    _push_out(store, KEYS[0])
    assert store.lookup([KEYS[0]]) == 1
    (loaded,) = store.load([KEYS[0]])
    assert same(loaded, BLOCK)
    # The overshoot is exactly the pinned evictee.
    assert store.resident_bytes <= store.max_bytes + WEIGHT
    store.unpin([KEYS[0]])
    assert store.lookup([KEYS[0]]) == 0
    assert store.resident_bytes <= store.max_bytes


def test_pins_nest() -> None:
    store = _store(4)
    store.store({KEYS[0]: BLOCK})
    store.pin([KEYS[0]])
    store.pin([KEYS[0]])
    _push_out(store, KEYS[0])
    store.unpin([KEYS[0]])
    assert store.lookup([KEYS[0]]) == 1
    store.unpin([KEYS[0]])
    assert store.lookup([KEYS[0]]) == 0
    store.unpin([KEYS[0]])  # one unpin too many is harmless


def test_a_block_heavier_than_the_budget_is_declined() -> None:
    store = HostMemoryKVStore(max_bytes=WEIGHT - 1)
    assert store.store({KEYS[0]: BLOCK}) == 0
    assert store.stats().declined_blocks == 1
    assert store.lookup([KEYS[0]]) == 0


def test_delete_removes_pinned_blocks_too() -> None:
    store = _store(4)
    store.store({KEYS[0]: BLOCK})
    store.pin([KEYS[0]])
    assert store.delete([KEYS[0]]) == 1
    assert store.lookup([KEYS[0]]) == 0


def test_blocks_are_kept_as_the_same_tensors() -> None:
    # Host memory keeps the objects: no serialisation, no copy.
    store = _store(4)
    store.store({KEYS[0]: BLOCK})
    assert store.load([KEYS[0]])[0] is BLOCK


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None])
def test_a_bad_budget_is_a_config_error(bad: object) -> None:
    with pytest.raises(ConfigError):
        HostMemoryKVStore(max_bytes=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "parts",
    [
        ((), ()),
        ((torch.zeros(1, 2, 3),), ()),
        ((torch.zeros(2, 3),), (torch.zeros(2, 3),)),
        ((torch.zeros(1, 2, 3),), (torch.zeros(1, 4, 3),)),
        ((torch.zeros(1, 2, 3),), (torch.zeros(1, 2, 3, dtype=torch.float16),)),
        ([torch.zeros(1, 2, 3)], [torch.zeros(1, 2, 3)]),
        (("x",), ("y",)),
    ],
)
def test_malformed_blocks_are_refused(parts: tuple[object, object]) -> None:
    with pytest.raises(InvalidEntryError):
        KVBlock(*parts)  # type: ignore[arg-type]


def test_block_properties() -> None:
    block = make_block(0, layers=3, heads=2, tokens=5, dim=4, dtype=torch.float16)
    assert (block.layers, block.tokens, block.nbytes) == (3, 5, 3 * 2 * 2 * 5 * 4 * 2)
