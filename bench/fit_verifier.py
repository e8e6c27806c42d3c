"""Fit the semantic cache's verifier on QQP development pairs and write its packaged weights.

The verifier (:mod:`stratacache.semantic.verifier`) is a two-layer perceptron over
``[u*v, |u-v|]`` of the two all-MiniLM-L6-v2 embeddings and a few lexical features. This script:

1. reads ``../shared/semantic/qqp_pairs_dev.jsonl`` (40 427 labelled pairs) and splits it into
   *train* / *validation* / *test* (80 / 10 / 10 % of pairs) **by connected component of
   questions**: two pairs sharing a question always land in the same split, so no test question
   was ever seen in fitting, not even paired with something else. The split is a pure function of
   the file and ``--seed`` (:func:`split_pairs`); ``bench/semantic.py`` imports it to report on the
   same test split;
2. embeds every text with the packaged model (``--vectors DIR`` keeps the vectors between runs);
3. fits ``--ensemble`` perceptrons with torch (CPU; seeds ``--seed``, ``--seed + 1``...) on the
   train split, each keeping the epoch whose validation recall at the wrong-answer budget is best,
   and averages their logits into one wider perceptron (:func:`average`);
4. chooses the cosine floor and the probability threshold on the *validation* split: the pair with
   the most duplicates served while at most ``--validation-budget`` (0.75 %, a margin under the
   1 % target) of the different pairs are served, through the whole decision (floor, then the
   default guards' veto, then the verifier);
5. reports that decision, unchanged, on the *test* split, and writes the weights with those figures
   in their metadata.

The committed weights come from, at the repository root::

    .venv/bin/python bench/fit_verifier.py --vectors /tmp/h3 --epochs 15 --ensemble 3 \
        --negative-weight 1 --out src/stratacache/semantic/verifier-minilm-l6-v2.npz

(about 5 minutes to embed 73 000 texts on two CPU cores, then 3 to 10 minutes to fit, depending
on the load). torch's CPU kernels are not bit-for-bit deterministic across machines, so a re-run
gives weights that differ in the last digits and figures within a point. Nothing of the
data set is written to the weights: only float32 arrays and the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

from machine import REPO_ROOT
from stratacache.semantic import LocalEmbedder, TextPair, read_pairs
from stratacache.semantic.guards import default_guards, first_veto
from stratacache.semantic.verifier import LEXICAL_FEATURES, Verifier, pair_features

SHARED = REPO_ROOT.parent / "shared" / "semantic"
FLOORS = (0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85)


@dataclass(frozen=True, slots=True)
class Splits:
    """The three disjoint sets of pairs."""

    train: list[TextPair]
    validation: list[TextPair]
    test: list[TextPair]


def split_pairs(
    pairs: Sequence[TextPair], seed: int = 0, parts: tuple[float, float] = (0.8, 0.1)
) -> Splits:
    """Split ``pairs`` by connected component of their texts (a pair joins its two texts).

    Components are shuffled with ``seed`` and dealt to train until it holds ``parts[0]`` of the
    pairs, then to validation until ``parts[1]``, the rest to test.
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for p in pairs:
        ra, rb = find(p.a), find(p.b)
        if ra != rb:
            parent[ra] = rb
    groups: dict[str, list[TextPair]] = {}
    for p in pairs:
        groups.setdefault(find(p.a), []).append(p)
    order = sorted(groups, key=lambda root: min(q.a + "\0" + q.b for q in groups[root]))
    random.Random(seed).shuffle(order)
    train: list[TextPair] = []
    validation: list[TextPair] = []
    test: list[TextPair] = []
    for root in order:
        if len(train) < parts[0] * len(pairs):
            train += groups[root]
        elif len(validation) < parts[1] * len(pairs):
            validation += groups[root]
        else:
            test += groups[root]
    return Splits(train, validation, test)


def load_vectors(texts: Sequence[str], cache: Path | None) -> dict[str, Any]:
    """Embed ``texts`` with the packaged model, reusing ``cache/{texts.json,vecs.npy}``."""
    known: dict[str, Any] = {}
    if cache and (cache / "texts.json").is_file():
        stored = json.loads((cache / "texts.json").read_text(encoding="utf-8"))
        vectors = np.load(cache / "vecs.npy")
        known = dict(zip(stored, vectors, strict=True))
    todo = sorted({t for t in texts if t not in known})
    if todo:
        embedder = LocalEmbedder(batch_size=128)
        fresh = embedder.embed(todo)
        known.update(zip(todo, fresh, strict=True))
        if cache:
            cache.mkdir(parents=True, exist_ok=True)
            names = sorted(known)
            (cache / "texts.json").write_text(json.dumps(names), encoding="utf-8")
            np.save(cache / "vecs.npy", np.stack([known[n] for n in names]))
    return known


