"""Tests for stratacache.llm.rules: TTL rules and versioned namespaces, from values and from TOML,
and applied by LLMCache (built from Settings as the proxy builds it, answers imported with warm)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stratacache.config import Settings
from stratacache.errors import ConfigError
from stratacache.llm.cache import CacheStatus, LLMCache, LLMRequest, RoutePolicy
from stratacache.llm.factory import build_cache
from stratacache.llm.keys import Route
from stratacache.llm.policy import AdmissionMode
from stratacache.llm.rules import CacheRules, NamespaceVersion, Rule, rules_from_toml
from stratacache.llm.warm import RecordedUpstream, dry_run, read_log, warm

AUTH = {"Authorization": "Bearer sk-rules"}


def chat(text: str, model: str = "gpt-4o", **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "temperature": 0,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}],
        **extra,
    }


def answer(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
    }


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


# --- rules as values --------------------------------------------------------------------------------


def test_a_rule_matches_on_every_matcher_it_has() -> None:
    rule = Rule(
        route=Route.CHAT, namespace="shop-*", model="gpt-4o*", prompt=r"(?i)\bin stock\b", ttl=60
    )
    body = chat("Is the red one IN STOCK?")
    assert rule.matches(Route.CHAT, "shop-eu", body)
    assert not rule.matches(Route.RESPONSES, "shop-eu", body)
    assert not rule.matches(Route.CHAT, "support", body)
    assert not rule.matches(Route.CHAT, "shop-eu", chat("Is it in stock?", model="o3"))
    assert not rule.matches(Route.CHAT, "shop-eu", chat("What colours are there?"))
    # The prompt is the final user turn only: the system prompt does not count.
    assert not Rule(prompt="brief", ttl=1).matches(Route.CHAT, "default", body)
    assert Rule(ttl=1).matches(Route.EMBEDDINGS, "default", {"input": "x"})


def test_the_first_matching_rule_sets_what_it_names() -> None:
    route = RoutePolicy(ttl=3600, stale_if_error=30)
    rules = CacheRules(
        rules=(
            Rule(prompt="(?i)today", mode=AdmissionMode.NEVER),
            Rule(namespace="faq", ttl=86_400, stale_while_revalidate=60),
            Rule(ttl=5),
        )
    )
    never = rules.policy_for(Route.CHAT, "faq", chat("what is on today?"), route)
    assert (never.mode, never.ttl, never.stale_if_error) == (AdmissionMode.NEVER, 3600, 30)
    faq = rules.policy_for(Route.CHAT, "faq", chat("returns?"), route)
    assert (faq.ttl, faq.stale_while_revalidate, faq.stale_if_error) == (86_400, 60, 30)
    assert rules.policy_for(Route.CHAT, "other", chat("x"), route).ttl == 5
    assert CacheRules().policy_for(Route.CHAT, "other", chat("x"), route) is route


@pytest.mark.parametrize(
    "fields",
    [
        {},  # sets nothing
        {"ttl": 0},
        {"ttl": float("inf")},
        {"ttl": True},
        {"stale_if_error": -1},
        {"prompt": "(unclosed", "ttl": 1},
        {"route": "files", "ttl": 1},
        {"mode": "sometimes"},
        {"namespace": "", "ttl": 1},
    ],
)
def test_bad_rules_are_config_errors(fields: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Rule(**fields)


def test_versions_mix_into_the_key_version_only_when_they_add_something() -> None:
    rules = CacheRules(
        versions=(
            NamespaceVersion("support", prompt_version="v7", model_snapshot=True),
            NamespaceVersion("tools-*", tools_hash="abc"),
            NamespaceVersion("plain"),
        ),
        model_snapshots={"gpt-4o": "gpt-4o-2024-08-06"},
    )
    assert rules.version_for("support", chat("x"), "") == "prompt=v7|snapshot=gpt-4o-2024-08-06"
    assert rules.version_for("support", chat("x", model="o3"), "app") == "app|prompt=v7"
    assert rules.version_for("tools-a", {}, "app") == "app|tools=abc"
    assert rules.version_for("plain", chat("x"), "app") == "app"
    assert rules.version_for("elsewhere", chat("x"), "app") == "app"
    policy = RoutePolicy()
    assert CacheRules().resolve(Route.CHAT, "support", {}, policy, "app") == (policy, "app")


@given(st.text(max_size=40), st.text(max_size=40))
def test_version_strings_differ_whenever_the_prompt_version_does(a: str, b: str) -> None:
    def rules(v: str) -> CacheRules:
        return CacheRules(versions=(NamespaceVersion("*", prompt_version=v),))

    assert (rules(a).version_for("n", {}, "") == rules(b).version_for("n", {}, "")) == (a == b)


# --- from TOML ----------------------------------------------------------------------------------------


def test_rules_from_toml(tmp_path: Path) -> None:
    (tmp_path / "tools.json").write_text('[{"name": "lookup"}]', encoding="utf-8")
    rules = rules_from_toml(
        {
            "rules": [
                {"route": "chat.completions", "namespace": "a*", "ttl": 60, "mode": "always"}
            ],
            "versions": {"support": {"prompt_version": "v2", "tools_file": "tools.json"}},
            "model_snapshots": {"gpt-4o": "gpt-4o-2024-08-06"},
        },
        where="strata.toml",
        base=tmp_path,
    )
    assert rules.rules == (
        Rule(route=Route.CHAT, namespace="a*", ttl=60, mode=AdmissionMode.ALWAYS),
    )
    (version,) = rules.versions
    assert version.prompt_version == "v2"
    assert len(version.tools_hash) == 16
    (tmp_path / "tools.json").write_text('[{"name": "lookup", "x": 1}]', encoding="utf-8")
    changed = rules_from_toml(
        {"versions": {"support": {"tools_file": str(tmp_path / "tools.json")}}},
        where="f",
        base=Path("/nonexistent"),
    )
    assert changed.versions[0].tools_hash != version.tools_hash


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"rules": {"ttl": 1}}, "array of tables"),
        ({"rules": [{"ttl": 1, "colour": "red"}]}, "colour"),
        ({"rules": [{"ttl": -1}]}, "rules[0]"),
        ({"versions": {"s": {"prompt_version": 2}}}, "versions.s"),
        ({"versions": {"s": {"tools_file": "missing.json"}}}, "cannot read"),
        ({"versions": {"s": {"tools_file": "t", "tools_hash": "h"}}}, "not both"),
        ({"versions": {"s": {"model": "x"}}}, "unknown key"),
        ({"model_snapshots": {"gpt-4o": 1}}, "model_snapshots"),
    ],
)
def test_bad_rule_sections_name_the_place(
    tmp_path: Path, sections: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        rules_from_toml(sections, where="strata.toml", base=tmp_path)


def test_settings_load_rules_from_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "strata.toml"
    config.write_text(
        """
