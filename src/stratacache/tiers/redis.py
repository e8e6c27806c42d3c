"""The shared tier: entries on a Redis (or Valkey) server, so several instances share one cache.

Layout, under a configurable ``prefix`` (default ``strata:``)::

    {prefix}e:{key}    hash  v = value bytes, x = expires_at ("" for none), n = namespace,
                             t = the tags as a JSON list
    {prefix}t:{tag}    set   the keys carrying ``tag``
    {prefix}n:{ns}     set   the keys in namespace ``ns``

The one-letter segment after the prefix keeps the three key spaces apart whatever characters a key,
tag or namespace holds. Every write and invalidation is one small Lua script, so the hash and both
indexes change together (a reader never sees an entry whose tags point elsewhere), and the script
also publishes the change on ``{prefix}invalidate`` in the same atomic step: instances that keep
an L0 in front of this tier drop the key from it (see :mod:`stratacache.tiers.coherence`). A write
is published as ``w`` and a deletion as ``k``: both make other instances drop their copy, but only
a deletion (or a tag, namespace or clear) invalidates what they are still fetching.

Expiry. ``expires_at`` is compared with the injected ``clock`` on every read, as the contract
requires; the server's own TTL is only a garbage-collection backstop, set as a duration
``expires_at - clock()`` rounded *up* (plus :data:`BACKSTOP_MARGIN_S` for clock skew between
instances), so the server never drops an entry before its logical expiry. The index sets get the
longest TTL of their members, or none once a member has none; members whose entry the server
expired are skipped (and dropped) when the tag or namespace is invalidated.

Failures. redis-py's errors are translated once (:meth:`RedisTier._call`): connection failures,
timeouts, a loading/read-only/OOM server become :class:`~stratacache.errors.TierUnavailableError`
(a :class:`~stratacache.tiers.TierChain` then serves from its other tiers), anything else
:class:`~stratacache.errors.TierError`. A small circuit breaker makes a dead server cheap: after
``breaker_threshold`` consecutive outages the tier fails at once, without touching the network, for
``breaker_cooldown`` seconds; then one call probes the server and either closes the breaker or
opens it again.

Deployment. Standalone servers by URL (``redis://``, ``rediss://``, ``unix://``), a
Sentinel-managed master by ``redis+sentinel://[:password@]host:port[,host:port…]/service[/db]``
(the sentinels are asked for the current master, so a failover is followed), a Redis Cluster by
``redis+cluster://[:password@]host:port[,host:port…]`` (any of its nodes; the others are
discovered), or any ``redis.asyncio`` client you build yourself.

Cluster layout. A script may only touch keys of one hash slot, and an entry's script touches its
hash and the index sets it belongs to. So in a cluster every entry is assigned to one of
:data:`CLUSTER_SHARDS` shards by a hash of its key, and the shard is a hash tag in the prefix of
all its keys: ``{prefix}{7}:e:{key}``, ``{prefix}{7}:t:{tag}``, ``{prefix}{7}:n:{ns}``. An entry's
keys share a slot; the shards spread over the cluster's slots (and nodes). Invalidating a tag or
namespace runs the index script once per shard (concurrently), then publishes one invalidation
message (``PUBLISH`` reaches subscribers on every node of a cluster). A standalone server keeps the
layout without shards, so switching a deployment to a cluster starts with an empty shared tier.
The cluster client's sockets have no timeouts (redis-py 8.1's asyncio cluster client breaks
connections under concurrent commands when they do); the tier enforces ``socket_timeout`` around
each call itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

from stratacache.errors import ConfigError, MissingExtraError, TierError, TierUnavailableError
from stratacache.tiers._checks import check_entry, check_key
from stratacache.tiers.base import Clock, TierEntry

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["BACKSTOP_MARGIN_S", "CLUSTER_SHARDS", "RedisTier", "cluster_client", "sentinel_master"]

_T = TypeVar("_T")

BACKSTOP_MARGIN_S: Final = 60.0
"""Seconds the server keeps an entry past its logical expiry (clock skew between instances)."""

_MAX_BACKSTOP_MS: Final = 100 * 365 * 86400 * 1000  # beyond a century: no server TTL at all
_CLEAR_BATCH: Final = 500
_SCHEMES: Final = ("redis://", "rediss://", "unix://", "redis+sentinel://", "redis+cluster://")
CLUSTER_SHARDS: Final = 64
"""Shards (hash tags) entries are spread over in a Redis Cluster; part of the key layout."""

# ARGV: prefix, key, value, expires_at, namespace, ttl_ms (0: none), tags_json, origin, channel,
# tags...
_SET = """
local prefix, key = ARGV[1], ARGV[2]
local ttl = tonumber(ARGV[6])
local old = redis.call('HMGET', KEYS[1], 'n', 't')
if old[1] then
  redis.call('SREM', prefix .. 'n:' .. old[1], key)
  for _, tag in ipairs(cjson.decode(old[2])) do
    redis.call('SREM', prefix .. 't:' .. tag, key)
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[3], 'x', ARGV[4], 'n', ARGV[5], 't', ARGV[7])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
local function index(name)
  local existed = redis.call('EXISTS', name)
  redis.call('SADD', name, key)
  if ttl == 0 then
    redis.call('PERSIST', name)
  elseif existed == 0 then
    redis.call('PEXPIRE', name, ttl)
  else
    local left = redis.call('PTTL', name)
    if left >= 0 and left < ttl then redis.call('PEXPIRE', name, ttl) end
  end
