"""One typed, frozen settings object for the proxy, from a TOML file, the environment and flags.

Precedence, lowest first: the defaults below, the config file (``--config FILE``), ``STRATA_*``
environment variables, then command-line flags. ``OPENAI_BASE_URL``, when set, replaces the default
upstream (so a shell already configured for a provider works as is), below everything else.

The file is strict: an unknown key or a value of the wrong type is a :class:`ConfigError` naming it,
never silently ignored. The environment holds only the top-level scalar settings (``STRATA_PORT``,
``STRATA_ADMIN_TOKEN``...); ``STRATA_*`` names this object does not know are left alone, since other
stratacache faces read their own. An example file::

    host = "127.0.0.1"
    port = 8080
    upstream = "https://api.openai.com/v1"
    data_dir = ".strata"
    admin_token = "change-me"
    max_body_bytes = 8388608
    signing = "hmac"                    # or "ed25519", "ml-dsa-65"
    redis_url = "redis://127.0.0.1:6379/0"  # a shared tier for several instances
    chain = "memory,sqlite,redis"       # the tiers, fastest first

    semantic = true                     # paraphrases too (default: when the extra is installed)
    semantic_shadow = false             # true: only observe would-be hits, recommend a threshold
    semantic_threshold = 0.95           # cosine; unset: the calibrated default
    embedding_url = "http://127.0.0.1:8081/v1"  # unset: the packaged local model, offline
    semantic_index = "redis://127.0.0.1:6379/0"  # shared vectors (Redis 8 / postgresql://); default memory
    embedding_model = "BAAI/bge-small-en-v1.5"

    [routes."chat.completions"]
    mode = "deterministic"              # or "always", "never"
    ttl = 86400
    stale_while_revalidate = 0
    stale_if_error = 0
    semantic = true                     # false: exact only on this route
    semantic_threshold = 0.97           # this route's own cosine threshold

    [[rules]]                           # TTL rules, first match wins (stratacache.llm.rules)
    namespace = "shop-*"
    prompt = '(?i)in stock'
    ttl = 300

    [versions."support"]                # versioned namespace: a new value, a fresh key space
    prompt_version = "v7"

    [pricing."my-finetune"]             # US dollars per million tokens
    input = 3.0
    output = 12.0
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from stratacache.errors import ConfigError
from stratacache.llm.cache import RoutePolicy
from stratacache.llm.keys import Route
from stratacache.llm.policy import AdmissionMode
from stratacache.llm.rules import RULE_SECTIONS, CacheRules, rules_from_toml
from stratacache.observability.pricing import Price

__all__ = ["DEFAULT_UPSTREAM", "SIGNING_ALGORITHMS", "TIER_NAMES", "Settings", "redact_url"]

DEFAULT_UPSTREAM = "https://api.openai.com/v1"
"""The upstream when neither the settings nor ``OPENAI_BASE_URL`` name one."""
SIGNING_ALGORITHMS = ("hmac", "ed25519", "ml-dsa-65")
"""The record signature algorithms ``signing`` may name."""
TIER_NAMES = ("memory", "sqlite", "redis")
"""The tiers ``chain`` may name."""
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
_MIB = 1024 * 1024
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _default_routes() -> Mapping[Route, RoutePolicy]:
    return MappingProxyType({route: RoutePolicy() for route in Route})


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything ``strata serve`` needs, validated on construction."""

    host: str = "127.0.0.1"
    """The address to bind; loopback by default, so the proxy is not exposed by accident."""
    port: int = 8080
    """The port to bind (0: any free port)."""
    upstream: str = DEFAULT_UPSTREAM
    """The OpenAI-compatible base URL misses go to, ending in ``/v1`` for most providers."""
    data_dir: Path = Path(".strata")
    """Where the SQLite tier (``cache.db``) and the signing key (``signing.key``) live."""
    admin_token: str | None = None
    """The bearer token the admin endpoints require; ``None`` disables them."""
    max_body_bytes: int = 8 * _MIB
    """The largest request body accepted on the cached routes (larger: 413)."""
    upstream_timeout: float = 600.0
    """Seconds to wait for the upstream between two reads (a slow completion thinks for minutes)."""
    upstream_connect_timeout: float = 10.0
    """Seconds to wait for a connection to the upstream."""
    upstream_max_connections: int = 256
    """Pooled connections to the upstream."""
    memory_max_entries: int | None = 100_000
    """The L0 (in-process) tier's entry limit."""
    memory_max_bytes: int | None = 256 * _MIB
    """The L0 tier's byte budget."""
    sqlite_max_bytes: int | None = 2048 * _MIB
    """The SQLite tier's byte budget (evicting expired, then least recently used entries)."""
    redis_url: str | None = None
    """A ``redis://``, ``rediss://``, ``unix://`` or ``redis+sentinel://host:port,…/service`` URL
    of a Redis shared by several instances."""
    redis_prefix: str = "strata:"
    """The prefix of every Redis key; instances share entries by sharing it."""
    redis_timeout: float = 0.25
    """Seconds to wait for Redis before serving from the other tiers (and the upstream)."""
    events_stream: str | None = None
    """A Redis stream (on ``redis_url``) of external events to apply the ``[[events]]`` rules to."""
    events_channel: str | None = None
    """Or a Redis pub/sub channel of such events (see :mod:`stratacache.llm.events`)."""
    chain: str | None = None
    """The tiers, fastest first, comma-separated, from ``memory``, ``sqlite`` and ``redis``.
    ``None``: ``memory,sqlite``, or ``memory,redis`` when ``redis_url`` is set."""
    signing: str = "hmac"
    """The record signature: ``hmac`` (HMAC-SHA256), ``ed25519`` or ``ml-dsa-65``."""
    signing_key_file: Path | None = None
    """The 32-byte key file (created if missing); ``None``: ``data_dir/signing.key``."""
    share_across_tenants: bool = False
    """Let every credential share one set of entries (only for a single-tenant deployment)."""
    stream_usage: bool = True
    """Ask the upstream for usage in cacheable streams (see ``stratacache.llm.cache``)."""
    key_version: str = ""
    """Mixed into every key: change it to stop matching answers cached before."""
    log_level: str = "info"
    """The server's log level."""
    access_log: bool = False
    """Log a line per request (uvicorn's access log, at ``info``). Off by default: formatting it
    took about 5 % of the proxy's CPU on a miss, and ``/metrics`` counts requests by outcome."""
    semantic: bool | None = None
    """Answer paraphrases from the cache: ``None`` (default) when the ``semantic`` extra is
    installed, ``True`` always (an error if it is not), ``False`` never."""
    semantic_shadow: bool = False
    """Compute would-be semantic hits without serving them; ``/stats`` then recommends a
    threshold."""
    semantic_threshold: float | None = None
    """The cosine similarity a paraphrase needs (a route's ``semantic_threshold`` overrides it);
    ``None``: the semantic cache's calibrated default."""
    embedding_url: str | None = None
    """An OpenAI-compatible base URL (TEI, vLLM, OpenAI; ``/embeddings`` is appended) for the
    semantic cache's embeddings; ``None``: the packaged local model, offline."""
    embedding_model: str | None = None
    """The model name sent to ``embedding_url``."""
    semantic_index: str = "memory"
    """Where the semantic vectors live: ``memory`` (in-process, saved beside the SQLite file), or a
    ``redis://`` URL (Redis 8 vector sets) or ``postgresql://`` URL (pgvector) shared by every
    instance."""
    routes: Mapping[Route, RoutePolicy] = field(default_factory=_default_routes)
    """The caching policy per route."""
    pricing: Mapping[str, Price] = field(default_factory=lambda: MappingProxyType({}))
    """Price overrides per model, on top of the built-in table."""
    cache_rules: CacheRules = field(default_factory=CacheRules)
    """TTL rules and versioned namespaces: the file's ``[[rules]]``, ``[versions."<glob>"]`` and
    ``[model_snapshots]`` (see :mod:`stratacache.llm.rules`)."""

    def __post_init__(self) -> None:
        _check_str("host", self.host)
        if (
            not isinstance(self.port, int)
            or isinstance(self.port, bool)
            or not 0 <= self.port < 65536
        ):
            raise ConfigError(f"port must be an integer from 0 to 65535, got {self.port!r}")
        _check_str("upstream", self.upstream)
        parts = urlsplit(self.upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"upstream must be an http:// or https:// URL, got {self.upstream!r}")
        if (
            parts.hostname in ("127.0.0.1", "localhost", "::1", self.host)
            and (parts.port or (443 if parts.scheme == "https" else 80)) == self.port
        ):
            raise ConfigError(
                f"the upstream {self.upstream} is this proxy itself (does OPENAI_BASE_URL point "
                "at the proxy?); set --upstream to the provider's URL"
            )
        if not isinstance(self.data_dir, Path):
            raise ConfigError("data_dir must be a Path")
        if self.admin_token is not None and (
            not isinstance(self.admin_token, str) or len(self.admin_token) < 8
        ):
            raise ConfigError("admin_token must be a string of at least 8 characters")
        _check_int("max_body_bytes", self.max_body_bytes, minimum=1)
        _check_int("upstream_max_connections", self.upstream_max_connections, minimum=1)
        for name in ("memory_max_entries", "memory_max_bytes", "sqlite_max_bytes"):
            value = getattr(self, name)
            if value is not None:
                _check_int(name, value, minimum=1)
        for name in ("upstream_timeout", "upstream_connect_timeout"):
            value = getattr(self, name)
            if (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ConfigError(f"{name} must be a number of seconds > 0, got {value!r}")
        self._check_redis()
        if self.signing not in SIGNING_ALGORITHMS:
            raise ConfigError(f"signing must be one of {SIGNING_ALGORITHMS}, got {self.signing!r}")
        if self.signing_key_file is not None and not isinstance(self.signing_key_file, Path):
            raise ConfigError("signing_key_file must be a Path")
        for name in ("share_across_tenants", "stream_usage", "access_log"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false")
        if not isinstance(self.key_version, str):
            raise ConfigError("key_version must be a string")
        self._check_semantic()
        if self.log_level not in _LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {_LOG_LEVELS}, got {self.log_level!r}")
        routes = dict(_default_routes())
        for route, policy in self.routes.items():
            if not isinstance(policy, RoutePolicy):
                raise ConfigError(f"the policy of route {route!r} must be a RoutePolicy")
            routes[Route(route)] = policy
        object.__setattr__(self, "routes", MappingProxyType(routes))
        for model, price in self.pricing.items():
            if not isinstance(model, str) or not isinstance(price, Price):
                raise ConfigError(f"pricing maps model names to Price, got {model!r}: {price!r}")
        object.__setattr__(self, "pricing", MappingProxyType(dict(self.pricing)))
        if not isinstance(self.cache_rules, CacheRules):
            raise ConfigError("cache_rules must be a CacheRules")

    def _check_semantic(self) -> None:
        if self.semantic is not None and not isinstance(self.semantic, bool):
            raise ConfigError("semantic must be true, false or unset")
        if not isinstance(self.semantic_shadow, bool):
            raise ConfigError("semantic_shadow must be true or false")
        threshold = self.semantic_threshold
        if threshold is not None and (
            not isinstance(threshold, int | float)
            or isinstance(threshold, bool)
            or not -1.0 <= threshold <= 1.0
        ):
            raise ConfigError(
                f"semantic_threshold must be a cosine similarity in [-1, 1], got {threshold!r}"
            )
        if self.embedding_url is not None:
            _check_str("embedding_url", self.embedding_url)
            if urlsplit(self.embedding_url).scheme not in ("http", "https"):
                raise ConfigError(
                    f"embedding_url must be an http:// or https:// URL, got {self.embedding_url!r}"
                )
            if not self.embedding_model:
                raise ConfigError("embedding_url needs embedding_model (the model name to send)")
        if self.embedding_model is not None:
            _check_str("embedding_model", self.embedding_model)
        _check_str("semantic_index", self.semantic_index)
        if self.semantic_index != "memory" and urlsplit(self.semantic_index).scheme not in (
            "redis",
            "rediss",
            "unix",
            "postgresql",
            "postgres",
        ):
            raise ConfigError(
                "semantic_index must be memory, a redis:// or a postgresql:// URL, "
                f"got {redact_url(self.semantic_index)!r}"
            )

    def _check_redis(self) -> None:
        if self.redis_url is not None:
            _check_str("redis_url", self.redis_url)
            schemes = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")
            if urlsplit(self.redis_url).scheme not in schemes:
                raise ConfigError(
                    "redis_url must be a redis://, rediss://, unix://, redis+sentinel:// or "
                    f"redis+cluster:// URL, got {redact_url(self.redis_url)!r}"
                )
        _check_str("redis_prefix", self.redis_prefix)
        timeout = self.redis_timeout
        if (
            not isinstance(timeout, int | float)
            or isinstance(timeout, bool)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise ConfigError(f"redis_timeout must be a number of seconds > 0, got {timeout!r}")
        if self.chain is not None:
            _check_str("chain", self.chain)
        names = self.chain_tiers
        unknown = [name for name in names if name not in TIER_NAMES]
        if unknown or not names or len(set(names)) != len(names):
            raise ConfigError(
                f"chain must name distinct tiers from {TIER_NAMES}, fastest first, got {self.chain!r}"
            )
        if "redis" in names and self.redis_url is None:
            raise ConfigError("the chain names redis but redis_url is not set")
        for name in ("events_stream", "events_channel"):
            if getattr(self, name) is not None:
                _check_str(name, getattr(self, name))
                if self.redis_url is None:
                    raise ConfigError(f"{name} is read from Redis, but redis_url is not set")
        if self.events_stream is not None and self.events_channel is not None:
            raise ConfigError("give events_stream or events_channel, not both")

    @property
    def chain_tiers(self) -> tuple[str, ...]:
        """The tiers of :attr:`chain`, fastest first, with the default resolved."""
        if self.chain is None:
            return ("memory", "redis") if self.redis_url is not None else ("memory", "sqlite")
        return tuple(name.strip() for name in self.chain.split(",") if name.strip())

    @property
    def key_file(self) -> Path:
        """The signing key file actually used."""
        return self.signing_key_file or self.data_dir / "signing.key"

    @property
    def database(self) -> Path:
        """The SQLite tier's file."""
        return self.data_dir / "cache.db"

    @classmethod
    def load(
        cls,
        *,
        config_file: Path | None = None,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Settings:
        """Build settings from defaults < ``config_file`` < ``env`` (``STRATA_*``) < ``overrides``.

        ``overrides`` holds already-typed values (from command-line flags); ``None`` values in it
        mean "not given" and are skipped.
        """
        env = env if env is not None else {}
        values: dict[str, Any] = {}
        base_url = env.get("OPENAI_BASE_URL")
        if base_url:
            values["upstream"] = base_url
        if config_file is not None:
            values.update(_from_file(Path(config_file)))
        values.update(_from_env(env))
        for name, value in (overrides or {}).items():
            if name not in _SCALARS and name not in ("routes", "pricing", "cache_rules"):
                raise ConfigError(f"unknown setting {name!r}")
            if value is not None:
                values[name] = value
        try:
            return cls(**values)
        except TypeError as exc:  # a wrong type reached a comparison in validation
            raise ConfigError(str(exc)) from None


# --- parsing --------------------------------------------------------------------------------------


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(Settings)
    return {f.name: hints[f.name] for f in dataclasses.fields(Settings)}


_SCALARS: dict[str, Any] = {
    name: kind
    for name, kind in _field_types().items()
    if name not in ("routes", "pricing", "cache_rules")
}


def _from_file(path: Path) -> dict[str, Any]:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    for name, value in raw.items():
        where = f"{path}: {name}"
        if name in RULE_SECTIONS:
            sections[name] = value
        elif name == "routes":
            values["routes"] = _routes(value, where)
        elif name == "pricing":
            values["pricing"] = _pricing(value, where)
        elif name in _SCALARS:
            values[name] = _typed(name, value, _SCALARS[name], where, from_text=False)
        else:
            raise ConfigError(
                f"{where}: unknown setting "
                f"(known: {sorted([*_SCALARS, 'routes', 'pricing', *RULE_SECTIONS])})"
            )
    if sections:
        values["cache_rules"] = rules_from_toml(sections, where=str(path), base=path.parent)
    return values


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, kind in _SCALARS.items():
        var = "STRATA_" + name.upper()
        if var in env:
            values[name] = _typed(name, env[var], kind, var, from_text=True)
    return values


def _typed(name: str, value: Any, kind: Any, where: str, *, from_text: bool) -> Any:
    """Convert ``value`` to the field type ``kind`` (text from the environment is parsed)."""
    optional = False
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        optional = len(args) < len(typing.get_args(kind))
        kind = args[0]
    if optional and (value is None or (from_text and value.strip().lower() in ("", "none"))):
        return None
    if kind is bool:
        if isinstance(value, bool):
            return value
        if from_text and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_text:
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                pass
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if from_text:
            try:
                return float(value.strip())
            except ValueError:
                pass
    elif kind is Path:
        if isinstance(value, str) and value:
            return Path(value).expanduser()
    elif kind is str and isinstance(value, str):
        return value
    raise ConfigError(f"{where}: expected {getattr(kind, '__name__', kind)}, got {value!r}")


def _routes(raw: Any, where: str) -> dict[Route, RoutePolicy]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a table of routes")
    routes: dict[Route, RoutePolicy] = {}
    known = {f.name for f in dataclasses.fields(RoutePolicy)}
    for name, table in raw.items():
        try:
            route = Route(name)
        except ValueError:
            raise ConfigError(
                f"{where}: unknown route {name!r} (known: {[r.value for r in Route]})"
            ) from None
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}.{name}: expected a table")
        unknown = set(table) - known
        if unknown:
            raise ConfigError(
                f"{where}.{name}: unknown key(s) {sorted(unknown)} (known: {sorted(known)})"
            )
        fields = dict(table)
        if "mode" in fields:
            try:
                fields["mode"] = AdmissionMode(fields["mode"])
            except ValueError:
                raise ConfigError(
                    f"{where}.{name}.mode: expected one of {[m.value for m in AdmissionMode]}"
                ) from None
        try:
            routes[route] = RoutePolicy(**fields)
        except ConfigError as exc:
            raise ConfigError(f"{where}.{name}: {exc}") from None
    return routes


def _pricing(raw: Any, where: str) -> dict[str, Price]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a table of models")
    known = {f.name for f in dataclasses.fields(Price)}
    prices: dict[str, Price] = {}
    for model, table in raw.items():
        if not isinstance(table, Mapping) or "input" not in table:
            raise ConfigError(f"{where}.{model}: expected a table with at least 'input'")
        unknown = set(table) - known
        if unknown:
            raise ConfigError(
                f"{where}.{model}: unknown key(s) {sorted(unknown)} (known: {sorted(known)})"
            )
        try:
            prices[model] = Price(**table)
        except ConfigError as exc:
            raise ConfigError(f"{where}.{model}: {exc}") from None
    return prices


def redact_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***`` (for messages and printouts)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _check_str(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name} must be a non-empty string, got {value!r}")


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
