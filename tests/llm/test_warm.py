"""Tests for stratacache.llm.warm and ``strata warm``: parsing logs, the dry run, imports, replays.

Imports run on the real tiers a deployment's settings build (memory, then SQLite); replays go to the
fake OpenAI-compatible server on a loopback port (tests/proxy/fake_upstream.py), the only fake.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.fake_upstream import FakeUpstream, running_fake_upstream
from stratacache.cli import main
from stratacache.config import Settings
from stratacache.errors import RequestError
from stratacache.llm.cache import CacheStatus, LLMRequest, RoutePolicy
from stratacache.llm.factory import build_cache
from stratacache.llm.keys import Route
from stratacache.llm.policy import AdmissionMode
from stratacache.llm.warm import (
    RecordedUpstream,
    Rejected,
    WarmItem,
    WarmOutcome,
    dry_run,
    infer_route,
    parse_entry,
    plan,
    read_log,
    warm,
)

AUTH = {"Authorization": "Bearer sk-warm"}


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def chat(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "temperature": 0,
        "messages": [{"role": "user", "content": f"question {i}"}],
        **extra,
    }


def answer(i: int, finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{i}",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": f"answer {i}"},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
    }


def pair(i: int, **extra: Any) -> str:
    return json.dumps({"request": chat(i), "response": answer(i), **extra})


def settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", upstream="http://127.0.0.1:9/v1", **values)


# --- parsing --------------------------------------------------------------------------------------


def test_infer_route_from_the_body() -> None:
    assert infer_route({"model": "m", "messages": []}) is Route.CHAT
    assert infer_route({"model": "m", "prompt": "x"}) is Route.COMPLETIONS
    assert infer_route({"model": "text-embedding-3-small", "input": "x"}) is Route.EMBEDDINGS
    assert infer_route({"model": "m", "input": [1, 2, 3]}) is Route.EMBEDDINGS
    assert infer_route({"model": "m", "input": "x", "dimensions": 8}) is Route.EMBEDDINGS
    assert infer_route({"model": "gpt-4o", "input": "x"}) is Route.RESPONSES
    assert infer_route({"model": "embed-ish", "input": "x", "instructions": "y"}) is Route.RESPONSES
    with pytest.raises(RequestError):
        infer_route({"model": "m"})


def test_a_bare_body_is_a_request_to_fetch_without_stream_fields() -> None:
    item = parse_entry(json.dumps(chat(1, stream=True, stream_options={})), line=3, headers=AUTH)
    assert isinstance(item, WarmItem)
    assert item.line == 3
    assert item.route is Route.CHAT
    assert "stream" not in item.body
    assert "stream_options" not in item.body
    assert item.response is None
    assert item.headers == AUTH


def test_envelopes_name_the_route_by_route_url_or_path() -> None:
    batch = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": chat(1)}
    assert getattr(parse_entry(json.dumps(batch), line=1), "route", None) is Route.CHAT
    legacy = {"path": "/v1/completions?x=1", "body": {"model": "m", "prompt": "p"}}
    assert getattr(parse_entry(json.dumps(legacy), line=1), "route", None) is Route.COMPLETIONS
    named = {"route": "embeddings", "request": {"model": "m", "input": "x"}}
    assert getattr(parse_entry(json.dumps(named), line=1), "route", None) is Route.EMBEDDINGS
    # --route applies to a line that names none, and does not override one that does.
    assert getattr(
        parse_entry('{"input": "x"}', line=1, route=Route.EMBEDDINGS), "route", None
    ) is (Route.EMBEDDINGS)
    assert getattr(
        parse_entry(json.dumps(batch), line=1, route=Route.RESPONSES), "route", None
    ) is (Route.CHAT)


def test_line_headers_override_the_defaults_case_insensitively() -> None:
    line = json.dumps({"request": chat(1), "headers": {"authorization": "Bearer other"}})
    item = parse_entry(line, line=1, headers={**AUTH, "X-Cache-Tags": "faq"})
    assert isinstance(item, WarmItem)
    assert item.headers == {"X-Cache-Tags": "faq", "authorization": "Bearer other"}


def test_a_recorded_stream_is_assembled_into_one_body() -> None:
    chunks = [
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}],
        },
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}],
        },
    ]
    item = parse_entry(json.dumps({"request": chat(1, stream=True), "response": chunks}), line=1)
    assert isinstance(item, WarmItem)
    assert item.response is not None
    assert item.response["choices"][0]["message"]["content"] == "Hello"
    assert item.response["choices"][0]["finish_reason"] == "stop"


def test_batch_output_bodies_are_unwrapped_and_failed_calls_rejected() -> None:
    ok = {"request": chat(1), "response": {"status_code": 200, "body": answer(1)}}
    item = parse_entry(json.dumps(ok), line=1)
    assert isinstance(item, WarmItem)
    assert item.response == answer(1)
    failed = {"request": chat(1), "response": {"status_code": 429, "body": {"error": {}}}}
    rejected = parse_entry(json.dumps(failed), line=2)
    assert isinstance(rejected, Rejected)
    assert rejected.reason == "recorded-error"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "invalid-json"),
        ("[1, 2]", "not-an-object"),
        ('{"response": {}}', "no-request"),
        ('{"model": "m"}', "unknown-route"),
        ('{"url": "/v1/files", "body": {"model": "m"}}', "unknown-route"),
        ('{"request": {"messages": []}, "headers": {"a": 1}}', "bad-headers"),
        ('{"request": {"messages": []}, "response": "text"}', "bad-response"),
        ('{"request": {"messages": []}, "response": [1]}', "bad-response"),
        (
            '{"request": {"input": "x", "model": "e"}, "route": "embeddings", "response": [{}]}',
            "bad-response",
        ),
    ],
)
def test_bad_lines_are_rejected_with_a_reason(text: str, reason: str) -> None:
    rejected = parse_entry(text, line=7)
    assert isinstance(rejected, Rejected)
    assert (rejected.line, rejected.reason) == (7, reason)
    assert rejected.detail


@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_parse_entry_never_raises(text: str | bytes) -> None:
    assert isinstance(parse_entry(text, line=1), WarmItem | Rejected)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_parse_entry_never_raises_on_any_json(value: Any) -> None:
    entry = parse_entry(json.dumps(value), line=1)
    if isinstance(entry, WarmItem):  # whatever parses must also plan without raising
        assert isinstance(plan(entry, {}), str)


def test_read_log_skips_blank_lines_and_numbers_the_rest() -> None:
    entries = list(read_log(["\n", pair(1) + "\n", "  \n", "oops\n"]))
    assert [e.line for e in entries] == [2, 4]
    assert isinstance(entries[0], WarmItem)
    assert isinstance(entries[1], Rejected)


# --- dry run ----------------------------------------------------------------------------------------


def test_dry_run_reports_what_would_be_stored_and_why_not() -> None:
    lines = [
        pair(1),
        pair(1),  # a repeat: already cached by then
        json.dumps(chat(2, temperature=0.7)),  # sampled
        json.dumps({"request": chat(3), "response": answer(3, "length")}),  # cut off
        json.dumps({"request": chat(4), "headers": {"Cache-Control": "no-store"}}),
        json.dumps({"model": "text-embedding-3-small", "input": "x"}),  # route in never mode
        json.dumps(chat(5)),  # fetched
        "not json",
    ]
    policies = {Route.EMBEDDINGS: RoutePolicy(mode=AdmissionMode.NEVER)}
    seen: list[WarmOutcome] = []
    report = dry_run(read_log(lines, headers=AUTH), policies, on_outcome=seen.append)
    assert report.dry_run
    assert (report.lines, report.stored, report.cached) == (8, 2, 1)
    assert report.not_cached == {
        "nondeterministic": 1,
        "finish_reason:length": 1,
        "no-store": 1,
        "never": 1,
        "invalid-json": 1,
    }
    assert [o.line for o in seen] == list(range(1, 9))
    assert [e.line for e in report.examples] == [8]
    # --import-only: a line without a response would not be fetched.
    only = dry_run(read_log(lines, headers=AUTH), policies, fetch=False)
    assert only.stored == 1
    assert only.not_cached["no-response"] == 1


def test_dry_run_counts_different_tenants_separately() -> None:
    lines = [
        json.dumps({"request": chat(1), "headers": {"Authorization": "Bearer a"}}),
        json.dumps({"request": chat(1), "headers": {"Authorization": "Bearer b"}}),
    ]
    assert dry_run(read_log(lines), {}).stored == 2


# --- imports ---------------------------------------------------------------------------------------


async def test_warming_a_10k_request_import_log(tmp_path: Path) -> None:
    clock = Clock()
    config = settings(tmp_path)
    lines = [pair(i) for i in range(10_000)]
    lines[17] = pair(3)  # a repeat
    lines[99] = json.dumps({"request": chat(99), "response": answer(99, "content_filter")})
    lines[500] = "{broken"
    cache = build_cache(config, RecordedUpstream(None), clock=clock)
    try:
        report = await warm(cache, read_log(lines, headers=AUTH), concurrency=32)
    finally:
        await cache.aclose()
        await cache.tiers.close()
    assert (report.lines, report.stored, report.cached) == (10_000, 9_997, 1)
    assert report.not_cached == {"finish_reason:content_filter": 1, "invalid-json": 1}

    # A fresh cache on the same settings (a proxy starting later) serves the imports from SQLite.
    again = build_cache(config, RecordedUpstream(None), clock=clock)
    try:
        for i in (0, 4_242, 9_999):
            got = await again.handle(LLMRequest(Route.CHAT, chat(i, stream=False), headers=AUTH))
            assert got.cache is CacheStatus.HIT
            assert got.tier == "sqlite"
            assert json.loads(got.body or b"")["choices"][0]["message"]["content"] == f"answer {i}"
        # Another tenant's key does not see them.
        other = await again.handle(
            LLMRequest(Route.CHAT, chat(1), headers={"Authorization": "Bearer sk-other"})
        )
        assert other.cache is CacheStatus.MISS
        assert other.status == 502
        # Running the same log again changes nothing and reports everything as already cached.
        report = await warm(again, read_log(lines[:100], headers=AUTH))
        assert (report.stored, report.cached) == (0, 99)
    finally:
        await again.aclose()
        await again.tiers.close()


async def test_importing_part_of_an_embeddings_batch(tmp_path: Path) -> None:
    def batch(texts: list[str]) -> str:
        vectors = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [0.5, 0.5]}
        response = {
            "object": "list",
            "model": "text-embedding-3-small",
            "data": [
                {"object": "embedding", "index": i, "embedding": vectors[t]}
                for i, t in enumerate(texts)
            ],
            "usage": {"prompt_tokens": 2 * len(texts), "total_tokens": 2 * len(texts)},
        }
        request = {"model": "text-embedding-3-small", "input": texts}
        return json.dumps({"request": request, "response": response})

    cache = build_cache(settings(tmp_path), RecordedUpstream(None), clock=Clock())
    try:
        first = await warm(cache, read_log([batch(["a", "b"])], headers=AUTH))
        # "a" is cached now: the cache asks the recorder for "c" alone.
        second = await warm(cache, read_log([batch(["a", "c"])], headers=AUTH))
        assert (first.stored, second.stored) == (1, 1)
        got = await cache.handle(
            LLMRequest(
                Route.EMBEDDINGS,
                {"model": "text-embedding-3-small", "input": ["c", "b", "a"]},
                headers=AUTH,
            )
        )
        assert got.cache is CacheStatus.HIT
        data = json.loads(got.body or b"")["data"]
        assert [d["embedding"] for d in data] == [[0.5, 0.5], [0.0, 1.0], [1.0, 0.0]]
    finally:
        await cache.aclose()
        await cache.tiers.close()


async def test_warm_restores_the_upstream_and_rejects_bad_concurrency(tmp_path: Path) -> None:
    upstream = RecordedUpstream(None)
    cache = build_cache(settings(tmp_path), upstream, clock=Clock())
    try:
        with pytest.raises(RequestError):
            await warm(cache, [], concurrency=0)
        await warm(cache, read_log([pair(1)]))
        assert cache.upstream is upstream
    finally:
        await cache.aclose()
        await cache.tiers.close()


# --- replaying against an upstream, through the command -------------------------------------------


@pytest.fixture(scope="module")
def fake_module() -> Iterator[FakeUpstream]:
    with running_fake_upstream() as fake:
        yield fake


@pytest.fixture
def fake(fake_module: FakeUpstream) -> Iterator[FakeUpstream]:
    fake_module.reset()
    yield fake_module
    fake_module.reset()


def test_strata_warm_replays_a_log_against_the_upstream(
    tmp_path: Path,
    fake: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-replay")
    log = tmp_path / "requests.jsonl"
    rows = [
        chat(1),
        chat(2, stream=True),
        chat(1),  # a repeat
        chat(3, temperature=1),  # sampled: never sent
        {"model": "text-embedding-3-small", "input": ["x", "y"]},
        {"request": chat(4), "response": answer(4)},  # imported: never sent
    ]
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    data = tmp_path / "data"
    args = ["warm", str(log), "--upstream", fake.base_url, "--data-dir", str(data)]

    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would be stored" in out
    assert "nondeterministic" in out
    assert sum(fake.calls.values()) == 0
    assert not (data / "cache.db").exists()

    assert main([*args, "--concurrency", "2"]) == 0
    out = capsys.readouterr().out
    assert "stored" in out
    # chat 1, chat 2 and the embeddings batch went upstream, once each.
    assert sum(fake.calls.values()) == 3
    assert {
        call.body["messages"][0]["content"] for call in fake.log if "messages" in call.body
    } == {
        "question 1",
        "question 2",
    }
    assert all(call.headers.get("authorization") == "Bearer sk-replay" for call in fake.log)

    # A second run finds everything in the store and calls nobody.
    assert main(args) == 0
    assert sum(fake.calls.values()) == 3
    assert "already cached" in capsys.readouterr().out


def test_strata_warm_import_only_and_bad_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    log = tmp_path / "pairs.jsonl"
    log.write_text(pair(1) + "\n" + json.dumps(chat(2)) + "\n", encoding="utf-8")
    data = tmp_path / "data"
    # The upstream is unreachable: --import-only must not try it.
    args = ["warm", str(log), "--upstream", "http://127.0.0.1:9/v1", "--data-dir", str(data)]
    assert main([*args, "--import-only"]) == 0
    out = capsys.readouterr().out
    assert "no-response" in out
    assert main([*args, "--header", "no colon"]) != 0
    assert main([*args, "--chain", "memory,nosuch"]) != 0
    assert "chain" in capsys.readouterr().err


@pytest.mark.parametrize("batch", [7, 10_000])
async def test_answers_the_store_did_not_keep_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    import stratacache.llm.warm as warm_module

    # Answers are checked in the store in batches: each is counted as kept if it is there when
    # its batch is checked (a later eviction is the store doing its job, not a failed import).
    monkeypatch.setattr(warm_module, "_CONFIRM_EVERY", batch)
    small = settings(tmp_path, chain="memory", memory_max_entries=5)
    cache = build_cache(small, RecordedUpstream(None), clock=Clock())
    try:
        report = await warm(cache, read_log([pair(i) for i in range(50)], headers=AUTH))
    finally:
        await cache.aclose()
        await cache.tiers.close()
    assert report.stored + report.not_cached["not-kept"] == 50
    assert report.stored <= 5 * -(-50 // min(batch, 50))
