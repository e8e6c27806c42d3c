"""The exceptions stratacache raises, all under one root.

Every error the package raises on purpose derives from :class:`StrataError`, so callers can catch the
whole family with one ``except``. Where a standard exception already names the category, the error also
derives from it (an invalid TTL is a ``ValueError``), so code written against plain Python keeps working.
Foreign errors (sqlite3, httpx, redis-py, the RESP wire) are translated once, at the boundary that meets
them, into the classes below; they never leak out of a public call untranslated.

The tree::

    StrataError
    ├── ConfigError (ValueError)             a setting or constructor argument is invalid
    ├── MissingExtraError (ImportError)      an optional dependency is not installed
    ├── EngineError                          the in-process store (stratacache.engine)
    │   ├── InvalidKeyError (TypeError)      a key that is not str, bytes or int
    │   ├── InvalidTTLError (ValueError)     a TTL that is not a finite number of seconds > 0
    │   ├── WeigherError                     the weigher raised or returned a bad weight
    │   └── NotAnIntegerError (TypeError)    incr() on a value that is not an int
    ├── TierError                            a storage tier failed (sqlite, redis)
    │   ├── TierUnavailableError             the tier is down or timed out; callers fall back
    │   └── InvalidEntryError (ValueError)   a key or entry no tier can store (bad type or expiry)
    ├── RecordError                          a stored record cannot be trusted
    │   ├── RecordFormatError (ValueError)   it does not decode
    │   └── SignatureError                   it does not verify (tampered, or signed by another key)
    ├── RequestError (ValueError)            a client request the cache cannot accept
    └── UpstreamError                        the model provider failed
        └── UpstreamTimeoutError             ... by not answering in time
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "EngineError",
    "InvalidEntryError",
    "InvalidKeyError",
    "InvalidTTLError",
    "MissingExtraError",
    "NotAnIntegerError",
    "RecordError",
    "RecordFormatError",
    "RequestError",
    "SignatureError",
    "StrataError",
    "TierError",
    "TierUnavailableError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "WeigherError",
]


class StrataError(Exception):
    """The root of every error stratacache raises on purpose."""


class ConfigError(StrataError, ValueError):
    """A setting or constructor argument is invalid."""


class MissingExtraError(StrataError, ImportError):
    """An optional dependency is missing; the message names the extra that provides it."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(
            f"{module!r} is not installed; install it with: pip install 'stratacache[{extra}]'"
        )
        self.module = module
        self.extra = extra


class EngineError(StrataError):
    """An error from the in-process store."""


class InvalidKeyError(EngineError, TypeError):
    """A key that is not ``str``, ``bytes`` or ``int``."""


class InvalidTTLError(EngineError, ValueError):
    """A TTL that is not a finite number of seconds greater than zero."""


class WeigherError(EngineError):
    """The weigher raised, or returned something other than a non-negative int."""


class NotAnIntegerError(EngineError, TypeError):
    """``incr()`` on a key whose value is not an ``int``."""


class TierError(StrataError):
    """A storage tier failed."""


class TierUnavailableError(TierError):
    """The tier is down or too slow; the caller should serve from elsewhere."""


class InvalidEntryError(TierError, ValueError):
    """A key or :class:`~stratacache.tiers.TierEntry` that no tier can store.

    The key is not a ``str``, the value is not ``bytes``, a tag or the namespace is not a ``str``,
    some text is not encodable as UTF-8 (a lone surrogate), or ``expires_at`` is not a finite
    number. It is raised before anything is written, so the tier is unchanged.
    """


class RecordError(StrataError):
    """A stored record cannot be trusted; the cache treats it as a miss."""


class RecordFormatError(RecordError, ValueError):
    """The record's bytes do not decode into a record."""


class SignatureError(RecordError):
    """The record's signature does not verify."""


class RequestError(StrataError, ValueError):
    """A client request that the cache cannot accept (malformed, oversized, contradictory)."""


class UpstreamError(StrataError):
    """The model provider failed: a transport error or an error status."""


class UpstreamTimeoutError(UpstreamError):
    """The model provider did not answer in time."""
