"""The block format: a safetensors document that round-trips exactly and refuses anything altered."""

from __future__ import annotations

import json
import struct

import pytest
import safetensors.torch
import torch

from stratacache.errors import ConfigError, RecordFormatError, SignatureError
from stratacache.kv import BlockCodec

from .helpers import chain, make_block, same

KEY, OTHER = chain(2)


def test_round_trip_is_exact_and_is_plain_safetensors() -> None:
    block = make_block(3, layers=3, dtype=torch.bfloat16)
    data = BlockCodec().encode(KEY, block)
    assert same(BlockCodec().decode(KEY, data), block)
    # Any safetensors reader can open it: the format is the library's, not ours.
    tensors = safetensors.torch.load(data)
    assert sorted(tensors) == ["k.0", "k.1", "k.2", "v.0", "v.1", "v.2"]
    assert torch.equal(tensors["v.2"], block.values[2])


def test_every_truncation_is_refused() -> None:
    data = BlockCodec().encode(KEY, make_block(0, layers=1, heads=1, tokens=2, dim=2))
    for cut in range(len(data)):
        with pytest.raises(RecordFormatError):
            BlockCodec().decode(KEY, data[:cut])


def test_trailing_bytes_are_refused() -> None:
    data = BlockCodec().encode(KEY, make_block(0))
    with pytest.raises(RecordFormatError):
        BlockCodec().decode(KEY, data + b"\0")


def test_a_flipped_data_byte_fails_the_digest() -> None:
    data = bytearray(BlockCodec().encode(KEY, make_block(0)))
    data[-3] ^= 0x01
    with pytest.raises(SignatureError):
        BlockCodec().decode(KEY, bytes(data))


def test_a_valid_block_under_another_key_is_refused() -> None:
    data = BlockCodec().encode(OTHER, make_block(0))
    with pytest.raises(RecordFormatError):
        BlockCodec().decode(KEY, data)


def test_a_secret_makes_the_digest_an_hmac() -> None:
    block = make_block(0)
    signed = BlockCodec(b"secret-1").encode(KEY, block)
    assert same(BlockCodec(b"secret-1").decode(KEY, signed), block)
    with pytest.raises(SignatureError):
        BlockCodec(b"secret-2").decode(KEY, signed)
    with pytest.raises(SignatureError):
        BlockCodec().decode(KEY, signed)
    with pytest.raises(SignatureError):
        BlockCodec(b"secret-1").decode(KEY, BlockCodec().encode(KEY, block))


def test_recomputing_a_plain_digest_needs_no_secret_but_an_hmac_does() -> None:
    # A tamperer who rewrites the data and the digest fools the keyless codec, not the keyed one.
    block, forged = make_block(0), make_block(1)
    honest = BlockCodec().encode(KEY, forged)
    assert same(BlockCodec().decode(KEY, honest), forged)
    with pytest.raises(SignatureError):
        BlockCodec(b"k").decode(KEY, honest)
    assert same(BlockCodec(b"k").decode(KEY, BlockCodec(b"k").encode(KEY, block)), block)


def _rewrite_metadata(data: bytes, **changes: str) -> bytes:
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    header["__metadata__"].update(changes)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + length :]


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"format": "other/1"}, RecordFormatError),
        ({"layers": "1"}, RecordFormatError),
        ({"layers": "x"}, RecordFormatError),
        ({"key": "nothex"}, RecordFormatError),
        ({"mac": "md5"}, SignatureError),
        ({"digest": "00" * 32}, SignatureError),
    ],
)
def test_altered_metadata_is_refused(changes: dict[str, str], error: type[Exception]) -> None:
    data = _rewrite_metadata(BlockCodec().encode(KEY, make_block(0)), **changes)
    with pytest.raises(error):
        BlockCodec().decode(KEY, data)


def test_a_huge_header_length_is_refused_without_reading_it() -> None:
    with pytest.raises(RecordFormatError):
        BlockCodec().decode(KEY, struct.pack("<Q", 2**60) + b"{}")


def test_a_bad_secret_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        BlockCodec(b"")
    with pytest.raises(ConfigError):
        BlockCodec("text")  # type: ignore[arg-type]
