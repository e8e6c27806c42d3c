"""Semantic caching: answer a paraphrase from the cache, never a different question.

The pieces, each behind a protocol in :mod:`stratacache.semantic.base`: an embedder (a packaged
local model, or any OpenAI-compatible server) behind an embedding cache, a vector index searched
only inside one context partition, guards that veto matches whose numbers, polarity, names or
scope differ, a fitted :class:`Verifier` (a perceptron; a :class:`CrossEncoder` is opt-in) that has
the last word on what survives them, and :class:`SemanticCache` tying them together with a
calibrated threshold.

Importing this package is cheap: numpy, sentence-transformers and usearch load on first use.
"""

from __future__ import annotations

from stratacache.semantic.base import Embedder, Guard, GuardVerdict, Match, VectorIndex
from stratacache.semantic.cache import (
    DEFAULT_THRESHOLD,
    Calibration,
    Candidate,
    LabelledPair,
    SemanticCache,
    SemanticHit,
    SemanticStats,
    calibrate,
)
from stratacache.semantic.cross_encoder import CrossEncoder, packaged_cross_encoder
from stratacache.semantic.embedders import (
    DEFAULT_MODEL,
    EmbeddingCache,
    LocalEmbedder,
    RemoteEmbedder,
    normalize,
    packaged_model_path,
)
from stratacache.semantic.evaluation import (
    PairOutcome,
    PairSummary,
    TextPair,
    labelled,
    read_pairs,
    score_pairs,
    summarize,
)
from stratacache.semantic.guards import (
    EntityGuard,
    NumberGuard,
    PolarityGuard,
    ScopeGuard,
    SubstitutionGuard,
    default_guards,
    first_veto,
)
from stratacache.semantic.index import ExactIndex, USearchIndex, default_index, vector_file_for
from stratacache.semantic.verifier import Verifier, packaged_verifier

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_THRESHOLD",
    "Calibration",
    "Candidate",
    "CrossEncoder",
    "Embedder",
    "EmbeddingCache",
    "EntityGuard",
    "ExactIndex",
    "Guard",
    "GuardVerdict",
    "LabelledPair",
    "LocalEmbedder",
    "Match",
    "NumberGuard",
    "PairOutcome",
    "PairSummary",
    "PolarityGuard",
    "RemoteEmbedder",
    "ScopeGuard",
    "SemanticCache",
    "SemanticHit",
    "SemanticStats",
    "SubstitutionGuard",
    "TextPair",
    "USearchIndex",
    "VectorIndex",
    "Verifier",
    "calibrate",
    "default_guards",
    "default_index",
    "first_veto",
    "labelled",
    "normalize",
    "packaged_cross_encoder",
    "packaged_model_path",
    "packaged_verifier",
    "read_pairs",
    "score_pairs",
    "summarize",
    "vector_file_for",
]
