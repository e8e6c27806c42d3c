"""Type stubs for the compiled fast path (``_fast.c``)."""

from collections.abc import Callable
from typing import Any

def parse_requests(data: bytes, max_bulk_len: int, /) -> tuple[list[list[bytes]], int]: ...

class Runner:
    size: int
    counted: int
    sliced: int
    def __init__(
        self,
        *,
        session_type: type,
        database_type: type,
        sidecar: Any,
        keyspace: Any,
        quick: dict[bytes, Any],
        natives: dict[str, Callable[..., object]],
        ok: object,
        error_type: type,
        on_reply: Callable[[Any, object, int], bytes],
        on_exception: Callable[[Any, Exception], object],
        serve_ready: Callable[[], object],
        wrongtype: str,
        not_integer: str,
        overflow: str,
        decr_overflow: str,
        containers: tuple[type, type, int, int, int, int],
    ) -> None: ...
    def run(
        self,
        session: Any,
        commands: list[list[bytes]],
        start: int,
        out: list[bytes],
        ran: list[str],
        protocol: int,
        size: int,
        counted: int,
        /,
    ) -> int: ...
    def serve(self, session: Any, data: bytes, max_bulk_len: int, /) -> int: ...
    def take_dirty(self) -> int: ...

class Weigher:
    def __init__(self, key_overhead: int) -> None: ...
    def __call__(self, key: object, value: object, /) -> int: ...