end
index(prefix .. 'n:' .. ARGV[5])
for i = 10, #ARGV do index(prefix .. 't:' .. ARGV[i]) end
redis.call('PUBLISH', ARGV[9], ARGV[8] .. 'w' .. key)
return 1
"""

# Shared by the removals: drop one entry and its index memberships; 1 if it was live at ``now``.
_REMOVE = """
local function remove(prefix, key, now)
  local name = prefix .. 'e:' .. key
  local row = redis.call('HMGET', name, 'x', 'n', 't')
  if not row[2] then return 0 end
  redis.call('SREM', prefix .. 'n:' .. row[2], key)
  for _, tag in ipairs(cjson.decode(row[3])) do
    redis.call('SREM', prefix .. 't:' .. tag, key)
  end
  redis.call('DEL', name)
  if row[1] == '' or tonumber(row[1]) > now then return 1 end
  return 0
end
"""

# ARGV: prefix, key, now, origin, channel
_DELETE = (
    _REMOVE
    + """
local removed = remove(ARGV[1], ARGV[2], tonumber(ARGV[3]))
redis.call('PUBLISH', ARGV[5], ARGV[4] .. 'k' .. ARGV[2])
return removed
"""
)

# KEYS[1]: the index set. ARGV: prefix, now, origin, kind ('t' or 'n'), name, channel ('': the
# caller publishes, once for every shard)
_DELETE_INDEX = (
    _REMOVE
    + """
