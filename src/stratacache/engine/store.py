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
  small; with a fixed 1 % window the Corda trace falls to 2 % where LRU gets 33 %.

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
"""

from __future__ import annotations

import logging
import math
import random
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, TypeAlias

from stratacache.engine.sketch import FrequencySketch
from stratacache.engine.timerwheel import TimedEntry, TimerWheel
from stratacache.errors import (
    ConfigError,
    InvalidKeyError,
    InvalidTTLError,
    NotAnIntegerError,
    WeigherError,
)

try:  # the compiled accelerator is optional; the pure-Python classes below are the reference
    from stratacache.engine import _accel
except ImportError:  # pragma: no cover - exercised on machines without a C compiler
    _accel = None  # type: ignore[assignment]

__all__ = ["Key", "PolicyState", "RemovalCause", "Store", "StoreStats", "default_weigher"]

logger = logging.getLogger("stratacache.engine")

Key: TypeAlias = str | bytes | int
"""The key types a store accepts."""

Weigher: TypeAlias = Callable[[Any, Any], int]
EvictionListener: TypeAlias = Callable[[Any, Any, "RemovalCause"], None]

_WINDOW: Final = 0
_PROBATION: Final = 1
_PROTECTED: Final = 2
_REMOVED: Final = 3

_MAX_WEIGHT = 1 << 62  # weights are machine words in the accelerator; no real entry comes close
_READ_BUFFER = 256  # reads buffered before the policy must see them
_READ_SAMPLE = 4  # what a drain applies in a long run of reads
_EXACT_READS = 1024  # reads after a write that the policy always sees in full
_INITIAL_WINDOW = 0.01  # of the budget, before the window adapts
_GHOST_SHARE = 0.12  # each ghost list remembers this share of the capacity in keys
_GROW_STEP = 1.0  # window units gained per returning refused key (per unit of its weight)
_SHRINK_STEP = 1.5  # window units lost per returning main-area victim
_GROW_REACH = 2  # a refused key counts only if it returned within this many windows' inserts
_PROTECTED_SHARE = 0.80  # of the main area
_TRANSFER_LIMIT = 1000  # entries moved per window resize, so one resize stays cheap
_HASHDOS_THRESHOLD = 6  # a candidate this warm is admitted at random 1 time in 128


class RemovalCause(Enum):
    """Why the store removed an entry on its own, as told to the eviction listener."""

    SIZE = "size"
    """Evicted to stay within the budget."""
    REJECTED = "rejected"
    """Refused admission: the sketch had seen it less often than the entry it would displace."""
    EXPIRED = "expired"
    """Its TTL ran out."""


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


class _Entry:
    __slots__ = ("bucket", "expires", "key", "queue", "value", "weight")

    def __init__(self, key: Key, value: Any, weight: int, expires: float) -> None:
        self.key: Hashable = key
        self.value = value
        self.weight = weight
        self.expires = expires  # monotonic seconds; 0.0 means no expiry
        self.queue = _WINDOW
        self.bucket: dict[Hashable, TimedEntry] | None = None


_Removal: TypeAlias = tuple[Any, Any, RemovalCause]


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
        at install time; ``False`` runs the pure-Python reference implementation.

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
        self._lock = threading.Lock()

        self._data: dict[Hashable, _Entry] = {}
        self._window: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._probation: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._protected: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._reads: list[_Entry] = []
        # Keys recently refused admission, and keys recently evicted from the main area: the
        # window's feedback (see _adapt_window).
        self._ghost_rejected: OrderedDict[Hashable, int] = OrderedDict()
        self._ghost_victims: OrderedDict[Hashable, int] = OrderedDict()
        self._insertions = 0
        self._window_drift = 0.0
        self._reads_since_write = 0
        self._next_reap = 0.0
        self._wheel = TimerWheel(self._clock())

        # The policy counts in bytes when a byte budget is set, in entries otherwise.
        self._bounded = max_entries is not None or max_bytes is not None
        self._by_bytes = max_bytes is not None
        self._limit = max_bytes if max_bytes is not None else (max_entries or 0)
        self._window_limit = 0
        self._protected_limit = 0
        self._reset_segments()
        self._window_weight = 0
        self._protected_weight = 0
        self._policy_weight = 0
        self._bytes = 0
        compiled = accelerate and _accel is not None
        self._new_entry: Callable[[Key, Any, int, float], _Entry] = (
            _accel.Entry if compiled else _Entry  # type: ignore[assignment]
        )
        self._new_sketch: Callable[..., FrequencySketch] = (
            _accel.Sketch if compiled else FrequencySketch  # type: ignore[assignment]
        )
        self._sketch = self._new_sketch(max_entries or 256, seed=self._rng.getrandbits(64))

        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._rejections = 0
        self._expirations = 0

        self._read_path: Any = None
        if compiled:
            # The compiled hit path shadows the method below on this instance; both behave alike
            # (the same tests run against each), the compiled one without the interpreter's overhead.
            self._read_path = _accel.ReadPath(
                data=self._data,
                reads=self._reads,
                clock=self._clock,
                on_expired=self._expire_entry,
                on_full=self._drain_full_buffer,
                invalid_key=InvalidKeyError,
                limit=_READ_BUFFER,
            )
            self.__dict__["get"] = self._read_path

    @property
    def accelerated(self) -> bool:
        """Whether this store runs on the compiled accelerator."""
        return self._read_path is not None

    # ------------------------------------------------------------------ reads

    def get(self, key: Key, default: Any = None) -> Any:
        """Return the value for ``key``, or ``default`` when it is absent or expired."""
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
        if len(reads) >= _READ_BUFFER:
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
            self._drain_reads()
            return StoreStats(
                hits=self._hits,
                misses=self._misses + (self._read_path.misses if self._read_path else 0),
                evictions=self._evictions,
                rejections=self._rejections,
                expirations=self._expirations,
                bytes=self._bytes,
                entries=len(self._data),
            )

    @property
    def policy(self) -> PolicyState:
        """The current sizes of the window, probation and protected segments."""
        with self._lock:
            self._drain_reads()
            return PolicyState(
                window_limit=self._window_limit,
                protected_limit=self._protected_limit,
                window=self._window_weight,
                probation=self._policy_weight - self._window_weight - self._protected_weight,
                protected=self._protected_weight,
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
        removed: list[_Removal] = []
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
            self._unlink(entry)
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
        removed: list[_Removal] = []
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
            for entry in self._data.values():
                entry.queue = _REMOVED
                entry.bucket = None
            self._data.clear()
            self._hits += len(self._reads)  # buffered hits were hits; only the policy forgets them
            self._window.clear()
            self._probation.clear()
            self._protected.clear()
            self._reads.clear()
            self._wheel.clear(self._clock())
            self._sketch.clear()
            self._window_weight = self._protected_weight = self._policy_weight = self._bytes = 0

    # ------------------------------------------------------------- internals

    def _find(self, key: Key) -> _Entry | None:
        """The entry for ``key`` unless absent or expired; no side effects, safe under the lock."""
        try:
            entry = self._data.get(key)
        except TypeError:
            raise InvalidKeyError(f"unhashable key of type {type(key).__name__}") from None
        if entry is None or (entry.expires and entry.expires <= self._clock()):
            return None
        return entry

    def _live(self, key: Key) -> _Entry | None:
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
        self, key: Key, value: Any, weight: int, expires: float, removed: list[_Removal]
    ) -> bool:
        """Insert or replace under the lock. Returns whether the entry is resident afterwards."""
        # Apply pending reads first: eviction below must see the accesses that came before this write.
        self._drain_reads()
        self._reads_since_write = 0
        units = weight if self._by_bytes else 1
        entry = self._data.get(key)
        if self._bounded and (
            units > self._limit or (self._max_bytes is not None and weight > self._max_bytes)
        ):
            # Heavier than the whole budget: storing it would flush everything else for nothing.
            if entry is not None:
                self._unlink(entry)
            self._rejections += 1
            return False
        if entry is None:
            if self._bounded:
                self._adapt_window(key, units)
            self._insertions += 1
            entry = self._new_entry(key, value, weight, expires)
            self._data[key] = entry
            self._window[key] = entry
            self._window_weight += units
            self._policy_weight += units
            self._bytes += weight
        else:
            old_units = entry.weight if self._by_bytes else 1
            delta = units - old_units
            self._policy_weight += delta
            if entry.queue == _WINDOW:
                self._window_weight += delta
            elif entry.queue == _PROTECTED:
                self._protected_weight += delta
            self._bytes += weight - entry.weight
            entry.value = value
            entry.weight = weight
            entry.expires = expires
            self._touch(entry)
        if expires:
            self._wheel.schedule(entry)
        elif entry.bucket is not None:
            self._wheel.deschedule(entry)
        if self._bounded:
            self._sketch.increment(hash(key))
            if self._window_weight > self._window_limit or self._over_budget():
                self._evict(removed)
            if self._max_entries is None and self._sketch.capacity < len(self._data):
                # A byte-bounded store learns its entry count as it fills; Caffeine grows its sketch
                # the same way. The counts restart, which costs a little accuracy once per doubling.
                self._sketch = self._new_sketch(2 * len(self._data), seed=self._rng.getrandbits(64))
        now = self._clock()
        if now >= self._next_reap:
            self._reap_locked(now, removed, exact=False)
        return entry.queue != _REMOVED

    def _unlink(self, entry: _Entry) -> None:
        """Remove ``entry`` from every structure (under the lock)."""
        key = entry.key
        del self._data[key]
        units = entry.weight if self._by_bytes else 1
        queue = entry.queue
        if queue == _WINDOW:
            del self._window[key]
            self._window_weight -= units
        elif queue == _PROBATION:
            del self._probation[key]
        else:
            del self._protected[key]
            self._protected_weight -= units
        self._policy_weight -= units
        self._bytes -= entry.weight
        self._wheel.deschedule(entry)
        entry.queue = _REMOVED

    # -- reads meet the policy

    def _drain_full_buffer(self) -> None:
        # Never wait: if another thread is draining, this read stays buffered for it or the next one.
        if self._lock.acquire(blocking=False):
            try:
                self._drain_reads()
            finally:
                self._lock.release()

    def _drain_reads(self) -> None:
        """Apply buffered reads to the policy (under the lock)."""
        reads = self._reads
        count = len(reads)
        if not count:
            return
        # Slice, then delete the slice: each is one atomic step, so reads appended meanwhile by
        # lock-free readers stay in the buffer instead of being lost.
        batch = reads[:count]
        del reads[:count]
        self._hits += count
        if self._bounded:
            self._reads_since_write += count
            if self._reads_since_write > _EXACT_READS and count > _READ_SAMPLE:
                batch = batch[-_READ_SAMPLE:]
            increment = self._sketch.increment
            touch = self._touch
            for entry in batch:
                if entry.queue != _REMOVED:
                    increment(hash(entry.key))
                    touch(entry)

    def _touch(self, entry: _Entry) -> None:
        """Record an access in the segments' recency order (the sketch is counted by the caller)."""
        key = entry.key
        queue = entry.queue
        if queue == _WINDOW:
            self._window.move_to_end(key)
        elif queue == _PROTECTED:
            self._protected.move_to_end(key)
        elif queue == _PROBATION:
            units = entry.weight if self._by_bytes else 1
            del self._probation[key]
            if units > self._protected_limit:
                self._probation[key] = entry  # too heavy to protect: just refresh it
                return
            entry.queue = _PROTECTED
            self._protected[key] = entry
            self._protected_weight += units
            self._demote_protected()

    def _demote_protected(self) -> None:
        protected = self._protected
        while self._protected_weight > self._protected_limit and protected:
            key, entry = protected.popitem(last=False)
            entry.queue = _PROBATION
            self._probation[key] = entry
            self._protected_weight -= entry.weight if self._by_bytes else 1

    # -- eviction

    def _over_budget(self) -> bool:
        return self._policy_weight > self._limit or (
            self._max_entries is not None and len(self._data) > self._max_entries
        )

    def _evict(self, removed: list[_Removal]) -> None:
        """Restore the budget: window overflow becomes candidates, candidates face victims."""
        by_bytes = self._by_bytes
        candidates: list[_Entry] = []
        window = self._window
        while self._window_weight > self._window_limit and window:
            key, entry = window.popitem(last=False)
            self._window_weight -= entry.weight if by_bytes else 1
            entry.queue = _PROBATION
            self._probation[key] = entry
            candidates.append(entry)

        next_candidate = 0
        while self._over_budget():
            victim = self._first_victim()
            candidate = None
            while next_candidate < len(candidates):
                candidate = candidates[next_candidate]
                if candidate.queue == _PROBATION:
                    break
                next_candidate += 1
                candidate = None
            if candidate is None or candidate is victim:
                # Nothing left to compare: the least recently used entry goes.
                if candidate is victim:
                    next_candidate += 1
                self._evict_entry(victim, RemovalCause.SIZE, removed)
            elif self._admit(candidate, victim):
                self._evict_entry(victim, RemovalCause.SIZE, removed)
            else:
                next_candidate += 1
                self._rejections += 1
                self._evict_entry(candidate, RemovalCause.REJECTED, removed)

    def _first_victim(self) -> _Entry:
        for segment in (self._probation, self._protected, self._window):
            if segment:
                return next(iter(segment.values()))
        raise AssertionError("over budget with no entries")  # pragma: no cover

    def _admit(self, candidate: _Entry, victim: _Entry) -> bool:
        frequency = self._sketch.frequency
        candidate_freq = frequency(hash(candidate.key))
        victim_freq = frequency(hash(victim.key))
        if candidate_freq > victim_freq:
            return True
        if candidate_freq < _HASHDOS_THRESHOLD:
            return False
        # An attacker can inflate a victim's count with colliding keys so that nothing new is ever
        # admitted; letting a warm candidate in at random now and then defeats that (Caffeine).
        return self._rng.getrandbits(7) == 0

    def _evict_entry(self, entry: _Entry, cause: RemovalCause, removed: list[_Removal]) -> None:
        ghost = self._ghost_rejected if cause is RemovalCause.REJECTED else self._ghost_victims
        ghost[entry.key] = self._insertions
        if len(ghost) > self._ghost_limit():
            ghost.popitem(last=False)
        self._unlink(entry)
        self._evictions += 1
        if self._on_evict is not None:
            removed.append((entry.key, entry.value, cause))

    # -- the adaptive window

    def _reset_segments(self) -> None:
        self._window_limit = max(1, int(self._limit * _INITIAL_WINDOW)) if self._bounded else 0
        self._protected_limit = int((self._limit - self._window_limit) * _PROTECTED_SHARE)

    def _ghost_limit(self) -> int:
        return max(1, int(self._sketch.capacity * _GHOST_SHARE))

    def _adapt_window(self, key: Hashable, units: int) -> None:
        """Climb towards the window size with the best hit rate, one ghost hit at a time.

        A miss on a key that admission recently refused is a hit that a larger window would have
        had; a miss on a key recently evicted from the main area is one that a larger main area
        would have had. Each is a sample of the hit rate's gradient with respect to the window size,
        so the window takes a small step along it. Caffeine's hill climber estimates the same
        gradient by comparing the hit rates of successive sample periods; on these traces that
        estimate is too noisy to climb far enough (in our runs sprite stayed 2 points under LRU and
        Corda 4), while ghost hits arrive with every request and need no period.

        Growing steps are smaller than shrinking ones: a refused key that returns is weaker
        evidence (it may be a one-off that came back once) than a proven entry lost from main.
        And a refused key counts only if it came back soon enough that a window twice the size
        would have kept it: the gradient is local, and without that bound a loop slightly longer
        than the cache (every refused key returns, but no window short of the whole budget would
        hold it) drove the window to LRU and the hit rate from 88 % to 13 %.
        """
        refused_at = self._ghost_rejected.pop(key, None)
        if refused_at is not None:
            if self._insertions - refused_at > _GROW_REACH * len(self._window) + 1:
                # A window twice today's size would not have kept it either (a loop a little
                # longer than the cache looks like this): no evidence for a small step.
                return
            self._window_drift += units * _GROW_STEP
        elif self._ghost_victims.pop(key, None) is not None:
            self._window_drift -= units * _SHRINK_STEP
        else:
            return
        step = int(self._window_drift)
        if step > 0:
            self._grow_window(step)
        elif step < 0:
            self._shrink_window(-step)
        self._window_drift -= step

    def _resize_window(self, limit: int) -> int:
        """Set the window's limit (kept within [1, budget - 1]); return the change."""
        limit = max(1, min(limit, self._limit - 1))
        change = limit - self._window_limit
        self._window_limit = limit
        # Protected keeps its share of whatever the main area is now.
        self._protected_limit = int((self._limit - limit) * _PROTECTED_SHARE)
        return change

    def _grow_window(self, quota: int) -> None:
        quota = self._resize_window(self._window_limit + quota)
        if quota <= 0:
            return
        self._demote_protected()
        # Move the main area's least recently used entries into the window's MRU end, so the
        # window fills with what the main area valued least (Caffeine does the same).
        by_bytes = self._by_bytes
        for _ in range(_TRANSFER_LIMIT):
            segment = self._probation or self._protected
            if not segment:
                break
            key, entry = next(iter(segment.items()))
            units = entry.weight if by_bytes else 1
            if quota < units:
                break
            quota -= units
            del segment[key]
            if entry.queue == _PROTECTED:
                self._protected_weight -= units
            entry.queue = _WINDOW
            self._window[key] = entry
            self._window_weight += units

    def _shrink_window(self, quota: int) -> None:
        quota = -self._resize_window(self._window_limit - quota)
        if quota <= 0:
            return
        by_bytes = self._by_bytes
        window = self._window
        for _ in range(_TRANSFER_LIMIT):
            if not window:
                break
            key, entry = next(iter(window.items()))
            units = entry.weight if by_bytes else 1
            if quota < units:
                break
            quota -= units
            del window[key]
            self._window_weight -= units
            entry.queue = _PROBATION
            self._probation[key] = entry

    # -- expiry

    def _expire_entry(self, entry: _Entry) -> None:
        """Remove an entry a read found expired (lazy expiry), unless someone replaced it meanwhile."""
        removed: list[_Removal] = []
        with self._lock:
            if (
                self._data.get(entry.key) is entry
                and entry.expires
                and entry.expires <= self._clock()
            ):
                self._unlink(entry)
                self._expirations += 1
                if self._on_evict is not None:
                    removed.append((entry.key, entry.value, RemovalCause.EXPIRED))
        self._notify(removed)

    def _reap(self, *, exact: bool) -> None:
        removed: list[_Removal] = []
        with self._lock:
            self._reap_locked(self._clock(), removed, exact=exact)
        self._notify(removed)

    def _reap_locked(self, now: float, removed: list[_Removal], *, exact: bool) -> None:
        # The wheel's finest buckets are one second wide: nothing new can be due before the next.
        self._next_reap = math.floor(now) + 1.0
        for timed in self._wheel.advance(now, exact=exact):
            entry: _Entry = timed  # type: ignore[assignment]
            if entry.queue == _REMOVED:
                continue
            self._unlink(entry)
            self._expirations += 1
            if self._on_evict is not None:
                removed.append((entry.key, entry.value, RemovalCause.EXPIRED))

    def _notify(self, removed: list[_Removal]) -> None:
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
