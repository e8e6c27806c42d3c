"""The wire and file format of one KV block: safetensors, with its key and a digest in the metadata.

A block is written as a safetensors document (a little-endian u64 header length, a JSON header, the
raw tensor bytes) holding tensors ``k.0, v.0, k.1, v.1, …`` and this ``__metadata__``::

    format  "stratacache-kv/1"
    key     the block key, 64 hex digits
    layers  the layer count, decimal
    mac     "sha256" or "hmac-sha256"
    digest  hex digest over the tensor bytes in the order k.0, v.0, k.1, v.1, …

safetensors already refuses a file whose header does not cover the data exactly, so a truncated
file fails to parse. What it cannot see is a flipped byte inside the tensor data, or a whole valid
file stored under another block's name: the digest catches the first, the key in the metadata the
second. A plain SHA-256 detects accidents (a torn write, a bad disk, a half-copied cache
directory); against someone who can write to the cache directory or the Redis server, give the
codec a ``secret`` and the digest becomes an HMAC that they cannot recompute.

Reading a block never unpickles anything and never trusts a length without checking it against the
bytes actually present.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from stratacache.errors import (
    ConfigError,
    MissingExtraError,
    RecordFormatError,
    SignatureError,
)
from stratacache.kv.base import BlockKey, KVBlock

if TYPE_CHECKING:
    import torch

__all__ = ["FORMAT", "MAX_HEADER", "BlockCodec", "HeaderInfo"]

FORMAT: Final = "stratacache-kv/1"
"""The ``format`` value in every block's metadata; another value is not ours, or not this version."""

MAX_HEADER: Final = 16 * 1024 * 1024
"""The largest JSON header accepted, in bytes: bounds what a corrupt length prefix can make us read."""

_U64 = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class HeaderInfo:
    """What a block's header says, checked against the number of bytes the document really has."""

    key: BlockKey
    """The block key recorded in the metadata."""
    layers: int
    data_bytes: int
    """The size of the tensor data the header describes."""
    mac: str
    """How the digest was made: ``sha256`` or ``hmac-sha256``."""
    digest: str
    """The recorded hex digest of the tensor data."""


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingExtraError("safetensors", "kv") from exc
    return safetensors.torch


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    # A byte view of the tensor's own storage: no copy for the contiguous tensors blocks hold,
    # and it works for every dtype, bfloat16 included (numpy has no bfloat16).
    import torch

    flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
    return flat.numpy().data


