"""The L0 store: an in-process key/value cache with W-TinyLFU eviction, TTLs and a byte budget.

How an entry moves (Caffeine's design, Einziger, Friedman & Manes, "TinyLFU", 2017)::

        set ──► window (LRU) ──overflow──► probation ──hit──► protected (LRU)
                                   │        (LRU)   ◄─demote─────┘
                                   ▼
             candidate vs probation's LRU victim: the one the frequency sketch
             has seen more often stays, the other is evicted

* New entries land in a small **window** so a burst of new keys can prove itself before competing.
* When the window overflows, its oldest entry becomes a **candidate** for the main area and is admitted
  only if the :class:`~stratacache.engine.sketch.FrequencySketch` has seen it more often than the
  **victim** it would displace. One-hit wonders and scans therefore never flush the hot set.
* The main area is a segmented LRU: a hit in **probation** promotes to **protected** (80 % of main).
* The window's share of the budget **adapts**: a miss on a key that admission refused a moment ago
  grows the window (a bigger window would have hit), a miss on a key just evicted from the main area
  shrinks it. Recency-skewed workloads drive the window towards LRU, frequency-skewed ones keep it
  small; with a fixed 1 % window the Corda trace falls to 2 % where LRU gets 33 %. A store of up to
  1024 entries also runs a shadow LRU of its own size: when plain LRU beats it clearly over a period
  (a zigzag, where every key is as frequent as every other), the window takes the whole budget.

The policy itself lives in :mod:`stratacache.engine.policy` (pure Python, the reference) and, when the
accelerator was built, in ``_accel.Policy`` (C, the same steps; its segments are linked lists threaded
through the entries, which is most of why a compiled entry costs half the memory). This module checks
input, holds the lock, reaps expired entries and calls listeners.

Reads are cheap because a hit does not touch the policy: it appends the entry to a read buffer, and
the buffer is applied to the policy in batches, by the next write or when it fills (Caffeine's read
buffer). The first 1,024 reads after a write are all applied. In a longer run of reads with no
write, a full buffer is applied as a sample (its 4 most recent reads of 256), as Caffeine drops
reads from a full buffer: no eviction decision is taken while only reads happen, and the sample
keeps the relative frequencies and the latest recency. Hits are still counted exactly. (Applying
every read cost gli 4 points when the sample began straight after a write; the hit-ratio
benchmark shows no trace affected with the 1,024-read grace.)

Thread safety: one lock guards every change; reads take no lock unless they drain the buffer or find
an expired entry. Listeners run after the lock is released, so they may call back into the store.
The compiled ``get`` and ``set`` run under the GIL without calling Python code in the middle of a
change, and take the same lock as the Python methods.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import threading
import time
import types
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeAlias

from stratacache.engine.policy import (
    READ_BUFFER,
    REMOVED,
    Entry,
    Policy,
    Removal,
    RemovalCause,
)
from stratacache.engine.timerwheel import TimerWheel
from stratacache.errors import (
    ConfigError,
    InvalidKeyError,
    InvalidTTLError,
    NotAnIntegerError,
    WeigherError,
)

try:  # the compiled accelerator is optional; the pure-Python classes are the reference
    from stratacache.engine import _accel
except ImportError:  # pragma: no cover - exercised on machines without a C compiler
    _accel = None  # type: ignore[assignment]

__all__ = ["Key", "PolicyState", "RemovalCause", "Store", "StoreStats", "default_weigher"]

logger = logging.getLogger("stratacache.engine")

Key: TypeAlias = str | bytes | int
"""The key types a store accepts."""

Weigher: TypeAlias = Callable[[Any, Any], int]
EvictionListener: TypeAlias = Callable[[Any, Any, "RemovalCause"], None]

_MAX_WEIGHT = 1 << 62  # weights are machine words in the accelerator; no real entry comes close


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Counters since the store was created (``clear()`` keeps them)."""

    hits: int
    misses: int
    evictions: int
    """Entries evicted for size, rejected candidates included."""
    rejections: int
    """Candidates refused admission (also counted in ``evictions``), plus values heavier than the
    whole budget (refused at ``set``, never stored, so not evictions)."""
    expirations: int
    bytes: int
    """The sum of the live entries' weights."""
    entries: int

    @property
    def hit_ratio(self) -> float:
        """Hits over lookups; 0.0 before the first lookup."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


@dataclass(frozen=True, slots=True)
class PolicyState:
    """A snapshot of the W-TinyLFU segments, in policy units (entries, or bytes under ``max_bytes``)."""

    window_limit: int
    protected_limit: int
    window: int
    probation: int
    protected: int


def _size(obj: object) -> int:
    kind = type(obj)
    if kind is bytes:  # the common case first, by identity: cheaper than isinstance
        return len(obj)  # type: ignore[arg-type]
    if kind is str:
        return len(obj) if obj.isascii() else len(obj.encode("utf-8", "surrogatepass"))  # type: ignore[attr-defined, arg-type]
    if isinstance(obj, bytes | bytearray):
        return len(obj)
    if isinstance(obj, str):
        return len(obj) if obj.isascii() else len(obj.encode("utf-8", "surrogatepass"))
    if isinstance(obj, memoryview):
        return obj.nbytes
    return sys.getsizeof(obj)


def default_weigher(key: object, value: object) -> int:
    """Weigh an entry as its key's size plus its value's.

    ``bytes``, ``bytearray`` and ``memoryview`` count their length, ``str`` its UTF-8 length, anything
    else ``sys.getsizeof`` (a shallow size: pass your own weigher for containers).

    >>> default_weigher("key", b"value")
    8
    """
    return _size(key) + _size(value)


class Store:
    """An in-process key/value cache bounded by entries and/or bytes.

    :param max_entries: at most this many entries (``None``: no limit on the count).
    :param max_bytes: at most this total weight (``None``: no limit on the weight).
    :param weigher: ``weigher(key, value) -> int``, the weight of an entry (default:
        :func:`default_weigher`).
    :param clock: seconds from a monotonic source (default ``time.monotonic``); tests pass a fake.
    :param on_evict: called as ``on_evict(key, value, cause)`` after the store removes an entry on its
        own (size, rejection, expiry), never for ``delete``, overwrites or ``clear``.
    :param rng: the randomness of admission (default: a fresh ``random.Random``); seed it to replay.
    :param accelerate: use the compiled accelerator (``stratacache.engine._accel``) when it was built
        at install time; ``False`` runs the pure-Python reference implementation. Both take the same
        decisions given the same ``rng``.

    With neither limit the store never evicts and only expires.

    >>> store = Store(max_entries=2)
    >>> store.set("a", 1), store.incr("a", 41)
    (True, 42)
    >>> "a" in store, len(store)
    (True, 1)
    """

    def __init__(
        self,
        max_entries: int | None = None,
        max_bytes: int | None = None,
        weigher: Weigher | None = None,
        clock: Callable[[], float] | None = None,
        *,
        on_evict: EvictionListener | None = None,
        rng: random.Random | None = None,
        accelerate: bool = True,
    ) -> None:
        for name, limit in (("max_entries", max_entries), ("max_bytes", max_bytes)):
            if limit is not None and (
                not isinstance(limit, int) or isinstance(limit, bool) or limit < 1
            ):
                raise ConfigError(f"{name} must be a positive int or None, not {limit!r}")
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._weigher: Weigher = weigher if weigher is not None else default_weigher
        self._clock: Callable[[], float] = clock if clock is not None else time.monotonic
        self._on_evict = on_evict
        self._rng = rng if rng is not None else random.Random()
        self._wheel = TimerWheel(self._clock())
        self._misses = 0
        self._expirations = 0
        self._read_path: Any = None
        compiled = accelerate and _accel is not None
        if not compiled:
            self._lock: Any = threading.Lock()
            self._policy: Any = Policy(max_entries, max_bytes, self._rng, self._wheel)
            self._reads: list[Entry] = self._policy.reads
        else:
            # The compiled lock is the same kind of lock, one the compiled paths can take without
            # a call into Python.
            self._lock = _accel.Lock()
            self._policy = _accel.Policy(
                max_entries,
                max_bytes,
                rng=self._rng,
                wheel=self._wheel,
                size=RemovalCause.SIZE,
                rejected=RemovalCause.REJECTED,
            )
            self._reads = []  # unused: the compiled policy buffers reads itself (see get)
            # The compiled get and set shadow the methods below on this instance; they behave alike
            # (the same tests run against each, and a test compares their decisions), the compiled
            # ones without the interpreter's overhead. Anything unusual calls back into Python.
            self._read_path = _accel.ReadPath(
                policy=self._policy,
                lock=self._lock,
                clock=self._clock,
                on_expired=self._expire_entry,
                invalid_key=InvalidKeyError,
            )
            # A subclass that overrides get or set keeps its own (which may call these).
            if type(self).get is Store.get:
                self.__dict__["get"] = self._read_path
            if type(self).ttl is Store.ttl:
                self.__dict__["ttl"] = self._read_path.ttl
            if type(self).set is Store.set:
                self.__dict__["set"] = _accel.WritePath(
                    policy=self._policy,
                    lock=self._lock,
                    clock=self._clock,
                    weigh=self._weigh,
                    weigher=self._weigher,
                    default_weigher=self._weigher is default_weigher,
                    slow=types.MethodType(Store.set, self),
                    reap=self._reap_due,
                    notify=self._notify if on_evict is not None else None,
                )
        self._data: dict[Hashable, Entry] = self._policy.data

    @property
    def accelerated(self) -> bool:
        """Whether this store runs on the compiled accelerator."""
        return self._read_path is not None

    # ------------------------------------------------------------------ reads

    def get(self, key: Key, default: Any = None) -> Any:
        """Return the value for ``key``, or ``default`` when it is absent or expired."""
        if self._read_path is not None:  # only reached from a subclass: see __init__
            return self._read_path(key, default)
        try:
            entry = self._data[key]
        except KeyError:
            # Plain int increments: in CPython no thread switch can fall between the read and the
            # write of one ``+=`` without a call in it, so the miss counter needs no lock.
            self._misses += 1
            return default
        except TypeError:
            raise InvalidKeyError(f"unhashable key of type {type(key).__name__}") from None
        if entry.expires and entry.expires <= self._clock():
            self._expire_entry(entry)
            self._misses += 1
            return default
        reads = self._reads
        reads.append(entry)
        if len(reads) >= READ_BUFFER:
            self._drain_full_buffer()
        return entry.value

    def peek(self, key: Key, default: Any = None) -> Any:
        """Return the value for ``key`` like :meth:`get`, without counting or recording the access."""
        entry = self._live(key)
        return default if entry is None else entry.value

    def __contains__(self, key: object) -> bool:
        return self._live(key) is not None  # type: ignore[arg-type]

    def __len__(self) -> int:
        self._reap(exact=True)
        return len(self._data)

    def keys(self) -> list[Key]:
        """A snapshot of the live keys, in no particular order."""
        self._reap(exact=True)
        with self._lock:
            return list(self._data)  # type: ignore[arg-type]

    def ttl(self, key: Key) -> float | None:
        """Seconds until ``key`` expires, or ``None`` if it never does; ``KeyError`` if absent."""
        entry = self._live(key)
        if entry is None:
            raise KeyError(key)
        if not entry.expires:
            return None
        return max(0.0, entry.expires - self._clock())

    def stats(self) -> StoreStats:
        """The counters, with buffered reads and due expiries accounted for."""
        self._reap(exact=True)
        with self._lock:
            policy = self._policy
            policy.drain()
            return StoreStats(
                hits=policy.hits,
                misses=self._misses + (self._read_path.misses if self._read_path else 0),
                evictions=policy.evictions,
                rejections=policy.rejections,
                expirations=self._expirations,
                bytes=policy.bytes,
                entries=len(self._data),
            )

    @property
    def policy(self) -> PolicyState:
        """The current sizes of the window, probation and protected segments."""
        with self._lock:
            policy = self._policy
            policy.drain()
            return PolicyState(
                window_limit=policy.window_limit,
                protected_limit=policy.protected_limit,
                window=policy.window_weight,
                probation=policy.policy_weight - policy.window_weight - policy.protected_weight,
                protected=policy.protected_weight,
            )

    # ----------------------------------------------------------------- writes

    def set(self, key: Key, value: Any, ttl: float | None = None) -> bool:
        """Store ``value`` under ``key``, replacing any previous value.

        Returns ``False`` when the value was not kept: it is heavier than the whole budget, or the
        admission policy evicted it at once in favour of more frequently used entries. Either way
        any previous value for ``key`` is gone, so a stale value is never served.
        """
        _check_key(key)
        expires = self._expires_at(ttl)
        weight = self._weigh(key, value)
        removed: list[Removal] = []
        with self._lock:
            stored = self._put(key, value, weight, expires, removed)
        self._notify(removed)
        return stored

    def delete(self, key: Key) -> bool:
        """Remove ``key``; ``True`` if it was present (and not expired)."""
        _check_key(key)
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return False
            self._policy.unlink(entry)
            return not (entry.expires and entry.expires <= self._clock())

    def expire(self, key: Key, seconds: float) -> bool:
        """Make ``key`` expire ``seconds`` from now; ``False`` if it is absent."""
        expires = self._expires_at(seconds)
        with self._lock:
            entry = self._find(key)
            if entry is None:
                return False
            entry.expires = expires
            self._wheel.schedule(entry)
            return True

    def persist(self, key: Key) -> bool:
        """Remove the TTL of ``key``; ``True`` if it had one."""
        with self._lock:
            entry = self._find(key)
            if entry is None or not entry.expires:
                return False
            entry.expires = 0.0
            self._wheel.deschedule(entry)
            return True

    def incr(self, key: Key, n: int = 1) -> int:
        """Add ``n`` to the integer under ``key`` (absent counts as 0) and return the result.

        The TTL is kept. Raises :class:`NotAnIntegerError` when the value is not an ``int``.
        """
        if not isinstance(n, int) or isinstance(n, bool):
            raise NotAnIntegerError(f"incr() amount must be an int, not {type(n).__name__}")
        _check_key(key)
        removed: list[Removal] = []
        with self._lock:
            entry = self._find(key)
            if entry is None:
                self._put(key, n, self._weigh(key, n), 0.0, removed)
                result = n
            else:
                current = entry.value
                if not isinstance(current, int) or isinstance(current, bool):
                    raise NotAnIntegerError(
                        f"value of {key!r} is a {type(current).__name__}, not an int"
                    )
                result = current + n
                self._put(key, result, self._weigh(key, result), entry.expires, removed)
        self._notify(removed)
        return result

    def clear(self) -> None:
        """Remove every entry (no listener calls). Counters and the policy's sizing are kept."""
        with self._lock:
            self._policy.clear()
            self._wheel.clear(self._clock())

    # ------------------------------------------------------------- internals

    def _find(self, key: Key) -> Entry | None:
        """The entry for ``key`` unless absent or expired; no side effects, safe under the lock."""
        try:
            entry = self._data.get(key)
        except TypeError:
            raise InvalidKeyError(f"unhashable key of type {type(key).__name__}") from None
        if entry is None or (entry.expires and entry.expires <= self._clock()):
            return None
        return entry

    def _live(self, key: Key) -> Entry | None:
        """Like :meth:`_find`, and reclaims an expired entry on the way; never under the lock."""
        entry = self._find(key)
        if entry is None:
            expired = self._data.get(key)
            if expired is not None:
                self._expire_entry(expired)
        return entry

    def _expires_at(self, ttl: float | None) -> float:
        if ttl is None:
            return 0.0
        if isinstance(ttl, bool) or not isinstance(ttl, int | float):
            raise InvalidTTLError(f"TTL must be a number of seconds, not {type(ttl).__name__}")
        if not math.isfinite(ttl) or ttl <= 0:
            raise InvalidTTLError(f"TTL must be a finite number of seconds > 0, not {ttl!r}")
        expires = self._clock() + ttl
        # 0.0 means "never expires" in an entry; a clock that reads exactly -ttl must not say so.
        return expires if expires != 0.0 else math.ulp(0.0)

    def _weigh(self, key: Key, value: Any) -> int:
        try:
            weight = self._weigher(key, value)
        except Exception as exc:
            raise WeigherError(f"the weigher raised on key {key!r}: {exc!r}") from exc
        if (
            not isinstance(weight, int)
            or isinstance(weight, bool)
            or not 0 <= weight <= _MAX_WEIGHT
        ):
            raise WeigherError(f"the weigher must return an int in [0, 2**62], not {weight!r}")
        return weight

    def _put(
        self, key: Key, value: Any, weight: int, expires: float, removed: list[Removal]
    ) -> bool:
        """Insert or replace under the lock. Returns whether the entry is resident afterwards."""
        entry = self._policy.put(
            key, value, weight, expires, removed if self._on_evict is not None else None
        )
        if entry is None:
            return False
        now = self._clock()
        if now >= self._policy.next_reap:
            self._reap_locked(now, removed, exact=False)
        return bool(entry.queue != REMOVED)

    # -- reads meet the policy

    def _drain_full_buffer(self) -> None:
        # Never wait: if another thread is draining, this read stays buffered for it or the next one.
        if self._lock.acquire(blocking=False):
            try:
                self._policy.drain()
            finally:
                self._lock.release()

    # -- expiry

    def _expire_entry(self, entry: Entry) -> None:
        """Remove an entry a read found expired (lazy expiry), unless someone replaced it meanwhile."""
        removed: list[Removal] = []
        with self._lock:
            if (
                self._data.get(entry.key) is entry
                and entry.expires
                and entry.expires <= self._clock()
            ):
                self._policy.unlink(entry)
                self._expirations += 1
                if self._on_evict is not None:
                    removed.append((entry.key, entry.value, RemovalCause.EXPIRED))
        self._notify(removed)

    def _reap(self, *, exact: bool) -> None:
        removed: list[Removal] = []
        with self._lock:
            self._reap_locked(self._clock(), removed, exact=exact)
        self._notify(removed)

    def _reap_due(self, now: float, removed: list[Removal]) -> None:
        """The compiled ``set``'s way into :meth:`_reap_locked` (under the lock)."""
        self._reap_locked(now, removed, exact=False)

    def _reap_locked(self, now: float, removed: list[Removal], *, exact: bool) -> None:
        # The wheel's finest buckets are one second wide: nothing new can be due before the next.
        self._policy.next_reap = math.floor(now) + 1.0
        for timed in self._wheel.advance(now, exact=exact):
            entry: Entry = timed  # type: ignore[assignment]
            if entry.queue == REMOVED:
                continue
            self._policy.unlink(entry)
            self._expirations += 1
            if self._on_evict is not None:
                removed.append((entry.key, entry.value, RemovalCause.EXPIRED))

    def _notify(self, removed: list[Removal]) -> None:
        listener = self._on_evict
        if listener is None:
            return
        for key, value, cause in removed:
            try:
                listener(key, value, cause)
            except Exception:
                # The store is already consistent; a failing listener must not undo the write that
                # caused the eviction or hide it from the caller.
                logger.exception("eviction listener failed for key %r", key)


_KEY_TYPES = frozenset((str, bytes, int))


def _check_key(key: object) -> None:
    if type(key) not in _KEY_TYPES and not isinstance(key, str | bytes | int):
        raise InvalidKeyError(f"keys must be str, bytes or int, not {type(key).__name__}")
