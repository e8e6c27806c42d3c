"""Test helpers: a sans-IO client of a sidecar, and timers fired by hand."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stratacache.resp.protocol import ReplyReader
from stratacache.resp.session import TimerHandle
from stratacache.resp.sidecar import Sidecar

__all__ = ["Client", "FakeTimers"]


class Client:
    """A session on a sidecar, with the replies decoded."""

    def __init__(self, sidecar: Sidecar, resp: int = 2) -> None:
        self.sidecar = sidecar
        self.session = sidecar.connect("127.0.0.1:1", "127.0.0.1:6380")
        self.reader = ReplyReader()
        if resp == 3:
            self("HELLO", "3")

    def send(self, *args: str | bytes | int) -> None:
        argv = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        self.sidecar.feed(self.session, [argv])

    def replies(self) -> list[object]:
        self.reader.feed(self.session.take_output())
        out = []
        while (reply := self.reader.gets()) is not False:
            out.append(reply)
        return out

    def __call__(self, *args: str | bytes | int) -> Any:  # a reply of any shape
        self.send(*args)
        replies = self.replies()
        assert len(replies) == 1, replies
        return replies[0]


class FakeTimers:
    """The connection layer's timers, fired by hand."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Callable[[], None], list[bool]]] = []

    def __call__(self, seconds: float, callback: Callable[[], None]) -> TimerHandle:
        cancelled = [False]
        self.pending.append((seconds, callback, cancelled))

        class Handle:
            def cancel(self) -> None:
                cancelled[0] = True

        return Handle()

    def fire_all(self) -> None:
        pending, self.pending = self.pending, []
        for _, callback, cancelled in pending:
            if not cancelled[0]:
                callback()
