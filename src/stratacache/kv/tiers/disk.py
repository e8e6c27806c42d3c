"""The local-disk KV store: one safetensors file per block, an index rebuilt by scanning on start.

Layout, under the directory the store is given::

    STRATACACHE-KV                      marker: this directory belongs to a KV store
    3f/3fa4…e1.safetensors              one block, named by its key (see stratacache.kv.codec)
    3f/.3fa4…e1.9c2b51d0.part           a write in progress (or one a crash interrupted)

Writes are atomic: the document goes to a ``.part`` file in the same directory, which is then
renamed over the final name with ``os.replace``. A reader therefore sees either no file or a whole
one, never a half-written one, and a crash leaves only a ``.part`` file, which the next start
deletes. Without ``fsync=True`` a power loss can still leave a renamed file whose data never
reached the disk (zero-filled or short): the scan and the load both verify every file, so such a
file is skipped, never loaded.

The index (key -> file size) lives in memory, in an engine :class:`~stratacache.engine.Store`, which
also enforces the optional byte budget with the same admission and eviction as the memory tier; an
evicted entry's file is deleted. On start the directory is scanned: every block file's header is
parsed and its size checked against what the header describes (catching truncation without reading
the tensor data), files that fail are deleted and listed in :attr:`DiskKVStore.report`, and the
rest are indexed oldest first. The tensor data is verified against its digest on every load; a file
that fails is deleted, counted and logged, and the load stops there.

Only files named like blocks inside two-hex-digit directories are ever touched, and only in a
directory that carries the marker (or was empty when the store first opened it), so pointing the
store at the wrong directory cannot delete anyone's files.

Several processes may share a directory: each indexes what it found on start plus what it wrote;
a file another process deleted is simply a miss.
"""

from __future__ import annotations

import logging
import os
import random
import re
import secrets
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from stratacache.errors import ConfigError, RecordError, TierUnavailableError
from stratacache.kv.base import BlockKey, KVBlock, KVStats
from stratacache.kv.codec import MAX_HEADER, BlockCodec
from stratacache.kv.tiers._checks import check_blocks, check_keys, check_open

if TYPE_CHECKING:
    from stratacache.engine import RemovalCause

__all__ = ["MARKER", "DiskKVStore", "ScanReport", "SkippedFile"]

logger = logging.getLogger("stratacache.kv.disk")

MARKER: Final = "STRATACACHE-KV"
"""The file that marks a directory as a KV store's."""

_SUFFIX: Final = ".safetensors"
_SHARD = re.compile(r"[0-9a-f]{2}")
_BLOCK_FILE = re.compile(r"([0-9a-f]{64})\.safetensors")
_PART_FILE = re.compile(r"\.[0-9a-f]{64}\.[0-9a-f]+\.part")


@dataclass(frozen=True, slots=True)
class SkippedFile:
    """A block file the scan or a load refused, and why."""

    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class ScanReport:
    """What the start-up scan found."""

    blocks: int
    """Block files indexed."""
    bytes: int
    """Their total size."""
    skipped: tuple[SkippedFile, ...]
    """Corrupt or partial block files: deleted, never loaded."""
    removed_partial: int
    """``.part`` files from interrupted writes, deleted."""