local count = 0
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  count = count + remove(ARGV[1], key, tonumber(ARGV[2]))
end
redis.call('DEL', KEYS[1])
if ARGV[6] ~= '' then redis.call('PUBLISH', ARGV[6], ARGV[3] .. ARGV[4] .. ARGV[5]) end
return count
"""
)

ORIGIN_BYTES: Final = 16
"""The length of the origin id that starts every invalidation message (hex characters)."""


def _redis() -> Any:
    try:
        import redis.asyncio
        import redis.asyncio.sentinel
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingExtraError("redis", "redis") from exc
    return redis


def _positive(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _expiry_text(expires_at: float | None) -> str:
    if expires_at is None:
        return ""
    # repr keeps an int an int (the contract compares entries by equality) and a float exact.
    return repr(int(expires_at)) if isinstance(expires_at, int) else repr(float(expires_at))


def _parse_expiry(text: bytes) -> float | None:
    if not text:
        return None
    raw = text.decode("ascii")
    return int(raw) if raw.lstrip("-").isdigit() else float(raw)


class RedisTier:
    """A :class:`~stratacache.tiers.Tier` on a Redis server, shared by every instance that uses it.

    :param url: a ``redis://``, ``rediss://``, ``unix://`` or ``redis+sentinel://`` URL (see the
        module doc); the tier owns the client it builds.
    :param client: instead of ``url``, a ``redis.asyncio.Redis`` (or ``RedisCluster``) client
        that does not decode responses (the tier does not close it).
    :param prefix: prepended to every Redis key; :meth:`clear` removes exactly the keys under it.
        Instances share a cache by sharing a prefix.
    :param clock: wall-clock Unix seconds (default ``time.time``), compared with ``expires_at``.
    :param socket_timeout: with ``url``, the connect and command timeout in seconds. A cache
        should give up quickly: a miss costs one upstream call, a stalled request costs a user.
        With a cluster URL it is a deadline on each whole call, waiting for a connection
        included (see the module doc).
    :param breaker_threshold: consecutive outages after which the breaker opens.
    :param breaker_cooldown: seconds the breaker stays open before one call probes the server.
    :param timer: the monotonic clock of the breaker (default ``time.monotonic``).
    :param origin: the id that starts every invalidation message this tier publishes (default:
        random), so a subscriber can ignore its own instance's changes.
    :raises ConfigError: neither or both of ``url`` and ``client``, a decoding client, an empty
        prefix, or a bad number.
    :raises MissingExtraError: redis-py is not installed (the ``redis`` extra).
    """

    name: str = "redis"
    """The label used for metrics and the ``X-Cache-Tier`` header."""

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Redis | None = None,
        prefix: str = "strata:",
        clock: Clock = time.time,
        socket_timeout: float = 0.25,
        breaker_threshold: int = 1,
        breaker_cooldown: float = 1.0,
        timer: Callable[[], float] = time.monotonic,
        origin: str | None = None,
    ) -> None:
        if (client is None) == (url is None):
            raise ConfigError("give RedisTier exactly one of url and client=")
        self._sentinels: list[Any] = []  # clients of the sentinels, closed with the tier
        self._deadline: float | None = None  # seconds per call, when the client has no timeouts
        if not isinstance(prefix, str) or not prefix:
            raise ConfigError("the Redis key prefix must be a non-empty str")
        if not _positive(socket_timeout):
            raise ConfigError(f"socket_timeout must be a number of seconds > 0: {socket_timeout!r}")
        if not isinstance(breaker_threshold, int) or breaker_threshold < 1:
            raise ConfigError(f"breaker_threshold must be an int >= 1: {breaker_threshold!r}")
        if not _positive(breaker_cooldown):
            raise ConfigError(f"breaker_cooldown must be seconds > 0: {breaker_cooldown!r}")
        if origin is None:
            origin = secrets.token_hex(ORIGIN_BYTES // 2)
        if not isinstance(origin, str) or len(origin) != ORIGIN_BYTES or not origin.isascii():
            raise ConfigError(f"origin must be {ORIGIN_BYTES} ASCII characters")
        redis = _redis()
        self._errors = redis.exceptions
        if client is None:
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            if not isinstance(url, str) or not url.startswith(_SCHEMES):
                raise ConfigError(
                    "the Redis URL must be redis://, rediss://, unix://, redis+sentinel:// or "
                    "redis+cluster://"
                )
            # One immediate retry: a pooled connection the server closed is reopened, but a dead
            # server is not waited for.
            options: dict[str, Any] = {
                "socket_connect_timeout": socket_timeout,
                "socket_timeout": socket_timeout,
                "retry": Retry(NoBackoff(), 1),
            }
            try:
                if url.startswith("redis+sentinel://"):
                    client, self._sentinels = _sentinel_master(redis, url, options)
                elif url.startswith("redis+cluster://"):
                    # redis-py 8.1's asyncio cluster client breaks connections under concurrent
                    # commands whenever socket timeouts are set (a None writer, "Connection
                    # closed by server"; seen from 12 tasks, with timeouts of 0.25 s as of 30 s,
                    # and never without them). So its sockets get no timeout and the tier
                    # enforces the same deadline around each call instead (see _call).
                    # (Nor the immediate retry: redis-py's cluster client retries by itself.)
                    bare = {"socket_timeout": None, "socket_connect_timeout": None}
                    client = _cluster_client(redis, url, bare)
                    self._deadline = float(socket_timeout)
                else:
                    client = redis.asyncio.Redis.from_url(url, **options)
            except ValueError as exc:
                raise ConfigError(f"bad Redis URL: {exc}") from None
            self._owns_client = True
        else:
            self._owns_client = False
        if client.get_connection_kwargs().get("decode_responses"):
            raise ConfigError("the Redis client must not decode responses: values are binary")
        self._client: Redis = client
        self._cluster = isinstance(client, redis.asyncio.RedisCluster)
        self.url = url
        """The URL the tier was built from (``None`` for a client you passed)."""
        self.prefix = prefix
        """The Redis key prefix."""
        self.channel = prefix + "invalidate"
        """The pub/sub channel invalidations are published on."""
        self.origin = origin
        """The id at the start of every invalidation message this tier publishes."""
        self._clock = clock
        self._timer = timer
        self._threshold = breaker_threshold
        self._cooldown = float(breaker_cooldown)
        self._failures = 0
        self._open_until: float | None = None
        self._closed = False
        self._set_script = client.register_script(_SET)
        self._delete_script = client.register_script(_DELETE)
        self._delete_index_script = client.register_script(_DELETE_INDEX)

    @property
    def client(self) -> Redis:
        """The ``redis.asyncio`` client underneath (for the invalidation subscriber)."""
        return self._client

    async def pubsub(self) -> Any:
        """A new pub/sub object on this tier's server (or cluster), for the invalidation channel.

        A cluster client must know its slots before it can pick a node to subscribe on.
        """
        if self._cluster:
            await self._client.initialize()
        return self._client.pubsub()

    @property
    def available(self) -> bool:
        """``False`` while the circuit breaker is open (the server was unreachable recently)."""
        return self._open_until is None

    def reset_breaker(self) -> None:
        """Close the circuit breaker now: the next call goes to the server, whatever the cooldown."""
        self._open_until = None
        self._failures = 0

    # ---------------------------------------------------------------- the Tier

    async def get(self, key: str) -> TierEntry | None:
        """Return the live entry for ``key``, or ``None`` when absent or expired by ``clock``."""
        check_key(key)
        row: list[Any] = await self._call(
            self._client.hmget, self._entry_key(key), ["v", "x", "n", "t"]
        )
        value, expiry, namespace, tags = row
        if value is None:
            return None
        expires_at = _parse_expiry(expiry)
        if expires_at is not None and expires_at <= self._clock():
            return None  # the server's TTL (or the next write) will collect it
        return TierEntry(
            value=bytes(value),
            expires_at=expires_at,
            tags=frozenset(json.loads(tags)) if tags != b"[]" else frozenset(),
            namespace=namespace.decode("utf-8"),
        )

    async def set(self, key: str, entry: TierEntry) -> bool:
        """Store ``entry`` under ``key``, replacing any previous entry and its index memberships.

        An entry that has already expired is declined (``False``) and removes the previous one.
        """
        check_key(key)
        check_entry(entry)
        now = self._clock()
        if entry.expired(now):
            await self.delete(key)
            return False
        ttl_ms = 0
        if entry.expires_at is not None:
            ms = math.ceil((entry.expires_at - now + BACKSTOP_MARGIN_S) * 1000)
            ttl_ms = ms if ms <= _MAX_BACKSTOP_MS else 0
        tags = sorted(entry.tags)
        await self._call(
            self._set_script,
            keys=[self._entry_key(key)],
            args=[
                self._prefix_for(key),
                key,
                entry.value,
                _expiry_text(entry.expires_at),
                entry.namespace,
                ttl_ms,
                json.dumps(tags, ensure_ascii=False),
                self.origin,
                self.channel,
                *tags,
            ],
        )
        return True

    async def delete(self, key: str) -> bool:
        """Remove ``key``; ``True`` if a live entry was there."""
        check_key(key)
        removed = await self._call(
            self._delete_script,
            keys=[self._entry_key(key)],
            args=[self._prefix_for(key), key, repr(self._clock()), self.origin, self.channel],
        )
        return bool(removed)

    async def delete_tag(self, tag: str) -> int:
        """Remove every entry carrying ``tag``; return how many were live."""
        check_key(tag)
        return await self._delete_index("t", tag)

    async def delete_namespace(self, namespace: str) -> int:
        """Remove every entry in ``namespace``; return how many were live."""
        check_key(namespace)
        return await self._delete_index("n", namespace)

    async def clear(self) -> None:
        """Remove every key under the prefix (in batches: not atomic against concurrent writes)."""
        pattern = _glob_escape(self.prefix) + "*"

        async def clear() -> None:
            batch: list[bytes] = []
            async for name in self._client.scan_iter(match=pattern, count=_CLEAR_BATCH):
                batch.append(name)
                if len(batch) >= _CLEAR_BATCH:
                    await self._client.unlink(*batch)
                    batch.clear()
            if batch:
                await self._client.unlink(*batch)
            await self._client.publish(self.channel, self.origin + "c")

        await self._call(clear, budget=40.0)  # a scan of every node: not one command

    async def close(self) -> None:
        """Close the client the tier built; later calls raise :class:`TierError`."""
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            await self._client.aclose()
            for sentinel in self._sentinels:
                await sentinel.aclose()

    # -------------------------------------------------------------- internals

    def _prefix_for(self, key: str) -> str:
        """The prefix of ``key``'s entry and index keys: its shard's in a cluster."""
        if not self._cluster:
            return self.prefix
        shard = int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=4).digest())
        return f"{self.prefix}{{{shard % CLUSTER_SHARDS}}}:"

    def _entry_key(self, key: str) -> str:
        return f"{self._prefix_for(key)}e:{key}"

    async def _delete_index(self, kind: str, name: str) -> int:
        now = repr(self._clock())
        if not self._cluster:
            count = await self._call(
                self._delete_index_script,
                keys=[f"{self.prefix}{kind}:{name}"],
                args=[self.prefix, now, self.origin, kind, name, self.channel],
            )
            return int(count)

        async def every_shard() -> int:
            counts = await asyncio.gather(
                *(
                    self._delete_index_script(
                        keys=[f"{prefix}{kind}:{name}"],
                        args=[prefix, now, self.origin, kind, name, ""],
                    )
                    for prefix in (f"{self.prefix}{{{n}}}:" for n in range(CLUSTER_SHARDS))
                )
            )
            await self._client.publish(self.channel, f"{self.origin}{kind}{name}")
            return sum(int(c) for c in counts)

        # One script per shard, concurrently: a few deadlines' worth for the lot.
        return await self._call(every_shard, budget=4.0)

    async def _call(
        self, func: Callable[..., Awaitable[_T]], *args: Any, budget: float = 1.0, **kwargs: Any
    ) -> _T:
        """Run one Redis call through the breaker, translating redis-py's errors once, here."""
        if self._closed:
            raise TierError("the Redis tier is closed")
        if self._open_until is not None:
            if self._timer() < self._open_until:
                raise TierUnavailableError("the Redis tier is unavailable (circuit open)")
            # Half-open: let this call probe the server; a failure reopens at once.
            self._open_until = None
            self._failures = self._threshold - 1
        errors = self._errors
        try:
            if self._deadline is None:
                result = await func(*args, **kwargs)
            else:
                async with asyncio.timeout(self._deadline * budget):
                    try:
                        result = await func(*args, **kwargs)
                    except errors.ConnectionError:
                        # redis-py 8.1's cluster client, when a command fails on one node, closes
                        # connections other commands are reading from (seen with 100 concurrent
                        # tasks: "Connection closed by server" once its own retries were spent).
                        # Every call this tier makes is idempotent: once more, within the same
                        # deadline, before the breaker counts a failure.
                        result = await func(*args, **kwargs)
        except (
            errors.ConnectionError,
            errors.TimeoutError,
            errors.BusyLoadingError,
            errors.ReadOnlyError,
            errors.OutOfMemoryError,
            errors.MasterDownError,
            errors.TryAgainError,
            errors.ClusterDownError,
            errors.RedisClusterException,  # no node reachable (not a RedisError)
            OSError,
            TimeoutError,
        ) as exc:
            self._failures += 1
            if self._failures >= self._threshold:
                self._open_until = self._timer() + self._cooldown
            raise TierUnavailableError(f"the Redis tier is unavailable: {exc!r}") from exc
        except errors.RedisError as exc:
            raise TierError(f"the Redis tier failed: {exc!r}") from exc
        self._failures = 0
        return result

    def __repr__(self) -> str:
        where = self.url if self.url is not None else "client"
        state = "closed" if self._closed else ("open" if self.available else "breaker-open")
        return f"RedisTier({where!r}, prefix={self.prefix!r}, {state})"


