"""The Redis KV store: blocks as binary values on a shared server, read and written in pipelines.

Each block is one string value (the :mod:`stratacache.kv.codec` document) under the key
``prefix + digest`` (the 32 raw digest bytes, not hex: Redis keys are binary-safe and shorter keys
cost less memory on the server). Every call is one round trip, or two for a store:

* :meth:`RedisKVStore.lookup`: one pipeline of ``EXISTS``, one per key.
* :meth:`RedisKVStore.load`: ``MGET`` (or a pipeline of ``GETEX … PX`` when blocks have a TTL, so a
  read block lives on).
* :meth:`RedisKVStore.store`: a pipeline of ``EXISTS`` to skip blocks already there (encoding one
  costs more than asking), then a pipeline of ``SET … NX [PX]``.

Values are verified like files on disk; on a server several parties can write to, give the codec a
secret. redis-py's errors are translated here, once: connection failures and timeouts become
:class:`~stratacache.errors.TierUnavailableError` (the tiered store then carries on without this
tier), anything else :class:`~stratacache.errors.TierError`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from stratacache.errors import (
    ConfigError,
    MissingExtraError,
    RecordError,
    TierError,
    TierUnavailableError,
)
from stratacache.kv.base import BlockKey, KVBlock, KVStats
from stratacache.kv.codec import BlockCodec
from stratacache.kv.tiers._checks import check_blocks, check_keys, check_open

if TYPE_CHECKING:
    import redis

__all__ = ["RedisKVStore"]

_GLOB_SPECIALS = frozenset(b"*?[]\\")


def _positive(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _glob_escape(prefix: bytes) -> bytes:
    return b"".join(b"\\" + bytes([c]) if c in _GLOB_SPECIALS else bytes([c]) for c in prefix)


class RedisKVStore:
    """KV blocks on a Redis (or Valkey) server.

    :param client: a synchronous ``redis.Redis`` client, created with ``decode_responses=False``
        (the default). The store does not close a client it was given.
    :param url: instead of ``client``, a ``redis://`` URL; the store then owns its client.
    :param prefix: prepended to every key; :meth:`clear` removes exactly the keys under it.
    :param ttl: seconds a block lives after it is written or last loaded (``None``: no expiry).
    :param codec: encodes and verifies blocks (default: SHA-256 digests, no secret).
    :param timeout: with ``url``, the connect and socket timeout in seconds; the client it builds
        retries a failed command once, at once. (redis-py's default client retries ten times with
        backoff, which would stall a prefill for seconds when the server is down: recomputing is
        cheaper than waiting.) A ``client`` you pass keeps its own settings.
    :raises ConfigError: neither or both of ``client`` and ``url``, a client that decodes
        responses, an empty prefix, or a ``ttl`` or ``timeout`` that is not a finite number > 0.
    :raises MissingExtraError: redis-py is not installed (the ``redis`` extra).
    """

    name: str = "redis"
    """The label for metrics and reports."""

    def __init__(
        self,
        client: redis.Redis | None = None,
        *,
        url: str | None = None,
        prefix: str = "stratacache:kv:",
        ttl: float | None = None,
        codec: BlockCodec | None = None,
        timeout: float = 2.0,
    ) -> None:
        if (client is None) == (url is None):
            raise ConfigError("give RedisKVStore exactly one of client= and url=")
        if not isinstance(prefix, str) or not prefix:
            raise ConfigError("the Redis key prefix must be a non-empty str")
        if ttl is not None and not _positive(ttl):
            raise ConfigError(f"ttl must be a finite number of seconds > 0 or None, not {ttl!r}")
        if not _positive(timeout):
            raise ConfigError(f"timeout must be a finite number of seconds > 0, not {timeout!r}")
        try:
            import redis as redis_module
        except ImportError as exc:  # pragma: no cover - exercised only without the extra
            raise MissingExtraError("redis", "redis") from exc
        self._errors = redis_module.exceptions
        if client is None:
            assert url is not None
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            client = redis_module.Redis.from_url(
                url,
                socket_connect_timeout=timeout,
                socket_timeout=timeout,
                retry=Retry(NoBackoff(), 1),
            )
            self._owns_client = True
        else:
            self._owns_client = False
        if client.get_connection_kwargs().get("decode_responses"):
            raise ConfigError("the Redis client must not decode responses: blocks are binary")
        self._client: redis.Redis = client
        self._prefix = prefix.encode("utf-8")
        self._ttl_ms = None if ttl is None else max(1, int(ttl * 1000))
        self._codec = codec if codec is not None else BlockCodec()
        self._lock = threading.Lock()  # guards the counters only; redis-py pools connections
        self._closed = False
        self._loaded = self._loaded_bytes = 0
        self._stored = self._stored_bytes = 0
        self._declined = self._corrupt = 0

    def _key(self, key: BlockKey) -> bytes:
        return self._prefix + key.digest

    @contextmanager
    def _translate(self) -> Iterator[None]:
        """Turn redis-py's exceptions into stratacache's, in one place."""
        errors = self._errors
        try:
            yield
        except (errors.ConnectionError, errors.TimeoutError) as exc:
            raise TierUnavailableError(f"Redis KV store unavailable: {exc}") from exc
        except errors.RedisError as exc:
            raise TierError(f"Redis KV store failed: {exc}") from exc

    def _exists(self, keys: Sequence[BlockKey]) -> list[bool]:
        if not keys:
            return []
        with self._translate():
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.exists(self._key(key))
            return [bool(n) for n in pipe.execute()]

    def lookup(self, keys: Sequence[BlockKey]) -> int:
        """How many leading ``keys`` are on the server (one pipelined round trip)."""
        check_keys(keys)
        check_open(self._closed, self.name)
        count = 0
        for present in self._exists(keys):
            if not present:
                break
            count += 1
        return count

    def load(self, keys: Sequence[BlockKey]) -> list[KVBlock]:
        """Fetch the leading ``keys`` in one round trip; stop at the first missing or bad value."""
        check_keys(keys)
        check_open(self._closed, self.name)
        if not keys:
            return []
        names = [self._key(k) for k in keys]
        with self._translate():
            if self._ttl_ms is None:
                values: list[Any] = self._client.mget(names)
            else:
                pipe = self._client.pipeline(transaction=False)
                for name in names:
                    pipe.getex(name, px=self._ttl_ms)
                values = pipe.execute()
        out: list[KVBlock] = []
        corrupt = 0
        for key, value in zip(keys, values, strict=True):
            if value is None:
                break
            try:
                out.append(self._codec.decode(key, bytes(value)))
            except RecordError:
                corrupt = 1
                with self._translate():
                    self._client.delete(self._key(key))
                break
        with self._lock:
            self._loaded += len(out)
            self._loaded_bytes += sum(b.nbytes for b in out)
            self._corrupt += corrupt
        return out

    def store(self, blocks: Mapping[BlockKey, KVBlock]) -> int:
        """Write the blocks the server does not have yet; return how many it holds afterwards."""
        items = check_blocks(blocks)
        check_open(self._closed, self.name)
        present = self._exists([key for key, _ in items])
        missing = [item for item, there in zip(items, present, strict=True) if not there]
        if missing:
            with self._translate():
                pipe = self._client.pipeline(transaction=False)
                for key, block in missing:
                    pipe.set(
                        self._key(key), self._codec.encode(key, block), nx=True, px=self._ttl_ms
                    )
                pipe.execute()
            with self._lock:
                self._stored += len(missing)
                self._stored_bytes += sum(block.nbytes for _, block in missing)
        return len(items)

    def delete(self, keys: Sequence[BlockKey]) -> int:
        """Remove ``keys`` from the server; return how many were there."""
        check_keys(keys)
        check_open(self._closed, self.name)
        if not keys:
            return 0
        with self._translate():
            return int(self._client.delete(*[self._key(k) for k in keys]))

    def clear(self) -> None:
        """Remove every key under this store's prefix (SCAN and UNLINK, in batches)."""
        check_open(self._closed, self.name)
        pattern = _glob_escape(self._prefix) + b"*"
        with self._translate():
            batch: list[bytes] = []
            for name in self._client.scan_iter(match=pattern, count=1000):
                batch.append(name)
                if len(batch) >= 1000:
                    self._client.unlink(*batch)
                    batch.clear()
            if batch:
                self._client.unlink(*batch)

    def stats(self) -> KVStats:
        """This client's counters (the server's content is shared and may be larger)."""
        with self._lock:
            return KVStats(
                loaded_blocks=self._loaded,
                loaded_bytes=self._loaded_bytes,
                stored_blocks=self._stored,
                stored_bytes=self._stored_bytes,
                declined_blocks=self._declined,
                corrupt_blocks=self._corrupt,
            )

    def close(self) -> None:
        """Close the client if this store created it; later calls raise TierError."""
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            with self._translate():
                self._client.close()
