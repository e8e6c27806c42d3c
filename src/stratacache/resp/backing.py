"""L2 fall-through: a real Redis behind the sidecar (``strata resp --backing redis://...``).

* **Read-through.** Before a command runs, every key it names that the L0 neither holds nor
  knows to be absent is fetched from the backing Redis (one Lua script reads type, value and TTL of
  all of them atomically) and stored in the L0 with the same TTL; then the command runs on the L0.
  The connection waits meanwhile; other clients do not. Keys the backing Redis does not have are
  remembered as absent for ``negative_ttl`` seconds.
* **Write-through.** After a command that wrote, the write goes to the backing Redis too, in
  order, over one connection: a plain deterministic command is forwarded as it is; EVAL, EXEC and
  blocking pops send their *effects* instead (the resulting value of every key they touched), so
  the backing Redis ends up with what the L0 holds whatever the script computed.
* **Coherence.** That writer connection turns on Redis's client-side tracking in broadcast mode
  (``CLIENT TRACKING ON REDIRECT <listener> BCAST NOLOOP``): every key that any *other* client
  changes on the backing Redis, another sidecar or a plain client, is announced on
  ``__redis__:invalidate`` to this sidecar's listener connection, which drops it from the L0. The
  sidecar's own writes are not echoed back (NOLOOP). A fetch that races with an invalidation of
  the same key is discarded and retried, so a stale value is never stored.
* **Outages.** When the backing Redis is unreachable the sidecar keeps serving from the L0:
  misses are misses, writes stay local (and are counted as dropped), INFO reports
  ``strata_backing:down``. On reconnection the L0 is emptied, since invalidations may have been
  missed, and the sidecar goes back to reading through.

Scripts are fetched for the keys they declare (KEYS), as Redis Cluster requires too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from stratacache.errors import ConfigError, MissingExtraError
from stratacache.resp.values import HashValue, ListValue, SetValue, ZSetValue

if TYPE_CHECKING:
    from stratacache.resp.session import Session
    from stratacache.resp.sidecar import Sidecar
    from stratacache.resp.spec import CommandSpec

__all__ = ["Backing", "attach_backing"]

logger = logging.getLogger("stratacache.resp.backing")

_FETCH_SCRIPT: Final = """
local out = {}
for i, key in ipairs(KEYS) do
  local kind = redis.call('TYPE', key)['ok']
  local ttl = redis.call('PTTL', key)
  local value = false
  if kind == 'string' then value = redis.call('GET', key)
  elseif kind == 'list' then value = redis.call('LRANGE', key, 0, -1)
  elseif kind == 'hash' then value = redis.call('HGETALL', key)
  elseif kind == 'set' then value = redis.call('SMEMBERS', key)
  elseif kind == 'zset' then value = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  end
  out[i] = {kind, ttl, value}
