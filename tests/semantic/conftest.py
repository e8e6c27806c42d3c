"""Fixtures for the semantic tests: a fake clock and ``index``, one fresh index per implementation.

``index`` is parametrised over :data:`INDEX_FACTORIES`; every implementation of
:class:`~stratacache.semantic.VectorIndex` runs ``contract.py`` through it. A shared backend
(Redis vector sets, pgvector) joins by adding a factory here.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

pytest.importorskip("numpy", reason="the semantic extra (numpy) is not installed")

from stratacache.semantic import ExactIndex, USearchIndex, VectorIndex

from .helpers import FakeClock

DIMENSION = 16

IndexFactory = Callable[[int, FakeClock], VectorIndex]


def _usearch(dimension: int, clock: FakeClock) -> VectorIndex:
    pytest.importorskip("usearch", reason="the semantic extra (usearch) is not installed")
    return USearchIndex(dimension, clock=clock, exact_below=0)


def _hybrid(dimension: int, clock: FakeClock) -> VectorIndex:
    pytest.importorskip("usearch", reason="the semantic extra (usearch) is not installed")
    return USearchIndex(dimension, clock=clock, exact_below=3)


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