@dataclass(slots=True)
class Block:
    """Features, labels, cosines and guard vetoes of one split."""

    vectors: Any
    lexical: Any
    labels: Any
    cosines: Any
    vetoed: Any


def block(pairs: Sequence[TextPair], vectors: dict[str, Any]) -> Block:
    """The features of ``pairs`` (empty texts get a zero vector: they are never served)."""
    dim = len(next(iter(vectors.values())))
    zero = np.zeros(dim, dtype=np.float32)
    u = np.stack([vectors.get(p.a, zero) for p in pairs])
    v = np.stack([vectors.get(p.b, zero) for p in pairs])
    vec, lex = pair_features([p.b for p in pairs], [p.a for p in pairs], v, u)
    guards = default_guards()
    vetoed = np.array([first_veto(guards, p.b, p.a) is not None for p in pairs])
    labels = np.array([p.same for p in pairs], dtype=np.float32)
    return Block(vec, lex, labels, np.einsum("ij,ij->i", u, v), vetoed)


@dataclass(frozen=True, slots=True)
class Operating:
    """A decision rule's figures on one split."""

    floor: float
    threshold: float
    served_when_same: float
    wrong_when_different: float
    precision: float


def operating(b: Block, probs: Any, floor: float, threshold: float) -> Operating:
    """Figures for serving when cosine >= floor, no veto and probability >= threshold."""
    served = (b.cosines >= floor) & ~b.vetoed & (probs >= threshold)
    same = b.labels == 1
    right = int((served & same).sum())
    wrong = int((served & ~same).sum())
    return Operating(
        floor,
        threshold,
        right / max(int(same.sum()), 1),
        wrong / max(int((~same).sum()), 1),
        right / (right + wrong) if right + wrong else 1.0,
    )


def choose(b: Block, probs: Any, max_wrong: float) -> Operating:
    """The floor and threshold serving the most duplicates within ``max_wrong`` on ``b``."""
    best = Operating(1.0, 1.0, 0.0, 0.0, 1.0)
    negatives = int((b.labels == 0).sum())
    budget = math.floor(max_wrong * negatives)
    for floor in FLOORS:
        eligible = (b.cosines >= floor) & ~b.vetoed
        neg = np.sort(probs[eligible & (b.labels == 0)])[::-1]
        # The lowest threshold that lets at most `budget` different pairs through: just above
        # the (budget+1)-th highest probability among them.
        threshold = float(np.nextafter(neg[budget], 2.0)) if len(neg) > budget else 0.0
        op = operating(b, probs, floor, threshold)
        if op.served_when_same > best.served_when_same:
            best = op
    return best


