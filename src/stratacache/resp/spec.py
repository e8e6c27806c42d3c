"""Command specs: what the dispatcher needs to know about a command, as data.

A command is a :class:`CommandSpec`: its name, arity (Redis's convention: ``n`` exactly ``n``
arguments counting the name, ``-n`` at least ``n``), flags, key positions, group and handler.
Container commands (CONFIG, CLIENT, SCRIPT, ...) hold their subcommands, each a spec of its own
named ``"container|sub"``. The handler modules build their specs with :func:`command`; the table
that gathers them is in :mod:`stratacache.resp.commands`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from stratacache.errors import ConfigError

if TYPE_CHECKING:
    from stratacache.resp.session import Session

__all__ = ["CommandSpec", "Flag", "Handler", "command"]

Handler = Callable[["Session", list[bytes]], object]
"""A command implementation: ``handler(session, argv) -> reply``; errors are raised as
:class:`~stratacache.resp.protocol.CommandError`."""


class Flag(enum.IntFlag):
    """Command flags, named as Redis's COMMAND reports them."""

    WRITE = enum.auto()
    READONLY = enum.auto()
    DENYOOM = enum.auto()
    ADMIN = enum.auto()
    PUBSUB = enum.auto()
    NOSCRIPT = enum.auto()
    BLOCKING = enum.auto()
    LOADING = enum.auto()
    STALE = enum.auto()
    FAST = enum.auto()
    NO_AUTH = enum.auto()
    NO_MULTI = enum.auto()
    ALLOW_BUSY = enum.auto()
    MOVABLEKEYS = enum.auto()
    SKIP_SLOWLOG = enum.auto()
    # Not a Redis flag: the command runs even inside MULTI (MULTI, EXEC, DISCARD, WATCH, QUIT, RESET).
    TRANSACTION_CONTROL = enum.auto()
    # Not a Redis flag: allowed while a RESP2 connection is in pub/sub mode.
    SUBSCRIBED_OK = enum.auto()


_FLAG_NAMES: Final = {
    "write": Flag.WRITE,
    "readonly": Flag.READONLY,
    "denyoom": Flag.DENYOOM,
    "admin": Flag.ADMIN,
    "pubsub": Flag.PUBSUB,
    "noscript": Flag.NOSCRIPT,
    "blocking": Flag.BLOCKING,
    "loading": Flag.LOADING,
    "stale": Flag.STALE,
    "fast": Flag.FAST,
    "no_auth": Flag.NO_AUTH,
    "no_multi": Flag.NO_MULTI,
    "allow_busy": Flag.ALLOW_BUSY,
    "movablekeys": Flag.MOVABLEKEYS,
    "skip_slowlog": Flag.SKIP_SLOWLOG,
    "transaction_control": Flag.TRANSACTION_CONTROL,
    "subscribed_ok": Flag.SUBSCRIBED_OK,
}


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One command (or subcommand) of the table."""

    name: str
    """Lower case; ``"container|sub"`` for a subcommand."""
    arity: int
    flags: Flag
    first_key: int
    last_key: int
    step: int
    handler: Handler | None
    group: str
    summary: str = ""
    since: str = "1.0.0"
    subcommands: Mapping[bytes, CommandSpec] = field(default_factory=dict)
    keys: Callable[[list[bytes]], list[bytes]] | None = None
    """For commands whose keys move (EVAL, ZUNION, ...): extracts them from argv."""
    # Flags the dispatcher checks on every call, as plain bools: cheaper than IntFlag arithmetic.
    no_auth: bool = False
    no_multi: bool = False
    transaction_control: bool = False
    subscribed_ok: bool = False
    write: bool = False
    noscript: bool = False
    allow_busy: bool = False
    """Served while a script runs past ``lua-time-limit`` (others get ``BUSY``)."""
    min_args: int = 0
    """Fewest argv items the arity allows (the dispatcher's fast path checks this range)."""
    max_args: int = 0
    """Most argv items the arity allows; 0 for a container, which always takes the slow path."""

    @property
    def flag_names(self) -> list[str]:
        """The Redis flags, as COMMAND lists them."""
        names = []
        for name, flag in _FLAG_NAMES.items():
            if flag in (Flag.TRANSACTION_CONTROL, Flag.SUBSCRIBED_OK):
                continue
            if flag & self.flags:
                names.append(name)
        return names

    def key_names(self, argv: list[bytes]) -> list[bytes]:
        """The keys that ``argv`` (a full call of this command) names."""
        if self.keys is not None:
            return self.keys(argv)
        if self.first_key <= 0:
            return []
        last = self.last_key if self.last_key >= 0 else len(argv) + self.last_key
        return argv[self.first_key : last + 1 : self.step or 1]


def command(
    name: str,
    arity: int,
    flags: str,
    handler: Handler | None,
    *,
    keys: tuple[int, int, int] = (0, 0, 0),
    group: str = "generic",
    summary: str = "",
    since: str = "1.0.0",
    subcommands: Iterable[CommandSpec] = (),
    key_finder: Callable[[list[bytes]], list[bytes]] | None = None,
) -> CommandSpec:
    """Build a spec; ``flags`` is a space-separated list of Redis flag names.

    >>> command("get", 2, "readonly fast", None, keys=(1, 1, 1)).flag_names
    ['readonly', 'fast']
    """
    value = Flag(0)
    for word in flags.split():
        try:
            value |= _FLAG_NAMES[word]
        except KeyError:
            raise ConfigError(f"unknown command flag {word!r} for {name!r}") from None
    subs = {sub.name.split("|", 1)[1].encode(): sub for sub in subcommands}
    if key_finder is not None:
        value |= Flag.MOVABLEKEYS
    return CommandSpec(
        name=name,
        arity=arity,
        flags=value,
        first_key=keys[0],
        last_key=keys[1],
        step=keys[2],
        handler=handler,
        group=group,
        summary=summary,
        since=since,
        subcommands=subs,
        keys=key_finder,
        no_auth=bool(value & Flag.NO_AUTH),
        no_multi=bool(value & Flag.NO_MULTI),
        transaction_control=bool(value & Flag.TRANSACTION_CONTROL),
        subscribed_ok=bool(value & Flag.SUBSCRIBED_OK),
        write=bool(value & Flag.WRITE),
        noscript=bool(value & Flag.NOSCRIPT),
        allow_busy=bool(value & Flag.ALLOW_BUSY),
        min_args=arity if arity > 0 else -arity,
        max_args=0 if subs else (arity if arity > 0 else 1 << 31),
    )
