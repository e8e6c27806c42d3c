"""Exact, offline token counts: equal to tiktoken's own registry on a fixed corpus."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stratacache.errors import ConfigError, MissingExtraError
from stratacache.prefix import tokens
from stratacache.prefix.tokens import (
    EncodingUnavailableError,
    Tokenizer,
    encoding_for_model,
    load_encoding,
    split_pieces,
)

CORPUS = [
    "",
    "hello world",
    "Hello, World! It's a test; we're done.",
    "  leading and trailing spaces   ",
    "line one\nline two\r\nline three\n\n\n",
    "tabs\tand\t\tmixed \t whitespace\n \n\t\n",
    "numbers 1 12 123 1234 12345 3.14159 -42 1e10 0x1F",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n",
    json.dumps({"type": "function", "function": {"name": "get_weather", "parameters": {}}}),
    "CJK 中文字符测试 日本語のテキスト 한국어 텍스트",
    "emoji 😀🎉👍🏽 and ZWJ 👨‍👩‍👧‍👦",
    "Arabic العربية Hebrew עברית Devanagari हिन्दी",
    "combining e\u0301 a\u0308 o\u0302 and NFC é ä ô",
    "special text <|endoftext|> <|endofprompt|> <|fim_prefix|> stays ordinary",
    "request id 3f2b9c1e-7a4d-4e8b-9f10-2c3d4e5f6a7b at 2026-11-22T05:53:17Z",
    "UPPER lower MiXeD CamelCaseWord snake_case_word kebab-case-word",
    "don't can't won't I'M YOU'LL they'D",
    "punctuation!!! ??? ... --- *** ///\n///\n",
    "a" * 300 + " " + "b" * 77,
    "\n".join(f"Rule {i}: answer in under {i * 10} words." for i in range(40)),
    "trailing letter then newline\nX\n9\n\u00e9\n",
]


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiktoken's cache directory holding OpenAI's files, rebuilt from our verified ranks.

    tiktoken checks each file against its own pinned SHA-256 before using it, so the reference
    encodings below are tiktoken's registry entries exactly as a download would give them.
    """
    directory = tmp_path_factory.mktemp("tiktoken-cache")
    for name in ("o200k_base", "cl100k_base"):
        spec = tokens._SPECS[name]
        ranks = tokens._verified_ranks(name)
        text = tokens._tiktoken_text(sorted(ranks.items(), key=lambda item: item[1]))
        (directory / hashlib.sha1(spec.url.encode()).hexdigest()).write_bytes(text)
    return directory


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_counts_equal_tiktoken_registry(
    name: str, reference_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tiktoken
    import tiktoken.registry

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(reference_dir))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    reference = tiktoken.get_encoding(name)
    ours = Tokenizer(name)
    for text in CORPUS:
        expected = reference.encode_ordinary(text)
        assert list(ours.encode(text)) == expected, text
        assert ours.count(text) == len(expected)
        # Twice: the second pass is served from remembered pieces.
        assert list(ours.encode(text)) == expected
    assert ours.decode(ours.encode(CORPUS[9])) == CORPUS[9]


_TEXT = st.text(
    alphabet=st.sampled_from(list("ab Z9 \n\r\t.,'!-é\u0301中😀_:/")) | st.characters(),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(text=_TEXT)
def test_pieces_tokenise_exactly_like_the_whole(text: str) -> None:
    for name in ("o200k_base", "cl100k_base"):
        encoding = load_encoding(name)
        pieces = split_pieces(text)
        assert "".join(pieces) == text
        joined = [t for piece in pieces for t in encoding.encode_ordinary(piece)]
        assert joined == encoding.encode_ordinary(text)


def test_remembered_pieces_are_bounded() -> None:
    small = Tokenizer("o200k_base", max_pieces=2)
    text = "alpha\nbeta\ngamma\ndelta"
    assert split_pieces(text) == ["alpha", "\n", "beta", "\n", "gamma", "\n", "delta"]
    first = small.encode(text)
    assert len(small._pieces) == 2
    assert small.encode(text) == first == tuple(small.encoding.encode_ordinary(text))
    assert Tokenizer("o200k_base", max_pieces=0).encode(text) == first


def test_unknown_encoding_and_bad_options() -> None:
    with pytest.raises(ConfigError, match="p50k_base"):
        load_encoding("p50k_base")
    with pytest.raises(ConfigError):
        Tokenizer("o200k_base", max_pieces=-1)


def test_missing_rank_files_name_the_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "_candidates", lambda name, spec: iter(()))
    with pytest.raises(EncodingUnavailableError, match="'cl100k_base'") as info:
        tokens._verified_ranks("cl100k_base")
    assert isinstance(info.value, MissingExtraError)
    assert "stratacache[prefix]" in str(info.value)
    assert info.value.encoding == "cl100k_base"


def test_a_tampered_rank_file_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    real = tokens._verified_ranks("cl100k_base")

    def tampered(name: str, spec: object) -> object:
        ranks = dict(real)
        ranks[b"hello"], ranks[b"world"] = ranks[b"world"], ranks[b"hello"]
        yield "tampered", lambda: ranks

    monkeypatch.setattr(tokens, "_candidates", tampered)
    with pytest.raises(EncodingUnavailableError, match="differ from OpenAI"):
        tokens._verified_ranks("cl100k_base")


def test_cache_dir_file_is_used_first(reference_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(reference_dir))
    sources = [s for s, _ in tokens._candidates("o200k_base", tokens._SPECS["o200k_base"])]
    assert sources[0].startswith(str(reference_dir))
    assert len(tokens._verified_ranks("o200k_base")) == 199_998


def test_missing_tiktoken_names_the_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "_ENCODINGS", {})
    monkeypatch.setitem(sys.modules, "tiktoken", None)
    with pytest.raises(EncodingUnavailableError, match=r"'o200k_base'.*not available offline"):
        load_encoding("o200k_base")


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o-2024-08-06", "o200k_base"),
        ("openai/gpt-4.1-mini", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("claude-sonnet-4-5", "o200k_base"),
        (None, "o200k_base"),
    ],
)
def test_encoding_for_model(model: str | None, encoding: str) -> None:
    assert encoding_for_model(model) == encoding


def test_a_template_with_a_changing_first_line_reuses_the_rest() -> None:
    body = "\n".join(f"{i}. Answer politely, cite policy {i}." for i in range(60))
    tokenizer = Tokenizer("o200k_base")
    reference = load_encoding("o200k_base")
    calls: list[str] = []
    encode = tokenizer._encode

    def counting(text: str) -> list[int]:
        calls.append(text)
        return list(encode(text))

    tokenizer._encode = counting
    for n in range(5):
        text = f"Request {n * 7919:08x}\n{body}"
        assert list(tokenizer.encode(text)) == reference.encode_ordinary(text)
        if n:
            # Only the new first line is tokenised; the rest comes back whole.
            assert calls == [f"Request {n * 7919:08x}"]
        calls.clear()
    assert tokenizer.count(body) == len(reference.encode_ordinary(body))
    assert calls == []
