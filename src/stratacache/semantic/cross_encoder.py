"""A cross-encoder verifier: reads the two questions together and says whether they are the same.

A bi-encoder (the embedder) squeezes each question into one vector before they meet, so detail that
separates "How do I learn Python?" from "How do I learn Python fast?" is mostly gone by the time the
cosine is computed. A cross-encoder runs one transformer over ``[CLS] query [SEP] candidate [SEP]``,
so every token of one question attends to every token of the other. It is far more accurate and
far slower (a forward pass per pair), which is affordable here because it runs only on the one or
two candidates per lookup that passed the cosine floor and the guards.

The packaged cross-encoder is all-MiniLM-L6-v2 itself with its top layers re-fitted as a pair
classifier (``bench/fit_cross_encoder.py``): the embeddings and lower layers are the packaged
model's, frozen, read from the model the embedder already loaded, so the package ships only the
re-fitted top layers and a linear head (float16, a few MB), plus the perceptron verifier whose
logit it adds. It is opt-in (``SemanticCache(..., verifier=packaged_cross_encoder(model))``): on
held-out pairs it served more duplicates than the default perceptron but overshot the
wrong-answer budget its threshold was chosen for (``bench/results/semantic.md``). It applies
only to that model (:func:`packaged_cross_encoder` returns ``None`` for any other) and needs torch,
which the local embedder needs anyway. The weight file is a ``.npz`` of plain arrays read with
``allow_pickle=False``; its metadata is a JSON string inside it.

The transformer layer is written out here (:func:`bert_layer`, plain torch) rather than borrowed
from ``transformers``' modules, whose mask conventions change between releases: training and
serving run this same function, so what was measured is what is served.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from stratacache.errors import ConfigError, MissingExtraError
from stratacache.semantic.verifier import LEXICAL_FEATURES, Verifier, pair_features

__all__ = [
    "LAYER_KEYS",
    "PACKAGED_CROSS_ENCODER",
    "CrossEncoder",
    "bert_layer",
    "embed_tokens",
    "layer_params",
    "packaged_cross_encoder",
]

FORMAT = "stratacache-cross-encoder/1"
"""The ``format`` the weight file's metadata must name."""
PACKAGED_CROSS_ENCODER = "cross-encoder-minilm-l6-v2.npz"
"""The file name of the packaged weights, inside ``stratacache/semantic/``."""

LAYER_KEYS: Mapping[str, str] = MappingProxyType(
    {
        "q_w": "attention.self.query.weight",
        "q_b": "attention.self.query.bias",
        "k_w": "attention.self.key.weight",
        "k_b": "attention.self.key.bias",
        "v_w": "attention.self.value.weight",
        "v_b": "attention.self.value.bias",
        "o_w": "attention.output.dense.weight",
        "o_b": "attention.output.dense.bias",
        "ln1_w": "attention.output.LayerNorm.weight",
        "ln1_b": "attention.output.LayerNorm.bias",
        "i_w": "intermediate.dense.weight",
        "i_b": "intermediate.dense.bias",
        "f_w": "output.dense.weight",
        "f_b": "output.dense.bias",
        "ln2_w": "output.LayerNorm.weight",
        "ln2_b": "output.LayerNorm.bias",
    }
)
"""Short names of one BERT layer's tensors -> their names in a Hugging Face ``BertModel``."""

_EPS = 1e-12  # the packaged model's layer_norm_eps


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise MissingExtraError("torch", "semantic") from exc
    return torch


def layer_params(state: Mapping[str, Any], index: int, prefix: str = "") -> dict[str, Any]:
    """The tensors of layer ``index`` of a ``BertModel`` state dict, under :data:`LAYER_KEYS`."""
    return {
        short: state[f"{prefix}encoder.layer.{index}.{name}"] for short, name in LAYER_KEYS.items()
    }


def embed_tokens(
    state: Mapping[str, Any],
    input_ids: Any,
    token_types: Any,
    prefix: str = "",
    *,
    eps: float = _EPS,
) -> Any:
    """BERT's input embeddings (word + position + segment, then layer norm) for a batch."""
    torch = _torch()
    functional = torch.nn.functional
    positions = torch.arange(input_ids.shape[1])
    h = (
        state[f"{prefix}embeddings.word_embeddings.weight"][input_ids]
        + state[f"{prefix}embeddings.position_embeddings.weight"][positions][None]
        + state[f"{prefix}embeddings.token_type_embeddings.weight"][token_types]
    )
    return functional.layer_norm(
        h,
        (h.shape[-1],),
        state[f"{prefix}embeddings.LayerNorm.weight"],
        state[f"{prefix}embeddings.LayerNorm.bias"],
        eps,
    )


