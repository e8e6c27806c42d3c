"""One client connection's state: database, protocol version, MULTI queue, subscriptions, replies.

A :class:`Session` knows nothing about sockets. The dispatcher appends encoded replies to
:attr:`Session.out`; the connection that owns the session writes them out and calls
:attr:`Session.wake` hooks. Messages for a session that is not the one running the current command
(a PUBLISH, an unblocked BLPOP, CLIENT KILL) are appended the same way and the session's
``wake`` callback asks its connection to flush.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from stratacache.resp.protocol import Command, encode

if TYPE_CHECKING:
    from stratacache.resp.commands import CommandSpec
    from stratacache.resp.keyspace import Database
    from stratacache.resp.sidecar import Sidecar


class TimerHandle(Protocol):
    """What the connection layer's timer factory returns."""

    def cancel(self) -> None:
        """Stop the timer."""
        ...


__all__ = [
    "REPLY_OFF",
    "REPLY_ON",
    "REPLY_SKIP",
    "REPLY_SKIP_NEXT",
    "Block",
    "BlockState",
    "Session",
]

REPLY_ON = 0
"""CLIENT REPLY ON: every reply is sent."""
REPLY_OFF = 1
"""CLIENT REPLY OFF: no reply is sent (pushes still are)."""
REPLY_SKIP = 2
"""CLIENT REPLY SKIP was just called: its own reply is not sent."""
REPLY_SKIP_NEXT = 3
"""The next command's reply is not sent."""


@dataclass(slots=True)
class Block:
    """A handler's answer meaning "nothing to serve yet: block on these keys".

    :param keys: the keys whose change may let the command complete.
    :param timeout: seconds to wait; ``0`` waits forever.
    :param on_timeout: the reply sent when the timeout fires (``None`` → null / null array).
    :param kind: the value type that can serve the command (a key that now holds another type,
        say a string SET over the list, does not wake the client).
    """

    keys: list[bytes]
    timeout: float
    on_timeout: object = None
    kind: type | None = None


@dataclass(slots=True)
class BlockState:
    """A session blocked on keys: what to re-run and when to give up."""

    spec: CommandSpec
    argv: list[bytes]
    keys: list[bytes]
    db_index: int
    deadline: float | None
    on_timeout: object
    kind: type | None = None
    timer: TimerHandle | None = field(default=None)  # cancelled on wake-up
    fetching: bool = False
    """Waiting for the backing Redis (read-through), not for a key to become ready."""


def _noop() -> None:
    return None


class Session:
    """The state of one client connection."""

    __slots__ = (
        "addr",
        "authenticated",
        "blocked",
        "channels",
        "close_hook",
        "closing",
        "created",
        "db",
        "db_index",
        "id",
        "in_exec",
        "in_script",
        "laddr",
        "last_command",
        "last_seen",
        "lib_name",
        "lib_ver",
        "multi",
        "multi_failed",
        "name",
        "no_evict",
        "out",
        "patterns",
        "pending",
        "reply_mode",
        "resp",
        "sidecar",
        "wake",
        "watch_dirty",
        "watching",
    )

    def __init__(self, sidecar: Sidecar, session_id: int, addr: str = "", laddr: str = "") -> None:
        self.sidecar = sidecar
        self.id = session_id
        self.addr = addr
        self.laddr = laddr
        self.db_index = 0
        self.db: Database = sidecar.keyspace.dbs[0]
        self.resp = 2
        self.name = b""
        self.lib_name = b""
        self.lib_ver = b""
        self.authenticated = not sidecar.requirepass
        self.multi: list[tuple[CommandSpec, list[bytes]]] | None = None
        self.multi_failed = False
        self.watching: dict[tuple[int, bytes], bool] = {}
        self.watch_dirty = False
        self.channels: set[bytes] = set()
        self.patterns: set[bytes] = set()
        self.blocked: BlockState | None = None
        self.pending: deque[Command] = deque()
        self.out: list[bytes] = []
        self.closing = False
        self.in_exec = False
        self.in_script = False
        self.no_evict = False
        self.reply_mode = REPLY_ON
        self.created = sidecar.keyspace.now
        self.last_seen = self.created
        self.last_command = "NULL"
        self.wake: Callable[[], None] = _noop
        self.close_hook: Callable[[], None] = _noop

    @property
    def is_blocked(self) -> bool:
        """Whether a blocking command parks this session."""
        return self.blocked is not None

    def select(self, index: int) -> None:
        """Switch to database ``index`` (already validated)."""
        self.db_index = index
        self.db = self.sidecar.keyspace.dbs[index]

    def reply(self, value: object) -> None:
        """Encode ``value`` for this session's protocol and queue it."""
        self.out.append(encode(value, self.resp))

    @property
    def subscriptions(self) -> int:
        """Channels plus patterns this session is subscribed to."""
        return len(self.channels) + len(self.patterns)

    def take_output(self) -> bytes:
        """Everything queued for the client, as one buffer."""
        out = self.out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data
