"""MemoryTier beyond the contract: its indexes follow the store's evictions and expiries."""

from __future__ import annotations

import pytest

from stratacache.engine import Store
from stratacache.errors import ConfigError
from stratacache.tiers import MemoryTier

from .contract import FakeClock, entry


def _indexed(tier: MemoryTier) -> set[str]:
    """Every key the tier's indexes mention (private state: the point is that it does not leak)."""
    keys = set(tier._entries)
    for index in (tier._by_tag, tier._by_namespace):
        for members in index.values():
            assert members, "an empty index set was left behind"
            keys |= members
    return keys


async def test_evictions_leave_the_indexes(clock: FakeClock) -> None:
    tier = MemoryTier(max_entries=50, clock=clock)
    for i in range(500):
        assert isinstance(
            await tier.set(f"k{i}", entry(tags=("all", f"own{i}"), namespace="n")), bool
        )
    resident = set(tier.store.keys())
    assert 0 < len(resident) <= 50
    assert _indexed(tier) == resident
    assert await tier.delete_tag("all") == len(resident)
    assert _indexed(tier) == set()
    assert len(tier.store) == 0


async def test_expiries_leave_the_indexes(clock: FakeClock) -> None:
    tier = MemoryTier(clock=clock)
    for i in range(100):
        await tier.set(f"k{i}", entry(expires_at=clock() + 10, tags=(f"t{i}",), namespace=f"n{i}"))
    await tier.set("forever", entry(tags=("t0",)))
    clock.advance(3600)
    await tier.set("trigger", entry())  # a write lets the store's timer wheel expire what is due
    assert len(tier.store) == 2
    assert _indexed(tier) == {"forever", "trigger"}


async def test_an_entry_over_the_byte_budget_is_declined(clock: FakeClock) -> None:
    tier = MemoryTier(max_bytes=10_000, clock=clock)
    await tier.set("k", entry(b"small", tags=("t",)))
    assert await tier.set("k", entry(bytes(20_000), tags=("t",))) is False
    assert await tier.get("k") is None  # and the previous entry is gone
    assert _indexed(tier) == set()


async def test_the_weight_is_the_value_plus_a_small_overhead(clock: FakeClock) -> None:
    tier = MemoryTier(max_bytes=1 << 20, clock=clock)
    stored = entry(bytes(1000), tags=("ab",), namespace="ns")
    await tier.set("key", stored)
    weight = MemoryTier.weigh("key", stored)
    assert tier.store.stats().bytes == weight
    assert 1000 < weight <= 1000 + 256


async def test_the_store_ttl_matches_the_entry(clock: FakeClock) -> None:
    tier = MemoryTier(clock=clock)
    await tier.set("k", entry(expires_at=clock() + 42))
    assert tier.store.ttl("k") == pytest.approx(42)
    await tier.set("forever", entry())
    assert tier.store.ttl("forever") is None


async def test_a_store_can_be_passed_in(clock: FakeClock) -> None:
    store = Store(max_entries=100, weigher=MemoryTier.weigh, clock=clock)
    tier = MemoryTier(store, clock=clock)
    assert tier.store is store
    await tier.set("k", entry(b"v", tags=("t",)))
    assert store.peek("k") == entry(b"v", tags=("t",))
    assert await tier.delete_tag("t") == 1


async def test_a_passed_store_is_swept_of_evicted_keys(clock: FakeClock) -> None:
    # Without its own eviction listener on the store, the tier sweeps its indexes as they grow.
    store = Store(max_entries=100, weigher=MemoryTier.weigh, clock=clock)
    tier = MemoryTier(store, clock=clock)
    for i in range(5000):
        await tier.set(f"k{i}", entry(tags=("all",)))
    assert len(tier._entries) <= 2048
    resident = set(store.keys())
    assert resident <= _indexed(tier)
    assert await tier.delete_tag("all") == len(resident)
    assert len(store) == 0


async def test_the_tier_clock_decides_expiry(clock: FakeClock) -> None:
    frozen = FakeClock()  # the store's clock never moves
    tier = MemoryTier(Store(weigher=MemoryTier.weigh, clock=frozen), clock=clock)
    await tier.set("k", entry(expires_at=clock() + 10, tags=("t",)))
    clock.advance(10)
    assert await tier.get("k") is None
    assert "k" not in tier.store
    assert _indexed(tier) == set()


def test_limits_go_to_the_store_not_beside_it() -> None:
    with pytest.raises(ConfigError):
        MemoryTier(Store(), max_entries=10)
    with pytest.raises(ConfigError):
        MemoryTier(max_entries=0)


async def test_close_empties_the_tier(clock: FakeClock) -> None:
    tier = MemoryTier(clock=clock)
    await tier.set("k", entry(tags=("t",)))
    await tier.close()
    assert len(tier.store) == 0
    assert _indexed(tier) == set()
    assert "closed=True" in repr(tier)