class BlockCodec:
    """Encodes :class:`KVBlock` objects to safetensors bytes and decodes them with verification.

    :param secret: a key for HMAC-SHA256 digests (``None``: plain SHA-256). A codec with a secret
        rejects blocks written without it or with another one.
    :raises ConfigError: ``secret`` that is not ``bytes`` or is empty.
    """

    def __init__(self, secret: bytes | None = None) -> None:
        if secret is not None and (not isinstance(secret, bytes) or not secret):
            raise ConfigError("the block codec's secret must be non-empty bytes or None")
        self._secret = secret
        self._mac = "sha256" if secret is None else "hmac-sha256"

    def _hasher(self) -> Any:
        if self._secret is None:
            return hashlib.sha256()
        return hmac.new(self._secret, digestmod=hashlib.sha256)

    def _digest(self, block: KVBlock) -> str:
        h = self._hasher()
        update: Callable[[memoryview], None] = h.update
        for key, value in zip(block.keys, block.values, strict=True):
            update(_tensor_bytes(key))
            update(_tensor_bytes(value))
        return str(h.hexdigest())

    def encode(self, key: BlockKey, block: KVBlock) -> bytes:
        """The safetensors document for ``block`` stored under ``key``."""
        tensors: dict[str, torch.Tensor] = {}
        for i, (k, v) in enumerate(zip(block.keys, block.values, strict=True)):
            # contiguous() is a no-op for the owned copies blocks normally hold; safetensors
            # refuses anything else.
            tensors[f"k.{i}"] = k.contiguous()
            tensors[f"v.{i}"] = v.contiguous()
        metadata = {
            "format": FORMAT,
            "key": key.hex(),
            "layers": str(block.layers),
            "mac": self._mac,
            "digest": self._digest(block),
        }
        return bytes(_safetensors().save(tensors, metadata=metadata))

    def decode(self, key: BlockKey, data: bytes) -> KVBlock:
        """The block in ``data``, which must have been stored under ``key``.

        :raises RecordFormatError: the bytes are not a complete block document for ``key``.
        :raises SignatureError: the tensor data does not match its digest (a flipped byte, or a
            block written with another secret).
        """
        prefix = data[:8]
        info = self.inspect(prefix, len(data), header=data[8 : 8 + _header_length(prefix)])
        if info.key != key:
            raise RecordFormatError(f"block stored under {key.hex()} says it is {info.key.hex()}")
        try:
            tensors = _safetensors().load(bytes(data))
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise RecordFormatError(f"block {key.hex()} does not parse: {exc}") from None
        try:
            block = KVBlock(
                tuple(tensors[f"k.{i}"] for i in range(info.layers)),
                tuple(tensors[f"v.{i}"] for i in range(info.layers)),
            )
        except (KeyError, ValueError) as exc:  # InvalidEntryError is a ValueError
            raise RecordFormatError(f"block {key.hex()} has malformed tensors: {exc}") from None
        if info.mac != self._mac:
            raise SignatureError(f"block {key.hex()} was written with another digest kind")
        if not hmac.compare_digest(self._digest(block), info.digest):
            raise SignatureError(f"block {key.hex()} fails its digest: the data changed")
        return block

    def inspect(self, prefix: bytes, total: int, *, header: bytes) -> HeaderInfo:
        """Check a document's header without reading its tensor data.

        :param prefix: the document's first 8 bytes (the header length).
        :param total: the document's full size in bytes (a file's size).
        :param header: the JSON header bytes that follow the prefix.
        :raises RecordFormatError: not a block header, or the sizes do not add up (truncated or
            padded data).
        """
        length = _header_length(prefix)
        if len(header) != length:
            raise RecordFormatError("block header is truncated")
        try:
            parsed = json.loads(header)
        except (UnicodeDecodeError, ValueError):
            raise RecordFormatError("block header is not JSON") from None
        if not isinstance(parsed, dict):
            raise RecordFormatError("block header is not a JSON object")
        metadata = parsed.pop("__metadata__", None)
        if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
            raise RecordFormatError(f"not a {FORMAT} block")
        try:
            key = BlockKey.from_hex(metadata["key"])
            layers = int(metadata["layers"])
            mac = metadata["mac"]
            digest = metadata["digest"]
        except (KeyError, TypeError, ValueError):
            raise RecordFormatError("block metadata lacks a valid key or layer count") from None
        if not isinstance(mac, str) or not isinstance(digest, str) or not digest.isascii():
            raise RecordFormatError("block metadata has a malformed digest")
        expected = {f"{kind}.{i}" for i in range(layers) for kind in "kv"}
        if layers < 1 or set(parsed) != expected:
            raise RecordFormatError("block header does not list k.i and v.i for every layer")
        end = 0
        for spec in parsed.values():
            offsets = spec.get("data_offsets") if isinstance(spec, dict) else None
            if (
                not isinstance(offsets, list)
                or len(offsets) != 2
                or not all(isinstance(o, int) and o >= 0 for o in offsets)
            ):
                raise RecordFormatError("block header has malformed data offsets")
            end = max(end, offsets[1])
        if 8 + length + end != total:
            raise RecordFormatError(
                f"block document is {total} bytes, its header describes {8 + length + end}"
            )
        return HeaderInfo(key=key, layers=layers, data_bytes=end, mac=mac, digest=digest)


def _header_length(prefix: bytes) -> int:
    """The header length a document's first 8 bytes announce, bounded by :data:`MAX_HEADER`."""
    if len(prefix) < 8:
        raise RecordFormatError("block document is shorter than its length prefix")
    (length,) = _U64.unpack(prefix[:8])
    if not 2 <= length <= MAX_HEADER:
        raise RecordFormatError(f"block header length {length} is out of range")
    return int(length)
