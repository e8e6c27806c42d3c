"""Pub/sub: SUBSCRIBE, PSUBSCRIBE, UNSUBSCRIBE, PUNSUBSCRIBE, PUBLISH, PUBSUB."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from stratacache.resp.protocol import NO_REPLY, Push
from stratacache.resp.spec import CommandSpec, command
from stratacache.resp.values import glob_match

if TYPE_CHECKING:
    from stratacache.resp.session import Session

__all__ = ["COMMANDS"]


def subscribe(s: Session, argv: list[bytes]) -> object:
    """SUBSCRIBE channel [channel ...]: one confirmation per channel."""
    sidecar = s.sidecar
    for channel in argv[1:]:
        sidecar.subscribe_channel(s, channel)
        s.reply(Push([b"subscribe", channel, s.subscriptions]))
    return NO_REPLY


def psubscribe(s: Session, argv: list[bytes]) -> object:
    """PSUBSCRIBE pattern [pattern ...]."""
    sidecar = s.sidecar
    for pattern in argv[1:]:
        sidecar.subscribe_pattern(s, pattern)
        s.reply(Push([b"psubscribe", pattern, s.subscriptions]))
    return NO_REPLY


def unsubscribe(s: Session, argv: list[bytes]) -> object:
    """UNSUBSCRIBE [channel ...]: all channels when none is named."""
    sidecar = s.sidecar
    channels = argv[1:] or sorted(s.channels)
    if not channels:
        s.reply(Push([b"unsubscribe", None, s.subscriptions]))
        return NO_REPLY
    for channel in channels:
        sidecar.unsubscribe_channel(s, channel)
        s.reply(Push([b"unsubscribe", channel, s.subscriptions]))
    return NO_REPLY


def punsubscribe(s: Session, argv: list[bytes]) -> object:
    """PUNSUBSCRIBE [pattern ...]."""
    sidecar = s.sidecar
    patterns = argv[1:] or sorted(s.patterns)
    if not patterns:
        s.reply(Push([b"punsubscribe", None, s.subscriptions]))
        return NO_REPLY
    for pattern in patterns:
        sidecar.unsubscribe_pattern(s, pattern)
        s.reply(Push([b"punsubscribe", pattern, s.subscriptions]))
    return NO_REPLY


def publish(s: Session, argv: list[bytes]) -> object:
    """PUBLISH channel message: how many subscribers received it."""
    return s.sidecar.publish(argv[1], argv[2])


def pubsub_channels(s: Session, argv: list[bytes]) -> object:
    """PUBSUB CHANNELS [pattern]."""
    if len(argv) > 3:
        from stratacache.resp.sidecar import arity_error

        return arity_error("pubsub|channels")
    pattern = argv[2] if len(argv) == 3 else None
    return [
        channel for channel in s.sidecar.channels if pattern is None or glob_match(pattern, channel)
    ]


def pubsub_numsub(s: Session, argv: list[bytes]) -> object:
    """PUBSUB NUMSUB [channel ...]."""
    out: list[object] = []
    for channel in argv[2:]:
        out.extend((channel, len(s.sidecar.channels.get(channel, ()))))
    return out


def pubsub_numpat(s: Session, argv: list[bytes]) -> object:
    """PUBSUB NUMPAT."""
    return len(s.sidecar.patterns)


def pubsub_help(s: Session, argv: list[bytes]) -> object:
    """PUBSUB HELP."""
    return [
        b"PUBSUB <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        b"CHANNELS [<pattern>]",
        b"    Return the currently active channels matching a <pattern> (default: '*').",
        b"NUMPAT",
        b"    Return number of subscriptions to patterns.",
        b"NUMSUB [<channel> ...]",
        b"    Return the number of subscribers for the specified channels, excluding",
        b"    pattern subscriptions(default: no channels).",
        b"HELP",
        b"    Print this help.",
    ]


_PUBSUB = "pubsub"
_FLAGS = "pubsub noscript loading stale subscribed_ok"

COMMANDS: Final[tuple[CommandSpec, ...]] = (
    command("subscribe", -2, _FLAGS, subscribe, group=_PUBSUB, since="2.0.0"),
    command("psubscribe", -2, _FLAGS, psubscribe, group=_PUBSUB, since="2.0.0"),
    command("unsubscribe", -1, _FLAGS, unsubscribe, group=_PUBSUB, since="2.0.0"),
    command("punsubscribe", -1, _FLAGS, punsubscribe, group=_PUBSUB, since="2.0.0"),
    command("publish", 3, "pubsub loading stale fast", publish, group=_PUBSUB, since="2.0.0"),
    command(
        "pubsub",
        -2,
        "",
        None,
        group=_PUBSUB,
        since="2.8.0",
        subcommands=(
            command("pubsub|channels", -2, "pubsub loading stale", pubsub_channels, group=_PUBSUB),
            command("pubsub|numsub", -2, "pubsub loading stale", pubsub_numsub, group=_PUBSUB),
            command("pubsub|numpat", 2, "pubsub loading stale", pubsub_numpat, group=_PUBSUB),
            command("pubsub|help", 2, "loading stale", pubsub_help, group=_PUBSUB),
        ),
    ),
)
