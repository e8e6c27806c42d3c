"""The LangChain face: :class:`StrataCache`, a ``langchain_core`` ``BaseCache`` over our tiers.

>>> from langchain_core.globals import set_llm_cache  # doctest: +SKIP
>>> set_llm_cache(StrataCache())  # doctest: +SKIP

LangChain looks an LLM call up by ``(prompt, llm_string)``: the prompt text (a serialised message
list for chat models) and a string that describes the model and its parameters. Each pair is stored
as one signed :class:`~stratacache.llm.records.Record` (route ``langchain``) in any tier or
:class:`~stratacache.tiers.TierChain`, so the same memory, SQLite and Redis tiers the proxy uses
hold it, with the same guarantees: records are verified on every read (a tampered or foreign one is
a miss, and is deleted), entries carry a namespace, tags and a TTL, and
:meth:`StrataCache.from_settings` opens exactly the store and key a ``strata serve`` deployment
uses.

The generations are stored as LangChain's own JSON serialisation (``dumpd``; never pickle) and
read back with ``load`` limited to ``langchain_core``'s classes. The key is a SHA-256 over
``llm_string``, the prompt and ``version``, under ``namespace`` (``langchain`` by default), and
:meth:`~StrataCache.clear` removes that namespace only, so a cache sharing a store with the proxy
never empties the proxy's entries.

Sync and async. The tiers are asynchronous, and a Redis client belongs to the event loop it was
first used on, so every tier call, from ``lookup`` as from ``alookup``, runs on one private event
loop in a background thread (started on first use, stopped by :meth:`~StrataCache.close`); the
async methods await it without blocking the caller's loop. One coroutine implements each
operation; the sync and async methods only choose how to wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import threading
import time
import warnings
import weakref
from collections.abc import Coroutine, Iterable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

from stratacache.errors import (
    ConfigError,
    MissingExtraError,
    RecordError,
    RequestError,
    TierError,
)
from stratacache.llm.keys import canonical_json, validate_namespace
from stratacache.llm.records import HmacSigner, Record, RecordCodec
from stratacache.tiers.base import Clock, Tier, TierEntry
from stratacache.tiers.chain import TierChain

try:
    from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
    from langchain_core.load import dumpd, load
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("langchain_core", "langchain") from exc

if TYPE_CHECKING:
    from stratacache.config import Settings

__all__ = ["ROUTE", "StrataCache"]

ROUTE = "langchain"
"""The ``route`` of the records this cache writes."""

_SCHEME = "stratacache.langchain.v1"
_T = TypeVar("_T")


class _LoopThread:
    """One event loop in a daemon thread, for the tier calls (see the module doc)."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="stratacache-langchain", daemon=True
        )
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, _T]) -> Future[_T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def stop(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


class StrataCache(BaseCache):
    """A LangChain LLM cache over stratacache tiers, with signed records.

    :param tiers: where entries live: a tier or a :class:`~stratacache.tiers.TierChain`
        (default: an in-process :class:`~stratacache.tiers.MemoryTier` of 10,000 entries).
    :param key: the 32-byte key records are signed with; every process sharing a durable or
        Redis tier must use the same one (default: a random key, fine for an in-process cache).
    :param namespace: the namespace of the entries (what :meth:`clear` removes).
    :param ttl: seconds an entry stays fresh (``None``: until evicted or invalidated).
    :param tags: invalidation tags on every entry (``DELETE /admin/tags/{tag}`` removes them).
    :param version: mixed into every key: change it (a new prompt version) to stop matching
        older entries without flushing them.
    :param clock: wall-clock Unix seconds (tests pass a fake).
    :raises ConfigError: a bad key, namespace, TTL or tag.

    Tier outages are not the caller's problem: a lookup that fails is a miss and an update that
    fails is dropped (LangChain then calls the model, as without a cache).
    """

    def __init__(
        self,
        tiers: Tier | None = None,
        *,
        key: bytes | None = None,
        namespace: str = "langchain",
        ttl: float | None = None,
        tags: Iterable[str] = (),
        version: str = "",
        clock: Clock = time.time,
    ) -> None:
        import secrets

        if key is None:
            key = secrets.token_bytes(32)
        if not isinstance(key, bytes) or len(key) != 32:
            raise ConfigError("the signing key must be 32 bytes")
        if ttl is not None and (
            not isinstance(ttl, int | float)
            or isinstance(ttl, bool)
            or not math.isfinite(ttl)
            or ttl <= 0
        ):
            raise ConfigError(f"ttl must be a number of seconds > 0 or None, got {ttl!r}")
        tag_set = frozenset(tags)
        if not all(isinstance(tag, str) and tag for tag in tag_set):
            raise ConfigError("tags must be non-empty strings")
        if not isinstance(version, str):
            raise ConfigError("version must be a string")
        try:
            self._namespace = validate_namespace(namespace)
        except RequestError as exc:
            raise ConfigError(str(exc)) from None
        if tiers is None:
            from stratacache.tiers.memory import MemoryTier

            tiers = MemoryTier(max_entries=10_000, clock=clock)
        self._chain = tiers if isinstance(tiers, TierChain) else TierChain([tiers], clock=clock)
        self._codec = RecordCodec(HmacSigner(key))
        self._ttl = ttl
        self._tags = tag_set
        self._version = version
        self._clock = clock
        self._lock = threading.Lock()
        self._runner: _LoopThread | None = None
        self._finalizer: weakref.finalize[Any, StrataCache] | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        namespace: str = "langchain",
        ttl: float | None = None,
        tags: Iterable[str] = (),
        version: str = "",
        clock: Clock = time.time,
    ) -> StrataCache:
        """The cache on the store and signing key of a ``strata serve`` deployment's settings.

        Only the HMAC signing of the settings is supported here (``signing = "hmac"``, the
        default); the key file is created if it does not exist.
        """
        from stratacache.llm.records import load_or_create_key
        from stratacache.tiers.factory import build_chain

        if settings.signing != "hmac":
            raise ConfigError("StrataCache signs with HMAC; the settings name another algorithm")
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        key = load_or_create_key(settings.key_file)
        return cls(
            build_chain(settings, clock=clock),
            key=key,
            namespace=namespace,
            ttl=ttl,
            tags=tags,
            version=version or settings.key_version,
            clock=clock,
        )

    # --- the BaseCache interface -------------------------------------------------------------------

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """The generations cached for ``prompt`` under ``llm_string``, or ``None``."""
        return self._wait(self._lookup(prompt, llm_string))

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Cache ``return_val`` for ``prompt`` under ``llm_string``."""
        self._wait(self._update(prompt, llm_string, return_val))

    def clear(self, **kwargs: Any) -> None:
        """Remove every entry of this cache's namespace (other namespaces are left alone)."""
        self._wait(self._clear())

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """:meth:`lookup`, without blocking the event loop."""
        return await self._await(self._lookup(prompt, llm_string))

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """:meth:`update`, without blocking the event loop."""
        await self._await(self._update(prompt, llm_string, return_val))

    async def aclear(self, **kwargs: Any) -> None:
        """:meth:`clear`, without blocking the event loop."""
        await self._await(self._clear())

    # --- lifecycle ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the tiers and stop the background loop (idempotent)."""
        with self._lock:
            runner, self._runner = self._runner, None
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None
        if runner is not None:
            with contextlib.suppress(TierError):
                runner.submit(self._chain.close()).result()
            runner.stop()

    async def aclose(self) -> None:
        """:meth:`close`, without blocking the event loop."""
        await asyncio.to_thread(self.close)

    def key_for(self, prompt: str, llm_string: str) -> str:
        """The storage key of ``(prompt, llm_string)`` in the tiers."""
        digest = hashlib.sha256(
            canonical_json(
                {
                    "scheme": _SCHEME,
                    "version": self._version,
                    "llm": llm_string,
                    "prompt": prompt,
                }
            )
        ).hexdigest()
        return f"{self._namespace}/{ROUTE}/{digest}"

    # --- one implementation of each operation ------------------------------------------------------

    async def _lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        storage = self.key_for(prompt, llm_string)
        try:
            found = await self._chain.lookup(storage)
        except TierError:
            return None
        if found is None:
            return None
        try:
            record = self._codec.decode(found[0].value, expected_key=storage)
            if record.route != ROUTE or record.fingerprint != storage.rsplit("/", 1)[1]:
                raise RecordError("the record answers another request")
            generations = _generations(record.body or b"")
        except (RecordError, ValueError, TypeError, KeyError):
            with contextlib.suppress(TierError):
                await self._chain.delete(storage)
            return None
        if record.expired(self._clock()):
            return None
        return generations

    async def _update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        import json

        storage = self.key_for(prompt, llm_string)
        body = json.dumps([dumpd(g) for g in return_val], ensure_ascii=False).encode("utf-8")
        now = self._clock()
        expires_at = None if self._ttl is None else now + self._ttl
        record = Record(
            key=storage,
            fingerprint=storage.rsplit("/", 1)[1],
            route=ROUTE,
            model=_model_name(llm_string),
            created_at=now,
            expires_at=expires_at,
            namespace=self._namespace,
            tags=self._tags,
            body=body,
        )
        entry = TierEntry(
            self._codec.encode(record),
            expires_at=expires_at,
            tags=self._tags,
            namespace=self._namespace,
        )
        with contextlib.suppress(TierError):  # uncached is still correct
            await self._chain.set(storage, entry)

    async def _clear(self) -> None:
        await self._chain.delete_namespace(self._namespace)

    # --- waiting -----------------------------------------------------------------------------------

    def _submit(self, coro: Coroutine[Any, Any, _T]) -> Future[_T]:
        with self._lock:
            if self._runner is None:
                self._runner = _LoopThread()
                self._finalizer = weakref.finalize(self, self._runner.stop)
            return self._runner.submit(coro)

    def _wait(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return self._submit(coro).result()

    async def _await(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return await asyncio.wrap_future(self._submit(coro))


def _generations(body: bytes) -> list[Any]:
    import json

    from langchain_core.outputs import Generation

    raw = json.loads(body)
    if not isinstance(raw, list):
        raise ValueError("stored generations are not a list")
    with warnings.catch_warnings():
        # ``load`` is marked beta; its output is checked below either way.
        warnings.simplefilter("ignore")
        out = [load(item, allowed_objects="core") for item in raw]
    if not all(isinstance(g, Generation) for g in out):
        raise ValueError("stored generations are not Generation objects")
    return out


def _model_name(llm_string: str) -> str:
    """The model named in an ``llm_string`` if it is easy to find (for the record only)."""
    for marker in ("'model_name', '", "'model', '", '"model_name": "', '"model": "'):
        start = llm_string.find(marker)
        if start >= 0:
            start += len(marker)
            end = llm_string.find(marker[-1], start)
            if end > start:
                return llm_string[start:end][:200]
    return ""
