"""Choosing a vector index by URL, and the input checks the shared backends have in common.

:func:`open_index` is the one place a setting such as ``semantic.index`` becomes an index:

* ``memory`` — the in-process index (:func:`~stratacache.semantic.default_index`), one per process;
* ``redis://…``, ``rediss://…``, ``unix://…`` — :class:`~stratacache.semantic.redis_vectors.RedisVectorIndex`
  on a Redis 8 server (vector sets), shared by every instance pointed at it;
* ``postgresql://…`` (or ``postgres://…``) — :class:`~stratacache.semantic.pgvector.PgVectorIndex`,
  a table with an HNSW index in PostgreSQL + pgvector, shared likewise.

The shared indexes check their input exactly as the in-process ones do (the contract suite runs
against all of them), so the checks live here once: :func:`checked_entry` and :func:`unit_vector`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from stratacache.errors import ConfigError, MissingExtraError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from stratacache.semantic.base import VectorIndex

    Vectors = npt.NDArray[np.float32]

__all__ = [
    "POSTGRES_SCHEMES",
    "REDIS_SCHEMES",
    "checked_dimension",
    "checked_entry",
    "checked_k",
    "checked_name",
    "numpy_module",
    "open_index",
    "unit_vector",
]

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
"""URL schemes :func:`open_index` gives to the Redis vector-set index."""

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
"""URL schemes :func:`open_index` gives to the pgvector index."""


def open_index(
    url: str,
    dimension: int,
    *,
    clock: Callable[[], float] = time.time,
    namespace: str = "strata",
) -> VectorIndex:
    """The index that ``url`` names: ``memory``, a Redis URL or a PostgreSQL URL.

    :param url: ``memory``, ``redis://``/``rediss://``/``unix://`` or ``postgresql://``.
    :param dimension: the embedder's dimension; a shared index holding another raises.
    :param clock: wall-clock Unix seconds, compared with every entry's expiry.
    :param namespace: what instances share: the Redis key prefix (``{namespace}:vec:``) or the
        PostgreSQL table name (``{namespace}_vectors``). Instances with the same URL and namespace
        see each other's entries.
    :raises ConfigError: an unknown scheme or a bad namespace.
    :raises MissingExtraError: the client library of the backend is not installed.
    :raises TierUnavailableError: a shared backend cannot be reached.
    """
    if not isinstance(url, str):
        raise ConfigError(f"the index URL must be a str, not {type(url).__name__}")
    if not isinstance(namespace, str) or not namespace.isidentifier() or not namespace.isascii():
        raise ConfigError(f"the index namespace must be an ASCII identifier, not {namespace!r}")
    if url == "memory":
        from stratacache.semantic.index import default_index

        return default_index(dimension, clock=clock)
    if url.startswith(REDIS_SCHEMES):
        from stratacache.semantic.redis_vectors import RedisVectorIndex

        return RedisVectorIndex(url, dimension, prefix=f"{namespace}:vec:", clock=clock)
    if url.startswith(POSTGRES_SCHEMES):
        from stratacache.semantic.pgvector import PgVectorIndex

        return PgVectorIndex(url, dimension, table=f"{namespace.lower()}_vectors", clock=clock)
    raise ConfigError(
        "the semantic index must be 'memory', a redis:// URL or a postgresql:// URL,"
        f" not {url.split('://', maxsplit=1)[0]!r}"
    )


def numpy_module() -> Any:
    """numpy, or :class:`MissingExtraError` naming the ``semantic`` extra."""
    try:
        import numpy
    except ImportError as exc:
        raise MissingExtraError("numpy", "semantic") from exc
    return numpy


def checked_entry(partition: object, id: object, text: object, expires_at: object) -> None:
    """Check :meth:`VectorIndex.add`'s arguments other than the vector.

    :raises ConfigError: an empty or non-str partition or id, text that is not a str, text that is
        not valid Unicode (a lone surrogate), or an expiry that is not a finite number or ``None``.
    """
    checked_name("partition", partition)
    checked_name("id", id)
    if not isinstance(text, str):
        raise ConfigError(f"text must be a str, not {type(text).__name__}")
    _encodable("text", text)
    if expires_at is not None and (
        isinstance(expires_at, bool)
        or not isinstance(expires_at, int | float)
        or not math.isfinite(expires_at)
    ):
        raise ConfigError(f"expires_at must be a finite number or None, not {expires_at!r}")


def checked_name(what: str, value: object) -> str:
    """``value`` when it is a non-empty, encodable str; else :class:`ConfigError`."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what} must be a non-empty str, not {value!r}")
    _encodable(what, value)
    return value


def checked_k(k: object) -> int:
    """``k`` when it is a positive int (not a bool); else :class:`ConfigError`."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive int, not {k!r}")
    return k


def unit_vector(vector: object, dimension: int) -> Vectors:
    """``vector`` as a contiguous little-endian float32 row of length one (zero stays zero).

    :raises ConfigError: not a vector, the wrong length, or a NaN or infinity in it.
    """
    np = numpy_module()
    try:
        array = np.asarray(vector, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"not a vector: {exc}") from None
    if array.shape[0] != dimension:
        raise ConfigError(f"expected a {dimension}-d vector, got {array.shape[0]}-d")
    if not np.isfinite(array).all():
        raise ConfigError("a vector holds NaN or an infinity")
    norm = float(np.linalg.norm(array))
    out = array / norm if norm > 0 else array.copy()
    return np.ascontiguousarray(out, dtype="<f4")  # type: ignore[no-any-return]


def checked_dimension(dimension: object) -> int:
    """``dimension`` when it is a positive int; else :class:`ConfigError`."""
    if isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 1:
        raise ConfigError(f"dimension must be a positive int, not {dimension!r}")
    return dimension


def _encodable(what: str, value: str) -> None:
    # Both servers store text as UTF-8; a lone surrogate would fail half-way through a write.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{what} is not valid Unicode text: {value!r}") from None
