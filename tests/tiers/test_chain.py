"""TierChain beyond the contract: backfill, lookup's tier name, tiers that go down, counts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stratacache.errors import ConfigError, TierError, TierUnavailableError
from stratacache.tiers import MemoryTier, SQLiteTier, Tier, TierChain, TierEntry

from .contract import FakeClock, entry


class DictTier:
    """A small but real tier on a dict, that can be switched off like a backend that went down.

    While ``down`` every call raises :class:`TierUnavailableError`, as the Redis tier does when its
    server is unreachable. ``gate``, when set, makes ``get`` wait for it, like a slow network.
    """

    def __init__(self, name: str, clock: FakeClock) -> None:
        self.name = name
        self.down = False
        self.gate: asyncio.Event | None = None
        self._clock = clock
        self._data: dict[str, TierEntry] = {}

    def _check(self) -> None:
        if self.down:
            raise TierUnavailableError(f"{self.name}: connection refused")

    async def get(self, key: str) -> TierEntry | None:
        self._check()
        found = self._data.get(key)
        if found is not None and found.expired(self._clock()):
            found = None
        if self.gate is not None:
            await self.gate.wait()  # the answer is decided; it is on its way back
        return found

    async def set(self, key: str, entry: TierEntry) -> bool:
        self._check()
        if entry.expired(self._clock()):
            self._data.pop(key, None)
            return False
        self._data[key] = entry
        return True

    async def delete(self, key: str) -> bool:
        self._check()
        return self._data.pop(key, None) is not None

    async def delete_tag(self, tag: str) -> int:
        self._check()
        return self._remove([k for k, e in self._data.items() if tag in e.tags])

    async def delete_namespace(self, namespace: str) -> int:
        self._check()
        return self._remove([k for k, e in self._data.items() if e.namespace == namespace])

    def _remove(self, keys: list[str]) -> int:
        for key in keys:
            del self._data[key]
        return len(keys)

    async def clear(self) -> None:
        self._check()
        self._data.clear()

    async def close(self) -> None:
        self._data.clear()


class BrokenTier(DictTier):
    """A tier that fails with an error that is not an outage (a corrupt file, say)."""

    async def get(self, key: str) -> TierEntry | None:
        raise TierError(f"{self.name} is corrupt")


@pytest.fixture
async def layers(clock: FakeClock, tmp_path: Path) -> AsyncIterator[tuple[MemoryTier, SQLiteTier]]:
    memory = MemoryTier(clock=clock)
    sqlite = SQLiteTier(tmp_path / "cache.sqlite3", clock=clock)
    yield memory, sqlite
    await memory.close()
    await sqlite.close()


@pytest.fixture
def chain(layers: tuple[MemoryTier, SQLiteTier], clock: FakeClock) -> TierChain:
    return TierChain(layers, clock=clock)


def test_a_chain_is_a_tier(chain: TierChain) -> None:
    assert isinstance(chain, Tier)
    assert chain.name == "memory+sqlite"
    assert [tier.name for tier in chain.tiers] == ["memory", "sqlite"]
    assert dict(chain.health) == {"memory": True, "sqlite": True}


def test_bad_chains(clock: FakeClock) -> None:
    with pytest.raises(ConfigError, match="at least one"):
        TierChain([])
    with pytest.raises(ConfigError, match="distinct names"):
        TierChain([DictTier("x", clock), DictTier("x", clock)])


async def test_a_hit_below_is_copied_up_with_the_same_expiry(
    chain: TierChain, layers: tuple[MemoryTier, SQLiteTier], clock: FakeClock
) -> None:
    memory, sqlite = layers
    stored = entry(b"durable", expires_at=clock() + 30, tags=("t",), namespace="n")
    await sqlite.set("k", stored)  # as after a restart: only the durable tier has it
    assert await chain.lookup("k") == (stored, "sqlite")
    assert await memory.get("k") == stored  # same bytes, tags, namespace and expires_at
    assert await chain.lookup("k") == (stored, "memory")
    clock.advance(30)
    # The copy expires with the original, not a full TTL after the copy was made.
    assert await memory.get("k") is None
    assert await chain.lookup("k") is None


async def test_lookup_of_a_missing_key(chain: TierChain) -> None:
    assert await chain.lookup("nothing") is None


async def test_set_writes_every_tier(
    chain: TierChain, layers: tuple[MemoryTier, SQLiteTier]
) -> None:
    stored = entry(b"v", tags=("t",))
    assert await chain.set("k", stored)
    for tier in layers:
        assert await tier.get("k") == stored


async def test_set_is_true_when_only_a_slower_tier_keeps_it(
    tmp_path: Path, clock: FakeClock
) -> None:
    small = MemoryTier(max_bytes=1000, clock=clock)
    sqlite = SQLiteTier(tmp_path / "c.sqlite3", clock=clock)
    chain = TierChain([small, sqlite], clock=clock)
    try:
        big = entry(bytes(5000))
        assert await chain.set("big", big) is True
        assert await small.get("big") is None  # the L0 declined it
        assert await chain.lookup("big") == (big, "sqlite")  # the backfill is declined again
        assert await small.get("big") is None
    finally:
        await chain.close()


async def test_invalidation_counts_are_the_largest_not_the_sum(
    chain: TierChain, layers: tuple[MemoryTier, SQLiteTier]
) -> None:
    memory, sqlite = layers
    for i in range(3):
        await chain.set(f"k{i}", entry(tags=("t",), namespace="n"))
    await sqlite.set("only-below", entry(tags=("t",), namespace="n"))
    assert await chain.delete_tag("t") == 4
    for i in range(3):
        await chain.set(f"k{i}", entry(namespace="n"))
    await memory.set("only-above", entry(namespace="n"))
    assert await chain.delete_namespace("n") == 4
    await sqlite.set("k", entry())
    assert await chain.delete("k") is True
    assert await chain.delete("k") is False


async def test_clear_and_close_reach_every_tier(
    chain: TierChain, layers: tuple[MemoryTier, SQLiteTier]
) -> None:
    await chain.set("k", entry())
    await chain.clear()
    for tier in layers:
        assert await tier.get("k") is None
    await chain.close()
    for tier in layers:
        with pytest.raises(TierError, match="closed"):
            await tier.get("k")


# ------------------------------------------------------------------------------ outages


async def test_a_tier_that_is_down_is_skipped_and_reported(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    memory = MemoryTier(clock=clock)
    remote = DictTier("redis", clock)
    chain = TierChain([memory, remote], clock=clock)
    await chain.set("before", entry(b"1"))
    remote.down = True
    with caplog.at_level(logging.INFO, logger="stratacache.tiers.chain"):
        assert await chain.set("during", entry(b"2")) is True  # the L0 kept it
        assert await chain.get("during") == entry(b"2")
        assert await chain.get("before") == entry(b"1")
        assert await chain.get("missing") is None  # a miss everywhere reachable, not an error
        assert await chain.lookup("missing") is None
        assert chain.health == {"memory": True, "redis": False}
        # One warning for the whole outage, not one per call.
        down = [r for r in caplog.records if "unavailable" in r.getMessage()]
        assert len(down) == 1
        assert down[0].levelno == logging.WARNING
        assert "redis" in down[0].getMessage()

        remote.down = False
        assert await chain.get("missing") is None
        assert chain.health == {"memory": True, "redis": True}
        up = [r for r in caplog.records if "available again" in r.getMessage()]
        assert len(up) == 1
    assert await remote.get("during") is None  # it missed that write while down
    await chain.close()


async def test_an_invalidation_with_a_tier_down_is_applied_then_reported(
    clock: FakeClock,
) -> None:
    memory = MemoryTier(clock=clock)
    remote = DictTier("redis", clock)
    chain = TierChain([memory, remote], clock=clock)
    for key in ("a", "b", "c"):
        await chain.set(key, entry(tags=("t",), namespace="n"))
    remote.down = True
    with pytest.raises(TierUnavailableError):
        await chain.delete_tag("t")
    assert await memory.get("a") is None  # the reachable tiers were invalidated anyway
    with pytest.raises(TierUnavailableError):
        await chain.delete("b")
    with pytest.raises(TierUnavailableError):
        await chain.clear()
    assert chain.health["redis"] is False
    remote.down = False
    assert await chain.delete_namespace("n") == 3  # the remote still had all three
    assert chain.health["redis"] is True


async def test_every_tier_down_is_a_miss(clock: FakeClock) -> None:
    one, two = DictTier("one", clock), DictTier("two", clock)
    chain = TierChain([one, two], clock=clock)
    one.down = two.down = True
    assert await chain.set("k", entry()) is False
    assert await chain.lookup("k") is None
    assert chain.health == {"one": False, "two": False}


async def test_a_slow_tier_down_does_not_stop_backfill_from_below(clock: FakeClock) -> None:
    l0, l1, l2 = DictTier("l0", clock), DictTier("l1", clock), DictTier("l2", clock)
    chain = TierChain([l0, l1, l2], clock=clock)
    stored = entry(b"deep", expires_at=clock() + 5)
    await l2.set("k", stored)
    l1.down = True
    assert await chain.lookup("k") == (stored, "l2")
    assert await l0.get("k") == stored
    assert chain.health == {"l0": True, "l1": False, "l2": True}


async def test_other_errors_propagate(clock: FakeClock) -> None:
    chain = TierChain([DictTier("l0", clock), BrokenTier("bad", clock)], clock=clock)
    with pytest.raises(TierError, match="corrupt"):
        await chain.get("k")
    assert chain.health["bad"] is True  # not an outage


# --------------------------------------------------------------------------- concurrency


async def test_a_write_during_a_slow_read_is_not_undone_by_backfill(clock: FakeClock) -> None:
    memory = MemoryTier(clock=clock)
    remote = DictTier("redis", clock)
    chain = TierChain([memory, remote], clock=clock)
    await remote.set("k", entry(b"old"))
    remote.gate = asyncio.Event()
    reading = asyncio.create_task(chain.lookup("k"))
    await asyncio.sleep(0)  # the read is now waiting on the remote
    await chain.delete("k")  # the invalidation goes through meanwhile (the remote answers it)
    remote.gate.set()
    assert await reading == (entry(b"old"), "redis")  # read before the delete: fine to return
    assert await memory.get("k") is None  # but not copied into L0 after the delete
    remote.gate = None
    assert await chain.lookup("k") is None


async def test_an_entry_that_expired_on_the_way_is_a_miss(clock: FakeClock) -> None:
    memory = MemoryTier(clock=clock)
    remote = DictTier("redis", clock)
    chain = TierChain([memory, remote], clock=clock)
    await remote.set("k", entry(expires_at=clock() + 1))
    remote.gate = asyncio.Event()
    reading = asyncio.create_task(chain.lookup("k"))
    await asyncio.sleep(0)  # the remote found it live and is answering
    clock.advance(1)
    remote.gate.set()
    assert await reading is None
    assert "k" not in memory.store
