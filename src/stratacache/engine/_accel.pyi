"""Type stubs for the compiled accelerator (``_accel.c``)."""

from collections.abc import Callable, Hashable
from typing import Any

from stratacache.engine.timerwheel import TimedEntry, TimerWheel

READ_BUFFER: int
READ_SAMPLE: int
EXACT_READS: int
TRANSFER_LIMIT: int
HASHDOS_THRESHOLD: int
GROW_REACH: int
REFUSED_FLOOR_NUM: int
REFUSED_FLOOR_DEN: int
COUNTERS_PER_SLOT_BITS: int
SHADOW_KEYS: int
SHADOW_PERIOD: int
SHADOW_LEAD: int
SHADOW_MEMORY: int

class Entry:
    @property
    def key(self) -> Hashable: ...
    @property
    def value(self) -> Any: ...
    bucket: dict[Hashable, TimedEntry] | None
    @property
    def weight(self) -> int: ...
    expires: float
    @property
    def queue(self) -> int: ...
    def __init__(self, key: Hashable, value: Any, weight: int, expires: float) -> None: ...

class Sketch:
    def __init__(self, capacity: int, *, seed: int = 0) -> None: ...
    @property
    def capacity(self) -> int: ...
    @property
    def sample_size(self) -> int: ...
    def increment(self, key_hash: int, /) -> None: ...
    def frequency(self, key_hash: int, /) -> int: ...
    def halve(self) -> None: ...
    def clear(self) -> None: ...

class Lock:
    def acquire(self, blocking: bool = True) -> bool: ...
    def release(self) -> None: ...
    def locked(self) -> bool: ...
    def __enter__(self) -> bool: ...
    def __exit__(self, *args: object) -> None: ...

class Policy:
    data: dict[Hashable, Entry]
    hits: int
    evictions: int
    rejections: int
    bytes: int
    window_weight: int
    protected_weight: int
    policy_weight: int
    window_limit: int
    protected_limit: int
    next_reap: float
    @property
    def reads(self) -> list[Entry]: ...
    def __init__(
        self,
        max_entries: int | None,
        max_bytes: int | None,
        *,
        rng: Any,
        wheel: TimerWheel,
        size: Any,
        rejected: Any,
    ) -> None: ...
    def put(
        self,
        key: Hashable,
        value: Any,
        weight: int,
        expires: float,
        removed: list[tuple[Any, Any, Any]] | None,
        /,
    ) -> Entry | None: ...
    def unlink(self, entry: Entry, /) -> None: ...
    def drain(self) -> None: ...
    def clear(self) -> None: ...

class ReadPath:
    misses: int
    def __init__(
        self,
        *,
        policy: Policy,
        lock: Lock,
        clock: Callable[[], float],
        on_expired: Callable[[Any], None],
        invalid_key: type[Exception],
    ) -> None: ...
    def __call__(self, key: Any, default: Any = None) -> Any: ...
    def ttl(self, key: Any) -> float | None: ...

class WritePath:
    def __init__(
        self,
        *,
        policy: Policy,
        lock: Lock,
        clock: Callable[[], float],
        weigh: Callable[[Any, Any], int],
        weigher: Callable[[Any, Any], object],
        default_weigher: bool,
        slow: Callable[..., bool],
        reap: Callable[[float, list[Any]], None],
        notify: Callable[[list[Any]], None] | None,
    ) -> None: ...
    def __call__(self, key: Any, value: Any, ttl: float | None = None) -> bool: ...
