"""Exact OpenAI token counts, offline: tiktoken's encodings built from rank files shipped in wheels.

tiktoken downloads its rank files (``o200k_base.tiktoken``, ``cl100k_base.tiktoken``) on first use,
which a production host or CI without internet cannot do. The same ranks ship inside ordinary PyPI
packages, so :func:`load_encoding` builds a :class:`tiktoken.Encoding` directly from the first source
it finds, in this order:

1. tiktoken's own cache: ``$TIKTOKEN_CACHE_DIR/<sha1 of the blob URL>``, where tiktoken itself would
   have put a downloaded file (so a host that has it keeps using it);
2. ``quicktok-v1`` (the ``prefix`` extra): ``quicktok/data/<name>.vocab``, a compact binary rank
   list (u32 count, then per token: u16 length, the bytes, u32 rank);
3. ``bpe-openai``: ``bpe_openai/data/<name>.tiktoken.gz``.

Whatever the source, the ranks are written back into tiktoken's text format and checked against the
SHA-256 that tiktoken pins for OpenAI's published file, so the encoding is byte-for-byte OpenAI's or
it is refused (:class:`EncodingUnavailableError`, naming the encoding and the extra to install).

Encodings are expensive to build (about half a second) and immutable, so each is built once per
process and shared, the way tiktoken shares its own.

Counting the same text again is the common case in prompt analysis (a template is sent thousands of
times with a few lines changed), so :class:`Tokenizer` tokenises text in *pieces* that cannot change
each other's tokens and remembers recent pieces. A piece boundary is placed between a newline and a
letter or digit, on either side: both encodings' pre-tokenisers always end a pre-token there (no
pattern matches a newline and a letter or digit together, and none looks behind), and BPE never
merges across pre-tokens, so the concatenated tokens of the pieces are exactly the tokens of the
whole text (``tests/prefix/test_tokens.py`` checks this on generated text for both encodings).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import struct
import threading
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from stratacache.errors import ConfigError, MissingExtraError

__all__ = [
    "ENCODINGS",
    "EncodingUnavailableError",
    "Tokenizer",
    "encoding_for_model",
    "load_encoding",
    "split_pieces",
    "token_ids",
]


@dataclass(frozen=True, slots=True)
class _Spec:
    url: str
    sha256: str
    count: int
    specials: tuple[tuple[str, int], ...]
    pattern: str
    quicktok_name: str


# The pre-tokeniser patterns and special tokens are tiktoken_ext.openai_public's, copied so that
# building an encoding never imports a module that may try to download.
_O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_BLOB = "https://openaipublic.blob.core.windows.net/encodings/"

_SPECS: dict[str, _Spec] = {
    "o200k_base": _Spec(
        url=_BLOB + "o200k_base.tiktoken",
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        count=199_998,
        specials=(("<|endoftext|>", 199_999), ("<|endofprompt|>", 200_018)),
        pattern=_O200K_PATTERN,
        quicktok_name="o200k",
    ),
    "cl100k_base": _Spec(
        url=_BLOB + "cl100k_base.tiktoken",
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        count=100_256,
        specials=(
            ("<|endoftext|>", 100_257),
            ("<|fim_prefix|>", 100_258),
            ("<|fim_middle|>", 100_259),
            ("<|fim_suffix|>", 100_260),
            ("<|endofprompt|>", 100_276),
        ),
        pattern=_CL100K_PATTERN,
        quicktok_name="cl100k",
    ),
}

ENCODINGS: tuple[str, ...] = tuple(_SPECS)
"""The encodings :func:`load_encoding` can build offline."""


class EncodingUnavailableError(MissingExtraError):
    """No verified rank file for an encoding was found; the message names it and the extra."""

    def __init__(self, encoding: str, module: str, detail: str = "") -> None:
        super().__init__(module, "prefix")
        self.encoding = encoding
        why = f" ({detail})" if detail else ""
        message = (
            f"the token encoding {encoding!r} is not available offline{why}; install it with: "
            "pip install 'stratacache[prefix]' (tiktoken and quicktok-v1), or put OpenAI's "
            f"{encoding}.tiktoken file where tiktoken caches it ($TIKTOKEN_CACHE_DIR)"
        )
        # ImportError prints ``msg``, not ``args``: set both.
        self.msg = message
        self.args = (message,)


def encoding_for_model(model: str | None) -> str:
    """The tiktoken encoding a model uses; o200k_base for models tiktoken does not know.

    Other providers' tokenisers are not public; their counts are estimated with o200k_base, which
    is close enough to place a finding, not to bill.

    >>> encoding_for_model("gpt-4-0613"), encoding_for_model("gpt-4o-mini")
    ('cl100k_base', 'o200k_base')
    """
    name = (model or "").rsplit("/", 1)[-1].lower()
    if name.startswith(("gpt-4o", "gpt-4.1", "gpt-4.5", "chatgpt-4o")):
        return "o200k_base"
    if name.startswith(("gpt-4", "gpt-3.5", "gpt-35", "text-embedding")):
        return "cl100k_base"
    return "o200k_base"


# --- rank files ---------------------------------------------------------------------------------


def _tiktoken_text(ranks: Iterable[tuple[bytes, int]]) -> bytes:
    return b"".join(base64.b64encode(token) + b" %d\n" % rank for token, rank in ranks)


def _parse_tiktoken(data: bytes) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _parse_quicktok(data: bytes) -> dict[bytes, int]:
    (count,) = struct.unpack_from("<I", data, 0)
    offset = 4
    ranks: dict[bytes, int] = {}
    unpack_u16 = struct.Struct("<H").unpack_from
    unpack_u32 = struct.Struct("<I").unpack_from
    end = len(data)
    while offset < end:
        (length,) = unpack_u16(data, offset)
        offset += 2
        token = data[offset : offset + length]
        offset += length
        (rank,) = unpack_u32(data, offset)
        offset += 4
        ranks[token] = rank
    if offset != end or len(ranks) != count:
        raise ValueError("truncated quicktok vocabulary")
    return ranks


def _candidates(name: str, spec: _Spec) -> Iterator[tuple[str, Any]]:
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    if cache_dir:
        path = Path(cache_dir) / hashlib.sha1(spec.url.encode()).hexdigest()
        yield str(path), lambda: _parse_tiktoken(path.read_bytes())
    try:
        data = resources.files("quicktok").joinpath("data", f"{spec.quicktok_name}.vocab")
    except ModuleNotFoundError:
        pass
    else:
        yield "quicktok-v1", lambda: _parse_quicktok(data.read_bytes())
    try:
        gz = resources.files("bpe_openai").joinpath("data", f"{name}.tiktoken.gz")
    except ModuleNotFoundError:
        pass
    else:
        yield "bpe-openai", lambda: _parse_tiktoken(gzip.decompress(gz.read_bytes()))


def _verified_ranks(name: str) -> dict[bytes, int]:
    spec = _SPECS[name]
    problems: list[str] = []
    for source, read in _candidates(name, spec):
        try:
            ranks: dict[bytes, int] = read()
        except (OSError, ValueError, struct.error) as exc:
            if not isinstance(exc, FileNotFoundError):
                problems.append(f"{source}: {exc}")
            continue
        ordered = sorted(ranks.items(), key=lambda item: item[1])
        # Re-serialised in rank order, OpenAI's file is reproduced exactly: hash it, so a damaged
        # or different vocabulary can never count tokens silently wrong.
        if len(ranks) != spec.count or hashlib.sha256(_tiktoken_text(ordered)).hexdigest() != (
            spec.sha256
        ):
            problems.append(f"{source}: ranks differ from OpenAI's published file")
            continue
        return ranks
    raise EncodingUnavailableError(name, "quicktok-v1", "; ".join(problems) or "no rank file found")


_LOCK = threading.Lock()
_ENCODINGS: dict[str, Any] = {}


def load_encoding(name: str) -> Any:
    """The :class:`tiktoken.Encoding` called ``name``, built offline from a verified rank file.

    Raises :class:`ConfigError` for an encoding this module does not know and
    :class:`EncodingUnavailableError` when tiktoken or a rank file is missing.
    """
    if name not in _SPECS:
        raise ConfigError(f"unknown token encoding {name!r}; expected one of {', '.join(_SPECS)}")
    with _LOCK:
        found = _ENCODINGS.get(name)
        if found is not None:
            return found
        try:
            import tiktoken
        except ImportError as exc:
            raise EncodingUnavailableError(name, "tiktoken", "tiktoken is not installed") from exc
        spec = _SPECS[name]
        encoding = tiktoken.Encoding(
            name=name,
            pat_str=spec.pattern,
            mergeable_ranks=_verified_ranks(name),
            special_tokens=dict(spec.specials),
        )
        _ENCODINGS[name] = encoding
        return encoding


# --- pieces ---------------------------------------------------------------------------------------


def _splits(text: str, limit: int) -> list[int]:
    """The offsets of the first ``limit`` piece boundaries of ``text`` (see :func:`split_pieces`)."""
    out: list[int] = []
    end = len(text)
    find = text.find
    at = find("\n")
    while at != -1 and len(out) < limit:
        if at > 0 and text[at - 1].isalnum() and (not out or out[-1] != at):
            out.append(at)
        after = at + 1
        if after < end and text[after].isalnum():
            out.append(after)
        at = find("\n", after)
    return out[:limit]


def split_pieces(text: str) -> list[str]:
    """Split ``text`` where tokenisation restarts: at each newline that follows, or is followed
    by, a letter or digit.

    The tokens of the pieces, concatenated, are the tokens of ``text`` (see the module docstring).

    >>> split_pieces("Rules:\\nBe brief\\nAnswer.\\n\\nUser 7\\n")
    ['Rules:\\n', 'Be brief', '\\n', 'Answer.\\n\\n', 'User 7', '\\n']
    """
    pieces: list[str] = []
    start = 0
    end = len(text)
    find = text.find
    at = find("\n")
    while at != -1:
        if at > start and text[at - 1].isalnum():
            pieces.append(text[start:at])
            start = at
        after = at + 1
        if after < end and text[after].isalnum():
            pieces.append(text[start:after])
            start = after
        at = find("\n", after)
    pieces.append(text[start:])
    return pieces


def token_ids(data: bytes) -> array[int]:
    """The token ids packed in ``data`` by :meth:`Tokenizer.encode_bytes`."""
    ids = array("i")
    ids.frombytes(data)
    return ids


class Tokenizer:
    """Exact token ids and counts for one encoding, remembering recently seen text.

    Pieces of text (see :func:`split_pieces`) are remembered with their tokens, so a template sent
    again with one line changed costs the tokenisation of that line; whole texts seen recently (a
    system prompt sent verbatim) are remembered too.

    :param encoding: ``"o200k_base"`` or ``"cl100k_base"``.
    :param max_pieces: how many distinct pieces to remember (least recently used are dropped);
        0 turns remembering off.
    """

    __slots__ = ("_encode", "_lock", "_max", "_pieces", "_texts", "encoding", "name")

    _MAX_TEXTS = 1024  # whole texts remembered: a few per template, and they can be long
    _MIN_TEXT = 256  # shorter texts are cheaper to piece together than to remember whole
    _HEADS = 3  # a remembered text may follow up to this many new pieces (a changing first line)

    def __init__(self, encoding: str = "o200k_base", *, max_pieces: int = 65_536) -> None:
        if not isinstance(max_pieces, int) or isinstance(max_pieces, bool) or max_pieces < 0:
            raise ConfigError(f"max_pieces must be an int >= 0, got {max_pieces!r}")
        self.encoding: Any = load_encoding(encoding)
        """The underlying :class:`tiktoken.Encoding`."""
        self.name = encoding
        """The encoding's name."""
        self._encode = self.encoding.encode_ordinary
        self._max = max_pieces
        self._pieces: OrderedDict[str, bytes] = OrderedDict()
        self._texts: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def _packed(self, text: str) -> bytes:
        return array("i", self._encode(text)).tobytes()

    def _from_pieces(self, text: str) -> bytes:
        return b"".join(self._piece_tokens(text))

    def _piece_tokens(self, text: str) -> list[bytes]:
        pieces = self._pieces
        out: list[bytes] = []
        for piece in split_pieces(text):
            tokens = pieces.get(piece)
            if tokens is None:
                tokens = pieces[piece] = self._packed(piece)
                if len(pieces) > self._max:
                    pieces.popitem(last=False)
            else:
                pieces.move_to_end(piece)
            out.append(tokens)
        return out

    def _remember(self, text: str, packed: bytes) -> None:
        texts = self._texts
        texts[text] = packed
        texts.move_to_end(text)
        if len(texts) > self._MAX_TEXTS:
            texts.popitem(last=False)

    def encode_bytes(self, text: str) -> bytes:
        """The token ids of ``text`` packed as native 4-byte ints (:func:`token_ids` unpacks)."""
        if self._max == 0:
            return self._packed(text)
        if len(text) < self._MIN_TEXT:
            with self._lock:
                return self._from_pieces(text)
        texts = self._texts
        with self._lock:
            found = texts.get(text)
            if found is not None:
                texts.move_to_end(text)
                return found
            # A template whose first line changes per request (an id, a timestamp): the rest of
            # it was seen before, whole. Each boundary is a place tokenisation restarts.
            heads = _splits(text, self._HEADS)
            for offset in heads:
                rest = texts.get(text[offset:])
                if rest is not None:
                    texts.move_to_end(text[offset:])
                    return self._from_pieces(text[:offset]) + rest
            parts = self._piece_tokens(text)
            packed = b"".join(parts)
            self._remember(text, packed)
            # The heads are the first piece boundaries, so the rest after the k-th one is the
            # tokens after the first k pieces.
            skipped = 0
            for k, offset in enumerate(heads):
                skipped += len(parts[k])
                if len(text) - offset >= self._MIN_TEXT:
                    self._remember(text[offset:], packed[skipped:])
            return packed

    def encode(self, text: str) -> tuple[int, ...]:
        """The token ids of ``text``; special-token text is encoded as ordinary text."""
        return tuple(token_ids(self.encode_bytes(text)))

    def count(self, text: str) -> int:
        """How many tokens ``text`` is."""
        return len(self.encode_bytes(text)) // 4

    def decode(self, tokens: Iterable[int]) -> str:
        """The text of ``tokens`` (invalid UTF-8 replaced)."""
        return str(self.encoding.decode(list(tokens)))
