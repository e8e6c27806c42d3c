"""The transformers adapter: reused blocks give the logits a full recompute gives, for Llama and GPT-2.

Models are tiny and random (built from configs, nothing downloaded) and run in float32, where
reusing blocks must match recomputing to 1e-5.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
)

from stratacache.errors import ConfigError, RequestError
from stratacache.kv import (
    DiskKVStore,
    HostMemoryKVStore,
    KVStore,
    PrefixCachedLM,
    RedisKVStore,
    TieredKVStore,
    weights_fingerprint,
)

TOLERANCE = 1e-5
BLOCK = 8
VOCAB = 96


def _llama(seed: int = 0) -> PreTrainedModel:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    model = LlamaForCausalLM(config)
    model.train(False)
    return model


def _gpt2(seed: int = 0) -> PreTrainedModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=256,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(config)
    model.train(False)
    return model


MODELS: dict[str, Callable[[], PreTrainedModel]] = {"llama": _llama, "gpt2": _gpt2}


@pytest.fixture(scope="module", params=list(MODELS))
def model(request: pytest.FixtureRequest) -> PreTrainedModel:
    """Each tiny model, built once per module."""
    return MODELS[request.param]()


@pytest.fixture(scope="module")
def llama() -> PreTrainedModel:
    """The tiny Llama-style model alone, for tests that need only one architecture."""
    return _llama()


@pytest.fixture
def tiered(tmp_path: Path) -> Iterator[TieredKVStore]:
    """Memory over disk, as a deployment would run it."""
    store = TieredKVStore([HostMemoryKVStore(max_bytes=16 << 20), DiskKVStore(tmp_path / "kv")])
    yield store
    store.close()


def _runner(model: PreTrainedModel, store: KVStore, **kwargs: object) -> PrefixCachedLM:
    return PrefixCachedLM(model, store, model_id="tiny", block_size=BLOCK, **kwargs)  # type: ignore[arg-type]


def _prompt(n: int, seed: int = 1) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, (n,), generator=gen).tolist()


def _reference(model: PreTrainedModel, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits: torch.Tensor = model(input_ids=torch.tensor([tokens])).logits[0]
    return logits


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def test_reused_blocks_give_the_recomputed_logits(
    model: PreTrainedModel, tiered: TieredKVStore
) -> None:
    lm = _runner(model, tiered)
    tokens = _prompt(5 * BLOCK + 3)
    reference = _reference(model, tokens)
    first = lm.prefill(tokens, all_logits=True)
    assert (first.reused_tokens, first.stored_blocks) == (0, 5)
    assert _diff(first.logits, reference) <= TOLERANCE
    second = lm.prefill(tokens, all_logits=True)
    assert (second.reused_tokens, second.computed_tokens, second.loaded_blocks) == (40, 3, 5)
    assert second.logits.shape == (3, VOCAB)
    assert _diff(second.logits, reference[40:]) <= TOLERANCE
    assert _diff(second.logits[-1], reference[-1]) <= TOLERANCE


def test_blocks_that_went_through_the_disk_give_the_same_logits(
    model: PreTrainedModel, tmp_path: Path
) -> None:
    tokens = _prompt(4 * BLOCK + 5)
    reference = _reference(model, tokens)
    _runner(model, DiskKVStore(tmp_path)).prefill(tokens)
    # A new process would see only the files: a fresh store over the same directory.
    restarted = _runner(model, DiskKVStore(tmp_path)).prefill(tokens)
    assert restarted.reused_tokens == 4 * BLOCK
    assert _diff(restarted.logits[-1], reference[-1]) <= TOLERANCE


def test_the_returned_cache_continues_decoding_correctly(
    model: PreTrainedModel, tiered: TieredKVStore
) -> None:
    lm = _runner(model, tiered)
    tokens = _prompt(3 * BLOCK + 2)
    lm.prefill(tokens)
    warm = lm.prefill(tokens)
    assert warm.reused_tokens == 3 * BLOCK
    step = warm.next_token
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[step]]), past_key_values=warm.cache)
    assert _diff(out.logits[0, -1], _reference(model, [*tokens, step])[-1]) <= TOLERANCE


@pytest.mark.parametrize("k", [0, 1, 3])
def test_a_changed_token_in_block_k_reuses_only_the_blocks_before_it(
    model: PreTrainedModel, tiered: TieredKVStore, k: int
) -> None:
    lm = _runner(model, tiered)
    tokens = _prompt(5 * BLOCK + 1)
    lm.prefill(tokens)
    changed = list(tokens)
    changed[k * BLOCK + 5] = (changed[k * BLOCK + 5] % (VOCAB - 1)) + 1
    result = lm.prefill(changed)
    assert result.loaded_blocks == k
    assert result.reused_tokens == k * BLOCK
    assert result.stored_blocks == 5 - k  # the changed block and every one after it are new
    assert _diff(result.logits[-1], _reference(model, changed)[-1]) <= TOLERANCE


def test_another_adapter_or_tenant_reuses_nothing(llama: PreTrainedModel) -> None:
    store = HostMemoryKVStore(max_bytes=16 << 20)
    lm = _runner(llama, store, tenant="acme")
    tokens = _prompt(4 * BLOCK)
    lm.prefill(tokens)
    assert lm.prefill(tokens, adapter="lora-1").reused_tokens == 0
    assert lm.prefill(tokens, tenant="globex").reused_tokens == 0
    assert _runner(llama, store, tenant="globex").prefill(tokens).reused_tokens == 4 * BLOCK - 1
    assert lm.prefill(tokens, adapter="lora-2").reused_tokens == 0
    assert lm.prefill(tokens, adapter="lora-1").reused_tokens == 4 * BLOCK - 1
    assert lm.prefill(tokens).reused_tokens == 4 * BLOCK - 1


def test_other_weights_under_another_model_id_reuse_nothing(llama: PreTrainedModel) -> None:
    other = _llama(seed=1)
    assert weights_fingerprint(llama) == weights_fingerprint(_llama())
    assert weights_fingerprint(llama) != weights_fingerprint(other)
    store = HostMemoryKVStore(max_bytes=16 << 20)
    tokens = _prompt(3 * BLOCK + 1)
    ours = PrefixCachedLM(llama, store, model_id=weights_fingerprint(llama), block_size=BLOCK)
    theirs = PrefixCachedLM(other, store, model_id=weights_fingerprint(other), block_size=BLOCK)
    ours.prefill(tokens)
    result = theirs.prefill(tokens)
    assert result.reused_tokens == 0
    assert _diff(result.logits[-1], _reference(other, tokens)[-1]) <= TOLERANCE


def test_a_fully_cached_prompt_still_computes_its_last_token(
    model: PreTrainedModel, tiered: TieredKVStore
) -> None:
    lm = _runner(model, tiered)
    tokens = _prompt(4 * BLOCK)
    lm.prefill(tokens)
    again = lm.prefill(tokens)
    assert (again.reused_tokens, again.computed_tokens, again.stored_blocks) == (31, 1, 0)
    assert again.cache.get_seq_length() == 4 * BLOCK
    assert _diff(again.logits[-1], _reference(model, tokens)[-1]) <= TOLERANCE


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_block_file_is_recomputed(
    llama: PreTrainedModel, tmp_path: Path, damage: str
) -> None:
    tokens = _prompt(4 * BLOCK + 2)
    lm = _runner(llama, DiskKVStore(tmp_path))
    lm.prefill(tokens)
    hexkey = lm.keys(tokens)[2].hex()
    path = tmp_path / hexkey[:2] / f"{hexkey}.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(data[:-100]))
    else:
        data[-7] ^= 0x10
        path.write_bytes(bytes(data))
    store = DiskKVStore(tmp_path)
    result = _runner(llama, store).prefill(tokens)
    assert result.loaded_blocks == 2
    assert result.stored_blocks == 2  # the damaged block is written again, whole
    assert _diff(result.logits[-1], _reference(llama, tokens)[-1]) <= TOLERANCE
    assert len(store.report.skipped) + store.stats().corrupt_blocks == 1


def test_stored_blocks_own_their_memory(llama: PreTrainedModel) -> None:
    store = HostMemoryKVStore(max_bytes=16 << 20)
    lm = _runner(llama, store)
    tokens = _prompt(2 * BLOCK)
    lm.prefill(tokens)
    for block in store.load(lm.keys(tokens)):
        for tensor in (*block.keys, *block.values):
            assert tensor.is_contiguous()
            # A view of the whole cache would have a storage larger than itself.
            assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()


def test_no_reuse_and_no_store_is_a_plain_prefill(llama: PreTrainedModel) -> None:
    store = HostMemoryKVStore(max_bytes=16 << 20)
    lm = _runner(llama, store)
    tokens = _prompt(3 * BLOCK)
    plain = lm.prefill(tokens, reuse=False, store=False)
    assert len(store) == 0
    assert plain.reused_tokens == 0
    assert _diff(plain.logits[-1], _reference(llama, tokens)[-1]) <= TOLERANCE
    lm.prefill(tokens, reuse=False)
    assert len(store) == 3


def test_timings_come_from_the_injected_clock(llama: PreTrainedModel) -> None:
    ticks = itertools.count()
    lm = _runner(llama, HostMemoryKVStore(max_bytes=1 << 20), clock=lambda: float(next(ticks)))
    timings = lm.prefill(_prompt(BLOCK + 1)).timings
    assert (timings.hash_s, timings.load_s, timings.compute_s, timings.store_s) == (1, 1, 1, 1)
    assert timings.ttft_s == 3


def test_the_layout_enters_the_seed(model: PreTrainedModel) -> None:
    lm = _runner(model, HostMemoryKVStore(max_bytes=1 << 20))
    layout = lm.layout
    assert layout.layers == 2
    assert layout.dtype == "float32"
    assert lm.seed.layout == layout.name
    assert f"kv_heads={layout.kv_heads}" in layout.name
    assert layout.architecture in {"LlamaForCausalLM", "GPT2LMHeadModel"}


def test_a_sliding_window_model_is_refused() -> None:
    config = MistralConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=16,
    )
    with pytest.raises(ConfigError, match="DynamicSlidingWindowLayer"):
        _runner(MistralForCausalLM(config), HostMemoryKVStore(max_bytes=1 << 20))


@pytest.mark.parametrize("bad", [[], [1, -2, 3], [1.0, 2.0], [[1, 2]]])
def test_bad_prompts_raise_request_error(llama: PreTrainedModel, bad: list[object]) -> None:
    lm = _runner(llama, HostMemoryKVStore(max_bytes=1 << 20))
    with pytest.raises(RequestError):
        lm.prefill(bad)  # type: ignore[arg-type]


def test_a_tensor_prompt_is_accepted(llama: PreTrainedModel) -> None:
    lm = _runner(llama, HostMemoryKVStore(max_bytes=1 << 20))
    tokens = _prompt(BLOCK + 1)
    assert lm.prefill(torch.tensor(tokens)).prompt_tokens == BLOCK + 1  # type: ignore[arg-type]


def test_a_store_that_is_down_costs_reuse_not_the_answer(
    llama: PreTrainedModel, caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    redis = pytest.importorskip("redis", reason="redis-py (the redis extra) is not installed")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = RedisKVStore(redis.Redis(port=port, retry=None, socket_connect_timeout=0.5))
    tokens = _prompt(3 * BLOCK + 1)
    result = _runner(llama, dead).prefill(tokens)
    assert (result.reused_tokens, result.stored_blocks) == (0, 0)
    assert _diff(result.logits[-1], _reference(llama, tokens)[-1]) <= TOLERANCE
    assert "computing the whole prompt" in caplog.text
    assert "not stored" in caplog.text


def test_a_store_that_is_not_a_kv_store_is_refused(llama: PreTrainedModel) -> None:
    with pytest.raises(ConfigError):
        PrefixCachedLM(llama, object(), model_id="m")  # type: ignore[arg-type]
