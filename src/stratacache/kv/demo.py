"""The KV-tier demonstration behind ``strata kv-demo``: one long shared prefix, with and without reuse.

A small Llama-style model with random weights is built from a configuration (nothing is
downloaded). A first request stores the blocks of a long shared prefix; then a second request with
the same prefix and a different suffix is run, alternately, without the tier (every token computed)
and with it (the prefix loaded, only the suffix computed). Time to first token is the time until
the last position's logits exist; the medians over the repeats are reported with their ratio, and
the largest absolute difference between the two runs' last-position logits shows that reuse did
not change the answer.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from stratacache.errors import ConfigError, MissingExtraError
from stratacache.kv.base import KVStore

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["DemoResult", "DemoSettings", "run_demo", "tiny_llama"]

TierName = Literal["memory", "disk", "memory+disk"]


@dataclass(frozen=True, slots=True)
class DemoSettings:
    """What the demo builds and runs."""

    prefix_tokens: int = 2048
    """The shared prefix's length."""
    suffix_tokens: int = 32
    """Tokens after the prefix, different in the two requests."""
    block_size: int = 256
    layers: int = 4
    hidden: int = 256
    heads: int = 8
    kv_heads: int = 4
    vocab: int = 8192
    tier: TierName = "memory"
    """Which store holds the blocks: host memory, a temporary directory, or both."""
    repeats: int = 3
    threads: int | None = None
    """torch's intra-op threads (``None``: leave torch's default)."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("prefix_tokens", "suffix_tokens", "block_size", "layers", "repeats"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1, not {value!r}")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ConfigError("hidden must be a multiple of heads, and heads of kv_heads")
        if self.tier not in ("memory", "disk", "memory+disk"):
            raise ConfigError(f"tier must be memory, disk or memory+disk, not {self.tier!r}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, not {self.threads!r}")


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What the demo measured (seconds are medians over the repeats)."""

    ttft_without_s: float
    ttft_with_s: float
    ttft_ratio: float
    """``ttft_without_s / ttft_with_s``: how many times faster the first token came."""
    max_logit_diff: float
    """The largest absolute difference between the two runs' last-position logits."""
    prompt_tokens: int
    reused_tokens: int
    computed_tokens: int
    load_s: float
    """Median time spent loading blocks and rebuilding the cache (part of ``ttft_with_s``)."""
    tier: str
    block_size: int
    model: str
    """A one-line description of the model."""
    repeats: int
    threads: int

    def as_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def tiny_llama(settings: DemoSettings) -> PreTrainedModel:
    """A random-weight Llama-style causal LM in float32, built locally from ``settings``."""
    try:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as exc:
        raise MissingExtraError(exc.name or "transformers", "kv") from exc
    torch.manual_seed(settings.seed)
    config = LlamaConfig(
        vocab_size=settings.vocab,
        hidden_size=settings.hidden,
        intermediate_size=settings.hidden * 11 // 4,
        num_hidden_layers=settings.layers,
        num_attention_heads=settings.heads,
        num_key_value_heads=settings.kv_heads,
        max_position_embeddings=settings.prefix_tokens + settings.suffix_tokens + 1,
        bos_token_id=0,
        eos_token_id=0,
    )
    model: PreTrainedModel = LlamaForCausalLM(config)  # float32: torch's default dtype
    model.train(False)
    if model.dtype != torch.float32:
        raise ConfigError(f"torch's default dtype is {model.dtype}; the demo needs float32")
    return model


def _store(tier: TierName, directory: Path) -> KVStore:
    from stratacache.kv.tiers import DiskKVStore, HostMemoryKVStore, TieredKVStore

    memory = HostMemoryKVStore(max_bytes=4 << 30)
    if tier == "memory":
        return memory
    disk = DiskKVStore(directory / "kv")
    if tier == "disk":
        memory.close()
        return disk
    return TieredKVStore([memory, disk])


def run_demo(settings: DemoSettings) -> DemoResult:
    """Build the model, fill the tier with the shared prefix, and time both ways."""
    import torch

    from stratacache.kv.transformers_adapter import PrefixCachedLM

    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    model = tiny_llama(settings)
    gen = torch.Generator().manual_seed(settings.seed + 1)
    vocab = settings.vocab

    def tokens(n: int) -> list[int]:
        ids: list[int] = torch.randint(1, vocab, (n,), generator=gen).tolist()
        return ids

    prefix = tokens(settings.prefix_tokens)
    first = prefix + tokens(settings.suffix_tokens)
    second = prefix + tokens(settings.suffix_tokens)
    with tempfile.TemporaryDirectory(prefix="strata-kv-demo-") as tmp:
        store = _store(settings.tier, Path(tmp))
        try:
            lm = PrefixCachedLM(
                model,
                store,
                model_id=f"kv-demo-llama-seed{settings.seed}",
                block_size=settings.block_size,
            )
            # The first call of a model pays one-off costs (allocator, kernels): keep them out.
            lm.prefill(tokens(min(16, settings.prefix_tokens)), reuse=False, store=False)
            lm.prefill(first)  # stores the shared prefix's blocks
            without, with_, loads = [], [], []
            for _ in range(settings.repeats):
                cold = lm.prefill(second, reuse=False, store=False)
                warm = lm.prefill(second, store=False)
                without.append(cold.timings.ttft_s)
                with_.append(warm.timings.ttft_s)
                loads.append(warm.timings.load_s)
            diff = float((cold.logits[-1] - warm.logits[-1]).abs().max())
        finally:
            store.close()
    ttft_without = statistics.median(without)
    ttft_with = statistics.median(with_)
    return DemoResult(
        ttft_without_s=ttft_without,
        ttft_with_s=ttft_with,
        ttft_ratio=ttft_without / ttft_with if ttft_with > 0 else float("inf"),
        max_logit_diff=diff,
        prompt_tokens=len(second),
        reused_tokens=warm.reused_tokens,
        computed_tokens=warm.computed_tokens,
        load_s=statistics.median(loads),
        tier=settings.tier,
        block_size=settings.block_size,
        model=(
            f"LlamaForCausalLM (random weights, float32): {settings.layers} layers, hidden "
            f"{settings.hidden}, {settings.heads} heads / {settings.kv_heads} KV heads, "
            f"vocab {settings.vocab}"
        ),
        repeats=settings.repeats,
        threads=torch.get_num_threads(),
    )
