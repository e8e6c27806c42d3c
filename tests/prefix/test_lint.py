"""The prompt-prefix analyser over logs built in the tests."""

from __future__ import annotations

import contextlib
import json
from array import array
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefix.logs import QUESTIONS, RULES, TOOLS, chat, jsonl, request_id, uuid_fixed, uuid_on_top
from stratacache.cli import main
from stratacache.errors import ConfigError, RequestError
from stratacache.prefix.lint import LintReport, LogEntry, diff_prompts, lint, read_log
from stratacache.prefix.providers import PromptCacheModel, rules_for
from stratacache.prefix.render import render_request


def kinds(report: LintReport) -> dict[str, Any]:
    return {f.kind: f for f in report.findings}


def test_uuid_on_top_is_found_and_the_fix_raises_the_hit_rate() -> None:
    bad = lint(jsonl(uuid_on_top(40)))
    [group] = bad.groups
    assert group.requests == 40
    assert group.provider_hit_rate == 0.0
    finding = kinds(bad)["dynamic-content"]
    assert "UUID" in finding.message
    assert finding.requests == 39
    position = finding.position
    assert position.path == "messages[0].content"
    # "Request " is 8 characters: the UUID starts at char 8 of line 1.
    assert (position.char, position.line, position.column) == (8, 1, 9)
    assert position.token == group.stable_prefix_tokens < 5

    fixed = lint(jsonl(uuid_fixed(40)))
    [after] = fixed.groups
    assert after.provider_hit_rate == pytest.approx(39 / 40)
    assert after.stable_prefix_tokens > 2000
    assert after.expected_cached_tokens_per_1k > 0
    assert after.expected_dollars_saved_per_1k is not None
    assert after.expected_dollars_saved_per_1k > 0
    assert not [f for f in fixed.findings if f.kind == "dynamic-content"]


def test_whitespace_variance_is_found_at_its_character() -> None:
    lines = RULES.split("\n")
    variant = "\n".join([*lines[:30], lines[30] + "  ", *lines[31:]])  # trailing spaces on line 31
    bodies = [chat(RULES if i % 2 else variant, QUESTIONS[i]) for i in range(20)]
    report = lint(jsonl(bodies))
    [group] = report.groups
    finding = kinds(report)["whitespace-variance"]
    assert finding.position.path == "messages[0].content"
    assert finding.position.line == 31
    assert finding.position.char == len("\n".join(lines[:31]))
    assert finding.requests == 10
    assert group.stable_prefix_tokens == finding.position.token
    # The prefix up to the variance is long enough that both variants cache within themselves.
    assert group.provider_hit_rate == pytest.approx(18 / 20)


def test_tool_order_variance_is_found() -> None:
    bodies = [
        chat(RULES, QUESTIONS[i], tools=TOOLS if i % 2 else list(reversed(TOOLS)))
        for i in range(12)
    ]
    report = lint(jsonl(bodies))
    assert len(report.groups) == 1
    finding = kinds(report)["tool-order-variance"]
    assert finding.position.path == "tools[0]"
    # The tools' JSON agrees up to the name: the tokens diverge there.
    assert finding.position.char == len('{"type":"function","function":{"name":"get_')
    assert finding.position.token == report.groups[0].stable_prefix_tokens
    assert "get_orders, get_invoices, get_tickets" in finding.message
    assert finding.requests == 6


def test_key_order_variance_is_found() -> None:
    shuffled = json.loads(json.dumps(TOOLS))
    params = shuffled[1]["function"]["parameters"]
    shuffled[1]["function"]["parameters"] = dict(reversed(list(params.items())))
    bodies = [chat(RULES, QUESTIONS[i], tools=TOOLS if i % 3 else shuffled) for i in range(9)]
    report = lint(jsonl(bodies))
    finding = kinds(report)["key-order-variance"]
    assert finding.position.path == "tools[1]"
    assert finding.position.char > 0


def test_prefix_just_under_the_minimum() -> None:
    short = "\n".join(RULES.split("\n")[:42])
    bodies = [chat(short, QUESTIONS[i]) for i in range(10)]
    report = lint(jsonl(bodies))
    [group] = report.groups
    assert 768 <= group.stable_prefix_tokens < 1024
    assert group.provider_hit_rate == 0.0
    finding = kinds(report)["under-minimum"]
    assert f"{1024 - group.stable_prefix_tokens} under" in finding.message
    assert finding.position.token == group.stable_prefix_tokens


