"""Type stubs for the compiled accelerator (``_accel.c``)."""

from collections.abc import Callable, Hashable
from typing import Any

from stratacache.engine.timerwheel import TimedEntry

class Entry:
    key: Hashable
    value: Any
    bucket: dict[Hashable, TimedEntry] | None
    weight: int
    expires: float
    queue: int
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

class ReadPath:
    misses: int
    def __init__(
        self,
        *,
        data: dict[Hashable, Any],
        reads: list[Any],
        clock: Callable[[], float],
        on_expired: Callable[[Any], None],
        on_full: Callable[[], None],
        invalid_key: type[Exception],
        limit: int,
    ) -> None: ...
    def __call__(self, key: Any, default: Any = None) -> Any: ...
