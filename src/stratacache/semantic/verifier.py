"""The verifier: a small fitted model that says whether one question's answer serves another.

Cosine similarity measures topic. On QQP, "How do I learn Python?" and "How do I learn Python
fast?" score as high as true duplicates, so a threshold alone buys a 1 % wrong-answer rate only by
serving a seventh of the duplicates. The verifier looks at the pair more closely: a two-layer
perceptron over the two embeddings (their element-wise product and absolute difference, the
classic sentence-pair features) and a few lexical features (word and trigram overlap, words on one
side only, question word, the guards' flags). It returns a probability that the pair is "the same
question"; :class:`~stratacache.semantic.SemanticCache` serves a candidate only when it is above
the cosine floor, no guard vetoes it, *and* the probability reaches the verifier's threshold.

The weights are fitted by ``bench/fit_verifier.py`` (the exact command, seed and splits are in its
docstring) on embeddings of the packaged all-MiniLM-L6-v2, so the packaged verifier only applies to
that model: :func:`packaged_verifier` returns ``None`` for any other. Fitting needs torch; serving
does not: inference is numpy only, and the weights are a ``.npz`` of plain arrays read with
``allow_pickle=False`` (the metadata is a JSON string inside it).

>>> import numpy as np
>>> v = Verifier.from_arrays(
...     [np.zeros((2 * 2 + len(LEXICAL_FEATURES), 1), np.float32)],
...     [np.zeros(1, np.float32)], model="toy", dimension=2, threshold=0.5, floor=0.0)
>>> round(v.probability("a b", "a b", np.array([1, 0], np.float32), np.array([1, 0], np.float32)), 2)
0.5
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from stratacache.errors import ConfigError, MissingExtraError
from stratacache.semantic.guards import (
    EntityGuard,
    NumberGuard,
    PolarityGuard,
    ScopeGuard,
    SubstitutionGuard,
    content_words,
    lower_words,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Vectors = npt.NDArray[np.float32]

__all__ = [
    "LEXICAL_FEATURES",
    "PACKAGED_VERIFIER",
    "Verifier",
    "lexical_features",
    "packaged_verifier",
    "pair_features",
]

FORMAT = "stratacache-verifier/1"
"""The ``format`` the weight file's metadata must name."""
PACKAGED_VERIFIER = "verifier-minilm-l6-v2.npz"
"""The file name of the packaged weights, inside ``stratacache/semantic/``."""

_QUESTION_WORDS = frozenset(
    {
        "what", "how", "why", "where", "when", "which", "who", "whom", "whose", "is", "are",
        "can", "could", "should", "would", "will", "do", "does", "did", "was", "were", "has",
        "have",
    }
)  # fmt: skip
_GUARDS = (NumberGuard(), PolarityGuard(), EntityGuard(), ScopeGuard(), SubstitutionGuard())

LEXICAL_FEATURES: tuple[str, ...] = (
    "cosine",
    "word_jaccard",
    "content_jaccard",
    "content_shared",
    "content_only_min",
    "content_only_max",
    "length_ratio",
    "length_diff",
    "trigram_jaccard",
    "same_question_word",
    "same_words",
    "same_word_set",
    *(f"guard_{g.name}" for g in _GUARDS),
)
"""The names of the lexical features, in the order :func:`lexical_features` returns them.

Every one is symmetric in the two texts, so the verifier's answer does not depend on which text was
cached first.
"""


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as exc:
        raise MissingExtraError("numpy", "semantic") from exc
    return numpy


def _jaccard(a: set[str] | frozenset[str], b: set[str] | frozenset[str]) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def _trigrams(text: str) -> set[str]:
    flat = " " + " ".join(lower_words(text)) + " "
    return {flat[i : i + 3] for i in range(len(flat) - 2)}


def lexical_features(query: str, candidate: str, cosine: float) -> list[float]:
    """The lexical features of a pair, named by :data:`LEXICAL_FEATURES`."""
    words_a, words_b = lower_words(query), lower_words(candidate)
    content_a, content_b = Counter(content_words(query)), Counter(content_words(candidate))
    only_a = sum((content_a - content_b).values())
    only_b = sum((content_b - content_a).values())
    len_a, len_b = len(words_a), len(words_b)
    first_a = next((w for w in words_a if w in _QUESTION_WORDS), "")
    first_b = next((w for w in words_b if w in _QUESTION_WORDS), "")
    return [
        cosine,
        _jaccard(set(words_a), set(words_b)),
        _jaccard(set(content_a), set(content_b)),
        math.log1p(sum((content_a & content_b).values())),
        math.log1p(min(only_a, only_b)),
        math.log1p(max(only_a, only_b)),
        min(len_a, len_b) / max(len_a, len_b, 1),
        math.log1p(abs(len_a - len_b)),
        _jaccard(_trigrams(query), _trigrams(candidate)),
        float(first_a == first_b),
        float(words_a == words_b),
        float(set(words_a) == set(words_b)),
        *(float(g.check(query, candidate) is not None) for g in _GUARDS),
    ]