def fit(
    train: Block,
    val: Block,
    *,
    seed: int,
    hidden: int,
    epochs: int,
    max_wrong: float,
    negative_weight: float = 1.0,
) -> tuple[list[Any], list[Any], Any, Any, Operating, int]:
    """Fit the perceptron; return weights, biases, lexical mean/scale, the chosen rule, epoch."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    mean = train.lexical.mean(axis=0)
    scale = train.lexical.std(axis=0)
    scale[scale < 1e-6] = 1.0

    def tensor(b: Block) -> Any:
        x = np.concatenate([b.vectors, (b.lexical - mean) / scale], axis=1)
        return torch.from_numpy(x.astype(np.float32))

    x_train, y_train = tensor(train), torch.from_numpy(train.labels)
    x_val = tensor(val)
    model = torch.nn.Sequential(
        torch.nn.Linear(x_train.shape[1], hidden),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(hidden, 1),
    )
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-3)
    # Weighting the different pairs up pushes the model to be sure before it says "same": only
    # the top of the probability range is ever served.
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(1.0 / negative_weight))
    generator = torch.Generator().manual_seed(seed)
    best: tuple[float, Any, Operating, int] = (-1.0, None, Operating(1, 1, 0, 0, 1), 0)
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for i in range(0, len(order), 256):
            idx = order[i : i + 256]
            optimiser.zero_grad()
            loss = loss_fn(model(x_train[idx])[:, 0], y_train[idx])
            loss.backward()
            optimiser.step()
        model.eval()
        with torch.no_grad():
            probs = torch.sigmoid(model(x_val)[:, 0]).numpy()
        op = choose(val, probs, max_wrong)
        print(
            f"epoch {epoch:2d}: loss {loss.item():.3f}, validation: serves"
            f" {op.served_when_same:.1%} of duplicates at {op.wrong_when_different:.2%} wrong"
            f" (floor {op.floor}, p >= {op.threshold:.3f})",
            flush=True,
        )
        if op.served_when_same > best[0]:
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best = (op.served_when_same, state, op, epoch)
    model.load_state_dict(best[1])
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    weights = [m.weight.detach().numpy().T.copy() for m in linears]
    biases = [m.bias.detach().numpy().copy() for m in linears]
    return weights, biases, mean, scale, best[2], best[3]


def average(
    members: Sequence[tuple[list[Any], list[Any], Any, Any, Operating, int]],
) -> tuple[list[Any], list[Any]]:
    """One perceptron whose logit is the mean of the members' (hidden units side by side).

    The members share the lexical scaling (computed from the same train split), so their inputs
    are the same and their hidden layers can simply be concatenated.
    """
    k = len(members)
    w0 = np.concatenate([m[0][0] for m in members], axis=1)
    b0 = np.concatenate([m[1][0] for m in members])
    w1 = np.concatenate([m[0][1] for m in members], axis=0) / k
    b1 = sum(m[1][1] for m in members) / k
    return [w0, w1], [b0, np.asarray(b1, dtype=np.float32)]


def main(argv: list[str] | None = None) -> int:
    """Fit, choose the operating point on validation, report on test, write the weights."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--vectors", type=Path, help="a directory caching the embeddings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--max-wrong", type=float, default=0.01)
    parser.add_argument(
        "--validation-budget",
        type=float,
        default=0.0075,
        help="the wrong-answer rate the threshold is chosen for on validation (a margin under"
        " --max-wrong, so that the held-out rate stays under it)",
    )
    parser.add_argument("--ensemble", type=int, default=3, help="perceptrons averaged (seeds)")
    parser.add_argument(
        "--negative-weight", type=float, default=1.0, help="loss weight of different pairs"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    started = time.perf_counter()

    with (args.data / "qqp_pairs_dev.jsonl").open(encoding="utf-8") as f:
        qqp = read_pairs(f)
    splits = split_pairs(qqp, args.seed)
    print(
        f"train {len(splits.train)}, validation {len(splits.validation)}, test {len(splits.test)}"
    )
    texts = [t for p in qqp for t in (p.a, p.b) if t.strip()]
    vectors = load_vectors(texts, args.vectors)
    train, val, test = (block(s, vectors) for s in (splits.train, splits.validation, splits.test))
    members = [
        fit(
            train,
            val,
            seed=args.seed + i,
            hidden=args.hidden,
            epochs=args.epochs,
            max_wrong=args.validation_budget,
            negative_weight=args.negative_weight,
        )
        for i in range(args.ensemble)
    ]
    weights, biases = average(members)
    mean, scale = members[0][2], members[0][3]
    epoch = [m[5] for m in members]
    verifier = Verifier.from_arrays(
        weights,
        biases,
        model=LocalEmbedder().model,
        dimension=train.vectors.shape[1] // 2,
        threshold=0.5,
        floor=0.0,
        mean=mean,
        scale=scale,
    )
    probs_val = 1.0 / (1.0 + np.exp(-verifier.logits(val.vectors, val.lexical)))
    op_val = choose(val, probs_val, args.validation_budget)
    verifier = verifier.with_threshold(op_val.threshold, op_val.floor)
    probs_test = 1.0 / (1.0 + np.exp(-verifier.logits(test.vectors, test.lexical)))
    op_test = operating(test, probs_test, op_val.floor, op_val.threshold)
    print(f"validation: {op_val}")
    print(f"test (held out): {op_test}")
    if args.out:
        info = {
            "data": "qqp_pairs_dev.jsonl, split by question component (bench/fit_verifier.py)",
            "seed": args.seed,
            "epoch": epoch,
            "hidden": args.hidden,
            "pairs": {
                "train": len(splits.train),
                "validation": len(splits.validation),
                "test": len(splits.test),
            },
            "max_wrong": args.max_wrong,
            "validation_budget": args.validation_budget,
            "ensemble": args.ensemble,
            "negative_weight": args.negative_weight,
            "validation": _figures(op_val),
            "test": _figures(op_test),
            "lexical_features": list(LEXICAL_FEATURES),
        }
        Verifier.from_arrays(
            [w.astype(np.float32) for w in weights],
            biases,
            model=verifier.model,
            dimension=verifier.dimension,
            threshold=verifier.threshold,
            floor=verifier.floor,
            mean=mean,
            scale=scale,
            info=info,
        ).save(args.out)
        print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    print(f"{time.perf_counter() - started:.0f} s")
    return 0


def _figures(op: Operating) -> dict[str, float]:
    return {
        "served_when_same": round(op.served_when_same, 4),
        "wrong_when_different": round(op.wrong_when_different, 4),
        "precision": round(op.precision, 4),
    }


if __name__ == "__main__":
    raise SystemExit(main())