[[rules]]
prompt = '(?i)price'
ttl = 30

[versions."*"]
prompt_version = "v1"
""",
        encoding="utf-8",
    )
    settings = Settings.load(config_file=config, env={})
    assert settings.cache_rules.rules == (Rule(prompt="(?i)price", ttl=30),)
    assert settings.cache_rules.versions == (NamespaceVersion("*", prompt_version="v1"),)
    assert not Settings.load(env={}).cache_rules
    config.write_text("[[rules]]\nttl = 'soon'\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"strata\.toml"):
        Settings.load(config_file=config, env={})


# --- applied by the cache ----------------------------------------------------------------------------


def _settings(tmp_path: Path, rules: CacheRules) -> Settings:
    return Settings(data_dir=tmp_path / "data", upstream="http://127.0.0.1:9/v1", cache_rules=rules)


async def _import(cache: LLMCache, *pairs: tuple[dict[str, Any], str], namespace: str = "") -> None:
    headers = {**AUTH, "X-Cache-Namespace": namespace} if namespace else AUTH
    lines = [json.dumps({"request": body, "response": answer(text)}) for body, text in pairs]
    report = await warm(cache, read_log(lines, headers=headers))
    assert report.stored == len(pairs), report


async def _status(cache: LLMCache, body: dict[str, Any], namespace: str = "") -> CacheStatus:
    headers = {**AUTH, "X-Cache-Namespace": namespace} if namespace else AUTH
    return (await cache.handle(LLMRequest(Route.CHAT, body, headers=headers))).cache


async def test_ttl_rules_set_the_expiry_of_what_they_match(tmp_path: Path) -> None:
    clock = Clock()
    rules = CacheRules(rules=(Rule(prompt="(?i)in stock", ttl=60),))
    cache = build_cache(_settings(tmp_path, rules), RecordedUpstream(None), clock=clock)
    try:
        stock, colours = chat("Is it in stock?"), chat("Which colours?")
        await _import(cache, (stock, "yes"), (colours, "red"))
        clock.now += 59
        assert await _status(cache, stock) is CacheStatus.HIT
        clock.now += 2
        assert await _status(cache, stock) is CacheStatus.MISS  # expired by the rule
        assert await _status(cache, colours) is CacheStatus.HIT  # the route's: no expiry
    finally:
        await cache.aclose()
        await cache.tiers.close()


async def test_a_rule_in_never_mode_keeps_what_it_matches_out(tmp_path: Path) -> None:
    rules = CacheRules(rules=(Rule(prompt="(?i)today", mode=AdmissionMode.NEVER),))
    settings = _settings(tmp_path, rules)
    today, capital = chat("news today?"), chat("capital of France?")
    lines = [json.dumps({"request": b, "response": answer("a")}) for b in (today, capital)]
    planned = dry_run(read_log(lines, headers=AUTH), settings.routes, settings.cache_rules)
    assert (planned.stored, planned.not_cached) == (1, {"never": 1})
    cache = build_cache(settings, RecordedUpstream(None), clock=Clock())
    try:
        report = await warm(cache, read_log(lines, headers=AUTH))
        assert (report.stored, report.not_cached) == (1, {"never": 1})
        assert await _status(cache, capital) is CacheStatus.HIT
        assert await _status(cache, today) is CacheStatus.BYPASS
    finally:
        await cache.aclose()
        await cache.tiers.close()


async def test_a_new_prompt_version_starts_afresh_without_a_flush(tmp_path: Path) -> None:
    def versioned(v: str) -> CacheRules:
        return CacheRules(
            versions=(NamespaceVersion("support", prompt_version=v, model_snapshot=True),),
            model_snapshots={"gpt-4o": "gpt-4o-2024-08-06"},
        )

    clock = Clock()
    body = chat("How do I return an item?")
    v1 = build_cache(_settings(tmp_path, versioned("v1")), RecordedUpstream(None), clock=clock)
    try:
        await _import(v1, (body, "within 30 days"), namespace="support")
        await _import(v1, (body, "unversioned"), namespace="billing")
    finally:
        await v1.aclose()
        await v1.tiers.close()

    v2 = build_cache(_settings(tmp_path, versioned("v2")), RecordedUpstream(None), clock=clock)
    try:
        assert await _status(v2, body, "support") is CacheStatus.MISS
        assert await _status(v2, body, "billing") is CacheStatus.HIT  # not versioned
    finally:
        await v2.aclose()
        await v2.tiers.close()

    # Rolling back to v1 finds its entries again: nothing was flushed.
    again = build_cache(_settings(tmp_path, versioned("v1")), RecordedUpstream(None), clock=clock)
    try:
        assert await _status(again, body, "support") is CacheStatus.HIT
    finally:
        await again.aclose()
        await again.tiers.close()

    # Moving the alias to a new snapshot is a new key space too.
    moved = CacheRules(
        versions=(NamespaceVersion("support", prompt_version="v1", model_snapshot=True),),
        model_snapshots={"gpt-4o": "gpt-4o-2025-01-01"},
    )
    later = build_cache(_settings(tmp_path, moved), RecordedUpstream(None), clock=clock)
    try:
        assert await _status(later, body, "support") is CacheStatus.MISS
    finally:
        await later.aclose()
        await later.tiers.close()
