"""Cached answers as immutable, signed records, and the one format they are stored in.

A :class:`Record` is everything a tier keeps about one answer: the request fingerprint it answers,
the response (a complete JSON body, or the raw SSE payloads of a streamed response), model, usage,
times, namespace and tags. :class:`RecordCodec` turns it into bytes and back. The bytes are::

    b"SCRD" | version (1 byte) | algorithm length (1 byte) | algorithm (ASCII)
            | payload length (4 bytes, big-endian) | payload (msgpack) | signature

The signature covers every byte before it, the algorithm id included, so a record signed with HMAC
is not accepted by an Ed25519 codec and an algorithm cannot be swapped after the fact.
:meth:`decode` checks the framing, then the signature, and only then unpacks the payload: bytes that
did not come from a holder of the key never reach the msgpack parser. There is no pickle anywhere;
msgpack here is restricted to maps, lists, strings, bytes, integers, floats and nil.

Signers: :class:`HmacSigner` (HMAC-SHA256, the default: one shared key, fast),
:class:`Ed25519Signer` (public-key, so readers can hold a verify-only key) and :class:`MLDSASigner`
(ML-DSA-65, FIPS 204, a post-quantum signature; needs ``cryptography`` >= 50 built with ML-DSA).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import math
import os
import secrets
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from stratacache.errors import (
    ConfigError,
    MissingExtraError,
    RecordFormatError,
    SignatureError,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )
    from cryptography.hazmat.primitives.asymmetric.mldsa import (
        MLDSA65PrivateKey,
        MLDSA65PublicKey,
    )

__all__ = [
    "FORMAT_VERSION",
    "KEY_BYTES",
    "Ed25519Signer",
    "HmacSigner",
    "MLDSASigner",
    "Record",
    "RecordCodec",
    "Signer",
    "flat_usage",
    "load_or_create_key",
    "mldsa_available",
]

FORMAT_VERSION = 1
"""The record format written by :meth:`RecordCodec.encode`; other versions do not decode."""
KEY_BYTES = 32
"""The length of a key made by :func:`load_or_create_key`."""

_MAGIC = b"SCRD"
_LENGTH = struct.Struct(">I")
_FIELDS = (
    "key",
    "fingerprint",
    "route",
    "model",
    "created_at",
    "expires_at",
    "namespace",
    "tags",
    "body",
    "chunks",
    "usage",
)


@dataclass(frozen=True, slots=True)
class Record:
    """One cached answer. Exactly one of :attr:`body` and :attr:`chunks` is set."""

    key: str
    """The storage key (:attr:`CacheKey.storage_key`) the record was written under."""
    fingerprint: str
    """The request digest; re-checked on read so a key collision or a moved record is caught."""
    route: str
    """The route value (``chat.completions``, ``responses``...)."""
    model: str
    """The model that produced the answer, as the response named it."""
    created_at: float
    """When the answer was received, in Unix seconds."""
    expires_at: float | None = None
    """When the record stops being served, in Unix seconds; ``None`` for never."""
    namespace: str = "default"
    """The namespace the record belongs to."""
    tags: frozenset[str] = frozenset()
    """Invalidation tags."""
    body: bytes | None = None
    """The complete JSON response, for an answer received without streaming."""
    chunks: tuple[bytes, ...] | None = None
    """The SSE ``data:`` payloads of a streamed answer, in order, the final usage chunk included and
    the ``[DONE]`` sentinel excluded. For the Responses API the SSE event name is the payload's
    ``type`` field, so it is not stored separately.
    """
    usage: Mapping[str, int] | None = field(default=None, hash=False)
    """Token counts, flat (see :func:`flat_usage`); kept as a read-only copy."""
    gaps: tuple[float, ...] | None = None
    """For a streamed answer, the seconds between each chunk's arrival and the previous one's (the
    first: since the request was sent), so a hit can be replayed at the original pace; ``None``:
    not recorded. Optional in the format: a record without gaps encodes as it always did."""

    def __post_init__(self) -> None:
        for name in ("key", "fingerprint", "route", "model", "namespace"):
            if not isinstance(getattr(self, name), str):
                raise RecordFormatError(f"record field {name!r} must be a string")
        if not self.key:
            raise RecordFormatError("a record needs a key")
        if not _finite(self.created_at):
            raise RecordFormatError("record created_at must be a finite number")
        if self.expires_at is not None and not _finite(self.expires_at):
            raise RecordFormatError("record expires_at must be a finite number or None")
        if not isinstance(self.tags, frozenset) or not all(isinstance(t, str) for t in self.tags):
            raise RecordFormatError("record tags must be a frozenset of strings")
        if (self.body is None) == (self.chunks is None):
            raise RecordFormatError("a record holds exactly one of body and chunks")
        if self.body is not None and not isinstance(self.body, bytes):
            raise RecordFormatError("record body must be bytes")
        if self.chunks is not None and (
            not isinstance(self.chunks, tuple)
            or not self.chunks
            or not all(isinstance(c, bytes) for c in self.chunks)
        ):
            raise RecordFormatError("record chunks must be a non-empty tuple of bytes")
        if self.usage is not None and (
            not isinstance(self.usage, Mapping)
            or not all(isinstance(k, str) and _is_int(v) for k, v in self.usage.items())
        ):
            raise RecordFormatError("record usage must map strings to integers")
        if self.gaps is not None and (
            self.chunks is None
            or not isinstance(self.gaps, tuple)
            or len(self.gaps) != len(self.chunks)
            or not all(_finite(g) and g >= 0 for g in self.gaps)
        ):
            raise RecordFormatError(
                "record gaps must be one finite number >= 0 per chunk, for a streamed record"
            )
        if self.usage is not None:
            # A frozen record must not share a dict the caller can still change.
            object.__setattr__(self, "usage", MappingProxyType(dict(self.usage)))

    @property
    def is_streamed(self) -> bool:
        """Whether the answer was recorded from a stream (:attr:`chunks` is set)."""
        return self.chunks is not None

    def age(self, now: float) -> float:
        """Seconds since the answer was received (never negative, whatever the clocks did)."""
        return max(0.0, now - self.created_at)

    def expired(self, now: float) -> bool:
        """Whether the record is past its expiry at time ``now``."""
        return self.expires_at is not None and self.expires_at <= now

    def ttl(self, now: float) -> float | None:
        """Seconds the record has left at ``now`` (0 once expired); ``None`` if it never expires."""
        if self.expires_at is None:
            return None
        return max(0.0, self.expires_at - now)


@runtime_checkable
class Signer(Protocol):
    """Signs record bytes and verifies them. ``algorithm`` is written into every record it signs."""

    algorithm: str
    """A short ASCII id: ``hmac-sha256``, ``ed25519``, ``ml-dsa-65``."""

    def sign(self, data: bytes) -> bytes:
        """Return the signature of ``data``."""
        ...

    def verify(self, data: bytes, signature: bytes) -> None:
        """Return if ``signature`` is valid for ``data``, else raise :class:`SignatureError`."""
        ...


class HmacSigner:
    """HMAC-SHA256 with a shared secret key of at least 16 bytes (ideally 32, random)."""

    algorithm = "hmac-sha256"

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) < 16:
            raise ConfigError("an HMAC record key must be at least 16 bytes")
        self._key = key

    def __repr__(self) -> str:
        return "HmacSigner(<key hidden>)"

    def sign(self, data: bytes) -> bytes:
        """Return the 32-byte HMAC-SHA256 of ``data``."""
        return hmac.new(self._key, data, hashlib.sha256).digest()

    def verify(self, data: bytes, signature: bytes) -> None:
        """Raise :class:`SignatureError` unless ``signature`` is the HMAC of ``data``.

        The comparison takes constant time, so timing reveals nothing about the right signature.
        """
        if not hmac.compare_digest(self.sign(data), signature):
            raise SignatureError("record signature does not verify (tampered, or another key)")


class _KeyPairSigner:
    """What the asymmetric signers share: sign with the private key, verify with the public one."""

    algorithm: str
    _label: ClassVar[str]  # the scheme's name in messages

    __slots__ = ("_private", "_public")

    _private: Any
    _public: Any

    @property
    def can_sign(self) -> bool:
        """``False`` for a verify-only signer."""
        return self._private is not None

    @property
    def public_key(self) -> bytes:
        """The raw public key, to build a verify-only signer elsewhere."""
        key: bytes = self._public.public_bytes_raw()
        return key

    def sign(self, data: bytes) -> bytes:
        """Return the signature of ``data``."""
        if self._private is None:
            raise ConfigError(f"this {self._label} signer holds only a public key and cannot sign")
        signature: bytes = self._private.sign(data)
        return signature

    def verify(self, data: bytes, signature: bytes) -> None:
        """Raise :class:`SignatureError` unless ``signature`` is valid for ``data``."""
        from cryptography.exceptions import InvalidSignature

        try:
            self._public.verify(signature, data)
        except (InvalidSignature, ValueError):
            raise SignatureError(
                "record signature does not verify (tampered, or another key)"
            ) from None


class Ed25519Signer(_KeyPairSigner):
    """Ed25519 signatures. Built from a raw 32-byte private key, or verify-only from a public key.

    A verify-only signer lets a reader check records without being able to write them.
    """

    algorithm = "ed25519"
    _label = "Ed25519"

    __slots__ = ()

    def __init__(
        self, private_key: bytes | None = None, *, public_key: bytes | None = None
    ) -> None:
        ed25519 = _ed25519()
        self._private: Ed25519PrivateKey | None = None
        try:
            if private_key is not None:
                self._private = ed25519.Ed25519PrivateKey.from_private_bytes(private_key)
            derived = self._private.public_key() if self._private is not None else None
            given = (
                ed25519.Ed25519PublicKey.from_public_bytes(public_key)
                if public_key is not None
                else None
            )
        except ValueError as exc:
            raise ConfigError(f"invalid Ed25519 key: {exc}") from None
        if derived is not None and given is not None and derived != given:
            raise ConfigError("the Ed25519 public key does not belong to the private key")
        public = derived if derived is not None else given
        if public is None:
            raise ConfigError("an Ed25519 signer needs a private key or a public key")
        self._public: Ed25519PublicKey = public

    def __repr__(self) -> str:
        return f"Ed25519Signer(can_sign={self.can_sign})"

    @classmethod
    def generate(cls) -> Ed25519Signer:
        """A signer with a fresh random key."""
        key = _ed25519().Ed25519PrivateKey.generate()
        return cls(key.private_bytes_raw())


class MLDSASigner(_KeyPairSigner):
    """ML-DSA-65 (FIPS 204) signatures, from a 32-byte seed or verify-only from a public key.

    Needs ``cryptography`` >= 50 built against a library with ML-DSA; otherwise the constructor
    raises :class:`ConfigError` (or :class:`MissingExtraError` when ``cryptography`` is absent).
    Signatures are 3,309 bytes, so records grow by that much.
    """

    algorithm = "ml-dsa-65"
    _label = "ML-DSA-65"

    __slots__ = ()

    def __init__(self, seed: bytes | None = None, *, public_key: bytes | None = None) -> None:
        mldsa = _mldsa()
        self._private: MLDSA65PrivateKey | None = None
        try:
            if seed is not None:
                self._private = mldsa.MLDSA65PrivateKey.from_seed_bytes(seed)
            derived = self._private.public_key() if self._private is not None else None
            given = (
                mldsa.MLDSA65PublicKey.from_public_bytes(public_key)
                if public_key is not None
                else None
            )
        except ValueError as exc:
            raise ConfigError(f"invalid ML-DSA-65 key: {exc}") from None
        if derived is not None and given is not None and derived != given:
            raise ConfigError("the ML-DSA-65 public key does not belong to the seed")
        public = derived if derived is not None else given
        if public is None:
            raise ConfigError("an ML-DSA-65 signer needs a seed or a public key")
        self._public: MLDSA65PublicKey = public

    def __repr__(self) -> str:
        return f"MLDSASigner(can_sign={self.can_sign})"

    @classmethod
    def generate(cls) -> MLDSASigner:
        """A signer with a fresh random seed."""
        return cls(secrets.token_bytes(KEY_BYTES))


def mldsa_available() -> bool:
    """Whether :class:`MLDSASigner` works with the installed ``cryptography``."""
    try:
        MLDSASigner.generate()
    except (ConfigError, MissingExtraError):
        return False
    return True


class RecordCodec:
    """Encodes :class:`Record` objects to signed bytes and decodes them back, verifying first.

    >>> codec = RecordCodec(HmacSigner(b"k" * 32))
    >>> rec = Record(key="t/default/chat.completions/ab", fingerprint="ab",
    ...              route="chat.completions", model="m", created_at=0.0, body=b"{}")
    >>> codec.decode(codec.encode(rec), expected_key=rec.key) == rec
    True
    """

    __slots__ = ("_header", "_msgpack", "signer")

    def __init__(self, signer: Signer) -> None:
        algorithm = signer.algorithm.encode("ascii")
        if not 0 < len(algorithm) < 256:
            raise ConfigError(
                f"a signer's algorithm id must be 1-255 ASCII bytes: {signer.algorithm!r}"
            )
        self.signer = signer
        self._header = _MAGIC + bytes([FORMAT_VERSION, len(algorithm)]) + algorithm
        self._msgpack = _msgpack()

    def encode(self, record: Record) -> bytes:
        """Serialise and sign ``record``."""
        fields = {
            "key": record.key,
            "fingerprint": record.fingerprint,
            "route": record.route,
            "model": record.model,
            "created_at": float(record.created_at),
            "expires_at": None if record.expires_at is None else float(record.expires_at),
            "namespace": record.namespace,
            # Sorted, so one record always encodes to the same bytes.
            "tags": sorted(record.tags),
            "body": record.body,
            "chunks": None if record.chunks is None else list(record.chunks),
            "usage": None if record.usage is None else dict(sorted(record.usage.items())),
        }
        if record.gaps is not None:
            fields["gaps"] = [float(g) for g in record.gaps]
        payload: bytes = self._msgpack.packb(fields, use_bin_type=True)
        signed = b"".join((self._header, _LENGTH.pack(len(payload)), payload))
        return signed + self.signer.sign(signed)

    def decode(
        self, data: bytes | bytearray | memoryview, *, expected_key: str | None = None
    ) -> Record:
        """Verify and parse ``data``.

        Raises :class:`RecordFormatError` for bytes that are not a record of this version (garbage,
        truncated) and :class:`SignatureError` for a record that does not verify: tampered, signed
        by another key or algorithm, or stored under a key other than ``expected_key``.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise RecordFormatError(f"a record is bytes, not {type(data).__name__}")
        data = bytes(data)  # one copy, so slices below are cheap and the input may change later
        if len(data) < 6 or data[:4] != _MAGIC:
            raise RecordFormatError("not a stratacache record")
        if data[4] != FORMAT_VERSION:
            raise RecordFormatError(
                f"unsupported record format version {data[4]} (this build reads {FORMAT_VERSION})"
            )
        length_at = 6 + data[5]
        if len(data) < length_at + _LENGTH.size:
            raise RecordFormatError("truncated record header")
        if data[:length_at] != self._header:
            algorithm = data[6:length_at].decode("ascii", "replace")
            raise SignatureError(
                f"record is signed with {algorithm!r}, "
                f"this codec verifies {self.signer.algorithm!r}"
            )
        (length,) = _LENGTH.unpack_from(data, length_at)
        start = length_at + _LENGTH.size
        end = start + length
        if end > len(data):
            raise RecordFormatError("truncated record payload")
        # Verify before parsing: only bytes made by a key holder ever reach msgpack.
        self.signer.verify(data[:end], data[end:])
        record = self._parse(data[start:end])
        if expected_key is not None and record.key != expected_key:
            raise SignatureError(
                f"record was written for key {record.key!r}, but read from {expected_key!r}"
            )
        return record

    def _parse(self, payload: bytes) -> Record:
        try:
            fields = self._msgpack.unpackb(
                payload, raw=False, strict_map_key=True, use_list=True, timestamp=0
            )
        except Exception as exc:  # msgpack raises a zoo of types; all of them mean "not a record"
            raise RecordFormatError(f"record payload does not decode: {exc}") from None
        if not isinstance(fields, dict) or set(fields) - {"gaps"} != set(_FIELDS):
            raise RecordFormatError("record payload does not hold the record fields")
        gaps = fields.get("gaps")
        if gaps is not None and not isinstance(gaps, list):
            raise RecordFormatError("record gaps must be a list")
        tags = fields["tags"]
        chunks = fields["chunks"]
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise RecordFormatError("record tags must be a list of strings")
        if chunks is not None and not isinstance(chunks, list):
            raise RecordFormatError("record chunks must be a list")
        return Record(
            key=fields["key"],
            fingerprint=fields["fingerprint"],
            route=fields["route"],
            model=fields["model"],
            created_at=fields["created_at"],
            expires_at=fields["expires_at"],
            namespace=fields["namespace"],
            tags=frozenset(tags),
            body=fields["body"],
            chunks=None if chunks is None else tuple(chunks),
            usage=fields["usage"],
            gaps=None if gaps is None else tuple(gaps),
        )


