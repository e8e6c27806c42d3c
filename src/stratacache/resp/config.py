"""CONFIG GET/SET: the settings the sidecar honours, and the ones it accepts for compatibility.

Live settings change the sidecar at once (``maxmemory`` rebuilds the stores' budget,
``notify-keyspace-events`` turns notifications on, ``requirepass`` protects new connections).
Encoding knobs (``hash-max-listpack-entries``, ...) and persistence switches are accepted and
reported back so that clients and test suites that set them keep working, but they do not change
how values are stored: the data structures here have no compact encodings to tune.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from stratacache.resp.keyspace import format_notify_flags, parse_notify_flags
from stratacache.resp.protocol import CommandError
from stratacache.resp.values import glob_match

if TYPE_CHECKING:
    from stratacache.resp.sidecar import Sidecar

__all__ = ["RespConfig", "parse_memory"]

_UNITS: Final = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1024,
    "m": 1000**2,
    "mb": 1024**2,
    "g": 1000**3,
    "gb": 1024**3,
}
_MEMORY_RE: Final = re.compile(r"(-?\d+)([a-z]*)")


def parse_memory(text: str) -> int | None:
    """Parse a memory amount as Redis's ``memtoull`` (``100mb``, ``1gb``, ``512``); ``None`` if bad.

    >>> parse_memory("1kb"), parse_memory("2M"), parse_memory("x")
    (1024, 2000000, None)
    """
    match = _MEMORY_RE.fullmatch(text.strip().lower())
    if match is None or match.group(2) not in _UNITS:
        return None
    return int(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True, slots=True)
class _Param:
    name: str
    default: str
    kind: str  # "int", "memory", "bool", "str", "enum"
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    apply: Callable[[Sidecar, str], None] | None = None
    aliases: tuple[str, ...] = ()


def _apply_maxmemory(sidecar: Sidecar, value: str) -> None:
    amount = parse_memory(value) or 0
    sidecar.keyspace.set_maxmemory(amount if amount > 0 else None)


def _apply_notify(sidecar: Sidecar, value: str) -> None:
    flags = parse_notify_flags(value)
    assert flags is not None
    sidecar.keyspace.notify_flags = flags


def _apply_min_replicas(sidecar: Sidecar, value: str) -> None:
    sidecar.min_replicas = int(value)


def _apply_requirepass(sidecar: Sidecar, value: str) -> None:
    sidecar.requirepass = value or None


_PARAMS: Final = (
    _Param("maxmemory", "0", "memory", apply=_apply_maxmemory),
    _Param(
        "maxmemory-policy",
        "allkeys-lfu",
        "enum",
        choices=(
            "volatile-lru",
            "volatile-lfu",
            "volatile-random",
            "volatile-ttl",
            "allkeys-lru",
            "allkeys-lfu",
            "allkeys-random",
            "noeviction",
        ),
    ),
    _Param("maxmemory-samples", "5", "int", minimum=1),
    _Param("notify-keyspace-events", "", "notify", apply=_apply_notify),
    _Param("requirepass", "", "str", apply=_apply_requirepass),
    _Param("proto-max-bulk-len", "536870912", "memory", minimum=1024 * 1024),
    _Param("client-query-buffer-limit", "1073741824", "memory", minimum=1024 * 1024),
    _Param("databases", "16", "int", minimum=1),
    _Param("port", "6380", "int"),
    _Param("bind", "127.0.0.1", "str"),
    _Param("timeout", "0", "int", minimum=0),
    _Param("hz", "10", "int", minimum=1),
    _Param("save", "", "str"),
    _Param("appendonly", "no", "bool"),
    _Param("appendfsync", "everysec", "enum", choices=("always", "everysec", "no")),
    _Param("aof-use-rdb-preamble", "yes", "bool"),
    _Param("dir", ".", "str"),
    _Param("dbfilename", "dump.strata", "str"),
    _Param("lua-time-limit", "5000", "int", aliases=("busy-reply-threshold",)),
    # Not a Redis setting: how long a script may run before the sidecar stops it (0: never).
    _Param("strata-script-time-limit", "30000", "int", minimum=0),
    _Param("maxclients", "10000", "int", minimum=1),
    _Param("lazyfree-lazy-eviction", "no", "bool"),
    _Param("lazyfree-lazy-expire", "no", "bool"),
    _Param("lazyfree-lazy-server-del", "no", "bool"),
    _Param("lazyfree-lazy-user-del", "no", "bool"),
    _Param("lazyfree-lazy-user-flush", "no", "bool"),
    _Param("list-max-listpack-size", "-2", "int", aliases=("list-max-ziplist-size",)),
    _Param("list-compress-depth", "0", "int", minimum=0),
    _Param("hash-max-listpack-entries", "128", "int", aliases=("hash-max-ziplist-entries",)),
    _Param("hash-max-listpack-value", "64", "int", aliases=("hash-max-ziplist-value",)),
    _Param("set-max-intset-entries", "512", "int"),
    _Param("zset-max-listpack-entries", "128", "int", aliases=("zset-max-ziplist-entries",)),
    _Param("zset-max-listpack-value", "64", "int", aliases=("zset-max-ziplist-value",)),
    _Param("stream-node-max-bytes", "4096", "memory"),
    _Param("stream-node-max-entries", "100", "int"),
    _Param(
        "min-replicas-to-write",
        "0",
        "int",
        minimum=0,
        apply=_apply_min_replicas,
        aliases=("min-slaves-to-write",),
    ),
    _Param("min-replicas-max-lag", "10", "int", aliases=("min-slaves-max-lag",)),
    _Param("replica-serve-stale-data", "yes", "bool", aliases=("slave-serve-stale-data",)),
    _Param("replica-read-only", "yes", "bool", aliases=("slave-read-only",)),
    _Param("rdb-key-save-delay", "0", "int"),
    _Param("slowlog-log-slower-than", "10000", "int"),
    _Param("slowlog-max-len", "128", "int"),
    _Param("latency-tracking", "yes", "bool"),
    _Param("activedefrag", "no", "bool"),
    _Param("active-expire-effort", "1", "int", minimum=1),
    _Param("tcp-keepalive", "300", "int", minimum=0),
    _Param("loglevel", "notice", "enum", choices=("debug", "verbose", "notice", "warning")),
    _Param("protected-mode", "yes", "bool"),
    _Param("enable-debug-command", "no", "str"),
    _Param("lfu-log-factor", "10", "int"),
    _Param("lfu-decay-time", "1", "int"),
    _Param("tracking-table-max-keys", "1000000", "int"),
)


class RespConfig:
    """The settings of one sidecar, by Redis's names (and their old aliases)."""

    def __init__(self, sidecar: Sidecar) -> None:
        self._sidecar = sidecar
        self._params: dict[str, _Param] = {}
        self._values: dict[str, str] = {}
        for param in _PARAMS:
            self._params[param.name] = param
            for alias in param.aliases:
                self._params[alias] = param
            self._values[param.name] = param.default
        if sidecar.requirepass:
            self._values["requirepass"] = sidecar.requirepass
        if sidecar.keyspace.maxmemory:
            self._values["maxmemory"] = str(sidecar.keyspace.maxmemory)
        self._values["databases"] = str(len(sidecar.keyspace.dbs))

    def get(self, name: str) -> str:
        """The current value of a setting (``KeyError`` if unknown)."""
        return self._values[self._params[name.lower()].name]

    def matching(self, pattern: bytes) -> dict[bytes, bytes]:
        """CONFIG GET: every setting (or alias) whose name matches the glob ``pattern``."""
        found: dict[bytes, bytes] = {}
        lowered = pattern.lower()
        for name, param in self._params.items():
            if glob_match(lowered, name.encode(), nocase=True):
                value = self._values[param.name]
                if param.kind == "notify":
                    value = format_notify_flags(self._sidecar.keyspace.notify_flags)
                found[name.encode()] = value.encode()
        return found

    def set_many(self, pairs: list[tuple[bytes, bytes]]) -> None:
        """CONFIG SET: validate every pair first, then apply them all (or none)."""
        seen: set[str] = set()
        checked: list[tuple[_Param, str]] = []
        for raw_name, raw_value in pairs:
            name = raw_name.decode("utf-8", "replace").lower()
            param = self._params.get(name)
            if param is None:
                raise CommandError(
                    f"ERR Unknown option or number of arguments for CONFIG SET - '{name}'"
                )
            if param.name in seen:
                raise CommandError(
                    f"ERR CONFIG SET failed (possibly related to argument '{name}') - "
                    "duplicate parameter"
                )
            seen.add(param.name)
            value = raw_value.decode("utf-8", "replace")
            checked.append((param, self._validate(param, name, value)))
        for param, value in checked:
            self._values[param.name] = value
            if param.apply is not None:
                param.apply(self._sidecar, value)

    def _validate(self, param: _Param, name: str, value: str) -> str:
        def fail(reason: str) -> CommandError:
            return CommandError(
                f"ERR CONFIG SET failed (possibly related to argument '{name}') - {reason}"
            )

        if param.kind == "int":
            try:
                number = int(value)
            except ValueError:
                raise fail("argument couldn't be parsed into an integer") from None
            if param.minimum is not None and number < param.minimum:
                raise fail(f"argument must be between {param.minimum} and 2147483647 inclusive")
            return str(number)
        if param.kind == "memory":
            amount = parse_memory(value)
            if amount is None:
                raise fail("argument must be a memory value")
            if param.minimum is not None and amount < param.minimum:
                raise fail("argument must be a memory value")
            return str(amount)
        if param.kind == "bool":
            if value.lower() not in ("yes", "no"):
                raise fail("argument must be 'yes' or 'no'")
            return value.lower()
        if param.kind == "enum":
            if value.lower() not in param.choices:
                raise fail("argument(s) must be one of the following: " + ", ".join(param.choices))
            return value.lower()
        if param.kind == "notify":
            if parse_notify_flags(value) is None:
                raise fail("Invalid event class character. Use 'Ag$lshzxeKEtmd'.")
            return value
        return value