def bert_layer(
    h: Any,
    p: Mapping[str, Any],
    heads: int,
    mask: Any = None,
    *,
    dropout: float = 0.0,
    eps: float = _EPS,
) -> Any:
    """One post-layer-norm BERT encoder layer over ``h`` (batch, tokens, width).

    :param p: the layer's tensors under :data:`LAYER_KEYS`' short names.
    :param mask: ``None`` (no padding) or a boolean (batch, 1, 1, tokens) mask, ``True`` = attend.
    :param dropout: the training dropout on the two residual branches (0 when serving).
    :param eps: the layer norms' epsilon (the model config's ``layer_norm_eps``).
    """
    torch = _torch()
    functional = torch.nn.functional
    batch, tokens, width = h.shape
    size = width // heads

    def split(x: Any) -> Any:
        return x.view(batch, tokens, heads, size).transpose(1, 2)

    q = split(functional.linear(h, p["q_w"], p["q_b"]))
    k = split(functional.linear(h, p["k_w"], p["k_b"]))
    v = split(functional.linear(h, p["v_w"], p["v_b"]))
    attended = functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    attended = attended.transpose(1, 2).reshape(batch, tokens, width)
    out = functional.dropout(functional.linear(attended, p["o_w"], p["o_b"]), dropout, dropout > 0)
    h = functional.layer_norm(h + out, (width,), p["ln1_w"], p["ln1_b"], eps)
    inner = functional.gelu(functional.linear(h, p["i_w"], p["i_b"]))
    out = functional.dropout(functional.linear(inner, p["f_w"], p["f_b"]), dropout, dropout > 0)
    return functional.layer_norm(h + out, (width,), p["ln2_w"], p["ln2_b"], eps)


def mean_pool(h: Any, lengths: Any | None = None) -> Any:
    """The mean of each row's first ``lengths`` token states (all of them when ``None``)."""
    torch = _torch()
    if lengths is None:
        return h.mean(dim=1)
    keep = (torch.arange(h.shape[1])[None, :] < lengths[:, None]).to(h.dtype)
    total = (h * keep[:, :, None]).sum(dim=1)
    return total / lengths[:, None].to(h.dtype)