def anthropic(system: Any, question: str) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 256,
        "system": system,
        "messages": [{"role": "user", "content": question}],
    }


def test_anthropic_breakpoints() -> None:
    marked = [{"type": "text", "text": RULES, "cache_control": {"type": "ephemeral"}}]
    good = lint(jsonl(anthropic(marked, QUESTIONS[i]) for i in range(10)))
    [group] = good.groups
    assert group.provider == "anthropic"
    assert group.provider_hit_rate == pytest.approx(9 / 10)
    assert not good.findings

    unmarked = lint(jsonl(anthropic(RULES, QUESTIONS[i]) for i in range(10)))
    assert unmarked.groups[0].provider_hit_rate == 0.0
    missing = kinds(unmarked)["missing-breakpoint"]
    assert "cache_control" in missing.fix

    dynamic = [
        [
            {"type": "text", "text": f"Session {request_id(i)}\n" + RULES},
            {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
        ]
        for i in range(10)
    ]
    late = lint(jsonl(anthropic(dynamic[i], QUESTIONS[i]) for i in range(10)))
    found = kinds(late)
    assert late.groups[0].provider_hit_rate == 0.0
    assert found["breakpoint-after-dynamic"].position.path == "system[0]"
    assert found["dynamic-content"].position.char == len("Session ")


def test_anthropic_dollars_count_writes_and_reads() -> None:
    marked = [{"type": "text", "text": RULES, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    report = lint(jsonl(anthropic(marked, QUESTIONS[i]) for i in range(4)))
    [group] = report.groups
    # One write of the prefix (2x input for the 1-hour TTL), three reads at 0.1x ($3/M input).
    prefix = group.expected_cached_tokens_per_1k * 4 / 1000 / 3
    expected = (3 * prefix * (3.0 - 0.30) - prefix * 3.0 * (2.0 - 1.0)) / 1e6 * 1000 / 4
    assert group.expected_dollars_saved_per_1k == pytest.approx(expected)


def test_a_date_the_same_all_day_is_still_found() -> None:
    bodies = [chat(f"Today is 2026-11-22.\n{RULES}", QUESTIONS[i]) for i in range(5)]
    report = lint(jsonl(bodies))
    finding = kinds(report)["dynamic-content"]
    assert "a date" in finding.message
    assert finding.position.char == len("Today is ")


def test_groups_by_template_and_by_name() -> None:
    other = "You translate English to French.\n" + RULES[:2000]
    bodies = [chat(RULES, QUESTIONS[i]) for i in range(4)] + [
        chat(other, QUESTIONS[i]) for i in range(4)
    ]
    # Names in the system prompt do not split a template's group.
    named = [chat(f"You are helping {n}.\n{RULES}", "hi") for n in ("Alice", "Bob", "Carol")]
    report = lint(jsonl(bodies + named))
    assert [g.requests for g in report.groups] == [4, 4, 3]
    assert "a name" in kinds(report)["dynamic-content"].message
    lines = [json.dumps({"group": "support", "body": b}) for b in bodies]
    assert [g.label for g in lint(lines).groups] == ["support"]


def test_responses_and_timestamps_and_skipped_lines() -> None:
    lines = [
        json.dumps(
            {
                "ts": 1_700_000_000 + 3600 * i,
                "body": {"model": "gpt-4.1", "instructions": RULES, "input": q},
            }
        )
        for i, q in enumerate(QUESTIONS[:5])
    ]
    lines += ["{not json", "[1, 2]", json.dumps({"model": "x"}), ""]
    report = lint(lines)
    # An hour between requests: every entry expired (5 minutes), so nothing hits.
    assert report.groups[0].provider_hit_rate == 0.0
    assert report.requests == 5
    assert [s.line for s in report.skipped] == [6, 7, 8]


def test_cache_model_steps_and_expiry() -> None:
    model = PromptCacheModel(rules_for("openai"))
    tokens = array("i", range(1500)).tobytes()
    assert model.observe(tokens, now=0.0).cached_tokens == 0
    assert model.observe(tokens, now=10.0).cached_tokens == 1024 + 3 * 128
    assert model.observe(tokens, now=400.0).cached_tokens == 0  # expired after 5 minutes
    changed = array("i", [*range(1100), *range(5000, 5400)]).tobytes()
    assert model.observe(changed, now=401.0).cached_tokens == 1024
    with pytest.raises(ConfigError):
        rules_for("mistral")


def test_diff_shows_where_tokens_diverge() -> None:
    old = RULES
    lines = RULES.split("\n")
    new = "\n".join([*lines[:20], lines[20].replace("answer", "answer briefly"), *lines[21:]])
    diff = diff_prompts(old, new)
    assert diff.new_position is not None
    assert diff.new_position.line == 21
    assert diff.new_position.column == lines[20].index("answer") + len("answer") + 1
    assert diff.common_prefix_tokens < 1024
    assert diff.reusable_tokens == 0
    assert diff.cacheable_tokens >= 2048
    assert diff.edits[0]["op"] == "insert"
    assert diff.edits[0]["new_text"] == " briefly"
    same = diff_prompts(old, old)
    assert same.new_position is None


def test_cli_json_and_fail_under(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad, good = tmp_path / "bad.jsonl", tmp_path / "good.jsonl"
    bad.write_bytes(b"\n".join(jsonl(uuid_on_top(10))))
    good.write_bytes(b"\n".join(jsonl(uuid_fixed(10))))
    assert main(["lint", str(bad), "--json", "--fail-under", "0.5"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["groups"][0]["stable_prefix_tokens"] < 5
    assert out["groups"][0]["provider_hit_rate"] == 0.0
    assert {"kind", "group", "message", "position"} <= set(out["findings"][0])
    assert main(["lint", str(good), "--fail-under", "0.5", "--provider", "openai"]) == 0
    assert "expected hit rate 90.0%" in capsys.readouterr().out
    assert main(["lint", str(bad)]) == 0
    assert "dynamic-content at token" in capsys.readouterr().out
    old, new = tmp_path / "old.txt", tmp_path / "new.txt"
    old.write_text("You are helpful.\nAnswer in English.")
    new.write_text("You are very helpful.\nAnswer in English.")
    assert main(["lint", "--diff", str(old), str(new)]) == 0
    out = capsys.readouterr().out
    assert "diverge at token" in out
    assert "line 1, column 8" in out
    assert main(["lint"]) == 2
    assert main(["lint", str(tmp_path / "missing.jsonl")]) == 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                lambda inner: (
                    st.lists(inner, max_size=3)
                    | st.dictionaries(
                        st.sampled_from(
                            ["messages", "role", "content", "system", "tools", "input", "body"]
                        ),
                        inner,
                        max_size=4,
                    )
                ),
                max_leaves=12,
            ).map(lambda v: json.dumps(v).encode()),
        ),
        max_size=6,
    )
)
def test_any_log_is_read_or_skipped(lines: list[bytes]) -> None:
    for entry in read_log(lines):
        if isinstance(entry, LogEntry):
            with contextlib.suppress(RequestError):
                render_request(entry.body)
    report = lint(lines)
    assert report.requests + len(report.skipped) <= len([x for x in lines if x.strip()])


def test_the_cache_model_stays_bounded() -> None:
    model = PromptCacheModel(rules_for("openai"), max_entries=50)
    first = array("i", range(2048)).tobytes()
    model.observe(first)
    assert model.observe(first).cached_tokens == 2048
    for n in range(1, 40):
        model.observe(array("i", range(n * 10_000, n * 10_000 + 2048)).tobytes())
    assert len(model._entries) <= 50
    assert model.observe(first).cached_tokens == 0  # evicted, least recently used first


def test_too_many_templates_are_skipped_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    from stratacache.prefix import lint as module

    monkeypatch.setattr(module, "_MAX_GROUPS", 2)
    lines = [json.dumps({"group": f"t{i}", "body": chat(RULES, "hi")}) for i in range(4)]
    report = lint(lines)
    assert [g.label for g in report.groups] == ["t0", "t1"]
    assert report.requests == 2
    assert [s.line for s in report.skipped] == [3, 4]
    assert "group" in report.skipped[0].reason
