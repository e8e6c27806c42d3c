"""The contract every :class:`~stratacache.tiers.Tier` must pass: memory, SQLite, chains, Redis.

:class:`TierContract` is a mixin of test methods. ``test_contract.py`` runs it against the ``tier``
fixture of ``conftest.py``, which is parametrised over every implementation; a new tier joins by
adding a factory to ``TIER_FACTORIES`` there, and must then pass all of this unchanged.

What the contract pins down, beyond "get returns what set stored":

* Expiry is decided by the tier's injected clock (the ``clock`` fixture, a :class:`FakeClock`), at
  ``expires_at`` inclusive. A tier backed by a server with its own TTLs (Redis) must still compare
  ``expires_at`` with its clock on every read; a server-side TTL can only be a garbage-collection
  backstop, set as a duration from that clock (``expires_at - clock()``) and never earlier than the
  entry's expiry. The fake clock starts near 2023 and moves without real time passing.
* ``set`` of an entry that has already expired returns ``False`` and leaves the key absent, even if
  a live entry was there: a replaced entry is never served.
* A replacement replaces everything: value, expiry, tags and namespace. Old tags and the old
  namespace no longer reach the key.
* ``delete`` returns whether a *live* entry was removed; ``delete_tag`` and ``delete_namespace``
  return how many live entries they removed (an expired entry not yet purged does not count).
* Keys, tags and namespaces are compared exactly, as Unicode code points: no normalisation, no case
  folding, no trimming, no prefix matching.
* Values are opaque bytes: every byte value, empty, and 1 MiB come back identical.
* Bad input (a non-``str`` key, a non-``bytes`` value, a NaN expiry, a lone surrogate) raises
  :class:`~stratacache.errors.InvalidEntryError` and changes nothing.
* After ``close`` every call raises :class:`~stratacache.errors.TierError`; closing twice is fine.
"""

from __future__ import annotations

import asyncio
import math
import random
from typing import Any

import pytest

from stratacache.errors import InvalidEntryError, TierError
from stratacache.tiers import Tier, TierEntry

__all__ = ["START", "FakeClock", "TierContract"]

START = 1_700_000_000.0
"""Where a :class:`FakeClock` starts: 2023-11-14, a realistic Unix time."""


