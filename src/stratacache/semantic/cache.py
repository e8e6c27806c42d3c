"""The semantic cache: embed the final user turn, search its context partition, guard, answer.

:class:`SemanticCache` maps a text to the storage key of a record that answered a close enough
text *in the same context partition* (:attr:`stratacache.llm.keys.CacheKey.partition`). It does not
hold records: the caller (``LLMCache``) looks the returned key up in its tiers, exactly as for an
exact hit, so verification, expiry and invalidation of the record itself stay in one place.

A lookup is: embed (through the :class:`~stratacache.semantic.embedders.EmbeddingCache`), search the
partition for the best few candidates, and take the best one whose score is at least the threshold,
which no guard vetoes and, when a verifier is in use, which the verifier accepts. With the packaged
embedding model the default verifier is the packaged perceptron
:class:`~stratacache.semantic.verifier.Verifier`; the packaged
:class:`~stratacache.semantic.cross_encoder.CrossEncoder` (it reads both questions together, and
runs only on candidates that passed the floor and the guards) is opt-in. The verifier's cosine
floor replaces :data:`DEFAULT_THRESHOLD`. Vetoes are counted per guard (and as ``verifier`` for the
verifier's rejections) in :meth:`SemanticCache.stats`.

:func:`calibrate` picks the threshold from labelled pairs: the lowest one (most hits) whose
precision meets a target, optionally under a wrong-answer budget as well.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from stratacache.errors import ConfigError
from stratacache.semantic.base import Embedder, Guard, GuardVerdict, Match, VectorIndex
from stratacache.semantic.cross_encoder import CrossEncoder
from stratacache.semantic.embedders import EmbeddingCache
from stratacache.semantic.guards import default_guards, first_veto
from stratacache.semantic.verifier import Verifier, packaged_verifier

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Vectors = npt.NDArray[np.float32]

__all__ = [
    "DEFAULT_THRESHOLD",
    "Calibration",
    "Candidate",
    "LabelledPair",
    "SemanticCache",
    "SemanticHit",
    "SemanticStats",
    "calibrate",
]

DEFAULT_THRESHOLD = 0.95
"""The cosine threshold for the default guards without a verifier.

