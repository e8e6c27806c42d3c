"""Tests for stratacache.observability.metrics."""

from __future__ import annotations

import prometheus_client

from stratacache.observability.metrics import Metrics
from stratacache.observability.pricing import Price, PriceTable


def test_each_metrics_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.request_served("chat.completions", "hit", "memory", 0.001)
    assert a.value("strata_requests_total") == 1
    assert b.value("strata_requests_total") == 0
    # Nothing lands in prometheus_client's global registry.
    assert prometheus_client.REGISTRY.get_sample_value("strata_requests_total") is None


def test_exposition_is_prometheus_text() -> None:
    metrics = Metrics()
    metrics.request_served("chat.completions", "miss", None, 0.3)
    metrics.upstream_called("chat.completions", 0.25, 200, "")
    metrics.verification_failed("sqlite", "signature")
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    text = body.decode()
    assert 'strata_requests_total{outcome="miss",route="chat.completions",tier=""} 1.0' in text
    assert 'strata_miss_latency_seconds_bucket{le="0.5",route="chat.completions"} 1.0' in text
    assert 'strata_verification_failures_total{reason="signature",tier="sqlite"} 1.0' in text


def test_snapshot() -> None:
    metrics = Metrics(PriceTable({"m": Price(input=1.0, output=2.0)}))
    for _ in range(3):
        metrics.request_served("chat.completions", "hit", "memory", 0.002)
    metrics.request_served("chat.completions", "miss", None, 0.4)
    metrics.request_served("embeddings", "coalesced", None, 0.3)
    metrics.tokens_saved("chat.completions", "m", {"prompt_tokens": 1000, "completion_tokens": 500})
    metrics.request_coalesced("embeddings")
    metrics.upstream_called("chat.completions", 0.2, None, "timeout")
    metrics.not_stored("chat.completions", "finish_reason:length")
    stats = metrics.snapshot()
    assert stats["requests"] == {
        "total": 5,
        "by_outcome": {"hit": 3, "miss": 1, "coalesced": 1},
        "by_route": {"chat.completions": 4, "embeddings": 1},
        "by_tier": {"memory": 3},
    }
    assert stats["hit_rate"] == 4 / 5
    hit = stats["latency_seconds"]["hit"]
    assert hit["count"] == 3
    assert hit["p50"] == 0.0025  # the bucket bound holding the median
    assert stats["latency_seconds"]["miss"]["count"] == 1
    assert stats["latency_seconds"]["upstream"]["count"] == 0  # a failed call has no latency
    assert stats["tokens_served_from_cache"] == {"input": 1000, "output": 500}
    assert stats["dollars_saved"] == (1000 * 1.0 + 500 * 2.0) / 1_000_000
    assert stats["coalesced_requests"] == 1
    assert stats["upstream_errors"] == {"timeout": 1}
    assert stats["not_stored"] == {"finish_reason:length": 1}


def test_empty_snapshot() -> None:
    stats = Metrics().snapshot()
    assert stats["requests"]["total"] == 0
    assert stats["hit_rate"] == 0.0
    assert stats["latency_seconds"]["hit"] == {"count": 0, "mean": None, "p50": None, "p99": None}
