"""Run a Hugging Face causal LM with a KV store: load the cached prefix, compute only the rest.

:class:`PrefixCachedLM` wraps a model and a :class:`~stratacache.kv.KVStore`. For a prompt it

1. hashes the prompt's full blocks into chained keys (:func:`~stratacache.kv.keys.block_keys`);
2. loads the longest run of leading blocks the store has;
3. rebuilds the model's cache object from them: a ``transformers.DynamicCache`` whose layer ``l``
   holds the concatenated key and value tensors of the loaded blocks, shaped
   ``(1, kv_heads, tokens, head_dim)`` as the model's attention writes them;
4. runs the model on the remaining tokens only, with that cache as ``past_key_values`` (the model
   derives positions from the cache's length, so rotary and learned position embeddings line up);
5. copies each new full block out of the grown cache (``.clone()``: a slice is a view of the whole
   cache, which would keep it alive and be written out whole) and offers them to the store.

When every token of the prompt is covered by cached blocks, the last token is still computed (its
cache entry is dropped from the rebuilt cache): the logits of the last position are the point of a
prefill, and the cache holds keys and values, not logits.

Supported: decoder-only models whose cache is a ``DynamicCache`` of full-attention
``DynamicLayer`` s (Llama, Mistral without a sliding window, Qwen2, GPT-2, GPT-NeoX, …), batch size 1.
Sliding-window, hybrid, linear-attention and quantised caches are refused with a ConfigError: their
layers do not hold one key and value per token.

torch and transformers are imported when a :class:`PrefixCachedLM` is created, not before.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

from stratacache.errors import ConfigError, MissingExtraError, RequestError, TierUnavailableError
from stratacache.kv.base import BlockKey, KVBlock, KVStore
from stratacache.kv.keys import ChainSeed, block_keys

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache, DynamicLayer, PreTrainedModel

__all__ = ["KVLayout", "Prefill", "PrefillTimings", "PrefixCachedLM", "weights_fingerprint"]

logger = logging.getLogger("stratacache.kv.transformers")


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingExtraError("torch", "kv") from exc
    return torch


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingExtraError("transformers", "kv") from exc
    return transformers


@dataclass(frozen=True, slots=True)
class KVLayout:
    """The shape of a model's KV cache: what a block of it must look like."""

    architecture: str
    """The model class, e.g. ``LlamaForCausalLM``."""
    layers: int
    kv_heads: int
    head_dim: int
    dtype: str
    """The dtype name without ``torch.``, e.g. ``float32``."""

    @property
    def name(self) -> str:
        """The layout as it enters the chain seed."""
        return (
            f"hf-dynamic-cache/heads-tokens-dim/{self.architecture}/layers={self.layers}"
            f"/kv_heads={self.kv_heads}/head_dim={self.head_dim}"
        )

    @classmethod
    def of(cls, model: PreTrainedModel) -> KVLayout:
        """Read the layout from ``model``'s configuration.

        :raises ConfigError: the model's cache is not made of full-attention dynamic layers, or
            its configuration lacks the layer and head counts.
        """
        transformers = _import_transformers()
        config = model.config
        text = config.get_text_config(decoder=True)
        try:
            layers = int(text.num_hidden_layers)
            heads = int(text.num_attention_heads)
            kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
            head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
        except (AttributeError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"cannot read the KV layout of {type(model).__name__}: {exc}"
            ) from None
        probe = transformers.DynamicCache(config=config)
        kinds = {type(layer).__name__ for layer in probe.layers}
        if any(type(layer) is not transformers.DynamicLayer for layer in probe.layers):
            raise ConfigError(
                f"{type(model).__name__} uses cache layers {sorted(kinds)}; only full-attention "
                "DynamicLayer caches can be rebuilt from blocks"
            )
        dtype = str(model.dtype).removeprefix("torch.")
        return cls(type(model).__name__, layers, kv_heads, head_dim, dtype)


@dataclass(frozen=True, slots=True)
class PrefillTimings:
    """Where a prefill's time went, in seconds of the runner's clock."""

    hash_s: float
    """Hashing the prompt into block keys."""
    load_s: float
    """Looking the keys up, loading the blocks and rebuilding the cache."""
    compute_s: float
    """The model's forward pass over the tokens not loaded."""
    store_s: float
    """Copying the new full blocks out and storing them (after the first token is known)."""

    @property
    def ttft_s(self) -> float:
        """Time to first token: everything until the last position's logits exist."""
        return self.hash_s + self.load_s + self.compute_s


