"""Transactions: MULTI, EXEC, DISCARD, WATCH, UNWATCH (optimistic locking as Redis does it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from stratacache.resp.protocol import NO_REPLY, NULL_ARRAY, OK, CommandError
from stratacache.resp.spec import CommandSpec, command

if TYPE_CHECKING:
    from stratacache.resp.session import Session

__all__ = ["COMMANDS"]


def multi(s: Session, argv: list[bytes]) -> object:
    """MULTI."""
    if s.multi is not None:
        raise CommandError("ERR MULTI calls can not be nested")
    s.multi = []
    s.multi_failed = False
    return OK


def discard(s: Session, argv: list[bytes]) -> object:
    """DISCARD."""
    if s.multi is None:
        raise CommandError("ERR DISCARD without MULTI")
    s.multi = None
    s.multi_failed = False
    s.sidecar.unwatch(s)
    return OK


def exec_(s: Session, argv: list[bytes]) -> object:
    """EXEC: run the queued commands, unless a watched key changed or queuing failed."""
    queued = s.multi
    if queued is None:
        raise CommandError("ERR EXEC without MULTI")
    sidecar = s.sidecar
    s.multi = None
    failed = s.multi_failed
    s.multi_failed = False
    if failed:
        sidecar.unwatch(s)
        raise CommandError("EXECABORT Transaction discarded because of previous errors.")
    if sidecar.watch_failed(s):
        sidecar.unwatch(s)
        return NULL_ARRAY
    sidecar.unwatch(s)
    replies: list[object] = []
    s.in_exec = True
    try:
        for spec, call_argv in queued:
            reply = sidecar.call(s, spec, call_argv)
            if reply is NO_REPLY:
                continue
            replies.append(reply)
    finally:
        s.in_exec = False
    return replies


def watch(s: Session, argv: list[bytes]) -> object:
    """WATCH key [key ...]."""
    if s.multi is not None:
        raise CommandError("ERR WATCH inside MULTI is not allowed")
    for key in argv[1:]:
        s.sidecar.watch(s, key)
    return OK


def unwatch(s: Session, argv: list[bytes]) -> object:
    """UNWATCH."""
    s.sidecar.unwatch(s)
    return OK


_TX = "transactions"

COMMANDS: Final[tuple[CommandSpec, ...]] = (
    command(
        "multi",
        1,
        "noscript loading stale fast allow_busy transaction_control",
        multi,
        group=_TX,
        since="1.2.0",
    ),
    command(
        "exec",
        1,
        "noscript loading stale skip_slowlog transaction_control",
        exec_,
        group=_TX,
        since="1.2.0",
    ),
    command(
        "discard",
        1,
        "noscript loading stale fast allow_busy transaction_control",
        discard,
        group=_TX,
        since="2.0.0",
    ),
    command(
        "watch",
        -2,
        "noscript loading stale fast allow_busy transaction_control",
        watch,
        keys=(1, -1, 1),
        group=_TX,
        since="2.2.0",
    ),
    command(
        "unwatch", 1, "noscript loading stale fast allow_busy", unwatch, group=_TX, since="2.2.0"
    ),
)
