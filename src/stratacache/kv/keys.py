"""Block keys: a SHA-256 chain over packed token ids.

The key of block ``i`` is ``SHA-256(tag, key of block i-1, adapter, tokens of block i)``, and the
chain starts from a *seed* digest over everything else that decides what the attention state of a
token looks like::

    seed     = SHA-256("stratacache/kv/seed/v1", model, tokenizer, dtype, layout, block size, tenant)
    block[0] = SHA-256("stratacache/kv/block/v1", seed,       adapter, tokens[0:B])
    block[i] = SHA-256("stratacache/kv/block/v1", block[i-1], adapter, tokens[iB:(i+1)B])

So a block's key depends on every token before it (change token 5 and every block from the one
holding it onwards changes, the ones before do not), a different model, tokenizer, dtype, KV
layout, block size or tenant changes every key, and so does a different LoRA/adapter id, which
enters every block (as vLLM's "extra keys" do) rather than the seed, so a seed can be shared by
all the adapters served on top of one base model.

Why not ``hash()``: it is salted per process, so a key from disk or Redis would never match again.
Why not pickle: its bytes are not a stable encoding of the ids. Token ids are packed as
little-endian unsigned 32-bit integers, strings as UTF-8 with a length prefix, so no two different
inputs encode to the same bytes (no ``"ab" + "c" == "a" + "bc"`` ambiguity).

Only full blocks get keys: a partial block's state would change as tokens are appended, and storing
it would make a lookup claim tokens it cannot supply.

>>> seed = ChainSeed(model="m", tokenizer="t", dtype="float32", layout="l", block_size=4)
>>> keys = block_keys(seed, [1, 2, 3, 4, 5, 6, 7, 8, 9])
>>> len(keys)  # two full blocks; the ninth token is a partial block
2
>>> block_keys(seed, [1, 2, 3, 4, 5, 6, 7, 0])[0] == keys[0]  # same first block, same key
True
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from stratacache.errors import ConfigError, RequestError
from stratacache.kv.base import BlockKey

__all__ = ["MAX_TOKEN_ID", "ChainSeed", "block_keys", "chain_block"]

MAX_TOKEN_ID = 2**32 - 1
"""The largest token id a key can encode (ids are packed as unsigned 32-bit integers)."""

_SEED_TAG = b"stratacache/kv/seed/v1"
_BLOCK_TAG = b"stratacache/kv/block/v1"
_U32 = struct.Struct("<I")


def _field(text: str, name: str) -> bytes:
    if not isinstance(text, str):
        raise ConfigError(f"{name} must be a str, not {type(text).__name__}")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{name} is not encodable as UTF-8: {text!r}") from None
    return _U32.pack(len(data)) + data


@dataclass(frozen=True, slots=True)
class ChainSeed:
    """Everything besides the tokens that decides a block's content; the start of every chain.

    :raises ConfigError: a field that is not a str, an empty ``model`` or ``dtype`` or ``layout``,
        or a ``block_size`` that is not an int >= 1.
    """

    model: str
    """The model's identity: name and revision, or a fingerprint of its weights."""
    tokenizer: str
    """The tokenizer's identity (name and revision): the same text may tokenise differently."""
    dtype: str
    """The KV tensors' dtype, e.g. ``float16``."""
    layout: str
    """The KV layout: cache type, axis order, layers, KV heads, head size."""
    block_size: int
    """Tokens per block."""
    tenant: str = ""
    """A salt that keeps one tenant's blocks invisible to another; empty for a shared cache."""
    digest: bytes = field(init=False, repr=False, compare=False)
    """The seed digest (computed)."""

    def __post_init__(self) -> None:
        for name in ("model", "dtype", "layout"):
            if not getattr(self, name):
                raise ConfigError(f"ChainSeed.{name} must not be empty")
        size = self.block_size
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_TOKEN_ID:
            raise ConfigError(f"block_size must be an int >= 1, not {size!r}")
        h = hashlib.sha256(_SEED_TAG)
        h.update(_field(self.model, "model"))
        h.update(_field(self.tokenizer, "tokenizer"))
        h.update(_field(self.dtype, "dtype"))
        h.update(_field(self.layout, "layout"))
        h.update(_U32.pack(size))
        h.update(_field(self.tenant, "tenant"))
        object.__setattr__(self, "digest", h.digest())


def _pack_tokens(tokens: Sequence[int]) -> bytes:
    try:
        return struct.pack(f"<{len(tokens)}I", *tokens)
    except struct.error:
        bad = next(
            (t for t in tokens if isinstance(t, bool) or not isinstance(t, int) or t < 0),
            None,
        )
        raise RequestError(
            f"token ids must be ints in [0, {MAX_TOKEN_ID}]"
            + (f", not {bad!r}" if bad is not None else "")
        ) from None


def chain_block(parent: bytes, tokens: Sequence[int], adapter: str = "") -> BlockKey:
    """The key of the block holding ``tokens`` after the block (or seed) whose digest is ``parent``.

    :raises RequestError: a token id that is not an int in ``[0, MAX_TOKEN_ID]``.
    """
    h = hashlib.sha256(_BLOCK_TAG)
    h.update(parent)
    h.update(_field(adapter, "adapter"))
    h.update(_pack_tokens(tokens))
    return BlockKey(h.digest())


def block_keys(seed: ChainSeed, tokens: Sequence[int], adapter: str = "") -> list[BlockKey]:
    """The keys of every *full* block of ``tokens``, in order.

    :param seed: the chain's seed (model, tokenizer, dtype, layout, block size, tenant).
    :param tokens: the token ids of the whole prompt.
    :param adapter: the LoRA/adapter id the request runs with; ``""`` for the base model.
    :raises RequestError: a token id that is not an int in ``[0, MAX_TOKEN_ID]``.
    """
    if isinstance(tokens, str | bytes):
        raise RequestError("tokens must be a sequence of token ids, not text")
    size = seed.block_size
    adapter_field = _field(adapter, "adapter")
    keys: list[BlockKey] = []
    parent = seed.digest
    for start in range(0, len(tokens) - size + 1, size):
        h = hashlib.sha256(_BLOCK_TAG)
        h.update(parent)
        h.update(adapter_field)
        h.update(_pack_tokens(tokens[start : start + size]))
        parent = h.digest()
        keys.append(BlockKey(parent))
    return keys
