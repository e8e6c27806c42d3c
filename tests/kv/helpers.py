"""Small builders the KV tests share: blocks of random tensors and chains of keys."""

from __future__ import annotations

import torch

from stratacache.kv import BlockKey, ChainSeed, KVBlock, block_keys

SEED = ChainSeed(
    model="test-model", tokenizer="test-tok", dtype="float32", layout="t", block_size=4
)
"""A chain seed for tests that need keys but no model."""


def chain(n: int, *, start: int = 0, seed: ChainSeed = SEED) -> list[BlockKey]:
    """The keys of ``n`` consecutive blocks of the tokens ``start, start+1, …``."""
    return block_keys(seed, list(range(start, start + n * seed.block_size)))


def make_block(
    fill: int = 0,
    *,
    layers: int = 2,
    heads: int = 2,
    tokens: int = 4,
    dim: int = 8,
    dtype: torch.dtype = torch.float32,
) -> KVBlock:
    """A block of random tensors, deterministic in ``fill``."""
    gen = torch.Generator().manual_seed(fill)
    shape = (heads, tokens, dim)
    keys = tuple(torch.randn(shape, generator=gen).to(dtype) for _ in range(layers))
    values = tuple(torch.randn(shape, generator=gen).to(dtype) for _ in range(layers))
    return KVBlock(keys, values)


def same(a: KVBlock, b: KVBlock) -> bool:
    """Whether two blocks hold bit-identical tensors."""
    return a.layers == b.layers and all(
        x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)
        for x, y in zip((*a.keys, *a.values), (*b.keys, *b.values), strict=True)
    )


def blocks_for(keys: list[BlockKey], *, size: int = 4) -> dict[BlockKey, KVBlock]:
    """One distinct block per key."""
    return {key: make_block(i, tokens=size) for i, key in enumerate(keys)}
