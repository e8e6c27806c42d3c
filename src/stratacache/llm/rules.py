"""Cache rules from the config file: TTL rules, and versioned namespaces.

LLM answers go stale at different speeds: a stock-level question in minutes, a product FAQ in
days, a definition never. And they go wrong all at once when the prompt template, the model behind
an alias, or the tools change. Two kinds of rule express this; both are values (frozen dataclasses)
read from the config file and applied by :class:`~stratacache.llm.cache.LLMCache` to every request
before its admission decision and key:

**TTL rules** (:class:`Rule`), in order, the first that matches wins. A rule matches on any of the
route, the namespace (a glob), the model (a glob) and the prompt (a regular expression searched in
the request's final user turn); what it matches gets its TTL, its stale windows and/or its
admission mode instead of the route's. A per-request TTL (``X-Cache-TTL``, ``cache.ttl``) still
overrides the rule's TTL, as it overrides the route's::

    [[rules]]
    route = "chat.completions"          # optional
    namespace = "shop-*"                # optional glob
    model = "gpt-4o*"                   # optional glob
    prompt = '(?i)\\b(in stock|price)\\b' # optional regex over the final user turn
    ttl = 300
    mode = "always"                     # optional: also stale_while_revalidate, stale_if_error

**Versioned namespaces** (:class:`NamespaceVersion`): what a namespace's keys are versioned by,
per namespace glob, the first that matches wins. The prompt-template version, the model snapshot
an alias currently stands for (from ``[model_snapshots]``) and a hash of the application's tool
schemas are mixed into the key, so deploying a new prompt version, moving an alias to a new
snapshot or changing the tools starts a fresh key space at once, with no flush: the old entries
are never matched again and age out (or go with ``DELETE /admin/namespaces/{name}``)::

    [versions."support"]                # a namespace glob ("*": every namespace)
    prompt_version = "2024-11-02"
    model_snapshot = true               # key on the snapshot [model_snapshots] maps the model to
    tools_file = "tools.json"           # hashed when the config is loaded (relative to the file)
    # tools_hash = "9f2c..."            # or the hash itself

    [model_snapshots]
    "gpt-4o" = "gpt-4o-2024-08-06"

(The tools a request sends are always part of its key; ``tools_file`` is for tool schemas or
implementations the application keeps on its side.) With no rules configured a request's key is
exactly what it was before, so turning the feature on loses no entries.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from stratacache.errors import ConfigError
from stratacache.llm.events import EventRule
from stratacache.llm.events import rules_from_toml as event_rules_from_toml
from stratacache.llm.keys import Route, final_user_turn
from stratacache.llm.policy import AdmissionMode

if TYPE_CHECKING:
    from stratacache.llm.cache import RoutePolicy

__all__ = ["RULE_SECTIONS", "CacheRules", "NamespaceVersion", "Rule", "rules_from_toml"]

RULE_SECTIONS = ("rules", "versions", "model_snapshots", "events")
"""The config file's top-level sections these rules are read from."""

_MAX_PROMPT_CHARS = 100_000  # a prompt regex searches at most this much of the final turn


