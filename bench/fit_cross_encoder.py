"""Fit the semantic cache's cross-encoder on QQP development pairs and write its packaged weights.

The cross-encoder (:mod:`stratacache.semantic.cross_encoder`) is the packaged all-MiniLM-L6-v2 run
over ``[CLS] query [SEP] candidate [SEP]``: its embeddings and lower ``6 - --trainable`` layers are
frozen (read from the packaged model at run time), the top ``--trainable`` layers start from the
packaged weights and are re-fitted, with a linear head over the mean-pooled last layer, as a
"same question?" classifier. This script:

1. reads ``../shared/semantic/qqp_pairs_dev.jsonl`` and splits it exactly as
   ``bench/fit_verifier.py`` does (:func:`fit_verifier.split_pairs`, by connected component of
   questions, same ``--seed``), so the test questions were never seen in fitting;
2. runs the frozen layers once over every pair (query = ``b``, candidate = ``a``: the order
   ``strata eval-pairs`` looks them up in) and keeps their output in RAM as float16, so that
   training pays only for the top layers (``--hidden-cache FILE`` keeps it between runs);
3. trains the top layers and the head on the train split (AdamW, linear decay, one torch thread),
   keeping the epoch whose validation recall at the wrong-answer budget is best;
4. chooses the cosine floor and the probability threshold on the *validation* split through the
   whole decision (floor, then the default guards' veto, then the cross-encoder), with the weights
   rounded to float16 as they are shipped, for at most ``--validation-budget`` (0.75 %, a margin
   under the 1 % target) of the different pairs served, taking the highest floor whose recall is
   within ``--floor-slack`` of the best (a higher floor means fewer cross-encoder calls); with
   ``--perceptron-weights``, it also tries adding the packaged perceptron verifier's logit (fitted
   on the same train split) at each weight and keeps the one validation prefers;
5. reports that decision, unchanged, on the *test* split and writes the weights (float16, with the
   perceptron's arrays when it is used) and those figures in their metadata.

The committed weights come from two runs at the repository root: training (about an hour on two
shared CPU cores; the frozen pass over 40 000 pairs takes 5 minutes of it)::

    nice -n 10 .venv/bin/python bench/fit_cross_encoder.py --vectors /tmp/h3 --epochs 4 \
        --hidden-cache /tmp/H3/hidden.pt --out /tmp/H3/ce2.npz

then the operating point (under a minute: the trained layers as they are, the floor, the
perceptron's weight and the threshold chosen on validation)::

    nice -n 10 .venv/bin/python bench/fit_cross_encoder.py --vectors /tmp/h3 \
        --hidden-cache /tmp/H3/hidden.pt --from-weights /tmp/H3/ce2.npz \
        --perceptron-weights 0.5,1,2,4 --out src/stratacache/semantic/cross-encoder-minilm-l6-v2.npz

``--vectors`` is a directory caching the sentence embeddings (used for the cosine floor, the
guards' decision and the perceptron; ``bench/fit_verifier.py --vectors`` fills the same layout).
torch's CPU kernels are not bit-for-bit deterministic across machines, so a re-run gives weights
that differ in the last digits and figures within a point. Nothing of the data set is written to
the weights.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch

from fit_verifier import SHARED, Block, Operating, block, load_vectors, operating, split_pairs
from stratacache.semantic import LocalEmbedder, TextPair, read_pairs
from stratacache.semantic.cross_encoder import (
    CrossEncoder,
    bert_layer,
    embed_tokens,
    layer_params,
    mean_pool,
)
from stratacache.semantic.verifier import packaged_verifier

FLOORS = (0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85)
HEADS = 12


def choose(b: Block, probs: Any, max_wrong: float, slack: float = 0.0) -> Operating:
    """The floor and threshold serving the most duplicates within ``max_wrong`` on ``b``.

    With ``slack``, the highest floor whose recall is within ``slack`` of the best one: the
    cross-encoder runs on every candidate above the floor, so a higher floor is a cheaper lookup.
    """
    budget = math.floor(max_wrong * int((b.labels == 0).sum()))
    ops = []
    for floor in FLOORS:
        eligible = (b.cosines >= floor) & ~b.vetoed
        neg = np.sort(probs[eligible & (b.labels == 0)])[::-1]
        threshold = float(np.nextafter(neg[budget], 2.0)) if len(neg) > budget else 0.0
        ops.append(operating(b, probs, floor, threshold))
    best = max(op.served_when_same for op in ops)
    return max(
        (op for op in ops if op.served_when_same >= best - slack - 1e-12), key=lambda op: op.floor
    )


class Hidden:
    """The frozen layers' output for every pair, unpadded, float16, one flat tensor."""

    def __init__(self, flat: Any, offsets: Any) -> None:
        self.flat = flat
        self.offsets = offsets

    def lengths(self, rows: Sequence[int]) -> Any:
        idx = torch.as_tensor(rows)
        return self.offsets[idx + 1] - self.offsets[idx]

    def batch(self, rows: Sequence[int]) -> tuple[Any, Any, Any]:
        """(hidden states padded, boolean attention mask, lengths) of ``rows``."""
        lengths = self.lengths(rows)
        width = self.flat.shape[1]
        top = int(lengths.max())
        h = torch.zeros(len(rows), top, width)
        for j, r in enumerate(rows):
            s, e = int(self.offsets[r]), int(self.offsets[r + 1])
            h[j, : e - s] = self.flat[s:e].float()
        mask = torch.arange(top)[None, :] < lengths[:, None]
        return h, mask[:, None, None, :], lengths


