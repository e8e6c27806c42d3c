"""The keyspace: numbered databases on top of the engine's :class:`~stratacache.engine.Store`.

Each database is one ``Store`` whose keys are ``bytes`` and whose values are ``bytes`` (strings)
or the containers of :mod:`stratacache.resp.values`. The store does the hard parts: TTLs (on its
timer wheel), the byte budget (``maxmemory``, W-TinyLFU admission and eviction) and thread
safety. This layer adds what Redis clients expect on top:

* **Redis TTL semantics.** An expiry in the past deletes the key (the store only takes TTLs > 0);
  times are milliseconds on the wall clock; ``KEEPTTL`` keeps the remaining TTL.
* **One clock reading per command.** The stores read :attr:`Keyspace.now`, which the dispatcher
  sets once per top-level command, as Redis caches its time: a command, a MULTI/EXEC block or a
  script sees one instant, so a key cannot expire half-way through it. Tests inject the clock.
* **Signals** every write sends: watching clients (WATCH) are marked dirty, clients blocked on
  the key (BLPOP) are queued to be served, keyspace notifications are published. Expiry and
  eviction arrive from the store's listener and signal the same way.
* **Weights of containers.** A container mutated in place is re-weighed (re-stored with its TTL)
  once its size has drifted from what the store last recorded, so ``maxmemory`` holds.

Each store is private to its database slot: SWAPDB swaps the stores of two slots, so the
objects handlers hold for "database 3" stay valid.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

from stratacache.engine import RemovalCause, Store
from stratacache.resp.protocol import CommandError
from stratacache.resp.values import (
    KEY_OVERHEAD,
    HashValue,
    ListValue,
    SetValue,
    ZSetValue,
    weigh,
)

try:  # values.weigh in C: the store weighs every write
    from stratacache.resp._fast import Weigher
except ImportError:  # pragma: no cover - the pure-Python weigher is the reference
    Weigher = None  # type: ignore[assignment,misc]

if TYPE_CHECKING:
    from stratacache.resp.session import Session

__all__ = ["WRONGTYPE", "Database", "Keyspace"]

WRONGTYPE: Final = "WRONGTYPE Operation against a key holding the wrong kind of value"

_REWEIGH_MIN: Final = 256  # bytes of drift before a container is re-weighed
_NOTIFY_CLASSES: Final = "g$lshzxeKEtmdn"  # the flag letters notify-keyspace-events accepts
_NOTIFY_ALL: Final = "g$lshzxet"  # what 'A' stands for


def parse_notify_flags(text: str) -> str | None:
    """Validate a ``notify-keyspace-events`` value; the flags it enables, or ``None`` if invalid."""
    flags: set[str] = set()
    for char in text:
        if char == "A":
            flags.update(_NOTIFY_ALL)
        elif char in _NOTIFY_CLASSES:
            flags.add(char)
        else:
            return None
    return "".join(sorted(flags))


def format_notify_flags(flags: str) -> str:
    """The canonical text of an enabled flag set, as CONFIG GET shows it."""
    out = ""
    if set(_NOTIFY_ALL) <= set(flags):
        out = "A"
    else:
        out = "".join(c for c in "g$lshzxet" if c in flags)
    if "K" in flags:
        out += "K"
    if "E" in flags:
        out += "E"
    if "m" in flags:
        out += "m"
    if "d" in flags:
        out += "d"
    if "n" in flags:
        out += "n"
    return out


class _EvictionRelay:
    """The store's eviction listener, pointing at whichever database slot holds the store."""

    __slots__ = ("db",)

    def __init__(self, db: Database) -> None:
        self.db = db

    def __call__(self, key: object, value: object, cause: RemovalCause) -> None:
        self.db.removed_by_store(key, cause)


