"""Test doubles that are real implementations: a hashing embedder and a fake wall clock.

:class:`HashingEmbedder` implements the :class:`~stratacache.semantic.Embedder` protocol for real
(a deterministic bag of hashed words), so tests are fast and every call can be counted. It is not a
mock: what it returns is a genuine embedding of the words, and texts sharing words score higher.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from stratacache.semantic import normalize


class FakeClock:
    """Wall-clock seconds that only move when told to."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class HashingEmbedder:
    """Each lowercase word adds +-1 to one of ``dimension`` buckets (by SHA-256); rows normalised."""

    def __init__(self, dimension: int = 256, model: str = "hashing-test") -> None:
        self._dimension = dimension
        self._model = model
        self.calls = 0
        self.texts: list[str] = []

    @property
    def model(self) -> str:
        return self._model

    @property
    def dimension(self) -> int:
        return self._dimension

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.calls += 1
        self.texts.extend(texts)
        out = np.zeros((len(texts), self._dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                digest = hashlib.sha256(word.encode()).digest()
                bucket = int.from_bytes(digest[:4], "little") % self._dimension
                out[row, bucket] += 1.0 if digest[4] & 1 else -1.0
        return normalize(out)


def unit(dimension: int, *hot: int) -> npt.NDArray[np.float32]:
    """A unit vector with equal weight on the ``hot`` coordinates."""
    v = np.zeros(dimension, dtype=np.float32)
    for i in hot:
        v[i] += 1.0
    return v / np.linalg.norm(v)
