"""Input checks shared by every tier, so they all reject the same keys and entries the same way.

Each tier calls :func:`check_key` on every key it is given and :func:`check_entry` before it
writes. A failed check raises :class:`~stratacache.errors.InvalidEntryError` before anything is
written, so the tier is left unchanged. The checks are what the type hints already say, enforced at
run time because a tier's input comes from configuration and HTTP headers as well as from typed
code, and a wrong type would otherwise fail differently in each backend (SQLite stores an ``int``
key happily, Redis turns it into text, the engine keeps it as an ``int``), so the same key would
mean different things.
"""

from __future__ import annotations

import math

from stratacache.errors import InvalidEntryError
from stratacache.tiers.base import TierEntry

__all__ = ["check_entry", "check_key"]


def _check_text(what: str, text: object) -> None:
    if not isinstance(text, str):
        raise InvalidEntryError(f"{what} must be a str, not {type(text).__name__}")
    if not text.isascii():
        # A lone surrogate cannot be written to SQLite or Redis; refuse it here, not halfway
        # through a write.
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidEntryError(f"{what} {text!r} is not encodable as UTF-8") from None


def _finite_number(number: object) -> bool:
    if isinstance(number, bool) or not isinstance(number, int | float):
        return False
    try:
        return math.isfinite(number)
    except OverflowError:  # an int beyond the range of a float
        return False


def check_key(key: object) -> None:
    """Raise :class:`~stratacache.errors.InvalidEntryError` unless ``key`` is a UTF-8 ``str``."""
    _check_text("a tier key", key)


def check_entry(entry: object) -> None:
    """Raise :class:`~stratacache.errors.InvalidEntryError` unless ``entry`` is a storable entry.

    The value must be ``bytes``, ``expires_at`` ``None`` or a finite number (a NaN would compare as
    "never expired" here and be stored as NULL, "no expiry", by SQLite), the tags a ``frozenset`` of
    ``str`` and the namespace a ``str``.
    """
    if not isinstance(entry, TierEntry):
        raise InvalidEntryError(f"a tier stores TierEntry objects, not {type(entry).__name__}")
    if not isinstance(entry.value, bytes):
        raise InvalidEntryError(f"an entry's value must be bytes, not {type(entry.value).__name__}")
    expires_at = entry.expires_at
    if expires_at is not None and not _finite_number(expires_at):
        raise InvalidEntryError(
            f"expires_at must be None or a finite number of Unix seconds, not {expires_at!r}"
        )
    if not isinstance(entry.tags, frozenset):
        raise InvalidEntryError(
            f"an entry's tags must be a frozenset, not {type(entry.tags).__name__}"
        )
    for tag in entry.tags:
        _check_text("a tag", tag)
    _check_text("a namespace", entry.namespace)