class FakeClock:
    """A wall clock that moves only when told to: ``clock()`` reads it, ``advance()`` moves it."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self.now += seconds


def entry(
    value: bytes = b"v",
    *,
    expires_at: float | None = None,
    tags: tuple[str, ...] = (),
    namespace: str = "",
) -> TierEntry:
    """A :class:`TierEntry` with tags given as a tuple, for brevity."""
    return TierEntry(value, expires_at, frozenset(tags), namespace)


class TierContract:
    """The behaviour every tier shares. Each test receives a fresh, empty ``tier``."""

    # ------------------------------------------------------------------ basics

    async def test_satisfies_the_protocol(self, tier: Tier) -> None:
        assert isinstance(tier, Tier)
        assert isinstance(tier.name, str)
        assert tier.name

    async def test_get_of_a_missing_key_is_none(self, tier: Tier) -> None:
        assert await tier.get("missing") is None

    async def test_set_then_get_returns_an_equal_entry(self, tier: Tier, clock: FakeClock) -> None:
        stored = entry(b"answer", expires_at=clock() + 60, tags=("a", "b"), namespace="ns")
        assert await tier.set("k", stored) is True
        assert await tier.get("k") == stored

    async def test_an_entry_without_expiry_or_tags_round_trips(self, tier: Tier) -> None:
        assert await tier.set("k", TierEntry(b"plain"))
        assert await tier.get("k") == TierEntry(b"plain", None, frozenset(), "")

    async def test_keys_are_independent(self, tier: Tier) -> None:
        await tier.set("a", entry(b"1"))
        await tier.set("b", entry(b"2"))
        assert await tier.get("a") == entry(b"1")
        assert await tier.get("b") == entry(b"2")

    async def test_set_replaces_value_expiry_tags_and_namespace(
        self, tier: Tier, clock: FakeClock
    ) -> None:
        await tier.set("k", entry(b"old", expires_at=clock() + 10, tags=("t1",), namespace="n1"))
        new = entry(b"new", expires_at=None, tags=("t2",), namespace="n2")
        assert await tier.set("k", new)
        assert await tier.get("k") == new
        # The old expiry no longer applies.
        clock.advance(3600)
        assert await tier.get("k") == new
        # The old tag and namespace no longer reach the key.
        assert await tier.delete_tag("t1") == 0
        assert await tier.delete_namespace("n1") == 0
        assert await tier.get("k") == new
        assert await tier.delete_tag("t2") == 1
        assert await tier.get("k") is None

    async def test_replace_keeping_a_shared_tag(self, tier: Tier) -> None:
        await tier.set("k", entry(b"1", tags=("keep", "drop")))
        await tier.set("k", entry(b"2", tags=("keep",)))
        assert await tier.delete_tag("drop") == 0
        assert await tier.delete_tag("keep") == 1
        assert await tier.get("k") is None

    async def test_delete(self, tier: Tier) -> None:
        await tier.set("k", entry())
        await tier.set("other", entry())
        assert await tier.delete("k") is True
        assert await tier.get("k") is None
        assert await tier.delete("k") is False
        assert await tier.get("other") == entry()

    async def test_delete_of_a_missing_key(self, tier: Tier) -> None:
        assert await tier.delete("missing") is False

    async def test_set_after_delete(self, tier: Tier) -> None:
        await tier.set("k", entry(b"1", tags=("t",)))
        await tier.delete("k")
        await tier.set("k", entry(b"2"))
        assert await tier.get("k") == entry(b"2")
        assert await tier.delete_tag("t") == 0  # the deleted entry's tag left with it

    # ------------------------------------------------------------------ expiry

    async def test_entry_expires_at_expires_at(self, tier: Tier, clock: FakeClock) -> None:
        stored = entry(b"x", expires_at=clock() + 10)
        await tier.set("k", stored)
        clock.advance(9.999)
        assert await tier.get("k") == stored
        clock.advance(0.001)  # now == expires_at: expired
        assert await tier.get("k") is None
        clock.advance(1000)
        assert await tier.get("k") is None

    async def test_delete_of_an_expired_entry_is_false(self, tier: Tier, clock: FakeClock) -> None:
        await tier.set("k", entry(expires_at=clock() + 5))
        clock.advance(5)
        assert await tier.delete("k") is False

    async def test_entry_without_expiry_lives_on(self, tier: Tier, clock: FakeClock) -> None:
        await tier.set("k", entry())
        clock.advance(10 * 365 * 86400)
        assert await tier.get("k") == entry()

    async def test_an_int_expiry(self, tier: Tier, clock: FakeClock) -> None:
        stored = entry(expires_at=int(clock()) + 10)
        assert await tier.set("k", stored)
        assert await tier.get("k") == stored
        assert await tier.set("huge", entry(expires_at=2**70))  # beyond a 64-bit int, still finite
        clock.advance(9.0)
        assert await tier.get("k") == stored
        clock.advance(1.0)
        assert await tier.get("k") is None
        assert await tier.get("huge") is not None

    async def test_far_future_expiry(self, tier: Tier, clock: FakeClock) -> None:
        stored = entry(expires_at=clock() + 100 * 365 * 86400)
        assert await tier.set("k", stored)
        clock.advance(50 * 365 * 86400)
        assert await tier.get("k") == stored

    async def test_set_of_an_expired_entry_is_declined(self, tier: Tier, clock: FakeClock) -> None:
        assert await tier.set("past", entry(expires_at=clock() - 1)) is False
        assert await tier.get("past") is None
        assert await tier.set("now", entry(expires_at=clock())) is False
        assert await tier.get("now") is None

    async def test_set_of_an_expired_entry_removes_the_live_one(
        self, tier: Tier, clock: FakeClock
    ) -> None:
        await tier.set("k", entry(b"live", tags=("t",), namespace="n"))
        assert await tier.set("k", entry(b"dead", expires_at=clock() - 1)) is False
        assert await tier.get("k") is None
        assert await tier.delete_tag("t") == 0
        assert await tier.delete_namespace("n") == 0

    async def test_an_expired_key_can_be_set_again(self, tier: Tier, clock: FakeClock) -> None:
        await tier.set("k", entry(b"1", expires_at=clock() + 1, tags=("t",)))
        clock.advance(2)
        assert await tier.get("k") is None
        fresh = entry(b"2", expires_at=clock() + 1)
        assert await tier.set("k", fresh)
        assert await tier.get("k") == fresh
        assert await tier.delete_tag("t") == 0

    async def test_counts_leave_out_expired_entries(self, tier: Tier, clock: FakeClock) -> None:
        await tier.set("old", entry(expires_at=clock() + 1, tags=("t",), namespace="n"))
        await tier.set("new", entry(tags=("t",), namespace="n"))
        await tier.set("new2", entry(tags=("t",), namespace="n"))
        clock.advance(1)
        assert await tier.delete_tag("t") == 2
        await tier.set("old", entry(expires_at=clock() + 1, namespace="n"))
        await tier.set("new", entry(namespace="n"))
        clock.advance(1)
        assert await tier.delete_namespace("n") == 1

    # ------------------------------------------------------------- tags, namespaces

    async def test_delete_tag_removes_exactly_the_tagged_entries(self, tier: Tier) -> None:
        await tier.set("a", entry(tags=("red",), namespace="n1"))
        await tier.set("b", entry(tags=("red", "blue"), namespace="n2"))
        await tier.set("c", entry(tags=("blue",), namespace="n1"))
        await tier.set("d", entry(namespace="n1"))
        assert await tier.delete_tag("red") == 2
        assert await tier.get("a") is None
        assert await tier.get("b") is None
        assert await tier.get("c") == entry(tags=("blue",), namespace="n1")
        assert await tier.get("d") == entry(namespace="n1")
        assert await tier.delete_tag("red") == 0
        assert await tier.delete_tag("blue") == 1
        assert await tier.get("c") is None
        assert await tier.get("d") is not None

    async def test_delete_of_an_unknown_tag_or_namespace(self, tier: Tier) -> None:
        await tier.set("k", entry(tags=("t",), namespace="n"))
        assert await tier.delete_tag("nope") == 0
        assert await tier.delete_namespace("nope") == 0
        assert await tier.get("k") is not None

    async def test_an_entry_with_many_tags(self, tier: Tier) -> None:
        tags = tuple(f"tag:{i}" for i in range(50))
        await tier.set("k", entry(tags=tags))
        got = await tier.get("k")
        assert got is not None
        assert got.tags == frozenset(tags)
        assert await tier.delete_tag("tag:37") == 1
        for tag in tags:
            assert await tier.delete_tag(tag) == 0

    async def test_a_tag_on_many_entries(self, tier: Tier) -> None:
        for i in range(100):
            await tier.set(f"k{i}", entry(tags=("common", f"own:{i}"), namespace=f"n{i % 3}"))
        await tier.set("untagged", entry())
        assert await tier.delete_tag("own:5") == 1
        assert await tier.delete_tag("common") == 99
        assert await tier.get("untagged") == entry()

    async def test_tag_and_namespace_names_match_exactly(self, tier: Tier) -> None:
        await tier.set("a", entry(tags=("product:1",), namespace="v1"))
        await tier.set("b", entry(tags=("product:12",), namespace="v12"))
        await tier.set("c", entry(tags=("Product:1",), namespace="V1"))
        await tier.set("d", entry(tags=("product:1 ",), namespace="v1 "))
        assert await tier.delete_tag("product:1") == 1
        assert await tier.delete_namespace("v1") == 0
        assert await tier.delete_namespace("v12") == 1
        for key in ("c", "d"):
            assert await tier.get(key) is not None

    async def test_delete_namespace_removes_exactly_the_namespace(self, tier: Tier) -> None:
        await tier.set("a", entry(namespace="tenant-1"))
        await tier.set("b", entry(namespace="tenant-1", tags=("x",)))
        await tier.set("c", entry(namespace="tenant-2", tags=("x",)))
        await tier.set("d", entry())
        assert await tier.delete_namespace("tenant-1") == 2
        assert await tier.get("a") is None
        assert await tier.get("b") is None
        assert await tier.get("c") is not None
        assert await tier.get("d") is not None
        assert await tier.delete_tag("x") == 1  # only c still carried it
        assert await tier.delete_namespace("tenant-1") == 0

    async def test_the_default_namespace_is_a_namespace(self, tier: Tier) -> None:
        await tier.set("a", entry())
        await tier.set("b", entry(namespace="other"))
        assert await tier.delete_namespace("") == 1
        assert await tier.get("a") is None
        assert await tier.get("b") is not None

    async def test_clear(self, tier: Tier) -> None:
        for i in range(20):
            await tier.set(f"k{i}", entry(tags=("t",), namespace="n"))
        await tier.clear()
        for i in range(20):
            assert await tier.get(f"k{i}") is None
        assert await tier.delete_tag("t") == 0
        assert await tier.delete_namespace("n") == 0
        await tier.set("k0", entry(b"after"))
        assert await tier.get("k0") == entry(b"after")
        await tier.clear()
        await tier.clear()  # clearing an empty tier is fine

    # ------------------------------------------------------------------ values

    @pytest.mark.parametrize(
        "value",
        [
            bytes(range(256)),
            bytes(range(255, -1, -1)) * 17,
            b"\x00",
            b"\x00" * 1000,
            b"\xff\xfe\x00\x01",
            b"trailing\x00",
            b"\x80\x81 not utf-8 \xc3\x28",
            "é ✓ 鍵".encode(),
        ],
        ids=["all-bytes", "reversed", "nul", "nuls", "bom-ish", "trailing-nul", "bad-utf8", "utf8"],
    )
    async def test_binary_values_round_trip(self, tier: Tier, value: bytes) -> None:
        assert await tier.set("k", entry(value))
        got = await tier.get("k")
        assert got is not None
        assert got.value == value
        assert type(got.value) is bytes

    async def test_empty_value(self, tier: Tier) -> None:
        assert await tier.set("k", entry(b""))
        got = await tier.get("k")
        assert got is not None
        assert got.value == b""
        assert type(got.value) is bytes

    async def test_large_value(self, tier: Tier) -> None:
        value = random.Random(7).randbytes(1 << 20)
        assert await tier.set("big", entry(value, tags=("big",)))
        got = await tier.get("big")
        assert got is not None
        assert got.value == value
        assert await tier.delete_tag("big") == 1

    # -------------------------------------------------------------------- keys

    async def test_unicode_keys_tags_and_namespaces(self, tier: Tier) -> None:
        keys = [
            "ключ",
            "鍵",
            "🔑 key",
            "caf\u00e9",  # NFC é
            "cafe\u0301",  # NFD e + combining acute: a different key
            "Key",
            "key",
            "key ",
            " key",
            "",
            "a\x00b",
            "tab\tnewline\n",
            "k" * 10_000,
        ]
        for i, key in enumerate(keys):
            await tier.set(key, entry(str(i).encode(), tags=(f"標籤{i}",), namespace=f"名前{i}"))
        for i, key in enumerate(keys):
            got = await tier.get(key)
            assert got is not None, key
            assert got.value == str(i).encode(), key
            assert got.tags == frozenset({f"標籤{i}"})
            assert got.namespace == f"名前{i}"
        assert await tier.delete("cafe\u0301")
        assert await tier.get("caf\u00e9") == entry(b"3", tags=("標籤3",), namespace="名前3")
        assert await tier.delete_tag("標籤0") == 1
        assert await tier.delete_namespace("名前1") == 1
        assert await tier.get("ключ") is None
        assert await tier.get("鍵") is None
        assert await tier.get("🔑 key") is not None

    # --------------------------------------------------------------- bad input

    @pytest.mark.parametrize(
        ("key", "bad"),
        [
            (b"bytes-key", entry()),
            (42, entry()),
            ("\ud800", entry()),  # a lone surrogate: not encodable
            ("k", b"not an entry"),
            ("k", TierEntry("str value")),  # type: ignore[arg-type]
            ("k", TierEntry(bytearray(b"v"))),  # type: ignore[arg-type]
            ("k", TierEntry(b"v", math.nan)),
            ("k", TierEntry(b"v", math.inf)),
            ("k", TierEntry(b"v", 10**400)),
            ("k", TierEntry(b"v", "soon")),  # type: ignore[arg-type]
            ("k", TierEntry(b"v", tags={"t"})),  # type: ignore[arg-type]
            ("k", TierEntry(b"v", tags=frozenset({1}))),  # type: ignore[arg-type]
            ("k", TierEntry(b"v", tags=frozenset({"\udfff"}))),
            ("k", TierEntry(b"v", namespace=None)),  # type: ignore[arg-type]
        ],
        ids=[
            "bytes-key",
            "int-key",
            "surrogate-key",
            "not-an-entry",
            "str-value",
            "bytearray-value",
            "nan-expiry",
            "inf-expiry",
            "huge-int-expiry",
            "str-expiry",
            "set-tags",
            "int-tag",
            "surrogate-tag",
            "none-namespace",
        ],
    )
    async def test_bad_input_is_refused_and_changes_nothing(
        self, tier: Tier, key: Any, bad: Any
    ) -> None:
        await tier.set("k", entry(b"kept", tags=("t",)))
        with pytest.raises(InvalidEntryError):
            await tier.set(key, bad)
        assert await tier.get("k") == entry(b"kept", tags=("t",))

    @pytest.mark.parametrize("key", [b"k", 1, None, "\ud800"], ids=["bytes", "int", "none", "lone"])
    async def test_bad_keys_are_refused_everywhere(self, tier: Tier, key: Any) -> None:
        with pytest.raises(InvalidEntryError):
            await tier.get(key)
        with pytest.raises(InvalidEntryError):
            await tier.delete(key)
        with pytest.raises(InvalidEntryError):
            await tier.delete_tag(key)
        with pytest.raises(InvalidEntryError):
            await tier.delete_namespace(key)

    # ------------------------------------------------------------- concurrency

    async def test_many_tasks_setting_and_getting(self, tier: Tier, clock: FakeClock) -> None:
        async def worker(n: int) -> None:
            for i in range(20):
                key = f"w{n}:{i}"
                stored = entry(
                    f"{n}:{i}".encode() * 10,
                    expires_at=clock() + 60,
                    tags=(f"worker:{n}", "all"),
                    namespace=f"ns{n % 4}",
                )
                assert await tier.set(key, stored)
                await asyncio.sleep(0)  # yield to the other tasks between calls
                assert await tier.get(key) == stored
                await tier.set("shared", entry(f"{n}:{i}".encode(), tags=("all",)))

        await asyncio.gather(*(worker(n) for n in range(50)))
        shared = await tier.get("shared")
        assert shared is not None
        worker_id, _, step = shared.value.decode().partition(":")
        assert 0 <= int(worker_id) < 50
        assert 0 <= int(step) < 20
        results = await asyncio.gather(
            tier.delete_tag("worker:7"),
            tier.delete_namespace("ns1"),
            *(tier.get(f"w{n}:0") for n in range(50)),
        )
        assert results[0] == 20
        assert results[1] == 13 * 20  # workers 1, 5, 9, ..., 49
        assert await tier.delete_tag("all") == 50 * 20 - 20 - 13 * 20 + 1  # + "shared"

    async def test_concurrent_replacements_leave_one_consistent_entry(self, tier: Tier) -> None:
        async def write(n: int) -> None:
            await tier.set("k", entry(str(n).encode(), tags=(f"t{n}",), namespace=f"n{n}"))

        await asyncio.gather(*(write(n) for n in range(40)))
        got = await tier.get("k")
        assert got is not None
        n = int(got.value)
        # Tags and namespace belong to the same write as the value, never a mix of two.
        assert got.tags == frozenset({f"t{n}"})
        assert got.namespace == f"n{n}"
        removed = [await tier.delete_tag(f"t{i}") for i in range(40)]
        assert removed == [1 if i == n else 0 for i in range(40)]

    # ------------------------------------------------------------------- close

    async def test_close(self, tier: Tier) -> None:
        await tier.set("k", entry())
        await tier.close()
        with pytest.raises(TierError):
            await tier.get("k")
        with pytest.raises(TierError):
            await tier.set("k", entry())
        await tier.close()  # closing twice is fine
