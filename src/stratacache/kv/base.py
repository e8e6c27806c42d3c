"""The KVStore protocol: one seam for every place attention key/value blocks can live.

A *block* is the attention state of ``block_size`` consecutive tokens: for every layer of the model,
a key tensor and a value tensor of shape ``(kv_heads, block_size, head_dim)`` (the layout
Hugging Face's ``DynamicCache`` uses, without the batch dimension). A block is addressed by a
:class:`BlockKey`, a SHA-256 digest that :mod:`stratacache.kv.keys` chains over the token prefix,
so two requests get the same key for a block exactly when everything that decides its content
(model, tokenizer, dtype, layout, adapter, tenant and every token up to its end) is the same. The
content never changes for a key; that is why a store may keep whichever copy it saw first and why
lookups ask only "how many *leading* blocks are here?": a block is useless without its predecessors.

The methods are synchronous, unlike :class:`stratacache.tiers.Tier`: they are called from inside a
model's forward pass, which runs on a thread that holds no event loop, and a block is fetched
between two tensor operations that could not await it anyway. The Redis store does blocking,
pipelined I/O.

Every implementation must pass ``tests/kv/contract.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from stratacache.errors import InvalidEntryError

if TYPE_CHECKING:
    import torch

__all__ = ["DIGEST_SIZE", "BlockKey", "KVBlock", "KVStats", "KVStore", "PinnableKVStore"]

DIGEST_SIZE = 32
"""Bytes in a :class:`BlockKey` digest (SHA-256)."""


@dataclass(frozen=True, slots=True, order=True)
class BlockKey:
    """The address of one KV block: the SHA-256 chain digest of its whole token prefix.

    >>> key = BlockKey(bytes(range(32)))
    >>> BlockKey.from_hex(key.hex()) == key
    True
    """

    digest: bytes
    """The 32-byte digest; equal digests mean equal block contents."""

    def __post_init__(self) -> None:
        if type(self.digest) is not bytes or len(self.digest) != DIGEST_SIZE:
            raise InvalidEntryError(
                f"a block key is {DIGEST_SIZE} bytes, not {type(self.digest).__name__} "
                f"of length {len(self.digest) if isinstance(self.digest, bytes) else '?'}"
            )

    def hex(self) -> str:
        """The digest as 64 lowercase hex digits (file names, Redis keys, logs)."""
        return self.digest.hex()

    @classmethod
    def from_hex(cls, text: str) -> BlockKey:
        """Parse what :meth:`hex` wrote; :class:`InvalidEntryError` if it is not 64 hex digits."""
        try:
            digest = bytes.fromhex(text)
        except (TypeError, ValueError):
            raise InvalidEntryError(f"not a hex block key: {text!r}") from None
        return cls(digest)

    def __repr__(self) -> str:
        return f"BlockKey({self.digest.hex()[:16]}…)"


@dataclass(frozen=True, slots=True, eq=False)
class KVBlock:
    """The key and value tensors of one block, one pair per layer, on the host.

    Each tensor is ``(kv_heads, tokens, head_dim)`` and owns its storage: callers copy slices of a
    larger cache (``.clone()``) before building a block, because a view would keep the whole cache
    alive in memory and a serialiser would write all of it. Blocks compare by identity; compare
    their tensors to compare contents.

    :raises InvalidEntryError: no layers, a key/value count mismatch, something that is not a 3-d
        tensor, tensors that disagree on the token count or dtype, or a tensor not on the CPU.
    """

    keys: tuple[torch.Tensor, ...]
    """Per layer, the key states."""
    values: tuple[torch.Tensor, ...]
    """Per layer, the value states."""

    def __post_init__(self) -> None:
        if not isinstance(self.keys, tuple) or not isinstance(self.values, tuple):
            raise InvalidEntryError("a KV block's keys and values are tuples of tensors")
        if not self.keys or len(self.keys) != len(self.values):
            raise InvalidEntryError(
                f"a KV block needs one key and one value tensor per layer, got "
                f"{len(self.keys)} keys and {len(self.values)} values"
            )
        first = self.keys[0]
        for tensor in (*self.keys, *self.values):
            # Checked by duck type so that this module does not import torch.
            shape = getattr(tensor, "shape", None)
            if shape is None or not hasattr(tensor, "element_size") or len(shape) != 3:
                raise InvalidEntryError("every tensor of a KV block is 3-d: (heads, tokens, dim)")
            if shape[1] != first.shape[1] or tensor.dtype != first.dtype:
                raise InvalidEntryError("the tensors of a KV block disagree on tokens or dtype")
            if tensor.device.type != "cpu":
                raise InvalidEntryError("KV blocks live on the host: move tensors to the CPU")

    @property
    def layers(self) -> int:
        """How many layers the block covers."""
        return len(self.keys)

    @property
    def tokens(self) -> int:
        """How many tokens the block covers (the block size)."""
        return int(self.keys[0].shape[1])

    @property
    def nbytes(self) -> int:
        """The size of the tensor data in bytes."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