def pair_features(
    queries: Sequence[str], candidates: Sequence[str], u: Vectors, v: Vectors
) -> tuple[Vectors, Vectors]:
    """Return ``(vector_features, lexical_features)`` for the pairs, one row each.

    ``u`` and ``v`` are the unit-length embeddings of ``queries`` and ``candidates``. The vector
    block is ``[u*v, |u-v|]``; the lexical block follows :data:`LEXICAL_FEATURES` (unscaled).
    """
    np = _numpy()
    u = np.asarray(u, dtype=np.float32).reshape(len(queries), -1)
    v = np.asarray(v, dtype=np.float32).reshape(len(candidates), -1)
    if len(queries) != len(candidates) or u.shape != v.shape:
        raise ConfigError("queries, candidates and both vector blocks must have equal lengths")
    vector_block = np.concatenate([u * v, np.abs(u - v)], axis=1).astype(np.float32)
    cosines = np.einsum("ij,ij->i", u, v)
    lexical = np.array(
        [
            lexical_features(q, c, float(s))
            for q, c, s in zip(queries, candidates, cosines, strict=True)
        ],
        dtype=np.float32,
    ).reshape(len(queries), len(LEXICAL_FEATURES))
    return vector_block, lexical


@dataclass(frozen=True, slots=True, eq=False)
class Verifier:
    """A fitted pair classifier; :meth:`probabilities` runs it with numpy alone.

    Compared by identity (its fields hold arrays).

    Build one with :meth:`load` (a weight file), :func:`packaged_verifier`, or :meth:`from_arrays`.
    Hidden layers use ReLU; the last layer has one output, read through a sigmoid.
    """

    model: str
    """The embedding model the weights were fitted on; the verifier only applies to it."""
    dimension: int
    """The embedding dimension."""
    threshold: float
    """Serve when the probability is at least this."""
    floor: float
    """The cosine similarity a candidate needs before the verifier is asked."""
    weights: tuple[Any, ...] = field(repr=False)
    """The layers' weight matrices, input first."""
    biases: tuple[Any, ...] = field(repr=False)
    """The layers' bias vectors."""
    mean: Any = field(repr=False, default=None)
    """Subtracted from the lexical features (``None``: zeros)."""
    scale: Any = field(repr=False, default=None)
    """The lexical features are divided by this after centring (``None``: ones)."""
    info: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """Metadata from the weight file: how it was fitted and what it measured."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"a verifier threshold is a probability, not {self.threshold!r}")
        if not -1.0 <= self.floor <= 1.0:
            raise ConfigError(f"a verifier floor is a cosine similarity, not {self.floor!r}")
        if len(self.weights) != len(self.biases) or not self.weights:
            raise ConfigError("a verifier needs as many bias vectors as weight matrices")
        width = 2 * self.dimension + len(LEXICAL_FEATURES)
        for w, b in zip(self.weights, self.biases, strict=True):
            if w.ndim != 2 or w.shape[0] != width or b.shape != (w.shape[1],):
                raise ConfigError(f"verifier layer shapes do not chain: {w.shape}, {b.shape}")
            width = w.shape[1]
        if width != 1:
            raise ConfigError("a verifier's last layer must have one output")

    @classmethod
    def from_arrays(
        cls,
        weights: Sequence[Any],
        biases: Sequence[Any],
        *,
        model: str,
        dimension: int,
        threshold: float,
        floor: float,
        mean: Any = None,
        scale: Any = None,
        info: Mapping[str, Any] | None = None,
    ) -> Verifier:
        """A verifier from numpy arrays (what ``bench/fit_verifier.py`` produces)."""
        np = _numpy()
        return cls(
            model,
            int(dimension),
            float(threshold),
            float(floor),
            tuple(np.asarray(w, dtype=np.float32) for w in weights),
            tuple(np.asarray(b, dtype=np.float32) for b in biases),
            None if mean is None else np.asarray(mean, dtype=np.float32),
            None if scale is None else np.asarray(scale, dtype=np.float32),
            MappingProxyType(dict(info or {})),
        )

    @classmethod
    def load(cls, path: Path | str) -> Verifier:
        """Read a weight file written by :meth:`save`.

        :raises ConfigError: the file is missing, not a verifier, or of another format.
        """
        np = _numpy()
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except FileNotFoundError:
            raise ConfigError(f"no verifier weights at {path}") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path} is not a verifier weight file: {exc}") from None
        try:
            meta = json.loads(str(arrays.pop("meta")))
            if meta.get("format") != FORMAT:
                raise ConfigError(f"{path}: unknown verifier format {meta.get('format')!r}")
            layers = int(meta["layers"])
            weights = [arrays[f"w{i}"] for i in range(layers)]
            biases = [arrays[f"b{i}"] for i in range(layers)]
            if list(meta["features"]) != list(LEXICAL_FEATURES):
                raise ConfigError(f"{path}: fitted on other lexical features")
            return cls.from_arrays(
                weights,
                biases,
                model=str(meta["model"]),
                dimension=int(meta["dimension"]),
                threshold=float(meta["threshold"]),
                floor=float(meta["floor"]),
                mean=arrays.get("mean"),
                scale=arrays.get("scale"),
                info=meta.get("info", {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path} is not a verifier weight file: {exc!r}") from None

    def save(self, path: Path | str) -> None:
        """Write the weights and metadata as one ``.npz`` (float32 arrays, no pickle)."""
        np = _numpy()
        meta = {
            "format": FORMAT,
            "model": self.model,
            "dimension": self.dimension,
            "threshold": self.threshold,
            "floor": self.floor,
            "layers": len(self.weights),
            "features": list(LEXICAL_FEATURES),
            "info": dict(self.info),
        }
        arrays: dict[str, Any] = {"meta": np.array(json.dumps(meta, sort_keys=True))}
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            arrays[f"w{i}"], arrays[f"b{i}"] = w, b
        if self.mean is not None:
            arrays["mean"] = self.mean
        if self.scale is not None:
            arrays["scale"] = self.scale
        with Path(path).open("wb") as f:
            np.savez_compressed(f, **arrays)

    def with_threshold(self, threshold: float, floor: float | None = None) -> Verifier:
        """The same weights with another probability threshold (and optionally cosine floor)."""
        return replace(
            self, threshold=float(threshold), floor=self.floor if floor is None else float(floor)
        )

    def logits(self, vector_block: Vectors, lexical: Vectors) -> Vectors:
        """The raw scores of feature rows from :func:`pair_features`."""
        np = _numpy()
        if self.mean is not None:
            lexical = lexical - self.mean
        if self.scale is not None:
            lexical = lexical / self.scale
        x = np.concatenate([vector_block, lexical], axis=1).astype(np.float32)
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = x @ w + b
            if i < len(self.weights) - 1:
                np.maximum(x, 0.0, out=x)
        out: Vectors = x[:, 0]
        return out

    def probabilities(
        self, queries: Sequence[str], candidates: Sequence[str], u: Vectors, v: Vectors
    ) -> Vectors:
        """The probability that each candidate's answer serves its query."""
        np = _numpy()
        if u.shape[-1] != self.dimension:
            raise ConfigError(
                f"the verifier expects {self.dimension}-dimensional vectors, not {u.shape[-1]}"
            )
        if not queries:
            empty: Vectors = np.zeros(0, dtype=np.float32)
            return empty
        logits = self.logits(*pair_features(queries, candidates, u, v))
        out: Vectors = 1.0 / (1.0 + np.exp(-np.clip(logits, -30.0, 30.0)))
        return out

    def probability(self, query: str, candidate: str, u: Vectors, v: Vectors) -> float:
        """The probability for one pair."""
        return float(self.probabilities([query], [candidate], u, v)[0])


def packaged_path() -> Path:
    """Where the packaged weight file is (it may be absent from a source checkout)."""
    return Path(str(resources.files("stratacache.semantic").joinpath(PACKAGED_VERIFIER)))


@lru_cache(maxsize=1)
def _packaged() -> Verifier | None:
    path = packaged_path()
    if not path.is_file():
        return None
    return Verifier.load(path)


def packaged_verifier(model: str, dimension: int | None = None) -> Verifier | None:
    """The packaged verifier if its weights are present and were fitted on ``model`` (and on
    vectors of ``dimension``, when given), else ``None``."""
    try:
        verifier = _packaged()
    except MissingExtraError:
        return None
    if verifier is None or verifier.model != model:
        return None
    if dimension is not None and verifier.dimension != dimension:
        return None
    return verifier
