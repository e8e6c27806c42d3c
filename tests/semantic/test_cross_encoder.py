"""The cross-encoder verifier: its transformer layer, weight file, and place in SemanticCache."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stratacache.errors import ConfigError
from stratacache.semantic import DEFAULT_MODEL, ExactIndex, LocalEmbedder, SemanticCache
from stratacache.semantic import cross_encoder as ce_module
from stratacache.semantic.cross_encoder import (
    CrossEncoder,
    bert_layer,
    embed_tokens,
    layer_params,
    packaged_cross_encoder,
)
from stratacache.semantic.verifier import LEXICAL_FEATURES, Verifier

from .helpers import HashingEmbedder

torch = pytest.importorskip("torch", reason="the semantic extra (torch) is not installed")


def constant_encoder(embedder: LocalEmbedder, bias: float, floor: float = 0.3) -> CrossEncoder:
    """A cross-encoder over the packaged model whose head ignores the text: always ``bias``."""
    state = embedder.sentence_model()[0].auto_model.state_dict()
    top = [{k: v.numpy().copy() for k, v in layer_params(state, 5).items()}]
    return CrossEncoder(
        model=embedder.model,
        frozen_layers=5,
        heads=12,
        max_tokens=64,
        threshold=0.5,
        floor=floor,
        layers=tuple(top),
        head_w=np.zeros(384, np.float32),
        head_b=bias,
    )


def test_the_layer_is_the_models_own(minilm: LocalEmbedder) -> None:
    """Embeddings + six hand-written layers give what transformers' BertModel gives."""
    model = minilm.sentence_model()[0]
    batch = model.tokenizer(
        ["How do I learn Python?", "hi"],
        ["How do I learn Python fast?", "hello there, friend"],
        padding=True,
        return_tensors="pt",
    )
    with torch.inference_mode():
        reference = model.auto_model(**batch).last_hidden_state
        state = model.auto_model.state_dict()
        h = embed_tokens(state, batch["input_ids"], batch["token_type_ids"])
        mask = batch["attention_mask"].bool()[:, None, None, :]
        for i in range(6):
            h = bert_layer(h, layer_params(state, i), 12, mask)
    keep = batch["attention_mask"].bool()
    assert float((h - reference)[keep].abs().max()) < 1e-4


def test_save_and_load_round_trip(minilm: LocalEmbedder, tmp_path: Path) -> None:
    encoder = constant_encoder(minilm, 2.0)
    path = tmp_path / "ce.npz"
    encoder.save(path)
    loaded = CrossEncoder.load(path)
    assert loaded.model == encoder.model
    assert (loaded.frozen_layers, loaded.heads, loaded.threshold) == (5, 12, 0.5)
    # Stored as float16: the loaded layers are the rounded originals.
    for k, v in encoder.layers[0].items():
        assert loaded.layers[0][k].dtype == np.float16
        assert np.allclose(loaded.layers[0][k], v, atol=1e-2, rtol=1e-2)
    model = minilm.sentence_model()
    p = loaded.probabilities(model, ["a b", "c"], ["a b", "d e f"])
    assert p == pytest.approx([1 / (1 + np.exp(-2.0))] * 2, abs=1e-6)
    # A batch and a single pair give the same probability (padding does not leak in).
    real = packaged_cross_encoder(DEFAULT_MODEL) or loaded
    queries = ["How can I reset my password?", "Is it safe?"]
    candidates = ["How do I reset my password?", "Is it safe to swim in the lake today?"]
    u, v = minilm.embed(queries), minilm.embed(candidates)
    both = real.probabilities(model, queries, candidates, u, v)
    one = [
        float(real.probabilities(model, [q], [c], u[i : i + 1], v[i : i + 1])[0])
        for i, (q, c) in enumerate(zip(queries, candidates, strict=True))
    ]
    assert both == pytest.approx(one, abs=1e-4)


