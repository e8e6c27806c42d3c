"""The cache's metrics: Prometheus counters and histograms in a registry owned by one app.

Each :class:`Metrics` owns its own ``CollectorRegistry``; nothing is registered in
``prometheus_client``'s global registry, so two apps in one process (two tests, a demo beside a
server) never share or collide. :class:`Metrics` is the observer ``LLMCache`` reports to (it
satisfies :class:`stratacache.llm.cache.CacheObserver`); :meth:`Metrics.exposition` renders
``GET /metrics`` and :meth:`Metrics.snapshot` renders ``GET /stats`` from the same samples, so the
two never disagree.

The series (all prefixed ``strata_``):

============================================  ================================================
``requests_total{route,outcome,tier}``        requests by cache outcome (hit, miss, bypass,
                                              stale, coalesced, semantic-hit) and the tier
``hit_latency_seconds{route}``                request to response start, on a hit
``miss_latency_seconds{route}``               ... on a miss or bypass (first byte of a stream)
``upstream_latency_seconds{route}``           upstream call to its response headers
``upstream_errors_total{route,kind}``         upstream failures: timeout, transport, status
``tokens_served_total{route,model,kind}``     tokens answered without an upstream call
``dollars_saved_total{route,model}``          what those tokens would have cost (``pricing``)
``coalesced_requests_total{route}``           requests that joined an identical one in flight
``verification_failures_total{tier,reason}``  stored records that failed to decode or verify
``not_stored_total{route,reason}``            answers that were not stored, and why
``upstream_dollars_total{route,model}``       what upstream answers were billed (ledger)
``prompt_cache_dollars_saved_total{...}``     what the provider's prompt cache saved on them
``prompt_cache_tokens_total{...,kind}``       prompt tokens read from / written to that cache
============================================  ================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stratacache.errors import MissingExtraError
from stratacache.observability.ledger import PROVIDER_PRICES, Ledger
from stratacache.observability.pricing import PriceTable

__all__ = ["LATENCY_BUCKETS", "Metrics"]

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
"""Histogram buckets in seconds: fine below 10 ms (hits), coarse up to minutes (slow answers)."""

_SAVED_OUTCOMES = frozenset({"hit", "stale", "coalesced", "semantic-hit"})
_MAX_BOUND_CHILDREN = 4096


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:  # pragma: no cover - installed wherever tests run
        raise MissingExtraError("prometheus_client", "proxy") from exc
    return prometheus_client


class Metrics:
    """Counters and histograms for one cache, in a registry of their own."""

    def __init__(self, prices: PriceTable | None = None) -> None:
        prom = _prometheus()
        self.prices = prices or PriceTable.default()
        self.registry: Any = prom.CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests = prom.Counter(
            "strata_requests",
            "Requests answered, by cache outcome and serving tier.",
            ["route", "outcome", "tier"],
            registry=r,
        )
        self._hit_latency = prom.Histogram(
            "strata_hit_latency_seconds",
            "Time to response start for requests answered from the cache.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._miss_latency = prom.Histogram(
            "strata_miss_latency_seconds",
            "Time to response start for requests answered by the upstream.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._upstream_latency = prom.Histogram(
            "strata_upstream_latency_seconds",
            "Time from sending a request upstream to its response headers.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._upstream_errors = prom.Counter(
            "strata_upstream_errors",
            "Upstream failures by kind (timeout, transport, status).",
            ["route", "kind"],
            registry=r,
        )
        self._tokens = prom.Counter(
            "strata_tokens_served",
            "Tokens answered without calling the upstream.",
            ["route", "model", "kind"],
            registry=r,
        )
        self._dollars = prom.Counter(
            "strata_dollars_saved",
            "US dollars the tokens served from cache would have cost.",
            ["route", "model"],
            registry=r,
        )
        self._coalesced = prom.Counter(
            "strata_coalesced_requests",
            "Requests that joined an identical in-flight upstream request.",
            ["route"],
            registry=r,
        )
        self._verification = prom.Counter(
            "strata_verification_failures",
            "Stored records that failed to decode or verify (each was deleted).",
            ["tier", "reason"],
            registry=r,
        )
        self._not_stored = prom.Counter(
            "strata_not_stored",
            "Upstream answers that were not stored, by reason.",
            ["route", "reason"],
            registry=r,
        )
        # The cost ledger (observability.ledger): every provider's usage shape, priced. Anthropic
        # and Gemini list prices sit under the configured table, which wins.
        self.ledger = Ledger(PriceTable({**PROVIDER_PRICES, **self.prices.prices}))
        self._upstream_dollars = prom.Counter(
            "strata_upstream_dollars",
            "US dollars billed for upstream answers (prompt-cache discounts applied).",
            ["route", "model"],
            registry=r,
        )
        self._prompt_cache_saved = prom.Counter(
            "strata_prompt_cache_dollars_saved",
            "US dollars the provider's prompt cache saved on upstream answers (net of writes).",
            ["route", "model"],
            registry=r,
        )
        self._prompt_cache_tokens = prom.Counter(
            "strata_prompt_cache_tokens",
            "Prompt tokens read from (kind=read) or written to (kind=write) the provider's cache.",
            ["route", "model", "kind"],
            registry=r,
        )

        # Label children by label values, bound on first use and reused after: ``labels()`` builds
        # and locks on every call, which showed in the profile of a cache hit. Bound lazily, not
        # up front, so a series appears in the exposition only once it has been counted.
        self._served: dict[tuple[str, str, str | None], tuple[Any, Any]] = {}
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            if len(self._children) >= _MAX_BOUND_CHILDREN:
                self._children.clear()  # unbounded label values (model names): stay bounded
            child = self._children[key] = metric.labels(*labels)
        return child

    # --- the CacheObserver protocol -------------------------------------------------------------

    def request_served(self, route: str, outcome: str, tier: str | None, seconds: float) -> None:
        """Count one answered request and its latency (hits and misses apart)."""
        bound = self._served.get((route, outcome, tier))
        if bound is None:
            counter = self._requests.labels(route, outcome, tier or "")
            if outcome in ("hit", "stale", "semantic-hit"):
                latency = self._hit_latency.labels(route)
            elif outcome in ("miss", "bypass"):
                latency = self._miss_latency.labels(route)
            else:
                latency = None
            # route, outcome and tier take a handful of values each: this stays small.
            bound = self._served[(route, outcome, tier)] = (counter, latency)
        bound[0].inc()
        if bound[1] is not None:
            bound[1].observe(seconds)

    def tokens_saved(self, route: str, model: str | None, usage: Mapping[str, Any] | None) -> None:
        """Count the tokens (and their price) answered without an upstream call of their own."""
        charge = self.ledger.record_cache_hit(model, usage)
        prompt, completion = charge.usage.input_tokens, charge.usage.output_tokens
        label = model or "unknown"
        if prompt:
            self._child(self._tokens, route, label, "input").inc(prompt)
        if completion:
            self._child(self._tokens, route, label, "output").inc(completion)
        if charge.billed:
            self._child(self._dollars, route, label).inc(charge.billed)

    def upstream_usage(
        self, route: str, model: str | None, usage: Mapping[str, Any] | None
    ) -> None:
        """Record an upstream answer's usage in the ledger: its cost and prompt-cache savings."""
        charge = self.ledger.record_upstream(model, usage)
        label = model or "unknown"
        if charge.usage.cached_tokens:
            self._child(self._prompt_cache_tokens, route, label, "read").inc(
                charge.usage.cached_tokens
            )
        if charge.usage.cache_write_tokens:
            self._child(self._prompt_cache_tokens, route, label, "write").inc(
                charge.usage.cache_write_tokens
            )
        if charge.billed:
            self._child(self._upstream_dollars, route, label).inc(charge.billed)
        if charge.prompt_cache_saved:
            # A Counter cannot go down: writes that cost more than reads saved show in the ledger.
            saved = max(charge.prompt_cache_saved, 0.0)
            if saved:
                self._child(self._prompt_cache_saved, route, label).inc(saved)

    def upstream_called(self, route: str, seconds: float, status: int | None, error: str) -> None:
        """Record one upstream call: its latency, and ``error`` (``""`` when it succeeded)."""
        if status is not None:
            self._child(self._upstream_latency, route).observe(seconds)
        if error:
            self._child(self._upstream_errors, route, error).inc()

    def request_coalesced(self, route: str) -> None:
        """Count a request that joined an in-flight identical request."""
        self._child(self._coalesced, route).inc()

    def verification_failed(self, tier: str, reason: str) -> None:
        """Count a stored record that failed verification."""
        self._verification.labels(tier, reason).inc()

    def not_stored(self, route: str, reason: str) -> None:
        """Count an upstream answer that was not stored."""
        self._child(self._not_stored, route, reason).inc()

    # --- reading ----------------------------------------------------------------------------------

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type, for ``GET /metrics``."""
        prom = _prometheus()
        return prom.generate_latest(self.registry), str(prom.CONTENT_TYPE_LATEST)

    def value(self, name: str, **labels: str) -> float:
        """The sum of every sample of ``name`` whose labels include ``labels`` (0.0 if none)."""
        total = 0.0
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name != name:
                    continue
                if all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def snapshot(self) -> dict[str, Any]:
        """The same numbers as ``/metrics``, as a JSON-ready dict for ``GET /stats``."""
        requests: dict[str, dict[str, float]] = {"by_outcome": {}, "by_route": {}, "by_tier": {}}
        histograms: dict[str, dict[str, Any]] = {}
        tokens = {"input": 0.0, "output": 0.0}
        scalars = {
            "strata_dollars_saved_total": 0.0,
            "strata_coalesced_requests_total": 0.0,
            "strata_verification_failures_total": 0.0,
        }
        upstream_errors: dict[str, float] = {}
        not_stored: dict[str, float] = {}
        for metric in self.registry.collect():
            if metric.type == "histogram":
                histograms[metric.name] = _histogram_summary(metric.samples)
                continue
            for s in metric.samples:
                if s.name == "strata_requests_total":
                    for group, label in (
                        ("by_outcome", "outcome"),
                        ("by_route", "route"),
                        ("by_tier", "tier"),
                    ):
                        name = s.labels[label]
                        if name:
                            requests[group][name] = requests[group].get(name, 0.0) + s.value
                elif s.name == "strata_tokens_served_total":
                    tokens[s.labels["kind"]] += s.value
                elif s.name == "strata_upstream_errors_total":
                    kind = s.labels["kind"]
                    upstream_errors[kind] = upstream_errors.get(kind, 0.0) + s.value
                elif s.name == "strata_not_stored_total":
                    why = s.labels["reason"]
                    not_stored[why] = not_stored.get(why, 0.0) + s.value
                elif s.name in scalars:
                    scalars[s.name] += s.value
        outcomes = requests["by_outcome"]
        total = sum(outcomes.values())
        served = sum(outcomes.get(o, 0.0) for o in _SAVED_OUTCOMES)
        return {
            "requests": {"total": int(total), **_ints(requests)},
            "hit_rate": served / total if total else 0.0,
            "latency_seconds": {
                "hit": histograms.get("strata_hit_latency_seconds", _EMPTY_SUMMARY),
                "miss": histograms.get("strata_miss_latency_seconds", _EMPTY_SUMMARY),
                "upstream": histograms.get("strata_upstream_latency_seconds", _EMPTY_SUMMARY),
            },
            "tokens_served_from_cache": {k: int(v) for k, v in tokens.items()},
            "dollars_saved": round(scalars["strata_dollars_saved_total"], 6),
            "coalesced_requests": int(scalars["strata_coalesced_requests_total"]),
            "verification_failures": int(scalars["strata_verification_failures_total"]),
            "upstream_errors": {k: int(v) for k, v in upstream_errors.items()},
            "not_stored": {k: int(v) for k, v in not_stored.items()},
            "ledger": self.ledger.snapshot(),
        }


_EMPTY_SUMMARY: dict[str, Any] = {"count": 0, "mean": None, "p50": None, "p99": None}


def _ints(groups: dict[str, dict[str, float]]) -> dict[str, dict[str, int]]:
    return {g: {k: int(v) for k, v in values.items()} for g, values in groups.items()}


def _histogram_summary(samples: Any) -> dict[str, Any]:
    # Sum the series of every label set, then read count, mean and bucket-bound percentiles.
    buckets: dict[float, float] = {}
    count = total = 0.0
    for s in samples:
        if s.name.endswith("_bucket"):
            bound = float(s.labels["le"])
            buckets[bound] = buckets.get(bound, 0.0) + s.value
        elif s.name.endswith("_count"):
            count += s.value
        elif s.name.endswith("_sum"):
            total += s.value
    if not count:
        return dict(_EMPTY_SUMMARY)
    ordered = sorted(buckets.items())
    return {
        "count": int(count),
        "mean": total / count,
        "p50": _bucket_quantile(ordered, count, 0.50),
        "p99": _bucket_quantile(ordered, count, 0.99),
    }


def _bucket_quantile(buckets: list[tuple[float, float]], count: float, q: float) -> float | None:
    # The upper bound of the bucket holding the q-quantile: an upper estimate, honest about the
    # histogram's resolution. None when it falls in the +Inf bucket.
    rank = q * count
    for bound, cumulative in buckets:
        if cumulative >= rank:
            return None if bound == float("inf") else bound
    return None