@dataclass(frozen=True, slots=True)
class Rule:
    """One TTL rule: what it matches (every matcher given must match) and what it sets."""

    route: Route | None = None
    """Match only this route."""
    namespace: str | None = None
    """Match namespaces by this glob (``fnmatch``, case-sensitive); ``"default"`` when none."""
    model: str | None = None
    """Match the request's ``model`` by this glob."""
    prompt: str | None = None
    """Match when this regular expression is found in the final user turn's text."""
    ttl: float | None = None
    """The TTL in seconds for what matches; ``None``: the route's."""
    mode: AdmissionMode | None = None
    """The admission mode for what matches; ``None``: the route's."""
    stale_while_revalidate: float | None = None
    """The stale-while-revalidate window for what matches; ``None``: the route's."""
    stale_if_error: float | None = None
    """The stale-if-error window for what matches; ``None``: the route's."""
    _regex: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.route is not None:
            try:
                object.__setattr__(self, "route", Route(self.route))
            except ValueError:
                raise ConfigError(f"unknown route {self.route!r}") from None
        for name in ("namespace", "model", "prompt"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"a rule's {name} must be a non-empty string, got {value!r}")
        if self.prompt is not None:
            try:
                object.__setattr__(self, "_regex", re.compile(self.prompt))
            except re.error as exc:
                raise ConfigError(f"a rule's prompt is not a valid regex: {exc}") from None
        if self.mode is not None:
            try:
                object.__setattr__(self, "mode", AdmissionMode(self.mode))
            except ValueError:
                known = [m.value for m in AdmissionMode]
                raise ConfigError(f"a rule's mode must be one of {known}") from None
        if self.ttl is not None and not _seconds(self.ttl, positive=True):
            raise ConfigError(f"a rule's ttl must be a number of seconds > 0, got {self.ttl!r}")
        for name in ("stale_while_revalidate", "stale_if_error"):
            value = getattr(self, name)
            if value is not None and not _seconds(value, positive=False):
                raise ConfigError(f"a rule's {name} must be a number of seconds >= 0")
        if (self.ttl, self.mode, self.stale_while_revalidate, self.stale_if_error) == (None,) * 4:
            raise ConfigError("a rule must set ttl, mode, stale_while_revalidate or stale_if_error")

    def matches(self, route: Route, namespace: str, body: Mapping[str, Any]) -> bool:
        """Whether this rule applies to a request (``body`` without its ``cache`` member)."""
        if self.route is not None and route is not self.route:
            return False
        if self.namespace is not None and not fnmatch.fnmatchcase(namespace, self.namespace):
            return False
        if self.model is not None:
            model = body.get("model")
            if not isinstance(model, str) or not fnmatch.fnmatchcase(model, self.model):
                return False
        if self._regex is not None:
            text = final_user_turn(route, body)
            if text is None or self._regex.search(text[:_MAX_PROMPT_CHARS]) is None:
                return False
        return True

    def apply(self, policy: RoutePolicy) -> RoutePolicy:
        """``policy`` with what this rule sets."""
        changes: dict[str, Any] = {
            name: getattr(self, name)
            for name in ("ttl", "mode", "stale_while_revalidate", "stale_if_error")
            if getattr(self, name) is not None
        }
        return dataclasses.replace(policy, **changes)