@dataclass(frozen=True, slots=True)
class KVStats:
    """Counters of one store since it was created."""

    loaded_blocks: int = 0
    """Blocks returned by :meth:`KVStore.load`."""
    loaded_bytes: int = 0
    stored_blocks: int = 0
    """Blocks written by :meth:`KVStore.store` (not counting ones already present)."""
    stored_bytes: int = 0
    declined_blocks: int = 0
    """Blocks :meth:`KVStore.store` did not keep: refused by admission, or not seen often enough."""
    corrupt_blocks: int = 0
    """Stored blocks found unreadable or failing verification, dropped instead of loaded."""


@runtime_checkable
class KVStore(Protocol):
    """A :class:`BlockKey` -> :class:`KVBlock` store: host memory, local disk, Redis, or tiers of them.

    After :meth:`close` every method raises :class:`~stratacache.errors.TierError`; closing twice
    is allowed. A backend failure raises :class:`~stratacache.errors.TierUnavailableError`.
    """

    name: str
    """A short label for metrics and reports: ``memory``, ``disk``, ``redis``, ``tiered``."""

    def lookup(self, keys: Sequence[BlockKey]) -> int:
        """How many leading ``keys`` are stored: ``n`` means ``keys[:n]`` are all here, ``keys[n]`` is not.

        A lookup has no effect on what is kept (it is not an access).
        """
        ...

    def load(self, keys: Sequence[BlockKey]) -> list[KVBlock]:
        """The blocks for the longest loadable run of leading ``keys``, in order.

        The run ends at the first key that is absent, or whose stored copy is unreadable or fails
        verification; such a copy is dropped and counted in :attr:`KVStats.corrupt_blocks`, never
        returned. The result may be shorter than a preceding :meth:`lookup` promised: another
        writer may have evicted a block in between. Loading counts as an access.
        """
        ...

    def store(self, blocks: Mapping[BlockKey, KVBlock]) -> int:
        """Offer ``blocks``; return how many of them the store now holds.

        A key already held is kept as it is (its content is the same by construction). The store
        may decline blocks (admission, a size budget, too few sightings).

        :raises InvalidEntryError: a key that is not a :class:`BlockKey` or a value that is not a
            :class:`KVBlock`; raised before anything is written.
        """
        ...

    def delete(self, keys: Sequence[BlockKey]) -> int:
        """Remove ``keys``; return how many were present."""
        ...

    def clear(self) -> None:
        """Remove every block this store holds."""
        ...

    def stats(self) -> KVStats:
        """The counters since the store was created."""
        ...

    def close(self) -> None:
        """Release files and connections. The store is unusable afterwards."""
        ...


@runtime_checkable
class PinnableKVStore(KVStore, Protocol):
    """A store that can protect blocks from eviction while a load is reading them."""

    def pin(self, keys: Sequence[BlockKey]) -> list[BlockKey]:
        """Protect the present ``keys`` from eviction; return those that were pinned.

        Pins nest: a key pinned twice needs two :meth:`unpin` calls. Explicit ``delete`` and
        ``clear`` still remove a pinned block.
        """
        ...

    def unpin(self, keys: Sequence[BlockKey]) -> None:
        """Release pins taken by :meth:`pin` (pass exactly what it returned)."""
        ...