class Database:
    """One numbered database: a store plus the signals every write sends."""

    __slots__ = ("index", "keyspace", "relay", "store")

    def __init__(self, keyspace: Keyspace, index: int) -> None:
        self.keyspace = keyspace
        self.index = index
        self.relay = _EvictionRelay(self)
        self.store = keyspace.new_store(self.relay)

    # ------------------------------------------------------------------ reads

    def get(self, key: bytes) -> object:
        """The value under ``key``, or ``None``."""
        return self.store.get(key)

    def get_string(self, key: bytes) -> bytes | None:
        """The string under ``key``; WRONGTYPE if it holds another type."""
        value = self.store.get(key)
        if value is None or type(value) is bytes:
            return value
        raise CommandError(WRONGTYPE)

    def get_hash(self, key: bytes) -> HashValue | None:
        """The hash under ``key``; WRONGTYPE if it holds another type."""
        value = self.store.get(key)
        if value is None or type(value) is HashValue:
            return value
        raise CommandError(WRONGTYPE)

    def get_list(self, key: bytes) -> ListValue | None:
        """The list under ``key``; WRONGTYPE if it holds another type."""
        value = self.store.get(key)
        if value is None or type(value) is ListValue:
            return value
        raise CommandError(WRONGTYPE)

    def get_set(self, key: bytes) -> SetValue | None:
        """The set under ``key``; WRONGTYPE if it holds another type."""
        value = self.store.get(key)
        if value is None or type(value) is SetValue:
            return value
        raise CommandError(WRONGTYPE)

    def get_zset(self, key: bytes) -> ZSetValue | None:
        """The sorted set under ``key``; WRONGTYPE if it holds another type."""
        value = self.store.get(key)
        if value is None or type(value) is ZSetValue:
            return value
        raise CommandError(WRONGTYPE)

    def exists(self, key: bytes) -> bool:
        """Whether ``key`` is present (no effect on stats or the policy)."""
        return key in self.store

    def pttl(self, key: bytes) -> int | None:
        """Milliseconds to live: ``None`` if absent, ``-1`` without expiry."""
        try:
            remaining = self.store.ttl(key)
        except KeyError:
            return None
        if remaining is None:
            return -1
        return max(0, round(remaining * 1000))

    def expire_at_ms(self, key: bytes) -> int | None:
        """The absolute expiry in unix ms: ``None`` if absent, ``-1`` without expiry."""
        try:
            remaining = self.store.ttl(key)
        except KeyError:
            return None
        if remaining is None:
            return -1
        return round((self.keyspace.now + remaining) * 1000)

    def key_snapshot(self) -> list[bytes]:
        """A snapshot of the live keys."""
        return self.store.keys()  # type: ignore[return-value]

    def size(self) -> int:
        """The number of live keys."""
        return len(self.store)

    def random_key(self) -> bytes | None:
        """A random live key, or ``None`` when empty."""
        keys = self.store.keys()
        if not keys:
            return None
        return keys[self.keyspace.rng.randrange(len(keys))]  # type: ignore[return-value]

    # ----------------------------------------------------------------- writes

    def set(
        self, key: bytes, value: object, ttl_ms: int | None = None, *, keep_ttl: bool = False
    ) -> None:
        """Store ``value`` under ``key``; ``ttl_ms`` > 0, or ``keep_ttl`` to keep the current TTL."""
        ttl: float | None = None
        if ttl_ms is not None:
            ttl = ttl_ms / 1000
        elif keep_ttl:
            try:
                ttl = self.store.ttl(key)
            except KeyError:
                ttl = None
            if ttl is not None and ttl <= 0:
                ttl = None
        keyspace = self.keyspace
        if keyspace.notify_flags and "n" in keyspace.notify_flags and key not in self.store:
            keyspace.notify("n", "new", key, self.index)
        self.store.set(key, value, ttl)
        # The signals, inlined: this is the path of every SET.
        if keyspace.watched or keyspace.write_log is not None:
            self.touch(key)
        if keyspace.blocked and (type(value) is ListValue or type(value) is ZSetValue):
            self.signal_ready(key)

    def set_at_ms(self, key: bytes, value: object, when_ms: int) -> None:
        """Store ``value`` to expire at unix time ``when_ms``; a time in the past deletes ``key``."""
        remaining = when_ms / 1000 - self.keyspace.now
        if remaining <= 0:
            self.delete(key)
            return
        if "n" in self.keyspace.notify_flags and key not in self.store:
            self.keyspace.notify("n", "new", key, self.index)
        self.store.set(key, value, remaining)
        self.touch(key)
        if type(value) is ListValue or type(value) is ZSetValue:
            self.signal_ready(key)

    def delete(self, key: bytes) -> bool:
        """Remove ``key``; ``True`` if it was present."""
        if self.store.delete(key):
            self.touch(key)
            return True
        return False

    def changed(self, key: bytes, value: HashValue | ListValue | SetValue | ZSetValue) -> None:
        """Record an in-place change of the container under ``key``: delete it if empty, re-weigh
        it if its size drifted, and send the write signals."""
        if not len(value):
            self.store.delete(key)
        else:
            drift = abs(len(key) + value.size + KEY_OVERHEAD - value.weighed)
            if drift > _REWEIGH_MIN and drift > value.weighed >> 3:
                self._restore(key, value)
            if self.keyspace.blocked and (type(value) is ListValue or type(value) is ZSetValue):
                self.signal_ready(key)
        keyspace = self.keyspace  # touch(), inlined: every LPUSH, HSET, SADD comes here
        if keyspace.watched or keyspace.write_log is not None:
            self.touch(key)

    def _restore(self, key: bytes, value: object) -> None:
        try:
            ttl = self.store.ttl(key)
        except KeyError:
            ttl = None
        self.store.set(key, value, ttl if ttl is None or ttl > 0 else None)

    def expire_ms(self, key: bytes, when_ms: int) -> bool:
        """Set the expiry of ``key`` to unix time ``when_ms``; a past time deletes it.

        ``False`` when ``key`` is absent.
        """
        remaining = when_ms / 1000 - self.keyspace.now
        if remaining <= 0:
            return self.delete(key)
        if self.store.expire(key, remaining):
            self.touch(key)
            return True
        return False

    def persist(self, key: bytes) -> bool:
        """Remove the TTL of ``key``; ``True`` if it had one."""
        if self.store.persist(key):
            self.touch(key)
            return True
        return False

    def clear(self) -> None:
        """Remove every key (FLUSHDB), signalling the watched keys that existed."""
        keyspace = self.keyspace
        if keyspace.watched:
            for db_index, key in list(keyspace.watched):
                if db_index == self.index and key in self.store:
                    keyspace.touch(db_index, key)
        if keyspace.write_log is not None:
            keyspace.write_log.append((self.index, None))
        self.store.clear()

    # ---------------------------------------------------------------- signals

    def touch(self, key: bytes) -> None:
        """Signal that ``key`` was modified: WATCHers see their transaction fail, and a backing
        Redis learns which keys the command changed."""
        keyspace = self.keyspace
        if keyspace.watched:
            keyspace.touch(self.index, key)
        if keyspace.write_log is not None:
            keyspace.write_log.append((self.index, key))

    def signal_ready(self, key: bytes) -> None:
        """Signal that ``key`` may now serve a client blocked on it."""
        keyspace = self.keyspace
        if keyspace.blocked and (self.index, key) in keyspace.blocked:
            keyspace.ready[(self.index, key)] = None

    def notify(self, flag: str, event: str, key: bytes) -> None:
        """Publish a keyspace notification of class ``flag`` when enabled."""
        if self.keyspace.notify_flags:
            self.keyspace.notify(flag, event, key, self.index)

    def removed_by_store(self, key: object, cause: RemovalCause) -> None:
        """The store expired or evicted ``key`` on its own."""
        if not isinstance(key, bytes):
            return
        keyspace = self.keyspace
        if cause is RemovalCause.EXPIRED:
            keyspace.expired_keys += 1
            self.notify("x", "expired", key)
        else:
            keyspace.evicted_keys += 1
            self.notify("e", "evicted", key)
        # Not self.touch: an L0 expiry or eviction is not a write the backing Redis should see.
        if keyspace.watched:
            keyspace.touch(self.index, key)


