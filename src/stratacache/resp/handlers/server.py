"""Server commands: INFO, COMMAND, CONFIG, TIME, DBSIZE, FLUSHDB/FLUSHALL, MEMORY, SAVE/BGSAVE."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Final

from stratacache import __version__
from stratacache.resp.handlers._args import SYNTAX, int_arg
from stratacache.resp.protocol import NO_REPLY, OK, CommandError, SimpleString, Verbatim
from stratacache.resp.spec import CommandSpec, command
from stratacache.resp.values import KEY_OVERHEAD, glob_match

if TYPE_CHECKING:
    from stratacache.resp.session import Session
    from stratacache.resp.sidecar import Sidecar

__all__ = ["COMMANDS", "info_sections"]


def _human(amount: int) -> str:
    value = float(amount)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.2f}{unit}" if unit != "B" else f"{amount}B"
        value /= 1024
    return f"{amount}B"  # pragma: no cover


def info_sections(sidecar: Sidecar) -> dict[str, dict[str, object]]:
    """Every INFO section and its fields, computed now."""
    from stratacache.resp.sidecar import REDIS_VERSION

    keyspace = sidecar.keyspace
    now = keyspace.now
    used = keyspace.used_bytes()
    maxmemory = keyspace.maxmemory or 0
    hits = misses = 0
    keyspace_lines: dict[str, object] = {}
    for db in keyspace.dbs:
        stats = db.store.stats()
        hits += stats.hits
        misses += stats.misses
        if stats.entries:
            expiring = 0
            for key in db.key_snapshot():
                when = db.expire_at_ms(key)
                if when is not None and when >= 0:
                    expiring += 1
            keyspace_lines[f"db{db.index}"] = f"keys={stats.entries},expires={expiring},avg_ttl=0"
    uptime = max(0, int(now - sidecar.started))
    sections: dict[str, dict[str, object]] = {
        "server": {
            "redis_version": REDIS_VERSION,
            "redis_mode": "standalone",
            "os": f"{os.uname().sysname} {os.uname().release} {os.uname().machine}",
            "arch_bits": 64 if sys.maxsize > 2**32 else 32,
            "multiplexing_api": "asyncio",
            "process_id": os.getpid(),
            "tcp_port": sidecar.config.get("port"),
            "server_time_usec": int(now * 1_000_000),
            "uptime_in_seconds": uptime,
            "uptime_in_days": uptime // 86400,
            "hz": sidecar.config.get("hz"),
            "executable": sys.executable,
            "strata_version": __version__,
        },
        "clients": {
            "connected_clients": len(sidecar.sessions),
            "maxclients": sidecar.config.get("maxclients"),
            "blocked_clients": sidecar.blocked_count,
            "pubsub_clients": sum(
                1 for session in sidecar.sessions.values() if session.subscriptions
            ),
            "watching_clients": sum(1 for session in sidecar.sessions.values() if session.watching),
            "total_watched_keys": len(keyspace.watched),
        },
        "memory": {
            "used_memory": used,
            "used_memory_human": _human(used),
            "maxmemory": maxmemory,
            "maxmemory_human": _human(maxmemory),
            "maxmemory_policy": sidecar.config.get("maxmemory-policy"),
            "mem_allocator": "pymalloc",
            "number_of_cached_scripts": len(sidecar.scripts.scripts) if sidecar.scripts else 0,
            "used_memory_lua": sidecar.scripts.lua_memory() if sidecar.scripts else 0,
        },
        "persistence": {
            "loading": 0,
            "async_loading": 0,
            "rdb_changes_since_last_save": sidecar.dirty,
            "rdb_bgsave_in_progress": int(sidecar.bgsave_in_progress),
            "rdb_last_save_time": sidecar.last_save,
            "rdb_last_bgsave_status": "ok" if sidecar.last_bgsave_ok else "err",
            "aof_enabled": 0,
            "aof_rewrite_in_progress": 0,
        },
        "stats": {
            "total_connections_received": sidecar.connections_received,
            "total_commands_processed": sidecar.commands_processed,
            "rejected_connections": 0,
            "expired_keys": keyspace.expired_keys,
            "evicted_keys": keyspace.evicted_keys,
            "keyspace_hits": hits,
            "keyspace_misses": misses,
            "pubsub_channels": len(sidecar.channels),
            "pubsub_patterns": len(sidecar.patterns),
            "total_error_replies": sidecar.error_replies,
            "rejected_calls": sidecar.rejected_calls,
        },
        "replication": {
            "role": "master",
            "connected_slaves": 0,
            "master_repl_offset": 0,
        },
        "cpu": {
            "used_cpu_sys": f"{os.times().system:.6f}",
            "used_cpu_user": f"{os.times().user:.6f}",
        },
        "strata": {
            "strata_backing": sidecar.backing_status,
            **{
                name: value
                for provider in sidecar.extra_info.values()
                for name, value in provider().items()
            },
        },
        "keyspace": keyspace_lines,
        "errorstats": {
            f"errorstat_{code}": f"count={count}" for code, count in sidecar.error_counts.items()
        },
        "commandstats": {
            f"cmdstat_{name}": (
                f"calls={calls},usec={nanos // 1000},"
                f"usec_per_call={nanos / 1000 / calls if calls else 0:.2f},"
                f"rejected_calls={rejected},failed_calls={failed}"
            )
            for name, (calls, nanos, rejected, failed) in sidecar.command_stats.items()
        },
    }
    return sections


_DEFAULT_SECTIONS: Final = (
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "cpu",
    "strata",
    "errorstats",
    "keyspace",
)
_ALL_SECTIONS: Final = (*_DEFAULT_SECTIONS[:-1], "commandstats", "keyspace")


def info(s: Session, argv: list[bytes]) -> object:
    """INFO [section ...]."""
    sections = info_sections(s.sidecar)
    wanted = [arg.decode("utf-8", "replace").lower() for arg in argv[1:]]
    if any(name in ("all", "everything") for name in wanted):
        names: list[str] = list(_ALL_SECTIONS)
    elif not wanted or "default" in wanted:
        names = list(_DEFAULT_SECTIONS)
    else:
        names = [name for name in _ALL_SECTIONS if name in wanted]
    blocks = []
    for name in names:
        fields = sections[name]
        lines = [f"# {name.capitalize()}"]
        lines += [f"{field}:{value}" for field, value in fields.items()]
        blocks.append("\r\n".join(lines))
    return Verbatim("\r\n\r\n".join(blocks) + "\r\n")


def time_(s: Session, argv: list[bytes]) -> object:
    """TIME: [unix seconds, microseconds], read now (a script's commands share one instant
    for expiry, but TIME moves, as in Redis)."""
    now = s.sidecar.keyspace.clock()
    seconds = int(now)
    return [str(seconds).encode(), str(int((now - seconds) * 1_000_000)).encode()]


def dbsize(s: Session, argv: list[bytes]) -> object:
    """DBSIZE."""
    return s.db.size()


def _flush_mode(argv: list[bytes]) -> None:
    if len(argv) > 2 or (len(argv) == 2 and argv[1].upper() not in (b"ASYNC", b"SYNC")):
        raise CommandError(SYNTAX)


def flushdb(s: Session, argv: list[bytes]) -> object:
    """FLUSHDB [ASYNC|SYNC]."""
    _flush_mode(argv)
    s.db.clear()
    return OK


def flushall(s: Session, argv: list[bytes]) -> object:
    """FLUSHALL [ASYNC|SYNC]."""
    _flush_mode(argv)
    keyspace = s.sidecar.keyspace
    keyspace.touch_all()
    for db in keyspace.dbs:
        db.clear()
    return OK


# --------------------------------------------------------------------------- CONFIG


def config_get(s: Session, argv: list[bytes]) -> object:
    """CONFIG GET parameter [parameter ...]: a map in RESP3."""
    found: dict[bytes, bytes] = {}
    for pattern in argv[2:]:
        found.update(s.sidecar.config.matching(pattern))
    return found


def config_set(s: Session, argv: list[bytes]) -> object:
    """CONFIG SET parameter value [parameter value ...]."""
    if len(argv) % 2:
        raise CommandError("ERR wrong number of arguments for 'config|set' command")
    pairs = [(argv[index], argv[index + 1]) for index in range(2, len(argv), 2)]
    s.sidecar.config.set_many(pairs)
    return OK


def config_resetstat(s: Session, argv: list[bytes]) -> object:
    """CONFIG RESETSTAT."""
    s.sidecar.reset_stats()
    return OK


def config_help(s: Session, argv: list[bytes]) -> object:
    """CONFIG HELP."""
    return [
        b"CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        b"GET <pattern>",
        b"    Return parameters matching the glob-like <pattern> and their values.",
        b"SET <directive> <value>",
        b"    Set the configuration <directive> to <value>.",
        b"RESETSTAT",
        b"    Reset statistics reported by the INFO command.",
        b"HELP",
        b"    Print this help.",
    ]


# --------------------------------------------------------------------------- COMMAND


def _command_info(spec: CommandSpec) -> list[object]:
    subcommands = [_command_info(sub) for sub in spec.subcommands.values()]
    return [
        spec.name.encode(),
        spec.arity,
        {SimpleString(flag) for flag in spec.flag_names},
        spec.first_key,
        spec.last_key,
        spec.step,
        set(),
        [],
        [],
        subcommands,
    ]


def _command_docs(spec: CommandSpec) -> dict[bytes, object]:
    doc: dict[bytes, object] = {
        b"summary": spec.summary.encode() or spec.name.encode(),
        b"since": spec.since.encode(),
        b"group": spec.group.encode(),
    }
    if spec.subcommands:
        doc[b"subcommands"] = {
            sub.name.encode(): _command_docs(sub) for sub in spec.subcommands.values()
        }
    return doc


def command_(s: Session, argv: list[bytes]) -> object:
    """COMMAND: information on every command."""
    return [_command_info(spec) for spec in s.sidecar.table.values()]


def command_count(s: Session, argv: list[bytes]) -> object:
    """COMMAND COUNT."""
    return len(s.sidecar.table)


def command_info(s: Session, argv: list[bytes]) -> object:
    """COMMAND INFO [command ...]."""
    table = s.sidecar.table
    if len(argv) == 2:
        return [_command_info(spec) for spec in table.values()]
    out: list[object] = []
    for name in argv[2:]:
        spec = _resolve(s, name)
        out.append(None if spec is None else _command_info(spec))
    return out


def _resolve(s: Session, name: bytes) -> CommandSpec | None:
    container, _, sub = name.partition(b"|")
    spec = s.sidecar.table.lookup(container)
    if spec is not None and sub:
        return spec.subcommands.get(sub.lower())
    return spec


def command_docs(s: Session, argv: list[bytes]) -> object:
    """COMMAND DOCS [command ...]: a map of command name to its summary, version and group."""
    table = s.sidecar.table
    specs = list(table.values()) if len(argv) == 2 else [_resolve(s, name) for name in argv[2:]]
    return {spec.name.encode(): _command_docs(spec) for spec in specs if spec is not None}


def command_list(s: Session, argv: list[bytes]) -> object:
    """COMMAND LIST [FILTERBY MODULE name|ACLCAT category|PATTERN pattern]."""
    names = [spec.name.encode() for spec in s.sidecar.table.values()]
    if len(argv) == 2:
        return names
    if len(argv) != 5 or argv[2].upper() != b"FILTERBY":
        raise CommandError(SYNTAX)
    kind = argv[3].upper()
    if kind == b"PATTERN":
        return [name for name in names if glob_match(argv[4], name, nocase=True)]
    if kind == b"MODULE":
        return []
    if kind == b"ACLCAT":
        return [
            spec.name.encode()
            for spec in s.sidecar.table.values()
            if spec.group.encode() == argv[4].lower()
        ]
    raise CommandError(SYNTAX)


def command_getkeys(s: Session, argv: list[bytes]) -> object:
    """COMMAND GETKEYS command [arg ...]."""
    call = argv[2:]
    found = s.sidecar.lookup(call)
    if not isinstance(found, CommandSpec):
        if s.sidecar.table.lookup(call[0]) is None:
            raise CommandError("ERR Invalid command specified")
        raise CommandError("ERR Invalid number of arguments specified for command")
    keys = found.key_names(call)
    if not keys:
        raise CommandError("ERR The command has no key arguments")
    return keys


def command_help(s: Session, argv: list[bytes]) -> object:
    """COMMAND HELP."""
    return [
        b"COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        b"(no subcommand)",
        b"    Return details about all Redis commands.",
        b"COUNT",
        b"    Return the total number of commands in this Redis server.",
        b"LIST",
        b"    Return a list of all commands in this Redis server.",
        b"INFO [<command-name> ...]",
        b"    Return details about multiple Redis commands.",
        b"DOCS [<command-name> ...]",
        b"    Return documentation details about multiple Redis commands.",
        b"GETKEYS <full-command>",
        b"    Return the keys from a full Redis command.",
        b"HELP",
        b"    Print this help.",
    ]


# --------------------------------------------------------------------------- MEMORY


def memory_usage(s: Session, argv: list[bytes]) -> object:
    """MEMORY USAGE key [SAMPLES count]: the bytes the store charges for the key."""
    if len(argv) not in (3, 5):
        raise CommandError(SYNTAX)
    if len(argv) == 5:
        if argv[3].upper() != b"SAMPLES":
            raise CommandError(SYNTAX)
        int_arg(argv[4])
    value = s.db.store.peek(argv[2])
    if value is None:
        return None
    size = len(value) if type(value) is bytes else int(getattr(value, "size", 0))
    return len(argv[2]) + size + KEY_OVERHEAD


def memory_help(s: Session, argv: list[bytes]) -> object:
    """MEMORY HELP."""
    return [
        b"MEMORY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        b"USAGE <key> [SAMPLES <count>]",
        b"    Return memory in bytes used by <key> and its value.",
        b"HELP",
        b"    Print this help.",
    ]


# --------------------------------------------------------------------------- persistence


def _snapshot_path(s: Session) -> str:
    path = s.sidecar.snapshot_path
    if not path:
        raise CommandError("ERR no snapshot file configured (start strata resp with --snapshot)")
    return path


def save(s: Session, argv: list[bytes]) -> object:
    """SAVE: write the snapshot now."""
    from stratacache.resp.snapshot import save_snapshot

    path = _snapshot_path(s)
    try:
        save_snapshot(s.sidecar.keyspace, path)
    except OSError as exc:
        raise CommandError(f"ERR snapshot failed: {exc}") from None
    s.sidecar.dirty = 0
    s.sidecar.last_save = int(s.sidecar.keyspace.now)
    return OK


def bgsave(s: Session, argv: list[bytes]) -> object:
    """BGSAVE [SCHEDULE]: copy the keyspace now, encode and write it in the background."""
    if len(argv) > 2 or (len(argv) == 2 and argv[1].upper() != b"SCHEDULE"):
        raise CommandError(SYNTAX)
    from stratacache.resp.snapshot import capture_snapshot, write_snapshot

    sidecar = s.sidecar
    path = _snapshot_path(s)
    if sidecar.bgsave_in_progress:
        raise CommandError("ERR Background save already in progress")
    capture = capture_snapshot(sidecar.keyspace)
    saved_at = int(sidecar.keyspace.now)
    sidecar.dirty = 0
    sidecar.bgsave_in_progress = True

    def done(error: BaseException | None) -> None:
        sidecar.bgsave_in_progress = False
        sidecar.last_bgsave_ok = error is None
        if error is None:
            sidecar.last_save = saved_at

    sidecar.run_in_background(lambda: write_snapshot(capture, path), done)
    return SimpleString("Background saving started")


def lastsave(s: Session, argv: list[bytes]) -> object:
    """LASTSAVE."""
    return s.sidecar.last_save


def shutdown(s: Session, argv: list[bytes]) -> object:
    """SHUTDOWN [NOSAVE|SAVE] [NOW] [FORCE] [ABORT]: save the snapshot if asked, then stop."""
    save_mode: bytes | None = None
    abort = False
    for raw in argv[1:]:
        option = raw.upper()
        if option in (b"NOSAVE", b"SAVE") and save_mode is None:
            save_mode = option
        elif option in (b"NOW", b"FORCE"):
            continue
        elif option == b"ABORT":
            abort = True
        else:
            raise CommandError(SYNTAX)
    if abort:
        if save_mode is not None or len(argv) > 2:
            raise CommandError(SYNTAX)
        raise CommandError("ERR No shutdown in progress.")
    sidecar = s.sidecar
    if save_mode == b"SAVE" or (save_mode is None and sidecar.snapshot_path):
        save(s, [b"save"])
    if sidecar.shutdown_hook is None:
        raise CommandError("ERR SHUTDOWN is not available: no server runs this sidecar")
    sidecar.shutdown_hook()
    s.closing = True
    return NO_REPLY  # as Redis: the connection just closes


def cluster(s: Session, argv: list[bytes]) -> object:
    """CLUSTER ...: this is a standalone server, as Redis answers when cluster mode is off."""
    raise CommandError("ERR This instance has cluster support disabled")


_SERVER = "server"

COMMANDS: Final[tuple[CommandSpec, ...]] = (
    command("info", -1, "loading stale", info, group=_SERVER),
    command("time", 1, "loading stale fast", time_, group=_SERVER, since="2.6.0"),
    command("dbsize", 1, "readonly fast", dbsize, group=_SERVER),
    command("flushdb", -1, "write", flushdb, group=_SERVER),
    command("flushall", -1, "write", flushall, group=_SERVER),
    command("save", 1, "admin noscript no_multi", save, group=_SERVER),
    command("bgsave", -1, "admin noscript", bgsave, group=_SERVER),
    command("lastsave", 1, "loading stale fast", lastsave, group=_SERVER),
    command("cluster", -2, "admin noscript stale", cluster, group="cluster", since="3.0.0"),
    command(
        "shutdown", -1, "admin noscript loading stale no_multi allow_busy", shutdown, group=_SERVER
    ),
    command(
        "config",
        -2,
        "",
        None,
        group=_SERVER,
        since="2.0.0",
        subcommands=(
            command("config|get", -3, "admin noscript loading stale", config_get, group=_SERVER),
            command("config|set", -4, "admin noscript loading stale", config_set, group=_SERVER),
            command(
                "config|resetstat",
                2,
                "admin noscript loading stale",
                config_resetstat,
                group=_SERVER,
            ),
            command("config|help", 2, "loading stale", config_help, group=_SERVER),
        ),
    ),
    command(
        "command",
        -1,
        "loading stale",
        command_,
        group=_SERVER,
        since="2.8.13",
        subcommands=(
            command("command|count", 2, "loading stale", command_count, group=_SERVER),
            command("command|info", -2, "loading stale", command_info, group=_SERVER),
            command("command|docs", -2, "loading stale", command_docs, group=_SERVER),
            command("command|list", -2, "loading stale", command_list, group=_SERVER),
            command("command|getkeys", -3, "loading stale", command_getkeys, group=_SERVER),
            command("command|help", 2, "loading stale", command_help, group=_SERVER),
        ),
    ),
    command(
        "memory",
        -2,
        "",
        None,
        group=_SERVER,
        since="4.0.0",
        subcommands=(
            command("memory|usage", -3, "readonly", memory_usage, keys=(2, 2, 1), group=_SERVER),
            command("memory|help", 2, "loading stale", memory_help, group=_SERVER),
        ),
    ),
)