@dataclass(frozen=True, slots=True, eq=False)
class Prefill:
    """The result of one prefill."""

    logits: torch.Tensor
    """Logits of the last position, ``(1, vocab)``; of every computed position with
    ``all_logits=True``, ``(computed_tokens, vocab)``."""
    cache: DynamicCache
    """The model's cache after the whole prompt: pass it as ``past_key_values`` to decode on."""
    prompt_tokens: int
    reused_tokens: int
    """Tokens whose keys and values came from the store."""
    computed_tokens: int
    """Tokens the model ran on (``prompt_tokens - reused_tokens``)."""
    loaded_blocks: int
    stored_blocks: int
    """New full blocks the store holds after this prefill."""
    timings: PrefillTimings

    @property
    def next_token(self) -> int:
        """The greedy next token: the argmax of the last position's logits."""
        return int(self.logits[-1].argmax())


def weights_fingerprint(model: PreTrainedModel) -> str:
    """A SHA-256 over the model's parameter and buffer names, dtypes, shapes and bytes.

    Use it (or a name and revision) as the chain seed's model identity when the same
    architecture may carry different weights: blocks computed by other weights are wrong. It reads
    every weight once, so compute it once per loaded model.
    """
    torch = _import_torch()
    h = hashlib.sha256(b"stratacache/kv/weights/v1")
    for name, tensor in model.state_dict().items():
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\0".encode())
        flat = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        h.update(memoryview(flat.numpy()))
    return h.hexdigest()