class Keyspace:
    """All databases, the clock they share, and the registries of watched and blocked keys.

    :param databases: how many numbered databases (SELECT 0 .. databases-1).
    :param maxmemory: a byte budget for each database's store (``None``: unbounded). The engine
        enforces it with W-TinyLFU admission and eviction.
    :param clock: wall-clock seconds (default ``time.time``); read once per command into
        :attr:`now`.
    :param rng: randomness for RANDOMKEY, SPOP, SRANDMEMBER, ... (seed it to replay).
    :param accelerate: weigh values with the compiled weigher (``stratacache.resp._fast``) when
        it was built; ``False`` keeps :func:`~stratacache.resp.values.weigh`, which it mirrors.
    """

    def __init__(
        self,
        databases: int = 16,
        maxmemory: int | None = None,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
        *,
        accelerate: bool = True,
    ) -> None:
        self._weigher: Callable[[object, object], int] = (
            Weigher(KEY_OVERHEAD) if accelerate and Weigher is not None else weigh
        )
        self.clock: Callable[[], float] = clock if clock is not None else time.time
        self.now = self.clock()
        self.rng = rng if rng is not None else random.Random()
        self.maxmemory = maxmemory
        self.bounded = maxmemory is not None
        self.watched: dict[tuple[int, bytes], set[Session]] = {}
        self.blocked: dict[tuple[int, bytes], deque[Session]] = {}
        self.ready: dict[tuple[int, bytes], None] = {}
        self.write_log: list[tuple[int, bytes | None]] | None = None
        """While a command runs with a backing Redis: the (database, key) pairs it changed."""
        self.notify_flags = ""
        self.publisher: Callable[[bytes, bytes], int] | None = None
        self.expired_keys = 0
        self.evicted_keys = 0
        self.dbs = [Database(self, index) for index in range(databases)]

    def new_store(self, listener: Callable[[object, object, RemovalCause], None]) -> Store:
        """A store for one database, on this keyspace's clock and budget."""
        return Store(
            max_bytes=self.maxmemory,
            weigher=self._weigher,
            clock=self._now,
            on_evict=listener,
            rng=random.Random(self.rng.getrandbits(64)),
        )

    def _now(self) -> float:
        return self.now

    def tick(self) -> float:
        """Read the clock into :attr:`now` (once per top-level command) and return it."""
        self.now = now = self.clock()
        return now

    def now_ms(self) -> int:
        """The command's time in unix milliseconds."""
        return math.floor(self.now * 1000)

    def set_maxmemory(self, maxmemory: int | None) -> None:
        """Change the budget: each store is rebuilt with the new bound, keeping its entries."""
        self.maxmemory = maxmemory
        self.bounded = maxmemory is not None
        for db in self.dbs:
            old = db.store
            db.store = self.new_store(db.relay)
            for key in list(old.keys()):
                value = old.peek(key)
                if value is None:
                    continue
                try:
                    ttl = old.ttl(key)
                except KeyError:
                    continue
                db.store.set(key, value, ttl if ttl is None or ttl > 0 else None)

    def swap(self, first: int, second: int) -> None:
        """SWAPDB: exchange the contents of two databases."""
        one, two = self.dbs[first], self.dbs[second]
        for db_index, key in list(self.watched):
            if db_index in (first, second) and (key in one.store or key in two.store):
                self.touch(db_index, key)
        one.store, two.store = two.store, one.store
        one.relay, two.relay = two.relay, one.relay
        one.relay.db = one
        two.relay.db = two
        for db_index, key in list(self.blocked):
            db = self.dbs[db_index]
            if db_index in (first, second) and key in db.store:
                self.ready[(db_index, key)] = None

    def touch(self, db_index: int, key: bytes) -> None:
        """Mark every session watching ``key`` in ``db_index`` dirty."""
        sessions = self.watched.get((db_index, key))
        if sessions:
            for session in sessions:
                session.watch_dirty = True

    def touch_all(self) -> None:
        """FLUSHALL: mark every session watching an existing key dirty."""
        for (db_index, key), sessions in self.watched.items():
            if key in self.dbs[db_index].store:
                for session in sessions:
                    session.watch_dirty = True

    def notify(self, flag: str, event: str, key: bytes, db_index: int) -> None:
        """Publish a keyspace (``K``) and/or keyevent (``E``) notification."""
        flags = self.notify_flags
        if flag not in flags or self.publisher is None:
            return
        if "K" in flags:
            self.publisher(b"__keyspace@%d__:%b" % (db_index, key), event.encode())
        if "E" in flags:
            self.publisher(b"__keyevent@%d__:%b" % (db_index, event.encode()), key)

    def used_bytes(self) -> int:
        """The bytes the stores account for, across databases."""
        return sum(db.store.stats().bytes for db in self.dbs)

    def expire_cycle(self) -> None:
        """Reclaim expired keys in every database (the stores reap lazily otherwise)."""
        self.tick()
        for db in self.dbs:
            len(db.store)  # counting live keys reaps the expired ones

    def __iter__(self) -> Iterator[Database]:
        return iter(self.dbs)