def _cluster_client(redis: Any, url: str, options: dict[str, Any]) -> Any:
    """The ``redis.asyncio.RedisCluster`` of ``redis+cluster://[:password@]host:port[,…]``."""
    from urllib.parse import unquote

    netloc = url.removeprefix("redis+cluster://").partition("/")[0]
    password = None
    if "@" in netloc:
        auth, _, netloc = netloc.rpartition("@")
        password = unquote(auth.partition(":")[2]) or None
    nodes = []
    for part in netloc.split(","):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError("cluster nodes must be given as host:port[,host:port...]")
        nodes.append(redis.asyncio.cluster.ClusterNode(host.strip("[]"), int(port)))
    # The options' retry (one immediate retry): a dead cluster fails fast, as a dead server does.
    return redis.asyncio.RedisCluster(startup_nodes=nodes, password=password, **options)


def cluster_client(url: str, options: dict[str, Any]) -> Any:
    """A ``redis.asyncio.RedisCluster`` for a ``redis+cluster://`` URL; ``options`` are its
    connections' (``socket_connect_timeout`` and ``socket_timeout`` at least)."""
    return _cluster_client(_redis(), url, options)


def sentinel_master(url: str, options: dict[str, Any]) -> tuple[Any, list[Any]]:
    """A ``redis.asyncio`` client of the master a ``redis+sentinel://`` URL names, and the
    clients of its sentinels (close them too); ``options`` are the master connection's."""
    return _sentinel_master(_redis(), url, options)


def _sentinel_master(redis: Any, url: str, options: dict[str, Any]) -> tuple[Any, list[Any]]:
    """The master client of ``redis+sentinel://[:password@]host:port[,host:port…]/service[/db]``.

    The sentinels are asked for the master on every new connection, so a failover is followed.
    """
    from urllib.parse import unquote

    rest = url.removeprefix("redis+sentinel://")
    netloc, _, path = rest.partition("/")
    password = None
    if "@" in netloc:
        auth, _, netloc = netloc.rpartition("@")
        password = unquote(auth.partition(":")[2]) or None
    sentinels: list[tuple[str, int]] = []
    for part in netloc.split(","):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError("sentinels must be given as host:port[,host:port...]")
        sentinels.append((host.strip("[]"), int(port)))
    service, _, db = path.partition("/")
    if not service or (db and not db.isdigit()):
        raise ValueError("the path must be /service-name or /service-name/db")
    timeouts = {k: options[k] for k in ("socket_connect_timeout", "socket_timeout")}
    sentinel = redis.asyncio.sentinel.Sentinel(sentinels, sentinel_kwargs=timeouts)
    master = sentinel.master_for(service, db=int(db or 0), password=password, **options)
    return master, list(sentinel.sentinels)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