@dataclass(frozen=True, slots=True)
class NamespaceVersion:
    """What the keys of the namespaces matching :attr:`namespace` are versioned by."""

    namespace: str = "*"
    """A namespace glob (``fnmatch``): ``"support"``, ``"shop-*"``, ``"*"``."""
    prompt_version: str = ""
    """The prompt-template version; a new value starts a fresh key space."""
    model_snapshot: bool = False
    """Key on the snapshot :attr:`CacheRules.model_snapshots` maps the request's model to."""
    tools_hash: str = ""
    """A hash (or any version string) of the application's tool schemas."""

    def __post_init__(self) -> None:
        if not isinstance(self.namespace, str) or not self.namespace:
            raise ConfigError("a versioned namespace needs a non-empty namespace glob")
        for name in ("prompt_version", "tools_hash"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be a string")
        if not isinstance(self.model_snapshot, bool):
            raise ConfigError("model_snapshot must be true or false")


@dataclass(frozen=True, slots=True)
class CacheRules:
    """Every TTL rule and namespace version of a deployment (empty: none)."""

    rules: tuple[Rule, ...] = ()
    """The TTL rules, first match wins."""
    versions: tuple[NamespaceVersion, ...] = ()
    """The versioned namespaces, first match wins."""
    model_snapshots: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Model alias -> the snapshot it currently stands for."""
    events: tuple[EventRule, ...] = ()
    """Which tags and namespaces external events invalidate (see :mod:`stratacache.llm.events`)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        object.__setattr__(self, "versions", tuple(self.versions))
        if not all(isinstance(r, Rule) for r in self.rules):
            raise ConfigError("rules must be Rule objects")
        if not all(isinstance(v, NamespaceVersion) for v in self.versions):
            raise ConfigError("versions must be NamespaceVersion objects")
        object.__setattr__(self, "events", tuple(self.events))
        if not all(isinstance(e, EventRule) for e in self.events):
            raise ConfigError("events must be EventRule objects")
        snapshots = dict(self.model_snapshots)
        if not all(isinstance(k, str) and isinstance(v, str) and v for k, v in snapshots.items()):
            raise ConfigError("model_snapshots must map model names to snapshot names")
        object.__setattr__(self, "model_snapshots", MappingProxyType(snapshots))

    def __bool__(self) -> bool:
        # Event rules change no key and no policy: a request has nothing to resolve for them.
        return bool(self.rules or self.versions)

    def policy_for(
        self, route: Route, namespace: str, body: Mapping[str, Any], policy: RoutePolicy
    ) -> RoutePolicy:
        """The policy for one request: ``policy`` changed by the first matching rule, if any."""
        for rule in self.rules:
            if rule.matches(route, namespace, body):
                return rule.apply(policy)
        return policy

    def version_for(self, namespace: str, body: Mapping[str, Any], version: str = "") -> str:
        """The key version for one request: ``version`` with the namespace's versions mixed in.

        Unchanged when no :class:`NamespaceVersion` matches, or the one that does adds nothing.

        >>> rules = CacheRules(versions=(NamespaceVersion("support", prompt_version="v2"),))
        >>> rules.version_for("support", {}, "app1")
        'app1|prompt=v2'
        >>> rules.version_for("billing", {}, "app1")
        'app1'
        """
        for entry in self.versions:
            if fnmatch.fnmatchcase(namespace, entry.namespace):
                break
        else:
            return version
        parts = [version] if version else []
        if entry.prompt_version:
            parts.append(f"prompt={entry.prompt_version}")
        if entry.model_snapshot:
            model = body.get("model")
            snapshot = self.model_snapshots.get(model) if isinstance(model, str) else None
            if snapshot is not None:
                parts.append(f"snapshot={snapshot}")
        if entry.tools_hash:
            parts.append(f"tools={entry.tools_hash}")
        return "|".join(parts)

    def resolve(
        self,
        route: Route,
        namespace: str,
        body: Mapping[str, Any],
        policy: RoutePolicy,
        version: str,
    ) -> tuple[RoutePolicy, str]:
        """:meth:`policy_for` and :meth:`version_for` in one call (what the cache calls)."""
        if not self:
            return policy, version
        return (
            self.policy_for(route, namespace, body, policy),
            self.version_for(namespace, body, version),
        )


# --- from the config file ---------------------------------------------------------------------------


def rules_from_toml(sections: Mapping[str, Any], *, where: str, base: Path) -> CacheRules:
    """Build :class:`CacheRules` from the config file's ``rules``, ``versions``,
    ``model_snapshots`` and ``events`` sections (any may be missing). ``base`` is the directory relative
    ``tools_file`` paths start from; ``where`` names the file in error messages."""
    unknown = set(sections) - set(RULE_SECTIONS)
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {sorted(unknown)}")
    return CacheRules(
        rules=_rules(sections.get("rules", []), f"{where}: rules"),
        versions=_versions(sections.get("versions", {}), f"{where}: versions", base),
        model_snapshots=_snapshots(
            sections.get("model_snapshots", {}), f"{where}: model_snapshots"
        ),
        events=event_rules_from_toml(sections.get("events", []), f"{where}: events"),
    )


_RULE_KEYS = frozenset(
    {
        "route",
        "namespace",
        "model",
        "prompt",
        "ttl",
        "mode",
        "stale_while_revalidate",
        "stale_if_error",
    }
)
_VERSION_KEYS = frozenset({"prompt_version", "model_snapshot", "tools_file", "tools_hash"})


def _rules(raw: Any, where: str) -> tuple[Rule, ...]:
    if not isinstance(raw, list) or not all(isinstance(t, Mapping) for t in raw):
        raise ConfigError(f"{where}: expected an array of tables ([[rules]])")
    rules = []
    for index, table in enumerate(raw):
        unknown = set(table) - _RULE_KEYS
        if unknown:
            raise ConfigError(
                f"{where}[{index}]: unknown key(s) {sorted(unknown)} (known: {sorted(_RULE_KEYS)})"
            )
        try:
            rules.append(Rule(**table))
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"{where}[{index}]: {exc}") from None
    return tuple(rules)


def _versions(raw: Any, where: str, base: Path) -> tuple[NamespaceVersion, ...]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a table of namespaces")
    versions = []
    for namespace, table in raw.items():
        here = f"{where}.{namespace}"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{here}: expected a table")
        unknown = set(table) - _VERSION_KEYS
        if unknown:
            raise ConfigError(
                f"{here}: unknown key(s) {sorted(unknown)} (known: {sorted(_VERSION_KEYS)})"
            )
        fields = dict(table)
        tools_file = fields.pop("tools_file", None)
        if tools_file is not None:
            if "tools_hash" in fields:
                raise ConfigError(f"{here}: give tools_file or tools_hash, not both")
            fields["tools_hash"] = _file_hash(tools_file, here, base)
        try:
            versions.append(NamespaceVersion(namespace=namespace, **fields))
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"{here}: {exc}") from None
    return tuple(versions)


def _snapshots(raw: Any, where: str) -> Mapping[str, str]:
    if not isinstance(raw, Mapping) or not all(isinstance(v, str) and v for v in raw.values()):
        raise ConfigError(f'{where}: expected a table of "model" = "snapshot" strings')
    return dict(raw)


def _file_hash(name: Any, where: str, base: Path) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.tools_file: expected a path")
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = base / path
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}.tools_file: cannot read {path}: {exc}") from None
    return hashlib.sha256(data).hexdigest()[:16]


def _seconds(value: Any, *, positive: bool) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return False
    return value > 0 if positive else value >= 0
