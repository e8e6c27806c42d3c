"""The semantic cache's seams: :class:`Embedder`, :class:`VectorIndex` and :class:`Guard`.

One unit runs through all of them: cosine similarity of L2-normalised ``float32`` vectors, so a
score of 1.0 means "the same direction" whichever embedder or index produced it, and a threshold
means the same thing everywhere. Every :class:`VectorIndex` passes ``tests/semantic/contract.py``.

Nothing heavy is imported here: numpy only appears in annotations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Vectors = npt.NDArray[np.float32]

__all__ = ["Embedder", "Guard", "GuardVerdict", "Match", "VectorIndex"]


@dataclass(frozen=True, slots=True)
class Match:
    """One search result: the entry's id (a record's storage key), its cosine score and its text."""

    id: str
    """The key the vector was added under (the record's storage key)."""
    score: float
    """Cosine similarity to the query, in [-1, 1]."""
    text: str = ""
    """The text the vector was computed from; guards compare it with the query."""


@dataclass(frozen=True, slots=True)
class GuardVerdict:
    """Why a guard vetoed a candidate: the guard's name and a human-readable reason."""

    guard: str
    """The vetoing guard's :attr:`Guard.name` (the metrics label)."""
    reason: str
    """What differed, e.g. ``numbers differ: 48213 vs 48231``."""


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised ``float32`` vectors of a fixed dimension."""

    @property
    def model(self) -> str:
        """The model's name; part of every embedding-cache key."""
        ...

    @property
    def dimension(self) -> int:
        """The length of every vector this embedder returns."""
        ...

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Return a ``(len(texts), dimension)`` float32 array, one unit-length row per text."""
        ...


@runtime_checkable
class VectorIndex(Protocol):
    """Vectors under string ids, searched only inside one context partition.

    Times are wall-clock Unix seconds from the index's injected clock: an entry whose
    ``expires_at`` has passed is never returned and is dropped on the way.
    """

    @property
    def dimension(self) -> int:
        """The length every added and searched vector must have."""
        ...

    def add(
        self,
        partition: str,
        id: str,
        vector: Vectors,
        *,
        text: str = "",
        expires_at: float | None = None,
    ) -> None:
        """Add (or replace) the vector stored under ``id`` in ``partition``."""
        ...

    def remove(self, id: str) -> bool:
        """Remove ``id`` wherever it is; ``True`` if it was present."""
        ...

    def remove_partition(self, partition: str) -> int:
        """Remove every entry of ``partition``; return how many were removed."""
        ...

    def remove_where(self, predicate: Callable[[str], bool]) -> int:
        """Remove every entry whose id satisfies ``predicate``; return how many were removed.

        Invalidation uses it: record keys are ``tenant/namespace/route/digest``, so a namespace's
        vectors are those whose id has that namespace as its second part.
        """
        ...

    def search(self, partition: str, vector: Vectors, k: int = 1) -> list[Match]:
        """Return up to ``k`` live entries of ``partition``, best score first."""
        ...

    def __contains__(self, id: object) -> bool:
        """Whether a live entry is stored under ``id``."""
        ...

    def __len__(self) -> int:
        """How many entries are stored (expired ones not yet dropped included)."""
        ...


@runtime_checkable
class Guard(Protocol):
    """A cheap check that vetoes a candidate whose meaning differs from the query's.

    Guards run only on candidates already above the similarity threshold, so they look for the
    small edits embeddings are blind to: another number, a negation, another name.
    """

    name: str
    """A short label for metrics: ``numbers``, ``polarity``, ``entities``, ``scope``."""

    def check(self, query: str, candidate: str) -> GuardVerdict | None:
        """Return a verdict when ``candidate``'s answer must not serve ``query``, else ``None``."""
        ...
