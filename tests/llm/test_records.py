"""Tests for stratacache.llm.records: the Record value, the signed codec, signers and key files."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stratacache.errors import (
    ConfigError,
    RecordError,
    RecordFormatError,
    SignatureError,
)
from stratacache.llm.records import (
    FORMAT_VERSION,
    Ed25519Signer,
    HmacSigner,
    MLDSASigner,
    Record,
    RecordCodec,
    Signer,
    flat_usage,
    load_or_create_key,
    mldsa_available,
)

KEY = bytes(range(32))
STORAGE_KEY = "0123456789abcdef0123456789abcdef/default/chat.completions/" + "ab" * 32

needs_mldsa = pytest.mark.skipif(
    not mldsa_available(), reason="the installed cryptography build has no ML-DSA-65"
)


def body_record(**overrides: Any) -> Record:
    fields: dict[str, Any] = {
        "key": STORAGE_KEY,
        "fingerprint": "ab" * 32,
        "route": "chat.completions",
        "model": "gpt-4o-mini",
        "created_at": 1_700_000_000.25,
        "expires_at": 1_700_003_600.25,
        "namespace": "default",
        "tags": frozenset({"product:1", "user:2"}),
        "body": b'{"id":"chatcmpl-1","object":"chat.completion","choices":[]}',
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    fields.update(overrides)
    return Record(**fields)


def chunks_record(**overrides: Any) -> Record:
    chunks = (
        b'{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}',
        b'{"choices":[{"index":0,"delta":{"content":"4"}}]}',
        b'{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
        b'{"choices":[],"usage":{"total_tokens":4}}',
    )
    return body_record(body=None, chunks=chunks, **overrides)


def hmac_codec(key: bytes = KEY) -> RecordCodec:
    return RecordCodec(HmacSigner(key))


ED25519_SIGNER = Ed25519Signer.generate()


def signers() -> list[Any]:
    params: list[Any] = [
        pytest.param(lambda: HmacSigner(KEY), id="hmac"),
        pytest.param(lambda: ED25519_SIGNER, id="ed25519"),
        pytest.param(MLDSASigner.generate, id="ml-dsa-65", marks=needs_mldsa),
    ]
    return params


# --- Record ---------------------------------------------------------------------------------------


def test_record_helpers() -> None:
    rec = body_record()
    assert not rec.is_streamed
    assert chunks_record().is_streamed
    assert rec.age(rec.created_at + 10) == 10
    assert (
        rec.age(rec.created_at - 5) == 0
    )  # a clock that went backwards never gives a negative age
    assert not rec.expired(rec.created_at)
    assert rec.expired(1_700_003_600.25)
    assert rec.ttl(1_700_003_000.25) == 600
    assert rec.ttl(1_800_000_000) == 0
    forever = body_record(expires_at=None)
    assert forever.ttl(0) is None
    assert not forever.expired(1e12)


@pytest.mark.parametrize(
    "overrides",
    [
        {"body": None},  # neither body nor chunks
        {"chunks": (b"x",)},  # both
        {"body": None, "chunks": ()},
        {"body": None, "chunks": [b"x"]},
        {"body": None, "chunks": ("x",)},
        {"body": "text"},
        {"key": ""},
        {"key": 5},
        {"model": None},
        {"created_at": float("nan")},
        {"created_at": "now"},
        {"created_at": True},
        {"expires_at": float("inf")},
        {"tags": {"a"}},
        {"tags": frozenset({1})},
        {"usage": {"total_tokens": "4"}},
        {"usage": {"total_tokens": True}},
        {"usage": {"prompt_tokens_details": {"cached_tokens": 0}}},
    ],
)
def test_record_validation(overrides: dict[str, Any]) -> None:
    with pytest.raises(RecordFormatError):
        body_record(**overrides)


def test_flat_usage() -> None:
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 2, "audio_tokens": None},
        "completion_tokens_details": {"reasoning_tokens": 1, "note": "x"},
        "flag": True,
    }
    assert flat_usage(usage) == {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "prompt_tokens_details.cached_tokens": 2,
        "completion_tokens_details.reasoning_tokens": 1,
    }
    assert flat_usage(None) is None
    body_record(usage=flat_usage(usage))  # the result is a valid Record.usage


# --- codec round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("make_signer", signers())
@pytest.mark.parametrize("make_record", [body_record, chunks_record], ids=["body", "chunks"])
def test_round_trip(make_signer: Callable[[], Signer], make_record: Callable[[], Record]) -> None:
    codec = RecordCodec(make_signer())
    record = make_record()
    data = codec.encode(record)
    assert data.startswith(b"SCRD" + bytes([FORMAT_VERSION]))
    assert codec.decode(data) == record
    assert codec.decode(data, expected_key=STORAGE_KEY) == record


def test_round_trip_of_minimal_record() -> None:
    record = Record(key="k", fingerprint="", route="embeddings", model="", created_at=0, body=b"")
    codec = hmac_codec()
    assert codec.decode(codec.encode(record)) == record


def test_encoding_is_deterministic() -> None:
    codec = hmac_codec()
    a = body_record(tags=frozenset({"x", "y", "z"}), usage={"b": 1, "a": 2})
    b = body_record(tags=frozenset({"z", "y", "x"}), usage={"a": 2, "b": 1})
    assert codec.encode(a) == codec.encode(b)


def test_decode_accepts_bytearray_and_memoryview() -> None:
    codec = hmac_codec()
    data = codec.encode(body_record())
    assert codec.decode(bytearray(data)) == body_record()
    assert codec.decode(memoryview(data)) == body_record()


text = st.text(max_size=40)


@st.composite
def any_record(draw: st.DrawFn) -> Record:
    payload = draw(st.booleans())
    return Record(
        key=draw(st.text(min_size=1, max_size=80)),
        fingerprint=draw(text),
        route=draw(st.sampled_from(["chat.completions", "completions", "embeddings", "responses"])),
        model=draw(text),
        created_at=draw(st.floats(allow_nan=False, allow_infinity=False)),
        expires_at=draw(st.none() | st.floats(allow_nan=False, allow_infinity=False)),
        namespace=draw(text),
        tags=draw(st.frozensets(text, max_size=5)),
        body=draw(st.binary(max_size=200)) if payload else None,
        chunks=None
        if payload
        else tuple(draw(st.lists(st.binary(max_size=50), min_size=1, max_size=5))),
        usage=draw(st.none() | st.dictionaries(text, st.integers(-(2**63), 2**64 - 1), max_size=4)),
    )


@given(any_record())
def test_round_trip_of_any_record(record: Record) -> None:
    codec = hmac_codec()
    assert codec.decode(codec.encode(record)) == record


# --- verification failures ------------------------------------------------------------------------


def test_tampered_payload_is_a_signature_error() -> None:
    codec = hmac_codec()
    data = bytearray(codec.encode(body_record()))
    at = data.index(b"chatcmpl-1")
    data[at] ^= 0x01
    with pytest.raises(SignatureError):
        codec.decode(bytes(data))


def test_tampered_signature_is_a_signature_error() -> None:
    codec = hmac_codec()
    data = bytearray(codec.encode(body_record()))
    data[-1] ^= 0x80
    with pytest.raises(SignatureError):
        codec.decode(bytes(data))


def test_another_key_is_a_signature_error() -> None:
    data = hmac_codec().encode(body_record())
    with pytest.raises(SignatureError):
        hmac_codec(b"another key of 32 bytes........!").decode(data)
    with pytest.raises(SignatureError):
        RecordCodec(Ed25519Signer.generate()).decode(
            RecordCodec(ED25519_SIGNER).encode(body_record())
        )


def test_another_algorithm_is_a_signature_error() -> None:
    hmac_data = hmac_codec().encode(body_record())
    with pytest.raises(SignatureError, match="hmac-sha256"):
        RecordCodec(ED25519_SIGNER).decode(hmac_data)
    ed_data = RecordCodec(ED25519_SIGNER).encode(body_record())
    with pytest.raises(SignatureError, match="ed25519"):
        hmac_codec().decode(ed_data)


def test_hmac_signature_cannot_be_relabelled_as_another_algorithm() -> None:
    # Rewriting the algorithm id in the header breaks the signature, which covers the header.
    class Relabelled(HmacSigner):
        algorithm = "ed25519"

    data = hmac_codec().encode(body_record())
    forged = data.replace(b"hmac-sha256", b"ed25519", 1)
    forged = forged[:5] + bytes([len(b"ed25519")]) + forged[6:]
    with pytest.raises(SignatureError):
        RecordCodec(Relabelled(KEY)).decode(forged)


def test_key_mismatch_is_a_signature_error() -> None:
    codec = hmac_codec()
    data = codec.encode(body_record())
    with pytest.raises(SignatureError, match="written for key"):
        codec.decode(data, expected_key=STORAGE_KEY.replace("default", "other"))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a stratacache record"),
        (b"SCRD", "not a stratacache record"),
        (b"\x80\x04pickle", "not a stratacache record"),
        (b"SCRD\x02\x0bhmac-sha256", "version 2"),
        (b"SCRD\x01\x0bhmac-sha", "truncated record header"),
    ],
)
def test_garbage_is_a_format_error(data: bytes, message: str) -> None:
    with pytest.raises(RecordFormatError, match=message):
        hmac_codec().decode(data)


def test_non_bytes_is_a_format_error() -> None:
    with pytest.raises(RecordFormatError):
        hmac_codec().decode("SCRD")  # type: ignore[arg-type]


def test_payload_length_past_the_end_is_a_format_error() -> None:
    data = bytearray(hmac_codec().encode(body_record()))
    at = 6 + len(b"hmac-sha256")
    struct.pack_into(">I", data, at, 0xFFFFFFFF)
    with pytest.raises(RecordFormatError, match="truncated record payload"):
        hmac_codec().decode(bytes(data))


def _sign_raw(payload: bytes, key: bytes = KEY) -> bytes:
    """A correctly signed frame around an arbitrary payload, as a key holder could make one."""
    header = (
        b"SCRD" + bytes([FORMAT_VERSION, 11]) + b"hmac-sha256" + struct.pack(">I", len(payload))
    )
    signed = header + payload
    return signed + hmac.new(key, signed, hashlib.sha256).digest()


GOOD_FIELDS = msgpack.unpackb(
    hmac_codec().encode(body_record())[6 + 11 + 4 : -32], raw=False, strict_map_key=True
)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",  # a byte msgpack never uses
        msgpack.packb([1, 2, 3]),
        msgpack.packb({"key": "k"}),
        msgpack.packb({**GOOD_FIELDS, "extra": 1}),
        msgpack.packb({**GOOD_FIELDS, "chunks": [b"x"]}),  # both body and chunks
        msgpack.packb({**GOOD_FIELDS, "body": None}),  # neither
        msgpack.packb({**GOOD_FIELDS, "tags": "a"}),
        msgpack.packb({**GOOD_FIELDS, "tags": [1]}),
        msgpack.packb({**GOOD_FIELDS, "body": None, "chunks": b"x"}),
        msgpack.packb({**GOOD_FIELDS, "created_at": "yesterday"}),
        msgpack.packb({**GOOD_FIELDS, "usage": {"a": "b"}}),
        msgpack.packb({**GOOD_FIELDS, "body": msgpack.ExtType(5, b"x")}),
        msgpack.packb(GOOD_FIELDS) + b"\x00",  # trailing data
        b"\xa3\xff\xfe\xfd",  # a str that is not UTF-8
        b"\x91" * 100_000,  # nesting deeper than msgpack's stack
    ],
)
def test_signed_payload_that_is_not_a_record_is_a_format_error(payload: bytes) -> None:
    with pytest.raises(RecordFormatError):
        hmac_codec().decode(_sign_raw(payload))


def test_the_good_fields_payload_does_decode() -> None:
    # Guards the test above: its payloads differ from a valid one only by the named change.
    assert hmac_codec().decode(_sign_raw(msgpack.packb(GOOD_FIELDS))) == body_record()


# --- fuzzing: nothing but a RecordError, and never a record ---------------------------------------


def _must_reject(codec: RecordCodec, data: bytes) -> None:
    try:
        codec.decode(data)
    except RecordError:
        return
    pytest.fail(f"decode accepted altered data: {data!r}")


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data: bytes) -> None:
    _must_reject(hmac_codec(), data)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_behind_a_valid_header(tail: bytes) -> None:
    _must_reject(hmac_codec(), b"SCRD\x01\x0bhmac-sha256" + tail)


@pytest.mark.parametrize("make_signer", signers())
@pytest.mark.parametrize("make_record", [body_record, chunks_record], ids=["body", "chunks"])
def test_fuzz_every_truncation(
    make_signer: Callable[[], Signer], make_record: Callable[[], Record]
) -> None:
    codec = RecordCodec(make_signer())
    data = codec.encode(make_record())
    step = 1 if len(data) < 2000 else 7  # ML-DSA signatures are 3,309 bytes
    for end in range(0, len(data), step):
        _must_reject(codec, data[:end])


@pytest.mark.parametrize(
    "make_signer",
    [
        pytest.param(lambda: HmacSigner(KEY), id="hmac"),
        pytest.param(lambda: ED25519_SIGNER, id="ed25519"),
    ],
)
@pytest.mark.parametrize("make_record", [body_record, chunks_record], ids=["body", "chunks"])
def test_fuzz_every_single_bit_flip(
    make_signer: Callable[[], Signer], make_record: Callable[[], Record]
) -> None:
    codec = RecordCodec(make_signer())
    data = codec.encode(make_record())
    for position in range(len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[position] ^= 1 << bit
            _must_reject(codec, bytes(flipped))


@needs_mldsa
def test_fuzz_bit_flips_ml_dsa() -> None:
    codec = RecordCodec(MLDSASigner.generate())
    data = codec.encode(body_record())
    for position in range(0, len(data), 3):  # every third byte: 30,000 verifications is too slow
        flipped = bytearray(data)
        flipped[position] ^= 1 << (position % 8)
        _must_reject(codec, bytes(flipped))


@settings(max_examples=200)
@given(st.data())
def test_fuzz_random_edits(data: st.DataObject) -> None:
    codec = hmac_codec()
    encoded = bytearray(codec.encode(chunks_record()))
    edits = data.draw(
        st.lists(
            st.tuples(st.integers(0, len(encoded) - 1), st.integers(1, 255)),
            min_size=1,
            unique_by=lambda edit: edit[0],  # two edits of one byte could cancel out
        )
    )
    for position, mask in edits:
        encoded[position] ^= mask
    _must_reject(codec, bytes(encoded))


# --- signers --------------------------------------------------------------------------------------


def test_hmac_signer_rejects_short_keys() -> None:
    with pytest.raises(ConfigError):
        HmacSigner(b"short")
    with pytest.raises(ConfigError):
        HmacSigner("a string key of sufficient length")  # type: ignore[arg-type]


def test_hmac_signer_repr_hides_the_key() -> None:
    assert KEY.hex() not in repr(HmacSigner(KEY))
    assert "hidden" in repr(HmacSigner(KEY))


@pytest.mark.parametrize("make_signer", signers())
def test_signers_satisfy_the_protocol(make_signer: Callable[[], Signer]) -> None:
    signer = make_signer()
    assert isinstance(signer, Signer)
    signature = signer.sign(b"data")
    signer.verify(b"data", signature)
    with pytest.raises(SignatureError):
        signer.verify(b"data!", signature)
    with pytest.raises(SignatureError):
        signer.verify(b"data", signature[:-1])
    with pytest.raises(SignatureError):
        signer.verify(b"data", b"")


def test_ed25519_verify_only_signer() -> None:
    writer = Ed25519Signer.generate()
    reader = Ed25519Signer(public_key=writer.public_key)
    assert writer.can_sign
    assert not reader.can_sign
    data = RecordCodec(writer).encode(body_record())
    assert RecordCodec(reader).decode(data) == body_record()
    with pytest.raises(ConfigError, match="cannot sign"):
        RecordCodec(reader).encode(body_record())


def test_ed25519_key_checks() -> None:
    with pytest.raises(ConfigError):
        Ed25519Signer()
    with pytest.raises(ConfigError):
        Ed25519Signer(b"too short")
    with pytest.raises(ConfigError, match="does not belong"):
        Ed25519Signer(bytes(32), public_key=Ed25519Signer.generate().public_key)
    seed = bytes(range(32))
    same = Ed25519Signer(seed, public_key=Ed25519Signer(seed).public_key)
    assert same.can_sign


@needs_mldsa
def test_ml_dsa_verify_only_signer() -> None:
    writer = MLDSASigner.generate()
    reader = MLDSASigner(public_key=writer.public_key)
    assert len(writer.public_key) == 1952
    assert not reader.can_sign
    data = RecordCodec(writer).encode(chunks_record())
    assert RecordCodec(reader).decode(data) == chunks_record()
    with pytest.raises(ConfigError, match="cannot sign"):
        reader.sign(b"x")
    with pytest.raises(SignatureError):
        RecordCodec(MLDSASigner.generate()).decode(data)
    with pytest.raises(SignatureError, match="ml-dsa-65"):
        hmac_codec().decode(data)


@needs_mldsa
def test_ml_dsa_key_checks() -> None:
    with pytest.raises(ConfigError):
        MLDSASigner()
    with pytest.raises(ConfigError):
        MLDSASigner(b"short")
    with pytest.raises(ConfigError, match="does not belong"):
        MLDSASigner(bytes(32), public_key=MLDSASigner.generate().public_key)


def test_codec_rejects_a_bad_algorithm_id() -> None:
    class Nameless(HmacSigner):
        algorithm = ""

    with pytest.raises(ConfigError):
        RecordCodec(Nameless(KEY))


# --- key files ------------------------------------------------------------------------------------


def test_load_or_create_key_creates_a_private_key_file(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "record.key"
    key = load_or_create_key(path)
    assert len(key) == 32
    assert path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key
    assert sorted(p.name for p in path.parent.iterdir()) == ["record.key"]  # no temp file left


def test_load_or_create_key_makes_different_keys(tmp_path: Path) -> None:
    assert load_or_create_key(tmp_path / "a") != load_or_create_key(tmp_path / "b")


def test_load_or_create_key_reads_an_existing_key(tmp_path: Path) -> None:
    path = tmp_path / "record.key"
    path.write_bytes(KEY)
    assert load_or_create_key(path) == KEY


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_load_or_create_key_rejects_a_wrong_length(tmp_path: Path, size: int) -> None:
    path = tmp_path / "record.key"
    path.write_bytes(b"k" * size)
    with pytest.raises(ConfigError, match="exactly 32"):
        load_or_create_key(path)
    assert path.read_bytes() == b"k" * size  # a bad key file is reported, never overwritten


def test_load_or_create_key_concurrent_creators_agree(tmp_path: Path) -> None:
    path = tmp_path / "record.key"
    barrier = threading.Barrier(8)
    results: list[bytes] = []
    lock = threading.Lock()

    def create() -> None:
        barrier.wait()
        key = load_or_create_key(path)
        with lock:
            results.append(key)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    assert set(results) == {path.read_bytes()}
    assert os.listdir(tmp_path) == ["record.key"]


@pytest.mark.parametrize("kind", ["under-a-file", "a-directory", "dangling-symlink"])
def test_load_or_create_key_where_no_key_file_can_be(tmp_path: Path, kind: str) -> None:
    if kind == "under-a-file":
        (tmp_path / "file").write_bytes(b"")
        path = tmp_path / "file" / "record.key"
    elif kind == "a-directory":
        path = tmp_path
    else:
        path = tmp_path / "record.key"
        path.symlink_to(tmp_path / "missing" / "target")
    with pytest.raises(ConfigError, match="record key file"):
        load_or_create_key(path)


def test_record_is_immutable_and_hashable() -> None:
    usage = {"total_tokens": 4}
    record = body_record(usage=usage)
    usage["total_tokens"] = 999  # the caller's dict is copied, not shared
    assert record.usage == {"total_tokens": 4}
    with pytest.raises(TypeError):
        record.usage["total_tokens"] = 1  # type: ignore[index]
    with pytest.raises(AttributeError):
        record.model = "other"  # type: ignore[misc]
    assert hash(record) == hash(body_record(usage={"total_tokens": 4}))
    assert len({record, body_record(usage={"total_tokens": 4}), chunks_record()}) == 2