class DiskKVStore:
    """KV blocks as safetensors files in a local directory.

    :param directory: where the files live; created if missing. It must be empty, or a directory
        a :class:`DiskKVStore` created before.
    :param max_bytes: a budget for the files' total size (``None``: unbounded).
    :param codec: encodes and verifies blocks (default: SHA-256 digests, no secret).
    :param fsync: flush each file to the disk before it is renamed into place: survives power
        loss, at the cost of a disk flush per block.
    :param rng: the randomness of the index's admission policy.
    :raises ConfigError: a non-empty directory without the marker, or a bad ``max_bytes``.
    """

    name: str = "disk"
    """The label for metrics and reports."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int | None = None,
        codec: BlockCodec | None = None,
        fsync: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        from stratacache.engine import Store

        if max_bytes is not None and (
            not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1
        ):
            raise ConfigError(f"max_bytes must be an int >= 1 or None, not {max_bytes!r}")
        self._root = Path(directory)
        self._codec = codec if codec is not None else BlockCodec()
        self._fsync = fsync
        self._lock = threading.RLock()
        self._closed = False
        self._loaded = self._loaded_bytes = 0
        self._stored = self._stored_bytes = 0
        self._declined = self._corrupt = 0
        self._claim_directory()
        self._index = Store(
            max_bytes=max_bytes,
            weigher=lambda _key, size: int(size),
            on_evict=self._evicted,
            rng=rng,
        )
        self.report: ScanReport = self._scan()
        """What the start-up scan found (corrupt files it deleted, among others)."""

    @property
    def directory(self) -> Path:
        """The store's directory."""
        return self._root

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    # ----------------------------------------------------------------- files

    def _claim_directory(self) -> None:
        try:
            self._root.mkdir(parents=True, exist_ok=True)
            marker = self._root / MARKER
            if marker.is_file():
                return
            if any(self._root.iterdir()):
                raise ConfigError(
                    f"{self._root} is not empty and has no {MARKER} file: not a KV store directory"
                )
            marker.write_text("stratacache KV blocks; safe to delete with its directory\n")
        except OSError as exc:
            raise ConfigError(f"cannot use {self._root} for KV blocks: {exc}") from exc

    def _path(self, hexkey: str) -> Path:
        return self._root / hexkey[:2] / (hexkey + _SUFFIX)

    def _check_file(self, path: Path, hexkey: str) -> int:
        """The size of the block file at ``path`` once its header checks out; raises otherwise."""
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            length = int.from_bytes(prefix, "little") if len(prefix) == 8 else 0
            header = f.read(min(length, MAX_HEADER))
        info = self._codec.inspect(prefix, size, header=header)
        if info.key.hex() != hexkey:
            raise RecordError(f"the file holds block {info.key.hex()}")
        return size

    def _scan(self) -> ScanReport:
        found: list[tuple[float, str, int]] = []
        skipped: list[SkippedFile] = []
        partial = 0
        for shard in sorted(self._root.iterdir()):
            if not _SHARD.fullmatch(shard.name) or not shard.is_dir():
                continue
            for path in shard.iterdir():
                if _PART_FILE.fullmatch(path.name):
                    path.unlink(missing_ok=True)
                    partial += 1
                    continue
                match = _BLOCK_FILE.fullmatch(path.name)
                if match is None or not path.name.startswith(shard.name):
                    continue
                try:
                    size = self._check_file(path, match.group(1))
                    mtime = path.stat().st_mtime
                except (RecordError, OSError) as exc:
                    skipped.append(SkippedFile(str(path), str(exc)))
                    logger.warning("skipping corrupt KV block file %s: %s", path, exc)
                    path.unlink(missing_ok=True)
                    continue
                found.append((mtime, match.group(1), size))
        found.sort()
        with self._lock:
            for _mtime, hexkey, size in found:
                if not self._index.set(bytes.fromhex(hexkey), size):
                    self._path(hexkey).unlink(missing_ok=True)  # over the budget
            stats = self._index.stats()
        return ScanReport(
            blocks=stats.entries,
            bytes=stats.bytes,
            skipped=tuple(skipped),
            removed_partial=partial,
        )

    def _evicted(self, key: Any, size: Any, cause: RemovalCause) -> None:
        # Called by the index from inside set(), under self._lock.
        self._path(bytes(key).hex()).unlink(missing_ok=True)

    def _write(self, hexkey: str, data: bytes) -> None:
        final = self._path(hexkey)
        final.parent.mkdir(exist_ok=True)
        temp = final.parent / f".{hexkey}.{secrets.token_hex(4)}.part"
        try:
            with temp.open("xb") as f:
                f.write(data)
                if self._fsync:
                    f.flush()
                    os.fsync(f.fileno())
            # The rename is the commit point: before it the block does not exist, after it it
            # is whole.
            os.replace(temp, final)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise TierUnavailableError(f"cannot write KV block {final}: {exc}") from exc

    def _drop_corrupt(self, key: BlockKey, path: Path, reason: str) -> None:
        logger.warning("dropping corrupt KV block file %s: %s", path, reason)
        with self._lock:
            self._corrupt += 1
            self._index.delete(key.digest)
            path.unlink(missing_ok=True)

    # ------------------------------------------------------------ the protocol

    def lookup(self, keys: Sequence[BlockKey]) -> int:
        """How many leading ``keys`` have an indexed file (no effect on the policy)."""
        check_keys(keys)
        with self._lock:
            check_open(self._closed, self.name)
            count = 0
            for key in keys:
                if key.digest not in self._index:
                    break
                count += 1
            return count

    def load(self, keys: Sequence[BlockKey]) -> list[KVBlock]:
        """Read and verify the files of the leading ``keys``; stop at the first missing or bad one."""
        check_keys(keys)
        out: list[KVBlock] = []
        for key in keys:
            with self._lock:
                check_open(self._closed, self.name)
                if self._index.get(key.digest) is None:
                    break
            path = self._path(key.hex())
            # Read outside the lock: files are replaced atomically, so this sees a whole file or
            # none, and other loads and stores go on meanwhile.
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                with self._lock:
                    self._index.delete(key.digest)
                break
            except OSError as exc:
                raise TierUnavailableError(f"cannot read KV block {path}: {exc}") from exc
            try:
                block = self._codec.decode(key, data)
            except RecordError as exc:
                self._drop_corrupt(key, path, str(exc))
                break
            out.append(block)
        with self._lock:
            self._loaded += len(out)
            self._loaded_bytes += sum(b.nbytes for b in out)
        return out

    def store(self, blocks: Mapping[BlockKey, KVBlock]) -> int:
        """Write the blocks not already on disk; return how many are held afterwards.

        :raises TierUnavailableError: the disk refused a write (full, read-only); blocks written
            before it stay.
        """
        items = check_blocks(blocks)
        held = 0
        for key, block in items:
            with self._lock:
                check_open(self._closed, self.name)
                if key.digest in self._index:
                    held += 1
                    continue
            hexkey = key.hex()
            data = self._codec.encode(key, block)
            self._write(hexkey, data)
            with self._lock:
                if self._index.set(key.digest, len(data)):
                    self._stored += 1
                    self._stored_bytes += block.nbytes
                    held += 1
                else:
                    # Refused by admission (the listener deleted the file) or heavier than the
                    # whole budget (it did not).
                    self._path(hexkey).unlink(missing_ok=True)
                    self._declined += 1
        return held

    def delete(self, keys: Sequence[BlockKey]) -> int:
        """Delete the files of ``keys``; return how many were indexed."""
        check_keys(keys)
        removed = 0
        with self._lock:
            check_open(self._closed, self.name)
            for key in keys:
                if self._index.delete(key.digest):
                    removed += 1
                self._path(key.hex()).unlink(missing_ok=True)
        return removed

    def clear(self) -> None:
        """Delete every indexed block file."""
        with self._lock:
            check_open(self._closed, self.name)
            for digest in self._index.keys():  # noqa: SIM118 - a Store, not a dict
                self._path(bytes(digest).hex()).unlink(missing_ok=True)  # type: ignore[arg-type]
            self._index.clear()

    def stats(self) -> KVStats:
        """The counters since this process opened the store."""
        with self._lock:
            return KVStats(
                loaded_blocks=self._loaded,
                loaded_bytes=self._loaded_bytes,
                stored_blocks=self._stored,
                stored_bytes=self._stored_bytes,
                declined_blocks=self._declined,
                corrupt_blocks=self._corrupt,
            )

    def close(self) -> None:
        """Forget the index (the files stay); later calls raise :class:`~stratacache.errors.TierError`."""
        with self._lock:
            if not self._closed:
                self._index.clear()
                self._closed = True