end
return out
"""
_EFFECT_COMMANDS: Final = frozenset(
    {
        "eval",
        "evalsha",
        "fcall",
        "exec",
        "blpop",
        "brpop",
        "blmove",
        "brpoplpush",
        "blmpop",
        "bzpopmin",
        "bzpopmax",
        "bzmpop",
        "function|load",
        "function|delete",
        "function|flush",
        "function|restore",
    }
)
_LOCAL_ONLY: Final = frozenset(
    {"function|load", "function|delete", "function|flush", "function|restore", "shutdown"}
)
_RETRY_SECONDS: Final = 1.0
_MAX_FETCH_RETRIES: Final = 3


def _redis_asyncio() -> Any:
    try:
        import redis.asyncio as redis_asyncio
    except ImportError:
        raise MissingExtraError("redis", "redis") from None
    return redis_asyncio


class Backing:
    """The backing Redis of one sidecar: read-through, write-through, invalidation.

    :param sidecar: the sidecar whose L0 this keeps coherent with the backing Redis.
    :param url: ``redis://[user:password@]host:port[/db]`` (the db in the URL is ignored: each
        sidecar database maps to the backing database with the same number).
    :param negative_ttl: seconds a key the backing Redis lacks is known to be absent.
    :param monotonic: the clock of the negative cache and the retry timer (tests inject one).
    """

    def __init__(
        self,
        sidecar: Sidecar,
        url: str,
        *,
        negative_ttl: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        redis_asyncio = _redis_asyncio()
        from redis.connection import parse_url

        try:
            options = parse_url(url)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            raise ConfigError(f"invalid backing URL {url!r}: {exc}") from None
        options.pop("db", None)
        self._redis = redis_asyncio
        self._options: dict[str, Any] = options
        self.sidecar = sidecar
        self.url = url
        self.negative_ttl = negative_ttl
        self._monotonic = monotonic
        self.status = "connecting"
        self.absent: dict[tuple[int, bytes], float] = {}
        self.generation: dict[bytes, int] = {}
        self.flushes = 0  # invalidations of everything (FLUSHALL on the backing, reconnects)
        self.fetches = 0
        self.fetch_errors = 0
        self.forwarded = 0
        self.dropped_writes = 0
        self.invalidations = 0
        self._readers: dict[int, Any] = {}
        self._queue: asyncio.Queue[list[list[bytes]]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._writer: Any = None
        self._writer_db = -1
        self._listener_id: int | None = None
        self._listener: Any = None
        self._fetch_script: Any = None
        self._down_since = 0.0
        self._listener_ready = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the writer and the invalidation listener on the running loop."""
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._listen(), name="strata-backing-listener"),
            loop.create_task(self._write(), name="strata-backing-writer"),
        ]

    async def close(self) -> None:
        """Stop the tasks and close the connections."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        for client in self._readers.values():
            with contextlib.suppress(Exception):
                await client.aclose()
        self._readers.clear()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._writer.disconnect()
            self._writer = None

    def info(self) -> dict[str, object]:
        """Fields for INFO's strata section."""
        return {
            "strata_backing_url": self.url.split("@")[-1],
            "strata_backing_fetches": self.fetches,
            "strata_backing_fetch_errors": self.fetch_errors,
            "strata_backing_forwarded_writes": self.forwarded,
            "strata_backing_dropped_writes": self.dropped_writes,
            "strata_backing_invalidations": self.invalidations,
        }

    def _set_status(self, status: str) -> None:
        if status != self.status:
            logger.warning("backing redis %s is %s", self.url.split("@")[-1], status)
        self.status = status
        self.sidecar.backing_status = status
        if status == "down":
            self._down_since = self._monotonic()

    # ------------------------------------------------------------------ reads

    def unknown_keys(self, db_index: int, keys: list[bytes]) -> list[bytes]:
        """The keys that are neither in the L0 nor known to be absent from the backing Redis."""
        store = self.sidecar.keyspace.dbs[db_index].store
        now = self._monotonic()
        unknown = []
        for key in keys:
            if key in store:
                continue
            until = self.absent.get((db_index, key))
            if until is not None and until > now:
                continue
            unknown.append(key)
        return list(dict.fromkeys(unknown))

    def fetch(self, session: Session, db_index: int, keys: list[bytes]) -> None:
        """Read ``keys`` from the backing Redis into the L0, then let ``session`` go on."""
        task = asyncio.get_running_loop().create_task(self._fetch(session, db_index, keys))
        self._tasks.append(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)

    def _reader(self, db_index: int) -> Any:
        client = self._readers.get(db_index)
        if client is None:
            client = self._redis.Redis(db=db_index, protocol=2, **self._options)
            self._readers[db_index] = client
        return client

    async def _fetch(self, session: Session, db_index: int, keys: list[bytes]) -> None:
        try:
            for _ in range(_MAX_FETCH_RETRIES):
                if self.status == "down" and self._monotonic() - self._down_since < _RETRY_SECONDS:
                    break
                generations = {key: self.generation.get(key, 0) for key in keys}
                flushes = self.flushes
                try:
                    rows = await self._reader(db_index).eval(_FETCH_SCRIPT, len(keys), *keys)
                except self._redis.RedisError as exc:
                    self.fetch_errors += 1
                    logger.warning("backing redis read failed: %s", exc)
                    self._set_status("down")
                    break
                self.fetches += 1
                if self.status != "up" and self._listener_ready.is_set():
                    self._set_status("up")
                if flushes != self.flushes:
                    continue  # everything was invalidated meanwhile: read again
                stale = [key for key in keys if self.generation.get(key, 0) != generations[key]]
                self._fill(db_index, [k for k in keys if k not in stale], rows, keys)
                if not stale:
                    break
                keys = stale  # changed while we read them: read those again
        except Exception:
            logger.exception("backing redis fetch failed")
        finally:
            self.sidecar.fetched(session)

    def _fill(self, db_index: int, keys: list[bytes], rows: list[Any], asked: list[bytes]) -> None:
        db = self.sidecar.keyspace.dbs[db_index]
        now = self._monotonic()
        by_key = dict(zip(asked, rows, strict=False))
        for key in keys:
            row = by_key.get(key)
            if not row or row[0] in (b"none", "none"):
                self.absent[(db_index, key)] = now + self.negative_ttl
                continue
            kind = row[0].decode() if isinstance(row[0], bytes) else str(row[0])
            ttl_ms = int(row[1])
            value = _value_of(kind, row[2])
            if value is None or key in db.store:
                continue  # a type the sidecar does not hold, or written locally meanwhile
            self.absent.pop((db_index, key), None)
            db.store.set(key, value, ttl_ms / 1000 if ttl_ms > 0 else None)

    # ------------------------------------------------------------------ writes

    def after_command(
        self,
        spec: CommandSpec,
        argv: list[bytes],
        touched: list[tuple[int, bytes | None]],
        *,
        db_index: int,
        effects: bool = False,
    ) -> None:
        """Forward what a command wrote: the command itself, or the effects on ``touched``.

        ``effects`` forces the second form (the command also served a blocked client).
        """
        name = spec.name
        if name in _LOCAL_ONLY:
            return
        for index, key in touched:
            if key is not None:
                self.absent.pop((index, key), None)
        if effects or name in _EFFECT_COMMANDS:
            if touched:
                self._queue.put_nowait(self._effects(touched))
            return
        if spec.write and (touched or spec.first_key == 0):
            self._queue.put_nowait([[b"SELECT", b"%d" % db_index], list(argv)])

    def _effects(self, touched: list[tuple[int, bytes | None]]) -> list[list[bytes]]:
        """Commands that make the backing Redis hold what the L0 holds for ``touched``."""
        batch: list[list[bytes]] = [[b"MULTI"]]
        keyspace = self.sidecar.keyspace
        for db_index, key in dict.fromkeys(touched):
            batch.append([b"SELECT", b"%d" % db_index])
            if key is None:
                batch.append([b"FLUSHDB"])
                continue
            db = keyspace.dbs[db_index]
            value = db.store.peek(key)
            batch.append([b"DEL", key])
            if value is None:
                continue
            if type(value) is bytes:
                batch.append([b"SET", key, value])
            elif type(value) is ListValue:
                batch.append([b"RPUSH", key, *value.items])
            elif type(value) is HashValue:
                pairs = [part for pair in value.fields.items() for part in pair]
                batch.append([b"HSET", key, *pairs])
            elif type(value) is SetValue:
                batch.append([b"SADD", key, *value.members])
            elif type(value) is ZSetValue:
                scored = [part for score, m in value.order for part in (b"%.17g" % score, m)]
                batch.append([b"ZADD", key, *scored])
            expires = db.expire_at_ms(key)
            if expires is not None and expires >= 0:
                batch.append([b"PEXPIREAT", key, b"%d" % expires])
        batch.append([b"EXEC"])
        return batch

    async def _connect_writer(self) -> Any:
        connection = self._redis.Connection(protocol=2, **self._options)
        await connection.connect()
        await connection.send_command(
            "CLIENT", "TRACKING", "ON", "REDIRECT", self._listener_id, "BCAST", "NOLOOP"
        )
        await connection.read_response()
        self._writer_db = -1
        return connection

    async def _write(self) -> None:
        while True:
            batch = await self._queue.get()
            while not self._queue.empty() and len(batch) < 1000:
                batch += self._queue.get_nowait()
            try:
                if self._writer is None:
                    # The listener (re)creates the writer with tracking on: without tracking
                    # the L0 could keep values other clients changed, so never write without it.
                    raise self._redis.ConnectionError("no tracked connection to the backing redis")
                await self._writer.send_packed_command(self._writer.pack_commands(batch))
                for _ in batch:
                    try:
                        await self._writer.read_response()
                    except self._redis.ResponseError as exc:
                        # The backing Redis refused a write the L0 accepted: nothing to undo
                        # locally, but it must not go unnoticed.
                        logger.warning("backing redis refused a forwarded write: %s", exc)
                self.forwarded += len(batch)
            except (self._redis.RedisError, OSError) as exc:
                self.dropped_writes += len(batch)
                logger.warning(
                    "backing redis write failed, %d commands dropped: %s", len(batch), exc
                )
                self._set_status("down")
                if self._writer is not None:
                    with contextlib.suppress(Exception):
                        await self._writer.disconnect()
                    self._writer = None
                    if self._listener is not None:
                        # Start over: a new listener, a new tracked writer, an emptied L0.
                        with contextlib.suppress(Exception):
                            await self._listener.disconnect()

    # ------------------------------------------------------------------ invalidation

    async def _listen(self) -> None:
        while True:
            options = dict(self._options, socket_timeout=None)
            connection = self._redis.Connection(protocol=2, **options)
            self._listener = connection
            try:
                await connection.connect()
                await connection.send_command("CLIENT", "ID")
                self._listener_id = int(await connection.read_response())
                await connection.send_command("SUBSCRIBE", "__redis__:invalidate")
                await connection.read_response()
                if self._writer is not None:
                    with contextlib.suppress(Exception):
                        await self._writer.disconnect()
                    self._writer = None
                # Tracking is on from the start, before any value is read or written.
                self._writer = await self._connect_writer()
                was_down = self.status != "connecting"
                self._listener_ready.set()
                self._set_status("up")
                if was_down:
                    self.invalidate_all()  # invalidations may have been missed meanwhile
                while True:
                    try:
                        message = await connection.read_response(timeout=None)
                    except self._redis.TimeoutError:
                        continue
                    self._on_message(message)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await connection.disconnect()
                raise
            except Exception as exc:
                self._listener_ready.clear()
                self._set_status("down")
                logger.warning("backing redis listener lost: %s", exc)
                with contextlib.suppress(Exception):
                    await connection.disconnect()
                await asyncio.sleep(_RETRY_SECONDS)

    def _on_message(self, message: Any) -> None:
        if (
            not isinstance(message, list)
            or len(message) < 3
            or message[0]
            not in (
                b"message",
                "message",
            )
        ):
            return
        keys = message[2]
        if keys is None:
            self.invalidate_all()
        elif isinstance(keys, list):
            self.invalidate([key for key in keys if isinstance(key, bytes)])

    def invalidate(self, keys: list[bytes]) -> None:
        """Another client changed ``keys`` on the backing Redis: drop them from every database."""
        self.invalidations += len(keys)
        dbs = self.sidecar.keyspace.dbs
        for key in keys:
            self.generation[key] = self.generation.get(key, 0) + 1
            for db in dbs:
                if db.store.delete(key):
                    db.touch(key)
                self.absent.pop((db.index, key), None)

    def invalidate_all(self) -> None:
        """Forget everything the L0 holds (FLUSHALL on the backing Redis, or a reconnect)."""
        self.flushes += 1
        self.absent.clear()
        self.sidecar.keyspace.touch_all()
        for db in self.sidecar.keyspace.dbs:
            db.store.clear()


def _value_of(kind: str, data: Any) -> object:
    """An L0 value from the fetch script's reply for one key."""
    if kind == "string" and isinstance(data, bytes):
        return data
    if kind == "list" and isinstance(data, list):
        return ListValue(data)
    if kind == "hash" and isinstance(data, list):
        value = HashValue()
        for index in range(0, len(data) - 1, 2):
            value.set(data[index], data[index + 1])
        return value
    if kind == "set" and isinstance(data, list):
        return SetValue(data)
    if kind == "zset" and isinstance(data, list):
        zset = ZSetValue()
        for index in range(0, len(data) - 1, 2):
            zset.add(data[index], float(data[index + 1]))
        return zset
    return None


def attach_backing(sidecar: Sidecar, url: str, *, negative_ttl: float = 1.0) -> Backing:
    """Put a backing Redis behind ``sidecar``; it starts with the server (``RespServer.start``)."""
    backing = Backing(sidecar, url, negative_ttl=negative_ttl)
    sidecar.backing = backing
    sidecar.backing_status = "connecting"
    sidecar.extra_info["backing"] = backing.info
    return backing
