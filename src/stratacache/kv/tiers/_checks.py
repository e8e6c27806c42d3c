"""Argument checks every KV store runs before it touches anything, so bad input changes nothing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from stratacache.errors import InvalidEntryError, TierError
from stratacache.kv.base import BlockKey, KVBlock

__all__ = ["check_blocks", "check_keys", "check_open"]


def check_keys(keys: object) -> Sequence[BlockKey]:
    """``keys`` itself, once every item is known to be a :class:`BlockKey`."""
    if isinstance(keys, str | bytes) or not isinstance(keys, Sequence):
        raise InvalidEntryError("block keys come as a sequence of BlockKey")
    for key in keys:
        if not isinstance(key, BlockKey):
            raise InvalidEntryError(f"not a BlockKey: {type(key).__name__}")
    return keys


def check_blocks(blocks: object) -> list[tuple[BlockKey, KVBlock]]:
    """The items of ``blocks``, once every key is a :class:`BlockKey` and every value a :class:`KVBlock`."""
    if not isinstance(blocks, Mapping):
        raise InvalidEntryError("blocks come as a mapping of BlockKey to KVBlock")
    items = list(blocks.items())
    for key, block in items:
        if not isinstance(key, BlockKey):
            raise InvalidEntryError(f"not a BlockKey: {type(key).__name__}")
        if not isinstance(block, KVBlock):
            raise InvalidEntryError(f"not a KVBlock: {type(block).__name__}")
    return items


def check_open(closed: bool, name: str) -> None:
    """Raise :class:`TierError` when the store called ``name`` has been closed."""
    if closed:
        raise TierError(f"the {name} KV store is closed")
