"""The sidecar's core, sans-IO: dispatch commands to handlers, run transactions, block, publish.

:class:`Sidecar` is everything a Redis server is except the sockets: the keyspace, the command
table, connected sessions, pub/sub, blocked clients, scripts and settings. A connection hands it
the commands its reader parsed (:meth:`Sidecar.feed`) and writes out what the session's output
buffer holds afterwards. The checks before a command runs follow Redis's ``processCommand`` in
its order (unknown command, arity, authentication, MULTI restrictions, pub/sub context), with
Redis's error texts, so clients and Redis's own test suite see the same answers.

Blocking commands (BLPOP, BLMOVE, BZPOPMIN, ...) return a :class:`~stratacache.resp.session.Block`
instead of a reply: the session is parked on its keys, its later pipelined commands wait, and
after every command that made a key ready the parked sessions are re-run in the order they
blocked, as Redis's ``handleClientsBlockedOnKeys`` does. The connection supplies the timers
(:attr:`Sidecar.timer_factory`) so that the core never sleeps.

While a Lua script runs past ``lua-time-limit`` the sidecar is *busy*: the script's hook calls
:attr:`Sidecar.busy_poller` (the server reads the other clients from there) and every command
without the ``allow_busy`` flag is refused with ``BUSY`` (an EXEC aborts its transaction).
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict, deque
from collections.abc import Callable
from time import perf_counter_ns
from typing import TYPE_CHECKING, Final

from stratacache.errors import StrataError
from stratacache.resp.commands import CommandSpec, CommandTable, build_table
from stratacache.resp.config import RespConfig
from stratacache.resp.keyspace import Keyspace
from stratacache.resp.protocol import (
    NO_REPLY,
    NULL_ARRAY,
    OK,
    Command,
    CommandError,
    ErrorReply,
    Push,
    encode,
)
from stratacache.resp.session import (
    REPLY_ON,
    REPLY_SKIP,
    REPLY_SKIP_NEXT,
    Block,
    BlockState,
    Session,
    TimerHandle,
)
from stratacache.resp.values import glob_match

try:  # the compiled fast path (setup.py builds it when a C compiler is present)
    from stratacache.resp import _fast
except ImportError:  # pragma: no cover - the pure-Python path below is the reference
    _fast = None  # type: ignore[assignment]

if TYPE_CHECKING:
    import random

    from stratacache.resp.backing import Backing
    from stratacache.resp.scripting import ScriptEngine

__all__ = [
    "NOREPLICAS",
    "OUTPUT_SLICE",
    "QUICK_COMMANDS",
    "REDIS_VERSION",
    "BackgroundRunner",
    "Sidecar",
    "TimerFactory",
]

logger = logging.getLogger("stratacache.resp")

OUTPUT_SLICE: Final = 1024 * 1024
"""Replies queued for one connection before its remaining pipelined commands wait their turn."""
REDIS_VERSION: Final = "7.0.15"
"""The Redis release whose commands and replies the sidecar follows, as INFO and HELLO report it."""

TimerFactory = Callable[[float, Callable[[], None]], TimerHandle]
BackgroundRunner = Callable[[Callable[[], object], Callable[[BaseException | None], None]], None]
"""``runner(work, done)``: how the connection layer runs blocking work (BGSAVE's write)."""
"""``factory(seconds, callback) -> handle with .cancel()``: how the connection layer runs timers."""

_NOAUTH: Final = ErrorReply("NOAUTH Authentication required.")
NOREPLICAS: Final = ErrorReply("NOREPLICAS Not enough good replicas to write.")
"""Writes are refused while ``min-replicas-to-write`` > 0: a sidecar has no replicas."""
_IN_MULTI: Final = ErrorReply("ERR Command not allowed inside a transaction")
_OK_BYTES: Final = b"+OK\r\n"
_RESP2_NULL: Final = b"$-1\r\n"
_RESP3_NULL: Final = b"_\r\n"
_NO_COMMANDS: Final[dict[bytes, CommandSpec]] = {}

QUICK_COMMANDS: Final = frozenset(
    [
        "get",
        "set",
        "setnx",
        "setex",
        "psetex",
        "getset",
        "getdel",
        "getex",
        "mget",
        "mset",
        "msetnx",
        "append",
        "strlen",
        "getrange",
        "substr",
        "setrange",
        "incr",
        "decr",
        "incrby",
        "decrby",
        "incrbyfloat",
        "setbit",
        "getbit",
        "bitcount",
        "del",
        "unlink",
        "exists",
        "touch",
        "type",
        "expire",
        "pexpire",
        "expireat",
        "pexpireat",
        "ttl",
        "pttl",
        "expiretime",
        "pexpiretime",
        "persist",
        "dbsize",
        "hset",
        "hmset",
        "hsetnx",
        "hget",
        "hmget",
        "hdel",
        "hlen",
        "hstrlen",
        "hexists",
        "hkeys",
        "hvals",
        "hgetall",
        "hincrby",
        "lpush",
        "rpush",
        "lpushx",
        "rpushx",
        "lpop",
        "rpop",
        "llen",
        "lrange",
        "lindex",
        "lset",
        "linsert",
        "lrem",
        "ltrim",
        "lpos",
        "sadd",
        "srem",
        "smembers",
        "sismember",
        "smismember",
        "scard",
        "spop",
        "srandmember",
        "zadd",
        "zincrby",
        "zrem",
        "zcard",
        "zscore",
        "zmscore",
        "zrank",
        "zrevrank",
        "zcount",
        "zrange",
        "zrevrange",
        "zrangebyscore",
        "zpopmin",
        "zpopmax",
        "ping",
        "echo",
        "publish",
    ]
)
"""Commands that never block, never queue their own replies and never change the state of the
connection (authentication, MULTI, subscriptions, reply mode, protocol): the commands
:meth:`Sidecar.feed` may run on its fast path."""


def _new_stats() -> list[int]:
    return [0, 0, 0, 0]  # calls, nanoseconds, rejected, failed


def unknown_command_error(argv: Command) -> ErrorReply:
    """Redis 7's text for an unknown command, arguments quoted up to 128 characters."""
    args = ""
    for arg in argv[1:]:
        if len(args) >= 128:
            break
        args += "'" + arg.decode("utf-8", "replace")[: 128 - len(args)] + "' "
    name = argv[0].decode("utf-8", "replace")[:128]
    return ErrorReply(f"ERR unknown command '{name}', with args beginning with: {args}")


def arity_error(name: str) -> ErrorReply:
    """Redis's text for a wrong number of arguments."""
    return ErrorReply(f"ERR wrong number of arguments for '{name}' command")


class Sidecar:
    """The state and command execution of one sidecar instance.

    :param keyspace: the databases (default: 16, unbounded, wall clock).
    :param requirepass: a password clients must send with AUTH/HELLO before other commands.
    :param table: the command table (default: every command in :mod:`stratacache.resp.handlers`).
    :param snapshot_path: where SAVE/BGSAVE write and where the snapshot is loaded from.
    :param accelerate: run the quick commands through the compiled loop
        (:mod:`stratacache.resp._fast`) when it was built; ``False`` keeps the pure-Python loop,
        which gives the same replies and state (the differential tests compare the two).
    """

    def __init__(
        self,
        keyspace: Keyspace | None = None,
        *,
        requirepass: str | None = None,
        table: CommandTable | None = None,
        snapshot_path: str | None = None,
        rng: random.Random | None = None,
        accelerate: bool = True,
    ) -> None:
        self.keyspace = keyspace if keyspace is not None else Keyspace(rng=rng)
        self.keyspace.publisher = self.publish
        self.table = table if table is not None else build_table()
        self._commands = self.table.fast
        self._quick = {
            name: spec
            for name, spec in self.table.fast.items()
            if spec.name in QUICK_COMMANDS and spec.handler is not None
        }
        self.runner = self._make_runner() if accelerate and _fast is not None else None
        """The compiled fast path (:mod:`stratacache.resp._fast`), or ``None`` (not built, or
        ``accelerate=False``). The server hands each read of a plain session to its ``serve``."""
        self.requirepass = requirepass
        self.config = RespConfig(self)
        self.snapshot_path = snapshot_path
        self.sessions: dict[int, Session] = {}
        self.channels: dict[bytes, dict[Session, None]] = {}
        self.patterns: dict[bytes, dict[Session, None]] = {}
        self.next_id = 1
        self.blocked_count = 0
        self.commands_processed = 0
        self.connections_received = 0
        self.rejected_calls = 0
        self.error_replies = 0
        self.error_counts: dict[str, int] = {}
        self.command_stats: defaultdict[str, list[int]] = defaultdict(_new_stats)
        self.min_replicas = 0
        self.started = self.keyspace.now
        self.timer_factory: TimerFactory | None = None
        self.scripts: ScriptEngine | None = None
        self.dirty = 0  # writes since the last snapshot
        self.last_save = int(self.started)
        self.backing_status = "none"
        self.extra_info: dict[str, Callable[[], dict[str, object]]] = {}
        self.shutdown_hook: Callable[[], None] | None = None
        self.backing: Backing | None = None
        self.bgsave_in_progress = False
        self.last_bgsave_ok = True
        self.background: BackgroundRunner | None = None
        self.busy: ErrorReply | None = None
        """While a script runs past ``lua-time-limit``: the ``BUSY`` error other clients get."""
        self.busy_poller: Callable[[Session], None] | None = None
        """Set by the server: ``poller(caller)`` reads and answers the other clients while the
        script of ``caller`` runs long (the loop cannot, as the script holds it)."""

    # -------------------------------------------------------------- sessions

    def connect(self, addr: str = "", laddr: str = "") -> Session:
        """Register a new client connection and return its session."""
        session = Session(self, self.next_id, addr, laddr)
        self.next_id += 1
        self.sessions[session.id] = session
        self.connections_received += 1
        return session

    def disconnect(self, session: Session) -> None:
        """Forget a closed connection: its watches, subscriptions and blocked state."""
        self.unwatch(session)
        for channel in list(session.channels):
            self.unsubscribe_channel(session, channel)
        for pattern in list(session.patterns):
            self.unsubscribe_pattern(session, pattern)
        if session.blocked is not None:
            self.unblock(session)
        session.pending.clear()
        session.multi = None
        self.sessions.pop(session.id, None)

    # ------------------------------------------------------------- execution

    def feed(self, session: Session, commands: list[Command]) -> None:
        """Run ``commands`` from ``session`` in order; replies go to ``session.out``.

        If a command blocks, the rest wait in ``session.pending`` until :meth:`resume`. So do
        they once the replies queued pass :data:`OUTPUT_SLICE` bytes: the connection writes
        those first (and stops here while the client does not read them), so one read of
        pipelined commands with big replies cannot build an unbounded buffer or hold the loop.

        While the session is in its plain state (authenticated, no MULTI, no subscriptions in
        RESP2, every reply wanted, no backing Redis, no script running) the commands of
        :data:`QUICK_COMMANDS` skip :meth:`execute`'s checks, none of which can fail then: the
        handler runs and its reply is encoded inline. This is the path of nearly every
        request a cache sidecar serves, and the per-command cost is what bounds throughput.
        """
        if session.pending or session.blocked is not None:
            session.pending.extend(commands)
            return
        keyspace = self.keyspace
        out = session.out
        append = out.append
        # is_plain(), inlined: this runs once per read.
        quick = (
            self._quick
            if session.authenticated
            and session.multi is None
            and session.reply_mode == REPLY_ON
            and not (session.resp == 2 and (session.channels or session.patterns))
            and self.backing is None
            and not self.min_replicas
            and self.busy is None
            else _NO_COMMANDS
        )
        runner = self.runner if quick else None
        protocol = session.resp
        null = _RESP3_NULL if protocol == 3 else _RESP2_NULL
        ran: list[str] = []  # the quick commands run, for their stats
        started = perf_counter_ns()
        keyspace.now = keyspace.clock()
        counted = size = 0  # replies queued before this point add up to ``size`` bytes
        index = 0
        total = len(commands)
        try:
            while index < total:
                if runner is not None:
                    # The compiled loop runs the quick commands from ``index`` on and stops at
                    # the first other one, which runs below; then it takes over again.
                    index = runner.run(session, commands, index, out, ran, protocol, size, counted)
                    self.dirty += runner.take_dirty()
                    size = runner.size
                    counted = runner.counted
                    if runner.sliced:
                        if index < total:
                            session.pending.extend(commands[index:])
                            session.wake()
                        return
                    if index >= total:
                        break
                argv = commands[index]
                spec = quick.get(argv[0])
                if spec is not None and spec.min_args <= len(argv) <= spec.max_args:
                    ran.append(spec.name)
                    try:
                        reply = spec.handler(session, argv)  # type: ignore[misc]
                    except Exception as exc:  # as in call(): one error reply, no crash
                        reply = self._error_reply(spec, exc)
                    kind = type(reply)
                    if kind is bytes:
                        append(b"$%d\r\n%b\r\n" % (len(reply), reply))  # type: ignore[arg-type,str-format]
                    elif reply is OK:
                        append(_OK_BYTES)
                    elif kind is int:
                        append(b":%d\r\n" % reply)  # type: ignore[str-format]
                    elif reply is None:
                        append(null)
                    elif kind is ErrorReply:
                        self.command_stats[spec.name][3] += 1
                        if not reply.counted:  # type: ignore[union-attr]
                            self.count_error(reply.message)  # type: ignore[union-attr]
                        append(encode(reply, protocol))
                        index += 1
                        continue
                    else:
                        append(encode(reply, protocol))
                    if spec.write:
                        self.dirty += 1
                    if keyspace.ready:
                        self.serve_ready()
                else:
                    slow = perf_counter_ns()
                    self.execute(session, argv)
                    started += perf_counter_ns() - slow  # its time is not the quick ones'
                    if session.is_blocked:
                        session.pending.extend(commands[index + 1 :])
                        return
                    if session.closing:
                        return
                    quick = self._quick if self.is_plain(session) else _NO_COMMANDS
                    runner = self.runner if quick else None
                    protocol = session.resp
                    null = _RESP3_NULL if protocol == 3 else _RESP2_NULL
                if index & 15 == 15:
                    keyspace.now = keyspace.clock()
                    size += sum(map(len, out[counted:]))
                    counted = len(out)
                    if size > OUTPUT_SLICE:
                        rest = commands[index + 1 :]
                        if rest:
                            session.pending.extend(rest)
                            session.wake()
                        return
                index += 1
        finally:
            if ran:
                self._account(session, ran, perf_counter_ns() - started)

    def _make_runner(self) -> _fast.Runner:
        """The compiled fast-path loop over this sidecar's quick commands."""
        from stratacache.resp import values
        from stratacache.resp.handlers import hashes, lists, strings
        from stratacache.resp.handlers._args import NOT_INTEGER
        from stratacache.resp.keyspace import _REWEIGH_MIN, WRONGTYPE, Database

        natives = {
            "get": strings.get,
            "set": strings.set_,
            "incr": strings.incr,
            "decr": strings.decr,
            "incrby": strings.incrby,
            "decrby": strings.decrby,
            "mget": strings.mget,
            "lpush": lists.lpush,
            "rpush": lists.rpush,
            "hset": hashes.hset,
        }
        return _fast.Runner(
            session_type=Session,
            database_type=Database,
            sidecar=self,
            keyspace=self.keyspace,
            quick=self._quick,
            natives=natives,
            ok=OK,
            error_type=ErrorReply,
            on_reply=self._fast_reply,
            on_exception=self._error_reply,
            serve_ready=self.serve_ready,
            wrongtype=WRONGTYPE,
            not_integer=NOT_INTEGER,
            overflow="ERR increment or decrement would overflow",
            decr_overflow="ERR decrement would overflow",
            containers=(
                values.ListValue,
                values.HashValue,
                values._ITEM,
                values._PAIR,
                values.KEY_OVERHEAD,
                _REWEIGH_MIN,
            ),
        )

    def _fast_reply(self, spec: CommandSpec, reply: object, protocol: int) -> bytes:
        """Encode a reply the compiled loop does not encode itself, counting an error reply as
        :meth:`feed` does."""
        if type(reply) is ErrorReply:
            self.command_stats[spec.name][3] += 1
            if not reply.counted:
                self.count_error(reply.message)
        return encode(reply, protocol)

    def _account(self, session: Session, ran: list[str], elapsed: int) -> None:
        """Count the quick commands of a batch: calls, and an equal share of the batch's time.

        Timing each command would cost as much as running it; INFO commandstats only needs the
        totals to be right on average.
        """
        self.commands_processed += len(ran)
        share = elapsed // len(ran)
        command_stats = self.command_stats
        for name in ran:
            stats = command_stats[name]
            stats[0] += 1
            stats[1] += share
        session.last_seen = self.keyspace.now
        session.last_command = ran[-1]

    def is_plain(self, session: Session) -> bool:
        """Whether ``session`` is in the state where :meth:`execute`'s checks all pass for a
        quick command: the condition of :meth:`feed`'s fast path."""
        return (
            session.authenticated
            and session.multi is None
            and session.reply_mode == REPLY_ON
            and not (session.resp == 2 and (session.channels or session.patterns))
            and self.backing is None
            and not self.min_replicas
            and self.busy is None
        )

    def resume(self, session: Session) -> None:
        """Run the commands that waited (behind a blocked one, or behind big replies)."""
        pending = session.pending
        out = session.out
        count = counted = size = 0
        while pending and session.blocked is None and not session.closing:
            self.execute(session, pending.popleft())
            count += 1
            if count & 15 == 0:
                size += sum(map(len, out[counted:]))
                counted = len(out)
                if size > OUTPUT_SLICE:
                    if pending:
                        session.wake()
                    return

    def lookup(self, argv: Command) -> CommandSpec | ErrorReply:
        """The spec ``argv`` calls, after the existence and arity checks, or the error reply."""
        spec = self.table.lookup(argv[0])
        if spec is None:
            return unknown_command_error(argv)
        if spec.subcommands:
            if len(argv) < 2:
                # COMMAND alone is a command of its own; CONFIG alone is an arity error.
                return spec if spec.handler is not None else arity_error(spec.name)
            sub = spec.subcommands.get(argv[1].lower())
            if sub is None:
                name = argv[1].decode("utf-8", "replace")[:128]
                return ErrorReply(f"ERR unknown subcommand '{name}'. Try {spec.name.upper()} HELP.")
            spec = sub
        arity = spec.arity
        if (arity > 0 and arity != len(argv)) or len(argv) < -arity:
            return arity_error(spec.name)
        return spec

    def execute(self, session: Session, argv: Command, *, read_through: bool = True) -> None:
        """Run one top-level command for ``session`` and queue its reply.

        With a backing Redis, keys the L0 does not know are first read through (the session
        waits), unless ``read_through`` is false (the re-run after that read).
        """
        keyspace = self.keyspace
        keyspace.now = keyspace.clock()
        session.last_seen = keyspace.now
        self.commands_processed += 1
        spec = self._commands.get(argv[0])
        if spec is None or not spec.min_args <= len(argv) <= spec.max_args:
            found = self.lookup(argv)
            if type(found) is ErrorReply:
                self._reject(session, found)
                return
            spec = found  # type: ignore[assignment]
        assert spec is not None
        session.last_command = spec.name
        if not session.authenticated and not spec.no_auth:
            self._reject(session, _NOAUTH, spec)
            return
        if session.multi is not None and spec.no_multi:
            self._reject(session, _IN_MULTI, spec)
            return
        if spec.write and self.min_replicas:
            self._reject(session, NOREPLICAS, spec)
            return
        if session.resp == 2 and (session.channels or session.patterns) and not spec.subscribed_ok:
            self._reject(
                session,
                ErrorReply(
                    f"ERR Can't execute '{spec.name}': only (P|S)SUBSCRIBE / "
                    "(P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
                ),
                spec,
            )
            return
        if self.busy is not None and not spec.allow_busy:
            self._reject_busy(session, spec, self.busy)
            return
        if session.multi is not None and not spec.transaction_control:
            session.multi.append((spec, argv))
            session.out.append(b"+QUEUED\r\n")
            return
        backing = self.backing
        if backing is not None:
            if read_through and self._read_through(session, spec, argv, backing):
                return
            keyspace.write_log = []
            db_index = session.db_index
        reply = self.call(session, spec, argv)
        if type(reply) is Block:
            keyspace.write_log = None
            self._block(session, spec, argv, reply)
            return
        if reply is not NO_REPLY and (session.reply_mode == REPLY_ON or self._silenced(session)):
            session.out.append(encode(reply, session.resp))
        served = self.serve_ready() if keyspace.ready else 0
        if backing is not None:
            touched, keyspace.write_log = keyspace.write_log, None
            if type(reply) is not ErrorReply or touched:
                backing.after_command(
                    spec, argv, touched or [], db_index=db_index, effects=served > 0
                )

    def _read_through(
        self, session: Session, spec: CommandSpec, argv: Command, backing: Backing
    ) -> bool:
        """Start reading the command's unknown keys from the backing Redis; ``True`` if it must
        wait for them."""
        if spec.name == "exec" and session.multi:
            keys = [key for queued, call in session.multi for key in queued.key_names(call)]
        else:
            keys = spec.key_names(argv)
        if not keys:
            return False
        unknown = backing.unknown_keys(session.db_index, keys)
        if not unknown:
            return False
        session.blocked = BlockState(
            spec=spec,
            argv=argv,
            keys=[],
            db_index=session.db_index,
            deadline=None,
            on_timeout=None,
            fetching=True,
        )
        backing.fetch(session, session.db_index, unknown)
        return True

    def fetched(self, session: Session) -> None:
        """The backing Redis answered for a waiting session: run its command, then the rest."""
        state = session.blocked
        if state is None or not state.fetching:
            return
        session.blocked = None
        if session.id not in self.sessions:
            return  # the client left meanwhile
        self.execute(session, state.argv, read_through=False)
        self.resume(session)
        session.wake()

    def _reject(self, session: Session, error: ErrorReply, spec: CommandSpec | None = None) -> None:
        self.rejected_calls += 1
        self.count_error(error.message)
        if spec is not None:
            self.command_stats[spec.name][2] += 1
        if session.multi is not None:
            session.multi_failed = True
        if session.reply_mode == REPLY_ON or self._silenced(session):
            session.out.append(encode(error, session.resp))

    def _reject_busy(self, session: Session, spec: CommandSpec, error: ErrorReply) -> None:
        """Refuse a command while a script runs long; an EXEC aborts its transaction, as
        Redis's ``execCommandAbort`` does."""
        if spec.name == "exec" and session.multi is not None:
            self._reject(
                session,
                ErrorReply(f"EXECABORT Transaction discarded because of: {error.message}"),
                spec,
            )
            session.multi = None
            session.multi_failed = False
            self.unwatch(session)
            return
        self._reject(session, error, spec)

    @staticmethod
    def _silenced(session: Session) -> bool:
        """Apply CLIENT REPLY OFF/SKIP to one reply; ``True`` if it must be sent after all."""
        mode = session.reply_mode
        if mode == REPLY_SKIP:
            session.reply_mode = REPLY_SKIP_NEXT
        elif mode == REPLY_SKIP_NEXT:
            session.reply_mode = REPLY_ON
        return False

    def call(self, session: Session, spec: CommandSpec, argv: Command) -> object:
        """Run a handler (no checks) and return its reply; errors become error replies.

        Inside EXEC or a script a blocking command does not block: it answers as on timeout.
        Counts the call, its time and its failure for INFO commandstats/errorstats.
        """
        handler = spec.handler
        assert handler is not None
        started = perf_counter_ns()
        try:
            reply = handler(session, argv)
            if type(reply) is bytes or reply is OK:  # the common replies skip the checks below
                stats = self.command_stats[spec.name]
                stats[0] += 1
                stats[1] += perf_counter_ns() - started
                if spec.write:
                    self.dirty += 1
                return reply
        except Exception as exc:  # translated to one error reply
            reply = self._error_reply(spec, exc)
        stats = self.command_stats[spec.name]
        stats[0] += 1
        stats[1] += perf_counter_ns() - started
        if isinstance(reply, ErrorReply):
            stats[3] += 1
            if not reply.counted:
                self.count_error(reply.message)
            return reply
        if spec.write:
            self.dirty += 1
        if isinstance(reply, Block) and (session.in_exec or session.in_script):
            return reply.on_timeout
        return reply

    @staticmethod
    def _error_reply(spec: CommandSpec, exc: Exception) -> ErrorReply:
        """The error reply for an exception a handler raised."""
        if isinstance(exc, CommandError):
            return ErrorReply(str(exc))
        if isinstance(exc, StrataError):
            return ErrorReply(f"ERR {exc}")
        if isinstance(exc, RecursionError):
            return ErrorReply("ERR the command nests too deeply")
        # A bug in one command must not take the server (and every other client) down.
        logger.exception("command %r failed", spec.name, exc_info=exc)
        return ErrorReply(f"ERR internal error while running '{spec.name}'")

    def count_error(self, message: str) -> None:
        """Count an error reply by its code (INFO errorstats)."""
        code = message.split(" ", 1)[0]
        self.error_counts[code] = self.error_counts.get(code, 0) + 1
        self.error_replies += 1

    def reset_stats(self) -> None:
        """CONFIG RESETSTAT."""
        self.commands_processed = 0
        self.rejected_calls = 0
        self.error_replies = 0
        self.error_counts.clear()
        self.command_stats.clear()
        self.keyspace.expired_keys = 0
        self.keyspace.evicted_keys = 0

    # ------------------------------------------------------------- blocking

    def _block(self, session: Session, spec: CommandSpec, argv: Command, block: Block) -> None:
        keyspace = self.keyspace
        state = BlockState(
            spec=spec,
            argv=argv,
            keys=list(dict.fromkeys(block.keys)),
            db_index=session.db_index,
            deadline=keyspace.now + block.timeout if block.timeout > 0 else None,
            on_timeout=block.on_timeout,
            kind=block.kind,
        )
        session.blocked = state
        self.blocked_count += 1
        for key in state.keys:
            keyspace.blocked.setdefault((session.db_index, key), deque()).append(session)
        if block.timeout > 0 and self.timer_factory is not None:
            state.timer = self.timer_factory(block.timeout, lambda: self.time_out(session))

    def unblock(self, session: Session) -> None:
        """Take ``session`` off every key it is blocked on (no reply is sent)."""
        state = session.blocked
        if state is None:
            return
        session.blocked = None
        if state.fetching:
            return
        self.blocked_count -= 1
        blocked = self.keyspace.blocked
        for key in state.keys:
            queue = blocked.get((state.db_index, key))
            if queue is not None:
                with contextlib.suppress(ValueError):
                    queue.remove(session)
                if not queue:
                    del blocked[(state.db_index, key)]
        timer = state.timer
        if timer is not None:
            timer.cancel()

    def time_out(self, session: Session, reply: object = NULL_ARRAY) -> None:
        """The blocked ``session`` gave up waiting: answer it and let its next commands run."""
        state = session.blocked
        if state is None:
            return
        self.unblock(session)
        session.reply(state.on_timeout if reply is NULL_ARRAY else reply)
        session.wake()

    def serve_ready(self) -> int:
        """Re-run the commands of sessions blocked on keys that became ready, oldest first.

        Returns how many sessions were served.
        """
        served = 0
        keyspace = self.keyspace
        while keyspace.ready:
            db_key = next(iter(keyspace.ready))
            del keyspace.ready[db_key]
            queue = keyspace.blocked.get(db_key)
            if not queue:
                continue
            db = keyspace.dbs[db_key[0]]
            for session in list(queue):
                state = session.blocked
                if state is None:
                    continue
                value = db.store.peek(db_key[1])
                if value is None:
                    break
                if state.kind is not None and type(value) is not state.kind:
                    continue
                reply = self.call(session, state.spec, state.argv)
                if type(reply) is Block:
                    continue
                self.unblock(session)
                session.reply(reply)
                session.wake()
                served += 1
        return served

    # -------------------------------------------------------------- watching

    def watch(self, session: Session, key: bytes) -> None:
        """WATCH ``key`` in the session's database."""
        db_key = (session.db_index, key)
        if db_key in session.watching:
            return
        session.watching[db_key] = session.db.exists(key)
        self.keyspace.watched.setdefault(db_key, set()).add(session)

    def unwatch(self, session: Session) -> None:
        """Forget every key ``session`` watches."""
        watched = self.keyspace.watched
        for db_key in session.watching:
            sessions = watched.get(db_key)
            if sessions is not None:
                sessions.discard(session)
                if not sessions:
                    del watched[db_key]
        session.watching.clear()
        session.watch_dirty = False

    def watch_failed(self, session: Session) -> bool:
        """Whether a watched key changed, or expired, since WATCH."""
        if session.watch_dirty:
            return True
        dbs = self.keyspace.dbs
        for (db_index, key), existed in session.watching.items():
            if existed and not dbs[db_index].exists(key):
                return True
        return False

    # --------------------------------------------------------------- pub/sub

    def publish(self, channel: bytes, message: bytes) -> int:
        """Deliver ``message`` to the subscribers of ``channel``; how many received it."""
        receivers = 0
        subscribers = self.channels.get(channel)
        if subscribers:
            for session in list(subscribers):
                session.reply(Push([b"message", channel, message]))
                session.wake()
                receivers += 1
        if self.patterns:
            for pattern, sessions in list(self.patterns.items()):
                if glob_match(pattern, channel):
                    for session in list(sessions):
                        session.reply(Push([b"pmessage", pattern, channel, message]))
                        session.wake()
                        receivers += 1
        return receivers

    def subscribe_channel(self, session: Session, channel: bytes) -> None:
        """Add a channel subscription."""
        if channel not in session.channels:
            session.channels.add(channel)
            self.channels.setdefault(channel, {})[session] = None

    def unsubscribe_channel(self, session: Session, channel: bytes) -> bool:
        """Remove a channel subscription; ``True`` if it existed."""
        if channel not in session.channels:
            return False
        session.channels.discard(channel)
        subscribers = self.channels.get(channel)
        if subscribers is not None:
            subscribers.pop(session, None)
            if not subscribers:
                del self.channels[channel]
        return True

    def subscribe_pattern(self, session: Session, pattern: bytes) -> None:
        """Add a pattern subscription."""
        if pattern not in session.patterns:
            session.patterns.add(pattern)
            self.patterns.setdefault(pattern, {})[session] = None

    def unsubscribe_pattern(self, session: Session, pattern: bytes) -> bool:
        """Remove a pattern subscription; ``True`` if it existed."""
        if pattern not in session.patterns:
            return False
        session.patterns.discard(pattern)
        subscribers = self.patterns.get(pattern)
        if subscribers is not None:
            subscribers.pop(session, None)
            if not subscribers:
                del self.patterns[pattern]
        return True

    def run_in_background(
        self, work: Callable[[], object], done: Callable[[BaseException | None], None]
    ) -> None:
        """Run ``work`` off the command path (the server's thread pool), then ``done(error)``.

        Without a runner (no server: tests, embedding) it runs inline.
        """
        if self.background is not None:
            self.background(work, done)
            return
        try:
            work()
        except Exception as exc:
            logger.exception("background work failed")
            done(exc)
        else:
            done(None)

    # --------------------------------------------------------------- scripts

    def script_engine(self) -> ScriptEngine:
        """The Lua engine, created on first use (``lupa`` is imported then)."""
        if self.scripts is None:
            from stratacache.resp.scripting import ScriptEngine

            self.scripts = ScriptEngine(self)
        return self.scripts
