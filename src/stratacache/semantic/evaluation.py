"""Labelled pairs through the real pipeline: the core of ``strata eval-pairs`` and ``calibrate``.

A pair file holds one JSON object per line: ``{"a": ..., "b": ..., "same": 0|1}`` (``same_answer``
is accepted for ``same``) and an optional ``category``. For each pair, ``a`` is added to an empty
partition of its own and ``b`` is looked up there, so the score, the guard verdict, the verifier's
probability and the decision are exactly what a live lookup would see. :func:`summarize` turns the
outcomes into the figures the issue asks for (served-when-same, wrong-when-different, precision,
per category), and :func:`stratacache.semantic.calibrate` takes :func:`labelled` outcomes to choose
a cosine threshold, or (with ``floor=``) a verifier threshold.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from stratacache.errors import ConfigError
from stratacache.semantic.base import GuardVerdict
from stratacache.semantic.cache import LabelledPair, SemanticCache

__all__ = [
    "PairOutcome",
    "PairSummary",
    "TextPair",
    "labelled",
    "read_pairs",
    "score_pairs",
    "summarize",
]


@dataclass(frozen=True, slots=True)
class TextPair:
    """One labelled pair: would the answer cached for ``a`` be right for ``b``?"""

    a: str
    """The text whose answer is cached."""
    b: str
    """The text looked up."""
    same: bool
    """Whether ``a``'s answer is right for ``b``."""
    category: str = ""
    """An optional label for per-category rows (``negation``, ``paraphrase``...)."""


@dataclass(frozen=True, slots=True)
class PairOutcome:
    """What the pipeline made of one pair."""

    pair: TextPair
    """The pair."""
    score: float
    """Cosine similarity of ``a`` and ``b`` (``-inf`` when ``b`` is empty and never looked up)."""
    veto: GuardVerdict | None
    """The first guard that vetoes serving ``a``'s answer for ``b``."""
    probability: float | None = None
    """The verifier's probability (``None``: the cache has no verifier, or ``b`` is empty)."""
    served: bool = False
    """Whether the cache, as configured, served ``a``'s answer for ``b``."""


@dataclass(frozen=True, slots=True)
class PairSummary:
    """Figures over a set of outcomes at one threshold (fractions from 0 to 1; NaN if undefined)."""

    pairs: int
    """How many pairs."""
    served_when_same: float
    """Recall: right pairs served / right pairs."""
    wrong_when_different: float
    """False-hit rate: wrong pairs served / pairs that must not match."""
    precision: float
    """Right pairs served / pairs served (1.0 when nothing is served)."""
    categories: tuple[tuple[str, PairSummary], ...] = ()
    """The same figures per ``category``, sorted by name (empty when no pair has one)."""


def read_pairs(lines: Iterable[str]) -> list[TextPair]:
    """Parse JSONL pair lines; blank lines are skipped.

    :raises ConfigError: a line that is not a pair, naming its line number.
    """
    out: list[TextPair] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            a, b = item["a"], item["b"]
            same = item["same"] if "same" in item else item["same_answer"]
            category = item.get("category", "")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"line {number} is not a labelled pair: {exc!r}") from None
        if not isinstance(a, str) or not isinstance(b, str):
            raise ConfigError(f"line {number}: 'a' and 'b' must be strings")
        if same not in (0, 1) or not isinstance(same, int | bool):
            raise ConfigError(f"line {number}: 'same' must be 0, 1, true or false")
        if not isinstance(category, str):
            raise ConfigError(f"line {number}: 'category' must be a string")
        out.append(TextPair(a, b, bool(same), category))
    return out


async def score_pairs(
    cache: SemanticCache, pairs: Sequence[TextPair], *, partition_prefix: str = "eval"
) -> list[PairOutcome]:
    """Run every pair through ``cache`` (its embedder, index and guards) and return the outcomes.

    Each pair uses a partition of its own, emptied afterwards, so pairs never see each other and
    the cache is left as it was. Texts are embedded in one batch first (through the cache's
    embedding cache, so nothing is embedded twice).
    """
    await cache.embeddings.embed(sorted({t for p in pairs for t in (p.a, p.b) if t.strip()}))
    out: list[PairOutcome] = []
    for i, pair in enumerate(pairs):
        partition = f"{partition_prefix}/{i}"
        try:
            await cache.add(partition, pair.a, f"{partition}/a")
            found = await cache.explain(partition, pair.b, k=1)
        finally:
            cache.delete_partition(partition)
        if found:
            best = found[0]
            out.append(PairOutcome(pair, best.score, best.veto, best.probability, best.served))
        else:  # an empty text is never indexed nor served
            out.append(PairOutcome(pair, -math.inf, None))
    return out


def labelled(
    outcomes: Iterable[PairOutcome], *, guarded: bool = True, floor: float | None = None
) -> list[LabelledPair]:
    """Outcomes as :func:`~stratacache.semantic.calibrate` input (vetoes ignored if not ``guarded``).

    With ``floor``, the verifier is calibrated instead of the cosine threshold: each pair is scored
    by its verifier probability, and a pair under the cosine ``floor`` (or without a probability)
    counts as never served.
    """
    if floor is not None:
        return [
            LabelledPair(
                o.probability if o.probability is not None else -1.0,
                o.pair.same,
                (guarded and o.veto is not None) or o.probability is None or o.score < floor,
            )
            for o in outcomes
        ]
    return [
        LabelledPair(
            o.score if math.isfinite(o.score) else -1.0,
            o.pair.same,
            (guarded and o.veto is not None) or not math.isfinite(o.score),
        )
        for o in outcomes
    ]


def summarize(
    outcomes: Sequence[PairOutcome],
    threshold: float | None = None,
    *,
    guarded: bool = True,
    verifier_threshold: float | None = None,
) -> PairSummary:
    """The figures of a decision rule over ``outcomes``.

    With ``threshold=None``, the rule is the cache's own decision (:attr:`PairOutcome.served`).
    Otherwise a pair is served when its cosine score reaches ``threshold``, no guard vetoes it
    (when ``guarded``) and, with ``verifier_threshold``, its verifier probability reaches that.
    """

    def served(o: PairOutcome) -> bool:
        if threshold is None:
            return o.served
        if o.score < threshold or (guarded and o.veto is not None):
            return False
        return verifier_threshold is None or (
            o.probability is not None and o.probability >= verifier_threshold
        )

    summary = _figures(outcomes, served)
    names = sorted({o.pair.category for o in outcomes if o.pair.category})
    categories = tuple(
        (name, _figures([o for o in outcomes if o.pair.category == name], served)) for name in names
    )
    return PairSummary(
        summary.pairs,
        summary.served_when_same,
        summary.wrong_when_different,
        summary.precision,
        categories,
    )


def _figures(outcomes: Sequence[PairOutcome], served: Callable[[PairOutcome], bool]) -> PairSummary:
    same = [o for o in outcomes if o.pair.same]
    different = [o for o in outcomes if not o.pair.same]
    right = sum(served(o) for o in same)
    wrong = sum(served(o) for o in different)
    return PairSummary(
        len(outcomes),
        right / len(same) if same else math.nan,
        wrong / len(different) if different else math.nan,
        right / (right + wrong) if right + wrong else 1.0,
    )