@dataclass(frozen=True, slots=True, eq=False)
class CrossEncoder:
    """The re-fitted top of a BERT model over a frozen bottom, as a pair classifier.

    Compared by identity (its fields hold arrays). Build one with :meth:`load` or
    :func:`packaged_cross_encoder`, then :meth:`bind` it to the loaded sentence-transformers model
    whose bottom layers it reuses (:class:`~stratacache.semantic.LocalEmbedder` does that lazily
    through :meth:`probabilities`' ``model`` argument).
    """

    model: str
    """The embedding model whose lower layers this runs on; it only applies to that model."""
    frozen_layers: int
    """How many of the model's layers run unchanged before the re-fitted ones."""
    heads: int
    """Attention heads per layer."""
    max_tokens: int
    """Pairs are truncated to this many tokens."""
    threshold: float
    """Serve when the probability is at least this."""
    floor: float
    """The cosine similarity a candidate needs before the cross-encoder is asked."""
    layers: tuple[Mapping[str, Any], ...] = field(repr=False)
    """The re-fitted layers' arrays under :data:`LAYER_KEYS`' short names, bottom first."""
    head_w: Any = field(repr=False)
    """The head's weights over the mean-pooled last layer, shape ``(width,)``."""
    head_b: float = 0.0
    """The head's bias."""
    perceptron: Verifier | None = field(default=None, repr=False)
    """A perceptron verifier whose logit, times :attr:`perceptron_weight`, is added to the
    cross-encoder's (the two look at different evidence: the pair read together, and the two
    sentence embeddings with lexical features); ``None``: the cross-encoder alone."""
    perceptron_weight: float = 0.0
    """The weight of :attr:`perceptron`'s logit."""
    info: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """Metadata from the weight file: how it was fitted and what it measured."""
    _bound: dict[int, Any] = field(default_factory=dict, repr=False)
    _lock: Any = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"a cross-encoder threshold is a probability, not {self.threshold!r}")
        if not -1.0 <= self.floor <= 1.0:
            raise ConfigError(f"a cross-encoder floor is a cosine similarity, not {self.floor!r}")
        if not self.layers or self.frozen_layers < 0 or self.heads < 1 or self.max_tokens < 8:
            raise ConfigError("a cross-encoder needs layers, heads and a token budget")
        for layer in self.layers:
            if set(layer) != set(LAYER_KEYS):
                raise ConfigError("a cross-encoder layer lacks tensors")

    @classmethod
    def load(cls, path: Path | str) -> CrossEncoder:
        """Read a weight file written by :meth:`save`.

        :raises ConfigError: the file is missing, not a cross-encoder, or of another format.
        """
        import numpy as np

        try:
            with np.load(Path(path), allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except FileNotFoundError:
            raise ConfigError(f"no cross-encoder weights at {path}") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path} is not a cross-encoder weight file: {exc}") from None
        try:
            meta = json.loads(str(arrays.pop("meta")))
            if meta.get("format") != FORMAT:
                raise ConfigError(f"{path}: unknown cross-encoder format {meta.get('format')!r}")
            layers = tuple(
                MappingProxyType({k: arrays[f"l{i}.{k}"] for k in LAYER_KEYS})
                for i in range(int(meta["layers"]))
            )
            perceptron = None
            if "perceptron" in meta:
                part = meta["perceptron"]
                perceptron = Verifier.from_arrays(
                    [arrays[f"p.w{i}"] for i in range(int(part["layers"]))],
                    [arrays[f"p.b{i}"] for i in range(int(part["layers"]))],
                    model=str(meta["model"]),
                    dimension=int(part["dimension"]),
                    threshold=0.5,
                    floor=0.0,
                    mean=arrays.get("p.mean"),
                    scale=arrays.get("p.scale"),
                )
                if list(part["features"]) != list(LEXICAL_FEATURES):
                    raise ConfigError(f"{path}: fitted on other lexical features")
            return cls(
                model=str(meta["model"]),
                frozen_layers=int(meta["frozen_layers"]),
                heads=int(meta["heads"]),
                max_tokens=int(meta["max_tokens"]),
                threshold=float(meta["threshold"]),
                floor=float(meta["floor"]),
                layers=layers,
                head_w=arrays["head_w"],
                head_b=float(arrays["head_b"]),
                perceptron=perceptron,
                perceptron_weight=float(meta.get("perceptron_weight", 0.0)),
                info=MappingProxyType(dict(meta.get("info", {}))),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path} is not a cross-encoder weight file: {exc!r}") from None

    def save(self, path: Path | str) -> None:
        """Write the weights (float16) and metadata as one compressed ``.npz`` (no pickle)."""
        import numpy as np

        meta = {
            "format": FORMAT,
            "model": self.model,
            "frozen_layers": self.frozen_layers,
            "heads": self.heads,
            "max_tokens": self.max_tokens,
            "threshold": self.threshold,
            "floor": self.floor,
            "layers": len(self.layers),
            "info": dict(self.info),
        }
        arrays: dict[str, Any] = {"meta": np.array(json.dumps(meta, sort_keys=True))}
        for i, layer in enumerate(self.layers):
            for k, value in layer.items():
                arrays[f"l{i}.{k}"] = np.asarray(value, dtype=np.float16)
        arrays["head_w"] = np.asarray(self.head_w, dtype=np.float32)
        arrays["head_b"] = np.asarray(self.head_b, dtype=np.float32)
        if self.perceptron is not None:
            p = self.perceptron
            meta["perceptron"] = {
                "layers": len(p.weights),
                "dimension": p.dimension,
                "features": list(LEXICAL_FEATURES),
            }
            meta["perceptron_weight"] = self.perceptron_weight
            arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
            for i, (w, b) in enumerate(zip(p.weights, p.biases, strict=True)):
                arrays[f"p.w{i}"], arrays[f"p.b{i}"] = w, b
            if p.mean is not None:
                arrays["p.mean"] = p.mean
            if p.scale is not None:
                arrays["p.scale"] = p.scale
        with Path(path).open("wb") as f:
            np.savez_compressed(f, **arrays)

    def with_threshold(self, threshold: float, floor: float | None = None) -> CrossEncoder:
        """The same weights with another probability threshold (and optionally cosine floor)."""
        return replace(
            self,
            threshold=float(threshold),
            floor=self.floor if floor is None else float(floor),
            _bound={},
            _lock=threading.Lock(),
        )

    def _tensors(self, sentence_model: Any) -> tuple[Any, Any, list[Any], list[Any], Any, Any]:
        """(tokenizer, frozen state, frozen layers, top layers, head w, head b) for a model."""
        torch = _torch()
        with self._lock:
            bound = self._bound.get(id(sentence_model))
            if bound is None or bound[0] is not sentence_model:
                transformer = sentence_model[0]
                state = transformer.auto_model.state_dict()
                prefix = ""
                frozen = [layer_params(state, i, prefix) for i in range(self.frozen_layers)]
                top = [
                    {k: torch.from_numpy(v.astype("float32")) for k, v in layer.items()}
                    for layer in self.layers
                ]
                head_w = torch.from_numpy(self.head_w.astype("float32"))
                bound = (sentence_model, transformer.tokenizer, state, frozen, top, head_w)
                self._bound.clear()
                self._bound[id(sentence_model)] = bound
        return bound[1], bound[2], bound[3], bound[4], bound[5], self.head_b

    def logits(
        self,
        sentence_model: Any,
        queries: Sequence[str],
        candidates: Sequence[str],
        u: Any = None,
        v: Any = None,
    ) -> Any:
        """The raw scores of the pairs, one per ``(query, candidate)``, as a numpy array.

        :param sentence_model: the loaded sentence-transformers model of :attr:`model` (its
            tokenizer, embeddings and first :attr:`frozen_layers` layers are used as they are).
        :param u: the queries' sentence embeddings, one row each (needed with a
            :attr:`perceptron`).
        :param v: the candidates' sentence embeddings.
        """
        torch = _torch()
        if len(queries) != len(candidates):
            raise ConfigError("queries and candidates must have equal lengths")
        extra: Any = 0.0
        if self.perceptron is not None:
            if u is None or v is None:
                raise ConfigError("this cross-encoder also needs the pairs' sentence embeddings")
            extra = self.perceptron_weight * self.perceptron.logits(
                *pair_features(queries, candidates, u, v)
            )
        tokenizer, state, frozen, top, head_w, head_b = self._tensors(sentence_model)
        with torch.inference_mode():
            batch = tokenizer(
                list(queries),
                list(candidates),
                truncation=True,
                max_length=self.max_tokens,
                padding=True,
                return_tensors="pt",
            )
            lengths = batch["attention_mask"].sum(dim=1)
            mask = None
            if bool((lengths < batch["input_ids"].shape[1]).any()):
                mask = batch["attention_mask"].bool()[:, None, None, :]
            h = embed_tokens(state, batch["input_ids"], batch["token_type_ids"])
            for p in (*frozen, *top):
                h = bert_layer(h, p, self.heads, mask)
            pooled = mean_pool(h, lengths if mask is not None else None)
            return (pooled @ head_w + head_b).numpy() + extra

    def probabilities(
        self,
        sentence_model: Any,
        queries: Sequence[str],
        candidates: Sequence[str],
        u: Any = None,
        v: Any = None,
    ) -> Any:
        """The probability that each candidate's answer serves its query (numpy array)."""
        import numpy as np

        if not queries:
            return np.zeros(0, dtype=np.float32)
        logits = self.logits(sentence_model, queries, candidates, u, v)
        return (1.0 / (1.0 + np.exp(-np.clip(logits, -30.0, 30.0)))).astype(np.float32)


def packaged_path() -> Path:
    """Where the packaged weight file is (it may be absent from a source checkout)."""
    return Path(str(resources.files("stratacache.semantic").joinpath(PACKAGED_CROSS_ENCODER)))


@lru_cache(maxsize=1)
def _packaged() -> CrossEncoder | None:
    path = packaged_path()
    if not path.is_file():
        return None
    return CrossEncoder.load(path)


def packaged_cross_encoder(model: str) -> CrossEncoder | None:
    """The packaged cross-encoder if its weights are present and were fitted over ``model``."""
    try:
        encoder = _packaged()
    except (MissingExtraError, ImportError):
        return None
    if encoder is None or encoder.model != model:
        return None
    return encoder
