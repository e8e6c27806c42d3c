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


def test_bound_label_children_count_like_fresh_ones() -> None:
    # Children are bound once and reused; a series appears only once it has been counted.
    metrics = Metrics()
    assert "strata_requests_total{" not in metrics.exposition()[0].decode()
    for _ in range(3):
        metrics.request_served("chat.completions", "hit", "memory", 0.001)
        metrics.request_served("chat.completions", "coalesced", None, 0.01)
        metrics.upstream_called("chat.completions", 0.2, None, "timeout")
        metrics.not_stored("chat.completions", "truncated")
        metrics.request_coalesced("chat.completions")
    assert metrics.value("strata_requests_total", outcome="hit", tier="memory") == 3
    assert metrics.value("strata_requests_total", outcome="coalesced", tier="") == 3
    assert metrics.value("strata_hit_latency_seconds_count") == 3
    assert metrics.value("strata_miss_latency_seconds_count") == 0
    assert metrics.value("strata_upstream_errors_total", kind="timeout") == 3
    assert metrics.value("strata_upstream_latency_seconds_count") == 0
    assert metrics.value("strata_not_stored_total", reason="truncated") == 3
    assert metrics.value("strata_coalesced_requests_total") == 3


def test_many_label_values_stay_counted() -> None:
    # More distinct models than the bound children kept: the memo is dropped, counts are not.
    metrics = Metrics(PriceTable({"m": Price(1.0, 2.0)}))
    usage = {"prompt_tokens": 1, "completion_tokens": 1}
    models = [f"m-{i}" for i in range(2100)]
    for model in models + models[:10]:
        metrics.tokens_saved("chat.completions", model, usage)
    assert metrics.value("strata_tokens_served_total", kind="input") == 2110
    assert metrics.value("strata_tokens_served_total", model="m-0", kind="output") == 2
    assert metrics.value("strata_dollars_saved_total", model="m-0") == 2 * 3.0 / 1_000_000
