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

After the call: write-behind. The answer goes back to every subscriber first; signing the record
and writing it through the tiers happen afterwards, off the clients' path. Between the two, the
answer is neither in flight nor stored, and a request arriving then must neither miss (a second
upstream call for an answer we already have) nor be told ``COALESCED`` for what is by then a
stored answer. :class:`PendingWrites` is that state, explicitly: the storage keys whose write has
been scheduled and not yet landed. A request for one of them waits for the write (well under a
millisecond in the embedded tiers) and then reads the tiers as usual, so it is a plain ``HIT``;
if the answer turned out not to be storable, it finds nothing and becomes a ``MISS`` like any
other. Closing the cache drains the pending writes, so an answer given is never lost at shutdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from typing import Any

from stratacache.errors import UpstreamError

__all__ = ["Flight", "PendingWrites"]


class Flight:
    """The shared state of one upstream call."""

    __slots__ = (
        "_changed",
        "arrivals",
        "body",
        "caller",
        "controls",
        "detached",
        "done",
        "epoch",
        "error",
        "events",
        "followers",
        "frames",
        "generation",
        "headers",
        "heard",
        "key",
        "sent_at",
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
        self.sent_at: float | None = None
        """When the request went upstream (monotonic seconds), for the recorded pace."""
        self.arrivals: list[float] = []
        """When each of :attr:`events` arrived (monotonic seconds), for the recorded pace."""
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
        self.generation: int | None = None
        """The cache's invalidation generation when the call started (``LLMCache._generation``;
        ``None`` mid-invalidation): the answer is stored only if it is unchanged."""
        self.epoch = 0
        """The cache's raw invalidation epoch when the call started: joinable while unchanged."""
        self.caller = ""
        """Who made the call (``LLMCache``'s unshared tenant id of its credential): with entries
        shared across tenants, a caller with another credential does not take its 4xx."""
        self.heard: tuple[int, ...] = ()
        """Where the tiers that hear other instances' invalidations stood when the call started
        (``TierChain.mark``): the answer is stored only if none heard since concerns it, and the
        call is joined only while none was heard at all."""
        self.task: asyncio.Task[None] | None = None
        """The task running the call."""
        self.controls: Any = None
        """The cache controls the answer is stored with, set by the cache: those of the first
        request that asked for storing (a no-store leader's own controls must not be used for a
        storing follower's answer), merged with any later storing follower's."""
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


class PendingWrites:
    """The writes scheduled after answers were given, by storage key, until each has landed.

    :meth:`schedule` registers the keys and starts the write in a task of its own; :meth:`wait`
    lets a request for one of those keys wait for it; :meth:`drain` waits for all of them (at
    shutdown). Registration happens in the same step as the flight leaves the coalescing table, so
    no request can fall between the two.
    """

    __slots__ = ("_landed", "_tasks")

    def __init__(self) -> None:
        # Every write of a key still in progress: a later write that ends first (an answer that
        # is not stored after all) must not hide an earlier one still landing.
        self._landed: dict[str, list[asyncio.Future[None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def schedule(self, keys: tuple[str, ...], write: Coroutine[Any, Any, None]) -> None:
        """Run ``write`` in a task; ``keys`` count as pending until it ends, however it ends.

        ``write`` is expected to handle its own errors; one that escapes is logged by asyncio's
        handler only if nobody awaits the task, and :meth:`drain` swallows it.
        """
        loop = asyncio.get_running_loop()
        landed: asyncio.Future[None] = loop.create_future()
        for key in keys:
            self._landed.setdefault(key, []).append(landed)
        task = loop.create_task(write)
        self._tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.discard(finished)
            if not landed.done():
                landed.set_result(None)
            for key in keys:
                waiting = self._landed.get(key)
                if waiting is not None:
                    waiting.remove(landed)
                    if not waiting:
                        del self._landed[key]

        task.add_done_callback(done)

    async def wait(self, key: str) -> bool:
        """Wait for every pending write of ``key``, if any; ``True`` if there was one.

        The writes are shielded: a waiter that is cancelled does not cancel them.
        """
        waiting = self._landed.get(key)
        if not waiting:
            return False
        await asyncio.shield(asyncio.gather(*waiting))
        return True

    def __contains__(self, key: object) -> bool:
        return key in self._landed

    def __len__(self) -> int:
        """How many writes are in progress."""
        return len(self._tasks)

    async def drain(self) -> None:
        """Wait until every write scheduled so far, and any scheduled meanwhile, has ended."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def settle_current(self) -> None:
        """Wait until the writes scheduled so far have ended; not those scheduled meanwhile.

        What an invalidation needs: a write that was pending when it started must land before it
        deletes, while writes begun later are its own business (the cache's invalidation epoch
        keeps them from storing what was invalidated). Waiting for *every* write instead (as
        :meth:`drain` does) could stall an invalidation for as long as traffic keeps coming.
        """
        current = list(self._tasks)
        if current:
            await asyncio.gather(*current, return_exceptions=True)
