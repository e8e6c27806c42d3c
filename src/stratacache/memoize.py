"""``@memoize``: cache a plain function's results in any tier, with a TTL, tags and a namespace.

>>> from stratacache.tiers import MemoryTier
>>> calls = []
>>> @memoize(MemoryTier(), ttl=60, tags=("prices",))
... def price(sku: str) -> float:
...     calls.append(sku)
...     return 9.5
>>> price("a"), price("a"), calls
(9.5, 9.5, ['a'])

The key is a SHA-256 over the function's module and qualified name, ``version``, and the canonical
JSON of its arguments (keyword order does not matter), so only JSON-encodable arguments are
accepted; results are stored as JSON too (never pickle), so a cached call returns what
``json.loads`` makes of the result: lists for tuples, and so on. Bad arguments or results raise
:class:`~stratacache.errors.ConfigError` and nothing is stored.

Coroutine functions are awaited and may use any tier, Redis included. Plain functions drive the
tier's coroutines to completion without an event loop, which only works for tiers that never
suspend (the in-process :class:`~stratacache.tiers.MemoryTier` and
:class:`~stratacache.tiers.SQLiteTier`); a tier that does is refused with a ``ConfigError`` at
the first call. Tier outages (:class:`~stratacache.errors.TierUnavailableError`) are not the
caller's problem: the function is called as if uncached.

The wrapper has ``invalidate(*args, **kwargs)`` (forget one call) and ``key(*args, **kwargs)``.
Invalidating a tag or namespace is the tier's own ``delete_tag``/``delete_namespace``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, ParamSpec, TypeVar, cast

from stratacache.errors import ConfigError, TierUnavailableError
from stratacache.tiers.base import Clock, Tier, TierEntry, driven_by_hand

__all__ = ["memoize"]

_P = ParamSpec("_P")
_R = TypeVar("_R")
_T = TypeVar("_T")


def _drive(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine that never suspends to its result, without an event loop."""
    token = driven_by_hand.set(True)  # even inside a running loop: see driven_by_hand
    try:
        coro.send(None)
    except StopIteration as stop:
        return cast("_T", stop.value)
    finally:
        driven_by_hand.reset(token)
    coro.close()
    raise ConfigError(
        "a plain (non-async) function can only be memoized on an in-process tier "
        "(MemoryTier, SQLiteTier); make it async to use this one"
    )


def _encode(what: str, value: Any) -> bytes:
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"memoize needs JSON-encodable {what}: {exc}") from None
    return text.encode("utf-8")


def memoize(
    tier: Tier,
    *,
    ttl: float | None = None,
    tags: Iterable[str] = (),
    namespace: str = "memoize",
    version: str = "",
    clock: Clock = time.time,
) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Cache the decorated function's results in ``tier``.

    :param tier: where results live (any :class:`~stratacache.tiers.Tier`; see the module doc for
        plain functions).
    :param ttl: seconds a result stays fresh (``None``: until evicted or invalidated).
    :param tags: invalidation tags on every stored result (``tier.delete_tag(tag)`` forgets them).
    :param namespace: the namespace of the stored results.
    :param version: mixed into the key; change it when the function's meaning changes.
    :param clock: wall-clock Unix seconds (tests pass a fake).
    :raises ConfigError: a bad ``ttl``, tag or namespace.
    """
    if ttl is not None and (
        not isinstance(ttl, int | float)
        or isinstance(ttl, bool)
        or not math.isfinite(ttl)
        or ttl <= 0
    ):
        raise ConfigError(f"ttl must be a number of seconds > 0 or None, got {ttl!r}")
    tag_set = frozenset(tags)
    if not all(isinstance(tag, str) for tag in tag_set) or not isinstance(namespace, str):
        raise ConfigError("tags and namespace must be strings")

    def decorate(func: Callable[_P, _R]) -> Callable[_P, _R]:
        prefix = f"{func.__module__}.{func.__qualname__}\x00{version}\x00"
        signature = inspect.signature(func)

        def key(*args: Any, **kwargs: Any) -> str:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            digest = hashlib.sha256(
                prefix.encode("utf-8") + _encode("arguments", bound.arguments)
            ).hexdigest()
            return f"memo:{digest}"

        async def lookup(storage_key: str) -> tuple[bool, Any]:
            try:
                entry = await tier.get(storage_key)
            except TierUnavailableError:
                return False, None
            if entry is None:
                return False, None
            return True, json.loads(entry.value)

        async def store(storage_key: str, result: Any) -> None:
            value = _encode("results", result)
            expires_at = None if ttl is None else clock() + ttl
            entry = TierEntry(value, expires_at, tag_set, namespace)
            with contextlib.suppress(TierUnavailableError):  # uncached is still correct
                await tier.set(storage_key, entry)

        if inspect.iscoroutinefunction(func):
            async_func = cast("Callable[..., Awaitable[Any]]", func)

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                storage_key = key(*args, **kwargs)
                found, value = await lookup(storage_key)
                if found:
                    return value
                result = await async_func(*args, **kwargs)
                await store(storage_key, result)
                return result

            async def async_invalidate(*args: Any, **kwargs: Any) -> bool:
                return await tier.delete(key(*args, **kwargs))

            wrapper: Any = async_wrapper
            wrapper.invalidate = async_invalidate
        else:

            @functools.wraps(func)
            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                storage_key = key(*args, **kwargs)
                found, value = _drive(lookup(storage_key))
                if found:
                    return value
                result = func(*args, **kwargs)
                _drive(store(storage_key, result))
                return result

            def sync_invalidate(*args: Any, **kwargs: Any) -> bool:
                return _drive(tier.delete(key(*args, **kwargs)))

            wrapper = sync_wrapper
            wrapper.invalidate = sync_invalidate
        wrapper.key = key
        return cast("Callable[_P, _R]", wrapper)

    return decorate