def flat_usage(usage: Mapping[str, Any] | None) -> dict[str, int] | None:
    """Flatten a provider's usage object to ``{name: int}`` for :attr:`Record.usage`.

    Nested counts get dotted names (``prompt_tokens_details.cached_tokens``); values that are not
    integers (``null``, strings) are dropped.

    >>> flat_usage({"total_tokens": 3, "prompt_tokens_details": {"cached_tokens": 0, "x": None}})
    {'total_tokens': 3, 'prompt_tokens_details.cached_tokens': 0}
    """
    if usage is None:
        return None
    out: dict[str, int] = {}

    def walk(prefix: str, value: Mapping[str, Any]) -> None:
        for name, item in value.items():
            if _is_int(item):
                out[prefix + str(name)] = item
            elif isinstance(item, Mapping):
                walk(f"{prefix}{name}.", item)

    walk("", usage)
    return out


def load_or_create_key(path: Path) -> bytes:
    """Return the 32-byte key stored at ``path``, creating it (mode 0600) if it does not exist.

    Creation is atomic and safe against a concurrent creator: the key is written and synced to a
    private temporary file, then published with a hard link, which fails if the name exists. So the
    first process to publish wins, every other process reads the winner's key, and no process ever
    sees a partly written file. (``os.replace`` would be atomic too, but would overwrite a key that
    a concurrent process has already started signing with.) A file of any other length is a
    :class:`ConfigError`.
    """
    path = Path(path)
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ConfigError(f"cannot create the record key file {path}: {exc}") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(KEY_BYTES))
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):  # another process published first: use its key
            os.link(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot create the record key file {path}: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    try:
        return _read_key(path)
    except FileNotFoundError as exc:  # the name exists but leads nowhere: a dangling symlink
        raise ConfigError(f"cannot read the record key file {path}: {exc}") from exc


# --- internals ------------------------------------------------------------------------------------


def _read_key(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            key = fh.read(KEY_BYTES + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(f"cannot read the record key file {path}: {exc}") from exc
    if len(key) != KEY_BYTES:
        size = str(len(key)) if len(key) <= KEY_BYTES else f"more than {KEY_BYTES}"
        raise ConfigError(
            f"the record key file {path} holds {size} bytes; it must hold exactly {KEY_BYTES} "
            "(delete it to generate a new key, which invalidates every stored record)"
        )
    return key


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _msgpack() -> Any:
    try:
        import msgpack  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - msgpack is installed wherever tests run
        raise MissingExtraError("msgpack", "proxy") from exc
    return msgpack


def _ed25519() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:  # pragma: no cover
        raise MissingExtraError("cryptography", "proxy") from exc
    return ed25519


def _mldsa() -> Any:
    try:
        import cryptography
    except ImportError as exc:  # pragma: no cover
        raise MissingExtraError("cryptography", "proxy") from exc
    try:
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives.asymmetric import mldsa
    except ImportError:
        raise ConfigError(
            f"ML-DSA-65 needs cryptography >= 50; {cryptography.__version__} is installed"
        ) from None
    try:
        # Probe with a fixed seed: a build without ML-DSA raises here rather than at first use.
        mldsa.MLDSA65PrivateKey.from_seed_bytes(bytes(KEY_BYTES))
    except UnsupportedAlgorithm:
        raise ConfigError(
            f"this build of cryptography {cryptography.__version__} has no ML-DSA-65 support "
            "(it needs a backend with ML-DSA, such as OpenSSL 3.5+ or AWS-LC)"
        ) from None
    return mldsa
