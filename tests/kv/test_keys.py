"""The block-key hash chain: deterministic, prefix-sensitive, and separated by every seed field."""

from __future__ import annotations

import dataclasses
import hashlib
import struct
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stratacache.errors import ConfigError, InvalidEntryError, RequestError
from stratacache.kv import BlockKey, ChainSeed, block_keys, chain_block
from stratacache.kv.keys import MAX_TOKEN_ID

SEED = ChainSeed(
    model="llama-tiny@abc", tokenizer="tok@1", dtype="float32", layout="L", block_size=4
)


def _field(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<I", len(data)) + data


def test_the_first_key_follows_the_documented_encoding() -> None:
    seed = hashlib.sha256(b"stratacache/kv/seed/v1")
    for text in ("llama-tiny@abc", "tok@1", "float32", "L"):
        seed.update(_field(text))
    seed.update(struct.pack("<I", 4))
    seed.update(_field(""))  # tenant
    assert SEED.digest == seed.digest()
    block = hashlib.sha256(b"stratacache/kv/block/v1")
    block.update(seed.digest())
    block.update(_field(""))  # adapter
    block.update(struct.pack("<4I", 10, 20, 30, 2**32 - 1))
    assert block_keys(SEED, [10, 20, 30, 2**32 - 1]) == [BlockKey(block.digest())]


def test_keys_are_stable_across_processes() -> None:
    # hash() is salted per process; these keys must not be.
    code = (
        "from stratacache.kv import ChainSeed, block_keys;"
        "s = ChainSeed(model='m', tokenizer='t', dtype='d', layout='l', block_size=2);"
        "print(block_keys(s, [1, 2, 3, 4])[1].hex())"
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": str(seed), "PATH": ""},
        ).stdout.strip()
        for seed in (1, 2)
    }
    assert len(runs) == 1
    seed = ChainSeed(model="m", tokenizer="t", dtype="d", layout="l", block_size=2)
    assert runs == {block_keys(seed, [1, 2, 3, 4])[1].hex()}


def test_only_full_blocks_get_keys() -> None:
    assert block_keys(SEED, []) == []
    assert block_keys(SEED, [1, 2, 3]) == []
    assert len(block_keys(SEED, list(range(11)))) == 2
    assert block_keys(SEED, list(range(11))) == block_keys(SEED, list(range(8)))


@given(
    tokens=st.lists(st.integers(0, MAX_TOKEN_ID), min_size=16, max_size=16),
    k=st.integers(0, 3),
    offset=st.integers(0, 3),
)
def test_changing_one_token_in_block_k_changes_block_k_and_after(
    tokens: list[int], k: int, offset: int
) -> None:
    changed = list(tokens)
    position = k * 4 + offset
    changed[position] = (changed[position] + 1) % (MAX_TOKEN_ID + 1)
    before, after = block_keys(SEED, tokens), block_keys(SEED, changed)
    assert before[:k] == after[:k]
    assert all(a != b for a, b in zip(before[k:], after[k:], strict=True))


@pytest.mark.parametrize(
    "change",
    [
        {"model": "llama-tiny@abd"},
        {"tokenizer": "tok@2"},
        {"dtype": "float16"},
        {"layout": "L2"},
        {"block_size": 2},
        {"tenant": "acme"},
    ],
)
def test_every_seed_field_changes_every_key(change: dict[str, object]) -> None:
    tokens = list(range(16))
    other = dataclasses.replace(SEED, **change)  # type: ignore[arg-type]
    ours, theirs = block_keys(SEED, tokens), block_keys(other, tokens)
    assert not set(ours) & set(theirs)


def test_the_adapter_enters_every_block() -> None:
    tokens = list(range(16))
    base = block_keys(SEED, tokens)
    lora = block_keys(SEED, tokens, adapter="lora-a")
    assert not set(base) & set(lora)
    # Each block, not just the first: a chain rebuilt from the base's block 0 with the adapter
    # still differs from the adapter's own chain.
    assert chain_block(base[0].digest, tokens[4:8], "lora-a") != base[1]
    assert chain_block(lora[0].digest, tokens[4:8], "lora-a") == lora[1]


def test_length_prefixes_keep_fields_apart() -> None:
    a = ChainSeed(model="ab", tokenizer="c", dtype="d", layout="l", block_size=1)
    b = ChainSeed(model="a", tokenizer="bc", dtype="d", layout="l", block_size=1)
    assert a.digest != b.digest
    assert a != b


def test_seeds_are_frozen_value_objects() -> None:
    copy = ChainSeed(
        model="llama-tiny@abc", tokenizer="tok@1", dtype="float32", layout="L", block_size=4
    )
    assert copy == SEED
    assert hash(copy) == hash(SEED)
    with pytest.raises(dataclasses.FrozenInstanceError):
        SEED.model = "x"  # type: ignore[misc]


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, "7", None])
def test_bad_token_ids_raise_request_error(bad: object) -> None:
    with pytest.raises(RequestError):
        block_keys(SEED, [1, 2, 3, bad])  # type: ignore[list-item]


def test_text_is_not_a_token_sequence() -> None:
    with pytest.raises(RequestError):
        block_keys(SEED, "abcd")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fields",
    [
        {"block_size": 0},
        {"block_size": True},
        {"block_size": 2.0},
        {"model": ""},
        {"dtype": ""},
        {"layout": ""},
        {"tenant": 3},
        {"tokenizer": "\ud800"},
    ],
)
def test_bad_seeds_raise_config_error(fields: dict[str, object]) -> None:
    args: dict[str, object] = {
        "model": "m",
        "tokenizer": "t",
        "dtype": "d",
        "layout": "l",
        "block_size": 4,
    }
    args.update(fields)
    with pytest.raises(ConfigError):
        ChainSeed(**args)  # type: ignore[arg-type]


def test_block_keys_validate_their_digest() -> None:
    with pytest.raises(InvalidEntryError):
        BlockKey(b"short")
    with pytest.raises(InvalidEntryError):
        BlockKey("00" * 32)  # type: ignore[arg-type]
    with pytest.raises(InvalidEntryError):
        BlockKey.from_hex("zz" * 32)
    key = block_keys(SEED, [1, 2, 3, 4])[0]
    assert BlockKey.from_hex(key.hex()) == key
    assert key.hex()[:16] in repr(key)
