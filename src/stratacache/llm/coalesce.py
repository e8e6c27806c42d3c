"""Request coalescing: one upstream call in flight, shared by every identical request meanwhile.

A :class:`Flight` is the shared state of one upstream call: its status and headers once known, the
SSE payloads of a streamed answer as they arrive (or the whole body of a plain one), and whether it
ended well. The call itself runs in a task of its own, not in any client's request, so it is never
tied to the client that happened to arrive first: every client (that first one included) is a
*subscriber* that reads the flight from the beginning, at its own pace. A follower joining halfway
through a stream therefore gets every chunk from the start, and the first client leaving does not
cut off the others.

Waking is by a fresh :class:`asyncio.Event` per change: :meth:`Flight.wake` sets the current event
and installs a new one. A subscriber checks the state and then waits on the event current at that
moment; with no ``await`` in between, a change can never slip past unseen.

When the last subscriber leaves a flight that has not finished (every client hung up), the call is
cancelled: nobody wants the answer, and a stream abandoned halfway is never stored. A *detached*
flight (a background refresh) has no subscribers and always runs to the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from stratacache.errors import UpstreamError

__all__ = ["Flight"]


class Flight:
    """The shared state of one upstream call."""

    __slots__ = (
        "_changed",
        "body",
        "detached",
        "done",
        "error",
        "events",
        "followers",
        "frames",
        "headers",
        "key",
        "sse",
        "started",
        "status",
        "store",
        "subscribers",
        "task",
        "terminal",
    )

    def __init__(self, key: str, *, store: bool, detached: bool = False) -> None:
        self.key = key
        """The storage key the call answers (the coalescing key)."""
        self.store = store
        """Whether the answer is to be stored (any subscriber that allows it may set this)."""
        self.detached = detached
        """Run to the end with no subscribers (a background refresh)."""
        self.status: int | None = None
        """The upstream HTTP status, once known."""
        self.headers: Mapping[str, str] = {}
        """The upstream response headers, once known."""
        self.sse = False
        """Whether the answer is an event stream (then :attr:`events` fills), else :attr:`body`."""
        self.events: list[bytes] = []
        """The SSE ``data`` payloads received so far, ``[DONE]`` excluded."""
        self.frames: list[bytes] = []
        """The same events encoded as SSE frames, event names included, ready to send."""
        self.body: bytes | None = None
        """The whole body of an answer that is not a stream (or of an error status)."""
        self.terminal = False
        """Whether the stream reached its terminal event."""
        self.error: UpstreamError | None = None
        """Why the call failed (no response, or a broken stream)."""
        self.started = False
        """Whether subscribers may start reading: the status is known, or the call failed."""
        self.done = False
        """Whether the call has ended, well or not."""
        self.subscribers = 0
        """Clients reading the flight right now."""
        self.followers = 0
        """Clients that joined after the first (for the coalescing counters)."""
        self.task: asyncio.Task[None] | None = None
        """The task running the call."""
        self._changed = asyncio.Event()

    def wake(self) -> None:
        """Tell every waiting subscriber that the state changed."""
        self._changed.set()
        self._changed = asyncio.Event()

    def begin(self) -> None:
        """Mark the response as started (status and headers known)."""
        self.started = True
        self.wake()

    def finish(self, error: UpstreamError | None = None) -> None:
        """Mark the call as ended, with ``error`` if it failed (the first error stays)."""
        if self.done:
            return
        if error is not None and self.error is None:
            self.error = error
        self.started = True
        self.done = True
        self.wake()

    async def changed(self) -> None:
        """Wait for the next change."""
        await self._changed.wait()

    async def wait_started(self) -> None:
        """Wait until the response has started or the call has failed."""
        while not self.started:
            await self._changed.wait()

    async def wait_done(self) -> None:
        """Wait until the call has ended."""
        while not self.done:
            await self._changed.wait()

    @property
    def failed(self) -> bool:
        """Whether the call ended without a usable response: no response, or a 5xx status."""
        if self.status is None:
            return self.error is not None
        return self.status >= 500

    def subscribe(self) -> None:
        """Count a client reading this flight."""
        self.subscribers += 1

    def unsubscribe(self) -> None:
        """Stop counting a client; cancel the call when nobody is left to want it."""
        self.subscribers -= 1
        if self.subscribers <= 0 and not self.done and not self.detached and self.task is not None:
            self.task.cancel()

    def __repr__(self) -> str:
        state = "done" if self.done else "started" if self.started else "pending"
        return f"Flight({self.key!r}, {state}, subscribers={self.subscribers})"