class PrefixCachedLM:
    """A causal LM whose prompt prefixes are loaded from a KV store instead of recomputed.

    :param model: a Hugging Face causal LM (``…ForCausalLM``, ``GPT2LMHeadModel``), in eval mode.
    :param store: where blocks are looked up and stored.
    :param model_id: the model's identity for the chain seed (a name and revision, or
        :func:`weights_fingerprint`). Two models with different weights must differ here.
    :param tokenizer_id: the tokenizer's identity.
    :param block_size: tokens per block.
    :param tenant: the default tenant salt (``""``: shared).
    :param adapter: the default LoRA/adapter id (``""``: the base model).
    :param clock: seconds for the timings (default ``time.perf_counter``).
    :raises ConfigError: an unsupported cache layout, an empty ``model_id`` or a bad block size.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        store: KVStore,
        *,
        model_id: str,
        tokenizer_id: str = "",
        block_size: int = 256,
        tenant: str = "",
        adapter: str = "",
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._torch = _import_torch()
        self._transformers = _import_transformers()
        if not isinstance(store, KVStore):
            raise ConfigError(f"not a KVStore: {type(store).__name__}")
        self._model = model
        self._store = store
        self.layout: KVLayout = KVLayout.of(model)
        """The model's KV layout."""
        self.seed: ChainSeed = ChainSeed(
            model=model_id,
            tokenizer=tokenizer_id,
            dtype=self.layout.dtype,
            layout=self.layout.name,
            block_size=block_size,
            tenant=tenant,
        )
        """The chain seed for the default tenant."""
        self._adapter = adapter
        self._clock = clock
        vocab = getattr(model.config.get_text_config(decoder=True), "vocab_size", None)
        self._vocab: int | None = vocab if isinstance(vocab, int) else None

    @property
    def store(self) -> KVStore:
        """The KV store blocks are loaded from and stored to."""
        return self._store

    @property
    def block_size(self) -> int:
        """Tokens per block."""
        return self.seed.block_size

    def keys(
        self, tokens: Sequence[int], *, tenant: str | None = None, adapter: str | None = None
    ) -> list[BlockKey]:
        """The block keys of ``tokens``' full blocks for ``tenant`` and ``adapter``."""
        seed = self.seed if tenant is None else replace(self.seed, tenant=tenant)
        return block_keys(seed, tokens, self._adapter if adapter is None else adapter)

    def prefill(
        self,
        tokens: Sequence[int],
        *,
        tenant: str | None = None,
        adapter: str | None = None,
        reuse: bool = True,
        store: bool = True,
        all_logits: bool = False,
    ) -> Prefill:
        """Run the model over the prompt ``tokens``, reusing stored blocks of its prefix.

        :param tenant: the tenant salt for this request (default: the runner's).
        :param adapter: the adapter id for this request (default: the runner's).
        :param reuse: look up and load stored blocks (``False``: compute every token).
        :param store: offer the prompt's new full blocks to the store afterwards.
        :param all_logits: return the logits of every computed position, not just the last.
        A store that is unavailable (:class:`~stratacache.errors.TierUnavailableError`) is
        logged and worked around: nothing is loaded, or nothing stored, and the logits are the
        same.

        :raises RequestError: an empty prompt or a token id that is not an int in range.
        """
        torch = self._torch
        clock = self._clock
        ids = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
        if not ids:
            raise RequestError("the prompt has no tokens")
        if not all(type(t) is int for t in ids):
            raise RequestError("token ids must be ints (a flat sequence, batch size 1)")
        if min(ids) < 0 or (self._vocab is not None and max(ids) >= self._vocab):
            raise RequestError(f"token ids must be in [0, {self._vocab}): the model's vocabulary")
        started = clock()
        keys = self.keys(ids, tenant=tenant, adapter=adapter) if (reuse or store) else []
        hashed = clock()
        blocks = self._load(keys) if reuse and keys else []
        reused = min(len(blocks) * self.block_size, len(ids) - 1)
        cache = self._rebuild(blocks, reused)
        loaded = clock()
        model = self._model
        with torch.no_grad():
            input_ids = torch.tensor([ids[reused:]], dtype=torch.long, device=model.device)
            out = model(
                input_ids=input_ids,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=0 if all_logits else 1,
            )
        logits = out.logits[0]
        computed = clock()
        cache = out.past_key_values
        stored = 0
        if store and len(keys) > len(blocks):
            try:
                stored = self._store.store(self._new_blocks(cache, keys, len(blocks)))
            except TierUnavailableError as exc:
                # The answer is computed; a store that is down only costs the next request.
                logger.warning("KV store unavailable, new blocks not stored: %s", exc)
        done = clock()
        return Prefill(
            logits=logits,
            cache=cache,
            prompt_tokens=len(ids),
            reused_tokens=reused,
            computed_tokens=len(ids) - reused,
            loaded_blocks=len(blocks),
            stored_blocks=stored,
            timings=PrefillTimings(
                hash_s=hashed - started,
                load_s=loaded - hashed,
                compute_s=computed - loaded,
                store_s=done - computed,
            ),
        )

    def _load(self, keys: list[BlockKey]) -> list[KVBlock]:
        """The leading stored blocks that fit this model; none when the store is down."""
        try:
            blocks = self._store.load(keys)
        except TierUnavailableError as exc:
            logger.warning("KV store unavailable, computing the whole prompt: %s", exc)
            return []
        layout = self.layout
        want = (layout.kv_heads, self.block_size, layout.head_dim)
        dtype = self._model.dtype
        for i, block in enumerate(blocks):
            if block.layers != layout.layers or any(
                tuple(t.shape) != want or t.dtype != dtype for t in (*block.keys, *block.values)
            ):
                logger.warning("KV block %d does not fit %s; recomputing from it", i, layout.name)
                return blocks[:i]
        return blocks

    def _rebuild(self, blocks: list[KVBlock], tokens: int) -> DynamicCache:
        """A DynamicCache holding the first ``tokens`` tokens of ``blocks``, on the model's device."""
        torch = self._torch
        config = self._model.config
        if not tokens:
            empty: DynamicCache = self._transformers.DynamicCache(config=config)
            return empty
        device = self._model.device
        data = []
        for layer in range(self.layout.layers):
            # One concatenation per layer; [:, :tokens] drops the last token when the whole
            # prompt was cached (it is recomputed for its logits).
            k = torch.cat([b.keys[layer] for b in blocks], dim=1)[:, :tokens]
            v = torch.cat([b.values[layer] for b in blocks], dim=1)[:, :tokens]
            data.append((k.unsqueeze(0).to(device), v.unsqueeze(0).to(device)))
        cache: DynamicCache = self._transformers.DynamicCache(ddp_cache_data=data, config=config)
        return cache

    def _new_blocks(
        self, cache: DynamicCache, keys: list[BlockKey], first: int
    ) -> dict[BlockKey, KVBlock]:
        """Owned host copies of blocks ``first…`` of the grown cache, by key."""
        size = self.block_size
        tensors: list[tuple[torch.Tensor, torch.Tensor]] = []
        for layer in cache.layers:
            # KVLayout.of checked that every layer of this model's cache is a DynamicLayer.
            dynamic = cast("DynamicLayer", layer)
            if dynamic.keys is None or dynamic.values is None:
                raise ConfigError("the model left a cache layer empty; cannot store its blocks")
            tensors.append((dynamic.keys, dynamic.values))
        out: dict[BlockKey, KVBlock] = {}
        for index in range(first, len(keys)):
            start, end = index * size, (index + 1) * size
            out[keys[index]] = KVBlock(
                tuple(_owned(k[0, :, start:end]) for k, _ in tensors),
                tuple(_owned(v[0, :, start:end]) for _, v in tensors),
            )
        return out


def _owned(view: torch.Tensor) -> torch.Tensor:
    """A contiguous host tensor with its own storage, copied from ``view`` (a slice of the cache)."""
    import torch

    if view.device.type != "cpu":
        return view.detach().to("cpu").contiguous()  # the device-to-host copy is the copy
    return view.detach().clone(memory_format=torch.contiguous_format)
