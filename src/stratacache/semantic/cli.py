"""``strata eval-pairs`` and ``strata calibrate``: labelled pairs through the real semantic pipeline.

For each pair of a JSONL file (``{"a": ..., "b": ..., "same": 0|1}``, optionally ``category``),
``a`` is stored in an empty partition and ``b`` looked up through the configured pipeline: embedder
(and embedding cache), index, cosine threshold, guards and verifier
(:func:`stratacache.semantic.score_pairs`). ``eval-pairs`` prints what that pipeline serves;
``calibrate`` chooses the threshold that serves the most right pairs under a wrong-answer budget.

The pipeline is read from the ``[semantic]`` table of the ``--config`` TOML file (the file's other
keys belong to ``strata serve`` and are not read here)::

    [semantic]
    threshold = 0.7              # cosine floor (default: the verifier's, else 0.95)
    verifier = true              # the packaged perceptron; "cross-encoder": the packaged
                                 # cross-encoder; false: none; or a weight file's path
    verifier_threshold = 0.8     # override the verifier's probability threshold
    guards = true                # the default guards; false: none
    candidates = 4               # nearest entries checked per lookup
    embedder_url = "http://127.0.0.1:8080"  # an OpenAI-compatible /v1/embeddings server
    embedder_model = "BAAI/bge-small-en-v1.5"  # its model (required with embedder_url)
    embedder_api_key_env = "EMBEDDINGS_API_KEY"  # the environment variable holding its key

Registered in :mod:`stratacache.cli` with ``cli.add_command``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from stratacache.errors import ConfigError, StrataError

if TYPE_CHECKING:
    from stratacache.semantic.cache import SemanticCache
    from stratacache.semantic.evaluation import PairOutcome, PairSummary

__all__ = ["CROSS_ENCODER", "PipelineSettings", "calibrate_command", "eval_pairs_command"]

CROSS_ENCODER = "cross-encoder"
"""The ``verifier`` setting that selects the packaged cross-encoder (opt-in)."""


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    """The semantic pipeline to evaluate, from the ``[semantic]`` table of a config file."""

    threshold: float | None = None
    """The cosine threshold (floor); ``None``: the verifier's floor, else the default."""
    verifier: bool | str = True
    """``True``: the packaged verifier (when it fits the embedder); ``False``: none; a path."""
    verifier_threshold: float | None = None
    """Replaces the verifier's probability threshold."""
    guards: bool = True
    """Whether the default guards run."""
    candidates: int = 4
    """Nearest entries checked per lookup."""
    embedder_url: str | None = None
    """An OpenAI-compatible embeddings server; ``None``: the packaged local model."""
    embedder_model: str | None = None
    """The remote embedder's model name."""
    embedder_api_key_env: str | None = None
    """The environment variable holding the remote embedder's API key."""

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], where: str = "[semantic]") -> PipelineSettings:
        """Validate a ``[semantic]`` table; an unknown key or a wrong type is a ConfigError."""
        kinds: dict[str, tuple[type, ...]] = {
            "threshold": (int, float),
            "verifier": (bool, str),
            "verifier_threshold": (int, float),
            "guards": (bool,),
            "candidates": (int,),
            "embedder_url": (str,),
            "embedder_model": (str,),
            "embedder_api_key_env": (str,),
        }
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, value in table.items():
            if name not in known:
                raise ConfigError(f"{where}: unknown setting {name!r} (known: {sorted(known)})")
            ok = isinstance(value, kinds[name]) and not (
                isinstance(value, bool) and bool not in kinds[name]
            )
            if not ok:
                raise ConfigError(f"{where}: {name} has the wrong type ({type(value).__name__})")
            values[name] = float(value) if name.endswith("threshold") else value
        settings = cls(**values)
        if settings.threshold is not None and not -1.0 <= settings.threshold <= 1.0:
            raise ConfigError(f"{where}: threshold must be within [-1, 1]")
        vt = settings.verifier_threshold
        if vt is not None and not 0.0 <= vt <= 1.0:
            raise ConfigError(f"{where}: verifier_threshold must be within [0, 1]")
        if settings.candidates < 1:
            raise ConfigError(f"{where}: candidates must be at least 1")
        if settings.embedder_url is not None and not settings.embedder_model:
            raise ConfigError(f"{where}: embedder_url needs embedder_model")
        return settings

    @classmethod
    def load(cls, path: Path | None) -> PipelineSettings:
        """Read the ``[semantic]`` table of the TOML file at ``path`` (defaults without one)."""
        if path is None:
            return cls()
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read the config file {path}: {exc}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
        table = raw.get("semantic", {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [semantic] must be a table")
        return cls.from_mapping(table, f"{path}: [semantic]")

    def build(self) -> SemanticCache:
        """An empty :class:`~stratacache.semantic.SemanticCache` with this pipeline."""
        from stratacache.semantic.cache import SemanticCache
        from stratacache.semantic.cross_encoder import CrossEncoder, packaged_cross_encoder
        from stratacache.semantic.embedders import LocalEmbedder, RemoteEmbedder
        from stratacache.semantic.index import ExactIndex
        from stratacache.semantic.verifier import Verifier

        if self.embedder_url is not None:
            key = os.environ.get(self.embedder_api_key_env) if self.embedder_api_key_env else None
            embedder: Any = RemoteEmbedder(self.embedder_url, str(self.embedder_model), api_key=key)
        else:
            embedder = LocalEmbedder()
        verifier: Verifier | CrossEncoder | bool | None
        if self.verifier == CROSS_ENCODER:
            verifier = packaged_cross_encoder(embedder.model)
            if verifier is None:
                raise ConfigError(f"no packaged cross-encoder fits {embedder.model}")
        elif isinstance(self.verifier, str):
            verifier = _load_verifier(self.verifier)
        else:
            verifier = self.verifier
        cache = SemanticCache(
            embedder,
            # Each pair gets a partition of one entry: an exact scan is what any index does there.
            # (Asking a local model its dimension loads it: the pairs are read before this.)
            ExactIndex(embedder.dimension),
            None if self.guards else [],
            self.threshold,
            candidates=self.candidates,
            verifier=verifier,
        )
        if self.verifier_threshold is not None and cache.verifier is not None:
            cache = SemanticCache(
                cache.embeddings,
                cache.index,
                cache.guards,
                cache.threshold,
                candidates=self.candidates,
                verifier=cache.verifier.with_threshold(self.verifier_threshold),
            )
        return cache


def _read(path: Path) -> list[Any]:
    from stratacache.semantic.evaluation import read_pairs

    try:
        with path.open(encoding="utf-8") as f:
            pairs = read_pairs(f)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if not pairs:
        raise ConfigError(f"{path} holds no pairs")
    return pairs


def _score(file: Path, config: Path | None) -> tuple[SemanticCache, list[PairOutcome]]:
    from stratacache.semantic.evaluation import score_pairs

    settings = PipelineSettings.load(config)
    pairs = _read(file)
    cache = settings.build()
    return cache, asyncio.run(score_pairs(cache, pairs))


def _fraction(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


def _summary_json(summary: PairSummary) -> dict[str, Any]:
    return {
        "pairs": summary.pairs,
        "served_when_same": _fraction(summary.served_when_same),
        "wrong_when_different": _fraction(summary.wrong_when_different),
        "precision": _fraction(summary.precision),
    }


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1%}"


def _load_verifier(path: str) -> Any:
    """A weight file of either kind: a cross-encoder's or the perceptron verifier's."""
    from stratacache.semantic.cross_encoder import CrossEncoder
    from stratacache.semantic.verifier import Verifier

    if not Path(path).is_file():
        raise ConfigError(f"no verifier weights at {path}")
    try:
        return CrossEncoder.load(path)
    except ConfigError as cross_error:
        if "format" not in str(cross_error) and "layers" not in str(cross_error):
            raise
    return Verifier.load(path)


def _pipeline(cache: SemanticCache) -> dict[str, Any]:
    from stratacache.semantic.cross_encoder import CrossEncoder

    verifier = cache.verifier
    kind = "cross-encoder" if isinstance(verifier, CrossEncoder) else "perceptron"
    return {
        "embedder": cache.embeddings.model,
        "threshold": cache.threshold,
        "guards": [g.name for g in cache.guards],
        "verifier": None if verifier is None else {"threshold": verifier.threshold, "kind": kind},
    }


@click.command("eval-pairs")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A TOML file whose [semantic] table sets the pipeline.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def eval_pairs_command(*, file: Path, config: Path | None, as_json: bool) -> None:
    """Store each pair's a, look up its b through the semantic pipeline, report what is served."""
    from stratacache.semantic.evaluation import summarize

    try:
        cache, outcomes = _score(file, config)
    except StrataError as exc:
        raise click.ClickException(str(exc)) from None
    summary = summarize(outcomes)
    if as_json:
        out = _summary_json(summary)
        out["categories"] = {name: _summary_json(s) for name, s in summary.categories}
        out["pipeline"] = _pipeline(cache)
        click.echo(json.dumps(out, sort_keys=True))
        return
    rows = [("all", summary), *summary.categories]
    click.echo(
        f"{'subset':<20} {'pairs':>6} {'served when same':>17} {'wrong when different':>21}"
        f" {'precision':>10}"
    )
    for name, s in rows:
        click.echo(
            f"{name:<20} {s.pairs:>6} {_pct(s.served_when_same):>17}"
            f" {_pct(s.wrong_when_different):>21} {_pct(s.precision):>10}"
        )
    pipeline = _pipeline(cache)
    click.echo(
        f"pipeline: {pipeline['embedder']}, cosine >= {cache.threshold:.3f}, guards"
        f" {','.join(pipeline['guards']) or 'none'}, verifier "
        + (
            "none"
            if cache.verifier is None
            else f"{pipeline['verifier']['kind']} p >= {cache.verifier.threshold:.3f}"
        )
    )


@click.command("calibrate")
@click.argument(
    "pairs_file", metavar="PAIRS.jsonl", type=click.Path(dir_okay=False, path_type=Path)
)
@click.option(
    "--max-wrong",
    type=click.FloatRange(0.0, 1.0),
    default=0.01,
    show_default=True,
    help="The budget: served pairs that must not match / pairs that must not match.",
)
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A TOML file whose [semantic] table sets the pipeline.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def calibrate_command(
    *, pairs_file: Path, max_wrong: float, config: Path | None, as_json: bool
) -> None:
    """Pick the threshold serving the most right pairs with at most --max-wrong wrong.

    With a verifier, its probability threshold is chosen (the cosine floor stays); without one,
    the cosine threshold. The result is printed as the [semantic] settings to use.
    """
    from stratacache.semantic.cache import calibrate
    from stratacache.semantic.evaluation import labelled

    try:
        cache, outcomes = _score(pairs_file, config)
    except StrataError as exc:
        raise click.ClickException(str(exc)) from None
    if cache.verifier is not None:
        knob = "verifier_threshold"
        chosen = calibrate(
            labelled(outcomes, floor=cache.threshold), 0.0, max_false_hit_rate=max_wrong
        )
    else:
        knob = "threshold"
        chosen = calibrate(
            labelled(outcomes, guarded=bool(cache.guards)), 0.0, max_false_hit_rate=max_wrong
        )
    found = math.isfinite(chosen.threshold)
    result: dict[str, Any] = {
        "pairs": chosen.pairs,
        "max_wrong": max_wrong,
        "setting": knob,
        "value": round(chosen.threshold, 6) if found else None,
        "served_when_same": _fraction(chosen.recall),
        "wrong_when_different": _fraction(chosen.false_hit_rate),
        "precision": _fraction(chosen.precision),
        "served": chosen.served,
        "pipeline": _pipeline(cache),
    }
    if as_json:
        click.echo(json.dumps(result, sort_keys=True))
        return
    if not found:
        click.echo(f"no {knob} serves any right pair within {max_wrong:.2%} wrong")
        return
    click.echo(
        f"{knob} = {chosen.threshold:.4f}: serves {chosen.recall:.1%} of the pairs that match"
        f" with {chosen.false_hit_rate:.2%} wrong (precision {chosen.precision:.1%},"
        f" {chosen.pairs} pairs)"
    )
    click.echo("\n[semantic]")
    if knob == "verifier_threshold":
        click.echo(f"threshold = {cache.threshold:.4f}")
    click.echo(f"{knob} = {chosen.threshold:.4f}")
