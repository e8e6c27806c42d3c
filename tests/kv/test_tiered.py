"""The tiered store: lookup across tiers, promotion on load, pins during load, sightings."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from stratacache.errors import ConfigError
from stratacache.kv import DiskKVStore, HostMemoryKVStore, TieredKVStore

from .helpers import blocks_for, chain, make_block, same

KEYS = chain(6)
WEIGHT = make_block(0).nbytes + 32


def test_lookup_counts_blocks_spread_over_tiers(tmp_path: Path) -> None:
    memory, disk = HostMemoryKVStore(max_bytes=1 << 20), DiskKVStore(tmp_path)
    blocks = blocks_for(KEYS)
    memory.store({k: blocks[k] for k in (KEYS[0], KEYS[2], KEYS[5])})
    disk.store({k: blocks[k] for k in (KEYS[1], KEYS[3])})
    tiered = TieredKVStore([memory, disk])
    # 0 memory, 1 disk, 2 memory, 3 disk, 4 nowhere.
    assert tiered.lookup(KEYS) == 4
    loaded = tiered.load(KEYS)
    assert [same(b, blocks[k]) for b, k in zip(loaded, KEYS, strict=False)] == [True] * 4
    assert memory.lookup(KEYS) == 4  # 1 and 3 were promoted
    assert tiered.promoted_blocks == 2


def test_store_writes_through_and_a_restart_serves_from_disk(tmp_path: Path) -> None:
    blocks = blocks_for(KEYS)
    first = TieredKVStore([HostMemoryKVStore(max_bytes=1 << 20), DiskKVStore(tmp_path)])
    assert first.store(blocks) == 6
    first.close()
    memory = HostMemoryKVStore(max_bytes=1 << 20)
    second = TieredKVStore([memory, DiskKVStore(tmp_path)])
    assert memory.lookup(KEYS) == 0
    assert second.lookup(KEYS) == 6
    assert all(same(b, blocks[k]) for b, k in zip(second.load(KEYS), KEYS, strict=True))
    assert memory.lookup(KEYS) == 6


def test_a_load_pins_what_its_own_promotions_would_evict(tmp_path: Path) -> None:
    # Memory holds 3 blocks, the even ones; the odd ones are on disk. Loading all five promotes
    # blocks 1 and 3 into memory before the load reaches block 4, and the promotions evict.
    keys = chain(5)
    blocks = blocks_for(keys)
    memory = HostMemoryKVStore(max_bytes=3 * WEIGHT, rng=random.Random(1))
    disk = DiskKVStore(tmp_path)
    disk.store({k: blocks[k] for k in keys[1::2]})
    for _ in range(5):  # teach the admission sketch that the odd blocks are popular
        for k in keys[1::2]:
            memory.store({k: blocks[k]})
            memory.load([k])
            memory.delete([k])
    memory.store({k: blocks[k] for k in keys[0::2]})
    assert memory.lookup(keys[4:]) == 1
    tiered = TieredKVStore([memory, disk])
    assert tiered.lookup(keys) == 5
    loaded = tiered.load(keys)
    assert len(loaded) == 5
    assert all(same(b, blocks[k]) for b, k in zip(loaded, keys, strict=True))
    # Block 4 was evicted by a promotion that happened before the load read it, and the load
    # still returned it: the pin kept it readable. The pins are released now.
    assert memory.lookup(keys[4:]) == 0
    assert memory.resident_bytes <= memory.max_bytes


def test_min_sightings_defers_storing(tmp_path: Path) -> None:
    tiered = TieredKVStore(
        [HostMemoryKVStore(max_bytes=1 << 20), DiskKVStore(tmp_path)], min_sightings=3
    )
    blocks = blocks_for(KEYS[:2])
    assert tiered.store(blocks) == 0
    assert tiered.store(blocks) == 0
    assert tiered.lookup(KEYS) == 0
    assert tiered.stats().declined_blocks == 4
    assert tiered.store(blocks) == 2
    assert tiered.lookup(KEYS) == 2
    assert tiered.stats().stored_blocks == 2
    assert len(list(tmp_path.rglob("*.safetensors"))) == 2


def test_a_corrupt_block_in_a_slow_tier_ends_the_run(tmp_path: Path) -> None:
    disk = DiskKVStore(tmp_path)
    blocks = blocks_for(KEYS)
    disk.store(blocks)
    hexkey = KEYS[2].hex()
    path = tmp_path / hexkey[:2] / f"{hexkey}.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    tiered = TieredKVStore([HostMemoryKVStore(max_bytes=1 << 20), disk])
    assert len(tiered.load(KEYS)) == 2
    assert tiered.stats().corrupt_blocks == 1
    assert set(tiered.tier_stats()) == {"memory", "disk"}


def test_configuration_errors() -> None:
    with pytest.raises(ConfigError):
        TieredKVStore([])
    with pytest.raises(ConfigError):
        TieredKVStore([object()])  # type: ignore[list-item]
    with pytest.raises(ConfigError):
        TieredKVStore([HostMemoryKVStore(max_bytes=10)], min_sightings=0)


def test_concurrent_loads_and_stores_return_only_the_right_blocks(tmp_path: Path) -> None:
    # A memory tier that holds a quarter of the blocks, so loads promote and evict all the time.
    keys = chain(16)
    blocks = blocks_for(keys)
    memory = HostMemoryKVStore(max_bytes=4 * WEIGHT, rng=random.Random(5))
    tiered = TieredKVStore([memory, DiskKVStore(tmp_path)])
    tiered.store(blocks)
    errors: list[str] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(40):
            start = rng.randrange(0, 12)
            run = keys[start : start + rng.randrange(1, 5)]
            if rng.random() < 0.3:
                tiered.store({k: blocks[k] for k in run})
            # Chains are prefixes, but the store does not know that: any run is a valid request.
            loaded = tiered.load(run)
            if len(loaded) != len(run):
                errors.append(f"short load {len(loaded)} of {len(run)}")
            errors.extend(
                f"wrong block {keys.index(k)}"
                for b, k in zip(loaded, run, strict=False)
                if not same(b, blocks[k])
            )

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert memory.resident_bytes <= memory.max_bytes