def test_load_rejects_what_is_not_a_cross_encoder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no cross-encoder"):
        CrossEncoder.load(tmp_path / "absent.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="not a cross-encoder"):
        CrossEncoder.load(junk)
    verifier = Verifier.from_arrays(
        [np.zeros((2 * 2 + len(LEXICAL_FEATURES), 1), np.float32)],
        [np.zeros(1, np.float32)],
        model="toy",
        dimension=2,
        threshold=0.5,
        floor=0.0,
    )
    other = tmp_path / "verifier.npz"
    verifier.save(other)
    with pytest.raises(ConfigError, match="format"):
        CrossEncoder.load(other)


def test_bad_settings_are_refused(minilm: LocalEmbedder) -> None:
    encoder = constant_encoder(minilm, 0.0)
    with pytest.raises(ConfigError, match="probability"):
        encoder.with_threshold(1.5)
    with pytest.raises(ConfigError, match="cosine"):
        encoder.with_threshold(0.5, floor=2.0)
    with pytest.raises(ConfigError, match="equal lengths"):
        encoder.probabilities(minilm.sentence_model(), ["a"], ["b", "c"])


class CountingCalls:
    """Records every pair a cross-encoder is asked about (wraps the real method)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pairs: list[tuple[str, str]] = []
        real = CrossEncoder.probabilities

        def counting(
            encoder: CrossEncoder,
            model: Any,
            queries: Sequence[str],
            candidates: Sequence[str],
            *vectors: Any,
        ) -> Any:
            self.pairs += list(zip(queries, candidates, strict=True))
            return real(encoder, model, queries, candidates, *vectors)

        monkeypatch.setattr(CrossEncoder, "probabilities", counting)


async def test_it_runs_only_on_candidates_that_passed_the_floor_and_the_guards(
    minilm: LocalEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = CountingCalls(monkeypatch)
    accept = constant_encoder(minilm, 10.0, floor=0.6)
    cache = SemanticCache(minilm, ExactIndex(384), verifier=accept)
    assert cache.threshold == 0.6  # the cross-encoder's floor
    await cache.add("p", "Track order 48213", "k1")
    await cache.add("p", "How do I reset my password?", "k2")
    assert await cache.lookup("p", "Track order 48231") is None  # the number guard vetoes
    assert await cache.lookup("p", "What is the capital of Peru?") is None  # below the floor
    assert calls.pairs == []
    hit = await cache.lookup("p", "How can I reset my password?")
    assert hit is not None
    assert hit.key == "k2"
    assert calls.pairs == [("How can I reset my password?", "How do I reset my password?")]
    reject = constant_encoder(minilm, -10.0, floor=0.6)
    strict = SemanticCache(cache.embeddings, cache.index, verifier=reject)
    assert await strict.lookup("p", "How can I reset my password?") is None
    assert dict(strict.stats().vetoes) == {"verifier": 1}
    [best, *_] = await strict.explain("p", "How can I reset my password?")
    assert best.probability == pytest.approx(1 / (1 + np.exp(10.0)), abs=1e-6)
    assert not best.verified


async def test_the_packaged_cross_encoder_serves_paraphrases_and_refuses_narrower_questions(
    minilm: LocalEmbedder,
) -> None:
    encoder = packaged_cross_encoder(DEFAULT_MODEL)
    if encoder is None:
        pytest.skip("the packaged cross-encoder weights are not in this checkout")
    assert not isinstance(SemanticCache(minilm, ExactIndex(384)).verifier, CrossEncoder)  # opt-in
    cache = SemanticCache(minilm, ExactIndex(384), verifier=encoder)
    assert cache.verifier is encoder
    assert cache.threshold == encoder.floor
    assert set(encoder.info["pairs"]) == {"train", "validation", "test"}
    stored = {
        "How do I reset my password?": "How can I reset my password?",
        "Give me tips for better sleep": "What are some tips to sleep better?",
        "How do I get better at chess?": "How do I get better at chess openings?",
        "What is the best way to learn guitar?": "What is the best way to learn guitar chords?",
    }
    for i, text in enumerate(stored):
        await cache.add(f"p{i}", text, f"k{i}")
    served = [await cache.lookup(f"p{i}", asked) for i, asked in enumerate(stored.values())]
    # Two paraphrases served (the perceptron verifier alone refuses the second one) ...
    assert [hit is not None for hit in served] == [True, True, False, False]
    # ... and two narrower questions refused although they clear the cosine floor and no guard
    # fires: a perceptron verifier loosened to serve more lets them through.
    assert dict(cache.stats().vetoes) == {"verifier": 2}
    perceptron = Verifier.load(_mlp_path())
    loose = SemanticCache(cache.embeddings, cache.index, verifier=perceptron.with_threshold(0.3))
    assert await loose.lookup("p2", stored["How do I get better at chess?"]) is not None
    strict = SemanticCache(cache.embeddings, cache.index, verifier=perceptron)
    assert await strict.lookup("p1", stored["Give me tips for better sleep"]) is None


def _mlp_path() -> Path:
    from stratacache.semantic.verifier import packaged_path

    return packaged_path()


def test_disabled_cleanly_without_weights_or_for_another_model(
    minilm: LocalEmbedder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Another embedder: neither packaged verifier applies.
    assert packaged_cross_encoder("hashing-test") is None
    other = SemanticCache(HashingEmbedder(384), ExactIndex(384))
    assert other.verifier is None
    # A cross-encoder cannot run over an embedder that is not the local model.
    named = HashingEmbedder(384, model=DEFAULT_MODEL)
    with pytest.raises(ConfigError, match="LocalEmbedder"):
        SemanticCache(named, ExactIndex(384), verifier=constant_encoder(minilm, 0.0))
    with pytest.raises(ConfigError, match="fitted on"):
        SemanticCache(HashingEmbedder(384), ExactIndex(384), verifier=constant_encoder(minilm, 0))
    # The weights absent (a source checkout without them): the perceptron verifier, if any.
    monkeypatch.setattr(ce_module, "packaged_path", lambda: tmp_path / "absent.npz")
    ce_module._packaged.cache_clear()
    try:
        assert packaged_cross_encoder(DEFAULT_MODEL) is None
        fallback = SemanticCache(minilm, ExactIndex(384))
        assert not isinstance(fallback.verifier, CrossEncoder)
    finally:
        ce_module._packaged.cache_clear()


async def test_a_perceptron_inside_the_file_adds_its_logit(
    minilm: LocalEmbedder, tmp_path: Path
) -> None:
    """The shipped file may carry a perceptron verifier whose logit joins the cross-encoder's."""
    width = 2 * 384 + len(LEXICAL_FEATURES)
    w0 = np.zeros((width, 1), np.float32)
    w0[2 * 384 + LEXICAL_FEATURES.index("same_word_set"), 0] = 1.0
    perceptron = Verifier.from_arrays(
        [w0, np.array([[4.0]], np.float32)],
        [np.zeros(1, np.float32), np.array([0.0], np.float32)],
        model=minilm.model,
        dimension=384,
        threshold=0.5,
        floor=0.0,
    )
    base = constant_encoder(minilm, 0.0)
    combined = CrossEncoder(
        model=base.model,
        frozen_layers=base.frozen_layers,
        heads=base.heads,
        max_tokens=base.max_tokens,
        threshold=0.6,
        floor=0.3,
        layers=base.layers,
        head_w=base.head_w,
        head_b=0.0,
        perceptron=perceptron,
        perceptron_weight=0.5,
    )
    path = tmp_path / "combined.npz"
    combined.save(path)
    loaded = CrossEncoder.load(path)
    assert loaded.perceptron is not None
    assert loaded.perceptron_weight == 0.5
    model = minilm.sentence_model()
    texts = ["is the pool open", "is the pool open today"]
    u = minilm.embed(texts)
    # The same set of words: logit 0 + 0.5 * 4 = 2; other words: 0.
    p = loaded.probabilities(
        model, texts, ["is the pool open", "is the pool open"], u, u[:1].repeat(2, 0)
    )
    assert p == pytest.approx([1 / (1 + np.exp(-2.0)), 0.5], abs=1e-5)
    with pytest.raises(ConfigError, match="sentence embeddings"):
        loaded.probabilities(model, texts, texts)
    # Through the cache, which passes the embeddings itself: same words served, others not.
    cache = SemanticCache(minilm, ExactIndex(384), verifier=loaded)
    await cache.add("p", "is the pool open", "k1")
    assert await cache.lookup("p", "Is the pool open?") is not None
    assert await cache.lookup("p", "is the public pool open") is None
    assert dict(cache.stats().vetoes) == {"verifier": 1}