``bench/semantic.py`` calibrates 0.952 on QQP validation pairs for at most 1 % wrong answers
among pairs that must not match (1.0 % on held-out pairs, 18 % of true duplicates served; the
packaged verifier at its floor of 0.85 serves 19 % there at 1.0 % wrong). It is deliberately
safe: on traffic with fewer near-miss questions, :func:`calibrate` on your own labelled pairs will
usually allow a lower one (at 0.8 the guards still served none of the adversarial traps, but 10 %
of QQP's different-question pairs).
"""


@dataclass(frozen=True, slots=True)
class SemanticHit:
    """A served semantic match: the record key to replay and how close its text was."""

    key: str
    """The storage key of the record that answered the matched text."""
    score: float
    """Cosine similarity of the query and the matched text."""
    text: str
    """The text that was matched (for logs and the ``X-Cache-Similarity`` header's neighbours)."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One search result with what the cache decided about it (see :meth:`SemanticCache.explain`)."""

    key: str
    """The record key."""
    score: float
    """Cosine similarity to the query."""
    text: str
    """The stored text."""
    above_threshold: bool
    """Whether the score reaches the threshold."""
    veto: GuardVerdict | None
    """The first guard that vetoed it, if any (guards run even below the threshold here)."""
    probability: float | None = None
    """The verifier's probability that the answer serves the query (``None``: no verifier)."""
    verified: bool = True
    """Whether the verifier accepts it (always ``True`` without a verifier)."""

    @property
    def served(self) -> bool:
        """Whether this candidate would be served."""
        return self.above_threshold and self.veto is None and self.verified


@dataclass(frozen=True, slots=True)
class SemanticStats:
    """Counters since the cache was made."""

    lookups: int
    """Calls to :meth:`SemanticCache.lookup`."""
    hits: int
    """Lookups that returned a match."""
    below_threshold: int
    """Lookups whose best candidate scored under the threshold (or that found none)."""
    vetoed: int
    """Lookups that had a candidate above the threshold but every one was vetoed."""
    vetoes: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    """Vetoes per guard name, and ``verifier`` for the verifier's rejections (one lookup can veto
    several candidates)."""


@dataclass(frozen=True, slots=True)
class LabelledPair:
    """A scored, labelled pair for calibration: would serving ``b`` for ``a`` be right?"""

    score: float
    """Cosine similarity of the two texts."""
    same: bool
    """Whether one's answer is right for the other."""
    vetoed: bool = False
    """Whether a guard vetoes the pair (a vetoed pair is never served, whatever the threshold)."""


@dataclass(frozen=True, slots=True)
class Calibration:
    """The chosen threshold and what it does on the pairs it was chosen on."""

    threshold: float
    """Serve when the score is at least this (``math.inf``: no threshold meets the target)."""
    precision: float
    """Served pairs that were right / served pairs (1.0 when nothing is served)."""
    recall: float
    """Right pairs served / right pairs (``served_when_same``)."""
    false_hit_rate: float
    """Wrong pairs served / pairs that must not match (``wrong_when_different``)."""
    served: int
    """Pairs served."""
    pairs: int
    """Pairs considered."""


def calibrate(
    pairs: Iterable[LabelledPair],
    target_precision: float = 0.99,
    *,
    max_false_hit_rate: float | None = None,
) -> Calibration:
    """Return the threshold that serves the most right pairs while precision >= the target.

    Only thresholds at observed scores are considered (anything between two scores serves the same
    pairs), and ties are served together, since one threshold cannot split them. With
    ``max_false_hit_rate`` the wrong-answer rate among pairs that must not match is capped too.

    >>> pairs = [LabelledPair(0.95, True), LabelledPair(0.9, False), LabelledPair(0.85, True)]
    >>> calibrate(pairs, 0.99).threshold
    0.95
    """
    if not 0.0 <= target_precision <= 1.0:
        raise ConfigError(f"target_precision must be within [0, 1], not {target_precision!r}")
    if max_false_hit_rate is not None and not 0.0 <= max_false_hit_rate <= 1.0:
        raise ConfigError(f"max_false_hit_rate must be within [0, 1], not {max_false_hit_rate!r}")
    items = list(pairs)
    for pair in items:
        if not math.isfinite(pair.score):
            raise ConfigError(f"a pair's score must be finite, not {pair.score!r}")
    positives = sum(p.same for p in items)
    negatives = len(items) - positives
    servable = sorted((p for p in items if not p.vetoed), key=lambda p: -p.score)
    best = Calibration(math.inf, 1.0, 0.0, 0.0, 0, len(items))
    right = wrong = 0
    i = 0
    while i < len(servable):
        score = servable[i].score
        while i < len(servable) and servable[i].score == score:
            right += servable[i].same
            wrong += not servable[i].same
            i += 1
        precision = right / (right + wrong)
        false_rate = wrong / negatives if negatives else 0.0
        if precision < target_precision:
            continue
        if max_false_hit_rate is not None and false_rate > max_false_hit_rate:
            continue
        recall = right / positives if positives else 0.0
        # Scores are swept downwards, so on equal recall the higher threshold is kept.
        if recall > best.recall:
            best = Calibration(score, precision, recall, false_rate, right + wrong, len(items))
    return best


class SemanticCache:
    """Near-duplicate lookup of final user turns inside context partitions.

    :param embedder: an :class:`~stratacache.semantic.base.Embedder`, or an
        :class:`~stratacache.semantic.embedders.EmbeddingCache` over one (a bare embedder is wrapped
        in a new in-memory embedding cache).
    :param index: where vectors live; its dimension must be the embedder's.
    :param guards: the vetoes to apply (default :func:`~stratacache.semantic.guards.default_guards`;
        pass ``[]`` for none).
    :param threshold: the cosine similarity a candidate needs, in [-1, 1]; ``None`` (the default):
        the verifier's floor when a verifier is in use, else :data:`DEFAULT_THRESHOLD`.
    :param clock: wall-clock Unix seconds (default ``time.time``), for entries added already expired.
    :param candidates: how many nearest entries to check against the guards per lookup.
    :param verifier: ``True`` (default): the packaged perceptron verifier when it was fitted on
        the embedder's model, else none; ``False``: none; or a
        :class:`~stratacache.semantic.verifier.Verifier` or
        :class:`~stratacache.semantic.cross_encoder.CrossEncoder` (e.g.
        :func:`~stratacache.semantic.cross_encoder.packaged_cross_encoder`; its model must be the
        embedder's, and a cross-encoder also needs a local embedder).
    """

    def __init__(
        self,
        embedder: Embedder | EmbeddingCache,
        index: VectorIndex,
        guards: Sequence[Guard] | None = None,
        threshold: float | None = None,
        clock: Callable[[], float] = time.time,
        *,
        candidates: int = 4,
        verifier: Verifier | CrossEncoder | bool = True,
    ) -> None:
        self._embeddings = (
            embedder if isinstance(embedder, EmbeddingCache) else EmbeddingCache(embedder)
        )
        self._verifier = _choose_verifier(verifier, self._embeddings)
        if threshold is None:
            threshold = DEFAULT_THRESHOLD if self._verifier is None else self._verifier.floor
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise ConfigError(f"threshold must be a number, not {threshold!r}")
        if not -1.0 <= threshold <= 1.0:
            raise ConfigError(f"threshold must be a cosine similarity in [-1, 1], not {threshold}")
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
            raise ConfigError(f"candidates must be a positive int, not {candidates!r}")
        self._index = index
        self._guards: tuple[Guard, ...] = tuple(default_guards() if guards is None else guards)
        for guard in self._guards:
            if not isinstance(guard, Guard):
                raise ConfigError(f"not a guard: {guard!r}")
        self._threshold = float(threshold)
        self._clock = clock
        self._candidates = candidates
        self._lock = threading.Lock()
        self._lookups = self._hits = self._below = self._vetoed = 0
        self._vetoes: Counter[str] = Counter()

    @property
    def threshold(self) -> float:
        """The cosine similarity a candidate needs."""
        return self._threshold

    @property
    def verifier(self) -> Verifier | CrossEncoder | None:
        """The verifier consulted after the guards, if any."""
        return self._verifier

    @property
    def guards(self) -> tuple[Guard, ...]:
        """The guards, in the order they run."""
        return self._guards

    @property
    def index(self) -> VectorIndex:
        """The vector index."""
        return self._index

    @property
    def embeddings(self) -> EmbeddingCache:
        """The embedding cache (also usable for the proxy's ``/v1/embeddings`` route)."""
        return self._embeddings

    async def lookup(self, partition: str, text: str) -> SemanticHit | None:
        """Return the best guarded match for ``text`` in ``partition``, or ``None``.

        An empty or whitespace-only text is a miss without embedding anything.
        """
        _check_partition(partition)
        _check_text(text)
        with self._lock:
            self._lookups += 1
        if not text.strip():
            with self._lock:
                self._below += 1
            return None
        vector = (await self._embeddings.embed([text]))[0]
        matches = self._index.search(partition, vector, self._candidates)
        vetoes: list[str] = []
        passed: list[Match] = []
        for match in matches:
            if match.score < self._threshold:
                break
            verdict = first_veto(self._guards, text, match.text)
            if verdict is None:
                passed.append(match)
                if self._verifier is None:
                    break
            else:
                vetoes.append(verdict.guard)
        hit: SemanticHit | None = None
        if passed:
            # Guards veto first (they are cheap and catch what embeddings are blind to); the
            # verifier then sees only the survivors, best score first.
            accepted = await self._verify(text, vector, passed)
            for match, ok in zip(passed, accepted, strict=True):
                if ok:
                    hit = SemanticHit(match.id, match.score, match.text)
                    break
                vetoes.append("verifier")
        with self._lock:
            self._vetoes.update(vetoes)
            if hit is not None:
                self._hits += 1
            elif vetoes:
                self._vetoed += 1
            else:
                self._below += 1
        return hit

    async def explain(self, partition: str, text: str, k: int | None = None) -> list[Candidate]:
        """Return the nearest candidates with the decision for each (shadow mode, debugging).

        Nothing is counted in :meth:`stats`.
        """
        _check_partition(partition)
        _check_text(text)
        if not text.strip():
            return []
        vector = (await self._embeddings.embed([text]))[0]
        found = self._index.search(partition, vector, k or self._candidates)
        probabilities: list[float | None] = [None] * len(found)
        if self._verifier is not None:
            probabilities = await self._probabilities(self._verifier, text, vector, found)
        return [
            Candidate(
                m.id,
                m.score,
                m.text,
                m.score >= self._threshold,
                first_veto(self._guards, text, m.text),
                p,
                self._verifier is None or (p is not None and p >= self._verifier.threshold),
            )
            for m, p in zip(found, probabilities, strict=True)
        ]

    async def _probabilities(
        self,
        verifier: Verifier | CrossEncoder,
        text: str,
        vector: Vectors,
        matches: Sequence[Match],
    ) -> list[float | None]:
        import numpy as np

        # A match without its text (a backend that does not keep it) cannot be verified.
        rows = [i for i, m in enumerate(matches) if m.text.strip()]
        out: list[float | None] = [None] * len(matches)
        if not rows:
            return out
        texts = [matches[i].text for i in rows]
        if isinstance(verifier, CrossEncoder):
            # One transformer pass over the pair: CPU-bound, so off the event loop like the
            # embedder. The model is the embedder's own (checked when the cache was made).
            model = _sentence_model(self._embeddings)
            u = v = None
            if verifier.perceptron is not None:
                v = await self._embeddings.embed(texts)  # cached when the texts were added
                u = np.repeat(vector[None, :], len(rows), axis=0)
            found = await asyncio.to_thread(
                verifier.probabilities, model, [text] * len(rows), texts, u, v
            )
        else:
            # The stored texts were embedded when added, so this is normally an embedding-cache
            # hit.
            others = await self._embeddings.embed(texts)
            queries = np.repeat(vector[None, :], len(rows), axis=0)
            found = verifier.probabilities([text] * len(rows), texts, queries, others)
        for i, p in zip(rows, found, strict=True):
            out[i] = float(p)
        return out

    async def _verify(self, text: str, vector: Vectors, matches: Sequence[Match]) -> list[bool]:
        if self._verifier is None:
            return [True] * len(matches)
        threshold = self._verifier.threshold
        found = await self._probabilities(self._verifier, text, vector, matches)
        return [p is not None and p >= threshold for p in found]

    async def add(
        self, partition: str, text: str, record_key: str, expires_at: float | None = None
    ) -> bool:
        """Index ``text`` in ``partition`` as answered by the record under ``record_key``.

        Returns ``False`` (and stores nothing) for an empty text or an ``expires_at`` already past.
        Adding a key again replaces its previous text and partition.
        """
        _check_partition(partition)
        _check_text(text)
        if not isinstance(record_key, str) or not record_key:
            raise ConfigError(f"record_key must be a non-empty str, not {record_key!r}")
        if expires_at is not None and (
            isinstance(expires_at, bool)
            or not isinstance(expires_at, int | float)
            or not math.isfinite(expires_at)
        ):
            raise ConfigError(f"expires_at must be a finite number or None, not {expires_at!r}")
        if not text.strip() or (expires_at is not None and expires_at <= self._clock()):
            return False
        vector = (await self._embeddings.embed([text]))[0]
        self._index.add(partition, record_key, vector, text=text, expires_at=expires_at)
        return True

    def delete(self, record_key: str) -> bool:
        """Forget the text indexed for ``record_key``; ``True`` if there was one."""
        return self._index.remove(record_key)

    def delete_partition(self, partition: str) -> int:
        """Forget every text of ``partition``; return how many."""
        return self._index.remove_partition(partition)

    def delete_where(self, predicate: Callable[[str], bool]) -> int:
        """Forget every text whose record key satisfies ``predicate``; return how many.

        A namespace's texts, for instance: ``lambda key: key.split("/")[1] == namespace``.
        """
        return self._index.remove_where(predicate)

    def stats(self) -> SemanticStats:
        """A snapshot of the counters."""
        with self._lock:
            return SemanticStats(
                self._lookups,
                self._hits,
                self._below,
                self._vetoed,
                MappingProxyType(dict(self._vetoes)),
            )


def _sentence_model(embeddings: EmbeddingCache) -> Any:
    """The loaded sentence-transformers model behind ``embeddings`` (a cross-encoder reuses its
    tokenizer and lower layers), or ``None`` when the embedder is not a local one."""
    getter = getattr(embeddings.embedder, "sentence_model", None)
    return getter() if callable(getter) else None


def _choose_verifier(
    choice: Verifier | CrossEncoder | bool, embeddings: EmbeddingCache
) -> Verifier | CrossEncoder | None:
    if choice is False:
        return None
    # A cross-encoder runs on the local embedder's own model; a remote embedder has none here.
    local = callable(getattr(embeddings.embedder, "sentence_model", None))
    if choice is True:
        # Only the model's name is compared here: asking a local model its dimension loads it,
        # and constructing the cache must stay cheap (the verifier checks it on first use).
        # The perceptron, not the cross-encoder: on held-out QQP pairs the packaged cross-encoder
        # served more duplicates but overshot the 1 % wrong-answer budget its threshold was
        # chosen for, and served fewer plain rewordings (bench/results/semantic.md).
        return packaged_verifier(embeddings.model)
    if not isinstance(choice, Verifier | CrossEncoder):
        raise ConfigError(
            f"verifier must be a Verifier, a CrossEncoder, True or False, not {choice!r}"
        )
    if choice.model != embeddings.model:
        raise ConfigError(f"the verifier was fitted on {choice.model}, not on {embeddings.model}")
    if isinstance(choice, CrossEncoder) and not local:
        raise ConfigError("a cross-encoder needs a LocalEmbedder (it reuses its model's layers)")
    return choice


def _check_partition(partition: object) -> None:
    if not isinstance(partition, str) or not partition:
        raise ConfigError(f"partition must be a non-empty str, not {partition!r}")


def _check_text(text: object) -> None:
    if not isinstance(text, str):
        raise ConfigError(f"text must be a str, not {type(text).__name__}")