def frozen_pass(
    pairs: Sequence[TextPair], sentence_model: Any, frozen: int, max_tokens: int
) -> Hidden:
    """Run embeddings + the first ``frozen`` layers over every pair once."""
    tokenizer = sentence_model[0].tokenizer
    state = sentence_model[0].auto_model.state_dict()
    params = [layer_params(state, i) for i in range(frozen)]
    encoded = tokenizer(
        [p.b for p in pairs], [p.a for p in pairs], truncation=True, max_length=max_tokens
    )
    ids, types = encoded["input_ids"], encoded["token_type_ids"]
    lengths = np.array([len(x) for x in ids])
    offsets = torch.zeros(len(pairs) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(torch.as_tensor(lengths), 0)
    flat = torch.zeros(int(offsets[-1]), state["embeddings.word_embeddings.weight"].shape[1],
                       dtype=torch.float16)  # fmt: skip
    order = np.argsort(lengths, kind="stable")
    started = time.perf_counter()
    with torch.inference_mode():
        for n, i in enumerate(range(0, len(order), 64)):
            rows = order[i : i + 64]
            top = int(lengths[rows].max())
            input_ids = torch.zeros(len(rows), top, dtype=torch.long)
            token_types = torch.zeros(len(rows), top, dtype=torch.long)
            for j, r in enumerate(rows):
                input_ids[j, : lengths[r]] = torch.as_tensor(ids[r])
                token_types[j, : lengths[r]] = torch.as_tensor(types[r])
            mask = (torch.arange(top)[None, :] < torch.as_tensor(lengths[rows])[:, None])[
                :, None, None, :
            ]
            h = embed_tokens(state, input_ids, token_types)
            for p in params:
                h = bert_layer(h, p, HEADS, mask)
            for j, r in enumerate(rows):
                flat[int(offsets[r]) : int(offsets[r + 1])] = h[j, : lengths[r]].half()
            if n % 100 == 0:
                print(f"frozen pass: {i}/{len(order)} pairs, {time.perf_counter() - started:.0f} s",
                      flush=True)  # fmt: skip
    return Hidden(flat, offsets)


class Top(torch.nn.Module):
    """The trainable top layers and the head."""

    def __init__(self, state: dict[str, Any], first: int, count: int) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList()
        for i in range(first, first + count):
            layer = torch.nn.ParameterDict(
                {
                    k: torch.nn.Parameter(v.detach().clone())
                    for k, v in layer_params(state, i).items()
                }
            )
            self.layers.append(layer)
        width = state["embeddings.word_embeddings.weight"].shape[1]
        self.head = torch.nn.Linear(width, 1)

    def forward(self, h: Any, mask: Any, lengths: Any, dropout: float = 0.0) -> Any:
        for layer in self.layers:
            h = bert_layer(h, layer, HEADS, mask, dropout=dropout)
        pooled = torch.nn.functional.dropout(mean_pool(h, lengths), dropout, dropout > 0)
        return self.head(pooled)[:, 0]


def predict(
    top: Top, hidden: Hidden, rows: Sequence[int], batch: int = 128, *, raw: bool = False
) -> Any:
    """Probabilities (``raw``: logits) for ``rows`` (in that order)."""
    top.eval()
    out = np.zeros(len(rows), dtype=np.float32)
    order = np.argsort(np.asarray(hidden.lengths(rows)), kind="stable")
    with torch.inference_mode():
        for i in range(0, len(order), batch):
            pick = order[i : i + batch]
            h, mask, lengths = hidden.batch([rows[j] for j in pick])
            logits = top(h, mask, lengths)
            out[pick] = (logits if raw else torch.sigmoid(logits)).numpy()
    return out


def batches(rows: Sequence[int], hidden: Hidden, size: int, rng: np.random.Generator) -> list[Any]:
    """Shuffled batches of rows of similar length (little padding)."""
    perm = rng.permutation(np.asarray(rows))
    lengths = np.asarray(hidden.lengths(list(perm)))
    out = []
    chunk = size * 50
    for i in range(0, len(perm), chunk):
        part = perm[i : i + chunk]
        part = part[np.argsort(lengths[i : i + chunk], kind="stable")]
        out += [part[j : j + size] for j in range(0, len(part), size)]
    rng.shuffle(out)
    return out


def rounded(top: Top) -> Top:
    """A copy of ``top`` with its layer weights rounded through float16 (as shipped)."""
    import copy

    clone = copy.deepcopy(top)
    with torch.no_grad():
        for layer in clone.layers:
            for p in layer.values():
                p.copy_(p.half().float())
    return clone


def main(argv: list[str] | None = None) -> int:
    """Fit, choose the operating point on validation, report on test, write the weights."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--vectors", type=Path, help="a directory caching the embeddings")
    parser.add_argument("--hidden-cache", type=Path, help="a file keeping the frozen pass")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trainable", type=int, default=2, help="top layers re-fitted")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit", type=int, help="train on the first N train pairs (trials)")
    parser.add_argument("--validation-budget", type=float, default=0.0075)
    parser.add_argument("--max-wrong", type=float, default=0.01)
    parser.add_argument(
        "--floor-slack",
        type=float,
        default=0.01,
        help="validation recall given up for a higher cosine floor (fewer cross-encoder calls)",
    )
    parser.add_argument(
        "--from-weights",
        type=Path,
        help="skip training: take the layers of this file, choose the operating point again",
    )
    parser.add_argument(
        "--perceptron-weights",
        type=lambda text: [float(x) for x in text.split(",") if x],
        default=[],
        help="weights of the packaged perceptron verifier's logit to try on validation (e.g."
        " 0.5,1,2; the best is shipped inside the cross-encoder's file)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()

    with (args.data / "qqp_pairs_dev.jsonl").open(encoding="utf-8") as f:
        qqp = read_pairs(f)
    splits = split_pairs(qqp, args.seed)
    pairs = splits.train + splits.validation + splits.test
    n_train, n_val = len(splits.train), len(splits.validation)
    train_rows = list(range(n_train))[: args.limit]
    val_rows = list(range(n_train, n_train + n_val))
    test_rows = list(range(n_train + n_val, len(pairs)))
    print(f"train {len(train_rows)}, validation {n_val}, test {len(test_rows)}", flush=True)

    embedder = LocalEmbedder()
    sentence_model = embedder._load()
    state = {k: v.detach() for k, v in sentence_model[0].auto_model.state_dict().items()}
    depth = sum(1 for k in state if k.endswith("attention.self.query.weight"))
    frozen = depth - args.trainable
    key = (len(pairs), frozen, args.max_tokens, args.seed)
    hidden: Hidden | None = None
    if args.hidden_cache and args.hidden_cache.is_file():
        saved = torch.load(args.hidden_cache)
        if tuple(saved["key"]) == key:
            hidden = Hidden(saved["flat"], saved["offsets"])
    if hidden is None:
        hidden = frozen_pass(pairs, sentence_model, frozen, args.max_tokens)
        if args.hidden_cache:
            args.hidden_cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"key": key, "flat": hidden.flat, "offsets": hidden.offsets},
                       args.hidden_cache)  # fmt: skip
    print(f"frozen pass ready ({time.perf_counter() - started:.0f} s)", flush=True)

    texts = [t for p in qqp for t in (p.a, p.b) if t.strip()]
    vectors = load_vectors(texts, args.vectors)
    val_block, test_block = block(splits.validation, vectors), block(splits.test, vectors)

    top = Top(state, frozen, args.trainable)
    labels = torch.tensor([float(p.same) for p in pairs])
    optimiser = torch.optim.AdamW(
        [
            {"params": [p for layer in top.layers for p in layer.values()], "lr": args.lr},
            {"params": list(top.head.parameters()), "lr": args.head_lr},
        ],
        weight_decay=0.01,
    )
    rng = np.random.default_rng(args.seed)
    steps = args.epochs * math.ceil(len(train_rows) / args.batch)
    warmup = max(1, steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / (steps - warmup)))
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    best: tuple[float, Any, int] = (-1.0, None, 0)
    if args.from_weights:
        # Step 2 of the committed recipe: the trained layers as they are, a new operating point.
        trained = CrossEncoder.load(args.from_weights)
        if (trained.frozen_layers, len(trained.layers)) != (frozen, args.trainable):
            raise SystemExit(f"{args.from_weights} has another layer split than --trainable")
        with torch.no_grad():
            for layer, arrays in zip(top.layers, trained.layers, strict=True):
                for k, value in layer.items():
                    value.copy_(torch.from_numpy(arrays[k].astype(np.float32)))
            top.head.weight.copy_(torch.from_numpy(trained.head_w.astype(np.float32))[None])
            top.head.bias.fill_(trained.head_b)
        best = (0.0, top.state_dict(), int(trained.info.get("epoch", 0)))
        args.epochs = 0
    for epoch in range(1, args.epochs + 1):
        top.train()
        running, seen = 0.0, 0
        epoch_batches = batches(train_rows, hidden, args.batch, rng)
        for n, rows in enumerate(epoch_batches):
            h, mask, lengths = hidden.batch(list(rows))
            loss = loss_fn(top(h, mask, lengths, args.dropout), labels[torch.as_tensor(rows)])
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(top.parameters(), 1.0)
            optimiser.step()
            scheduler.step()
            running += loss.item() * len(rows)
            seen += len(rows)
            if n % 100 == 0:
                print(f"epoch {epoch} batch {n}/{len(epoch_batches)} loss {running / seen:.4f}"
                      f" ({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
        probs = predict(top, hidden, val_rows)
        op = choose(val_block, probs, args.validation_budget)
        print(f"epoch {epoch}: loss {running / max(seen, 1):.4f}, validation serves"
              f" {op.served_when_same:.1%} at {op.wrong_when_different:.2%} wrong (floor"
              f" {op.floor}, p >= {op.threshold:.4f})", flush=True)  # fmt: skip
        if op.served_when_same > best[0]:
            best = (op.served_when_same, {k: v.clone() for k, v in top.state_dict().items()}, epoch)
    top.load_state_dict(best[1])
    shipped = rounded(top)
    z_val = predict(shipped, hidden, val_rows, raw=True)
    z_test = predict(shipped, hidden, test_rows, raw=True)
    # Optionally add the packaged perceptron verifier's logit (fitted on the same train split, so
    # validation and test stay held out for it too), with the weight validation prefers.
    perceptron = packaged_verifier(embedder.model) if args.perceptron_weights else None
    weight, op_val = 0.0, Operating(1.0, 1.0, -1.0, 0.0, 1.0)
    for w in [0.0, *args.perceptron_weights] if perceptron is not None else [0.0]:
        extra = 0.0 if perceptron is None or w == 0 else w * perceptron.logits(
            val_block.vectors, val_block.lexical
        )  # fmt: skip
        op = choose(val_block, _sigmoid(z_val + extra), args.validation_budget, args.floor_slack)
        print(f"perceptron weight {w}: validation serves {op.served_when_same:.1%} at"
              f" {op.wrong_when_different:.2%} wrong (floor {op.floor})", flush=True)  # fmt: skip
        if op.served_when_same > op_val.served_when_same + 0.005:
            weight, op_val = w, op
    if perceptron is not None and weight:
        z_test = z_test + weight * perceptron.logits(test_block.vectors, test_block.lexical)
    op_test = operating(test_block, _sigmoid(z_test), op_val.floor, op_val.threshold)
    print(f"validation: {op_val} (perceptron weight {weight})")
    print(f"test (held out): {op_test}")
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.out:
        info = {
            "data": "qqp_pairs_dev.jsonl, split by question component (bench/fit_verifier.py)",
            "seed": args.seed,
            "epoch": best[2],
            "floor_slack": args.floor_slack,
            "trainable": args.trainable,
            "lr": args.lr,
            "pairs": {"train": len(train_rows), "validation": n_val, "test": len(test_rows)},
            "max_wrong": args.max_wrong,
            "validation_budget": args.validation_budget,
            "validation": _figures(op_val),
            "test": _figures(op_test),
            "perceptron_weight": weight,
        }
        CrossEncoder(
            model=embedder.model,
            frozen_layers=frozen,
            heads=HEADS,
            max_tokens=args.max_tokens,
            threshold=op_val.threshold,
            floor=op_val.floor,
            layers=tuple(
                {k: v.detach().numpy() for k, v in layer.items()} for layer in shipped.layers
            ),
            head_w=shipped.head.weight.detach().numpy()[0].copy(),
            head_b=float(shipped.head.bias.detach()[0]),
            perceptron=perceptron if weight else None,
            perceptron_weight=weight,
            info=info,
        ).save(args.out)
        print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    return 0


def _sigmoid(z: Any) -> Any:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))


def _figures(op: Operating) -> dict[str, float]:
    return {
        "floor": op.floor,
        "threshold": op.threshold,
        "served_when_same": round(op.served_when_same, 4),
        "wrong_when_different": round(op.wrong_when_different, 4),
        "precision": round(op.precision, 4),
    }


if __name__ == "__main__":
    raise SystemExit(main())
