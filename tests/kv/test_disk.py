"""The disk store: restarts keep blocks, bad files are skipped and reported, never loaded."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from stratacache.errors import ConfigError
from stratacache.kv import BlockCodec, BlockKey, DiskKVStore, KVBlock
from stratacache.kv.tiers.disk import MARKER

from .helpers import blocks_for, chain, make_block, same

KEYS = chain(4)


def _path(root: Path, index: int) -> Path:
    hexkey = KEYS[index].hex()
    return root / hexkey[:2] / f"{hexkey}.safetensors"


def _filled(root: Path) -> dict[BlockKey, KVBlock]:
    blocks = blocks_for(KEYS)
    store = DiskKVStore(root)
    store.store(blocks)
    store.close()
    return blocks


def test_a_restart_keeps_every_block(tmp_path: Path) -> None:
    blocks = _filled(tmp_path)
    reopened = DiskKVStore(tmp_path)
    assert reopened.report.blocks == 4
    assert reopened.report.skipped == ()
    assert reopened.lookup(KEYS) == 4
    for key, block in zip(KEYS, reopened.load(KEYS), strict=True):
        assert same(block, blocks[key])


def test_writes_leave_only_whole_files(tmp_path: Path) -> None:
    _filled(tmp_path)
    names = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert MARKER in names
    assert not [n for n in names if n.endswith(".part")]
    assert len([n for n in names if n.endswith(".safetensors")]) == 4


def test_a_truncated_file_is_skipped_reported_and_deleted(tmp_path: Path) -> None:
    _filled(tmp_path)
    victim = _path(tmp_path, 2)
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    reopened = DiskKVStore(tmp_path)
    assert [s.path for s in reopened.report.skipped] == [str(victim)]
    assert "describes" in reopened.report.skipped[0].reason
    assert not victim.exists()
    assert reopened.lookup(KEYS) == 2
    assert len(reopened.load(KEYS)) == 2


def test_an_empty_file_is_skipped(tmp_path: Path) -> None:
    _filled(tmp_path)
    _path(tmp_path, 0).write_bytes(b"")
    reopened = DiskKVStore(tmp_path)
    assert len(reopened.report.skipped) == 1
    assert reopened.lookup(KEYS) == 0


def test_a_tampered_file_is_detected_on_load_and_never_returned(tmp_path: Path) -> None:
    blocks = _filled(tmp_path)
    victim = _path(tmp_path, 1)
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0x40  # same size: the header still checks out, the digest does not
    victim.write_bytes(bytes(data))
    reopened = DiskKVStore(tmp_path)
    assert reopened.report.skipped == ()
    assert reopened.lookup(KEYS) == 4
    loaded = reopened.load(KEYS)
    assert len(loaded) == 1
    assert same(loaded[0], blocks[KEYS[0]])
    assert reopened.stats().corrupt_blocks == 1
    assert not victim.exists()
    assert reopened.lookup(KEYS) == 1


def test_a_file_copied_under_another_name_is_refused(tmp_path: Path) -> None:
    _filled(tmp_path)
    # Block 0's file stands in for block 1: a valid document, but not the right block.
    os.replace(_path(tmp_path, 0), _path(tmp_path, 1))
    reopened = DiskKVStore(tmp_path)
    assert [s.path for s in reopened.report.skipped] == [str(_path(tmp_path, 1))]
    assert reopened.lookup(KEYS) == 0


def test_leftover_partial_writes_are_removed(tmp_path: Path) -> None:
    _filled(tmp_path)
    hexkey = KEYS[3].hex()
    part = tmp_path / hexkey[:2] / f".{hexkey}.deadbeef.part"
    part.write_bytes(b"half a block")
    reopened = DiskKVStore(tmp_path)
    assert reopened.report.removed_partial == 1
    assert not part.exists()


def test_a_file_deleted_behind_the_stores_back_is_a_miss(tmp_path: Path) -> None:
    store = DiskKVStore(tmp_path)
    store.store(blocks_for(KEYS))
    _path(tmp_path, 1).unlink()
    assert len(store.load(KEYS)) == 1
    assert store.lookup(KEYS) == 1
    assert store.stats().corrupt_blocks == 0


def test_the_byte_budget_deletes_evicted_files(tmp_path: Path) -> None:
    size = len(BlockCodec().encode(KEYS[0], make_block(0)))
    keys = chain(20)
    store = DiskKVStore(tmp_path, max_bytes=3 * size, rng=random.Random(3))
    for i, key in enumerate(keys):
        store.store({key: make_block(i)})
    files = list(tmp_path.rglob("*.safetensors"))
    assert len(files) == len(store) <= 3
    assert sum(f.stat().st_size for f in files) <= 3 * size


def test_a_foreign_directory_is_refused_and_left_alone(tmp_path: Path) -> None:
    precious = tmp_path / "ab" / ("ab" + "0" * 62 + ".safetensors")
    precious.parent.mkdir()
    precious.write_bytes(b"model weights, not ours")
    with pytest.raises(ConfigError):
        DiskKVStore(tmp_path)
    assert precious.read_bytes() == b"model weights, not ours"


def test_files_that_are_not_blocks_are_ignored(tmp_path: Path) -> None:
    store = DiskKVStore(tmp_path)
    store.close()
    (tmp_path / "README").write_text("notes")
    (tmp_path / "zz").mkdir()
    (tmp_path / "zz" / "x.safetensors").write_bytes(b"junk")
    reopened = DiskKVStore(tmp_path)
    assert reopened.report.skipped == ()
    assert (tmp_path / "README").exists()
    assert (tmp_path / "zz" / "x.safetensors").exists()


def test_fsync_writes_work_too(tmp_path: Path) -> None:
    store = DiskKVStore(tmp_path, fsync=True)
    store.store(blocks_for(KEYS[:1]))
    assert DiskKVStore(tmp_path).lookup(KEYS) == 1


def test_a_codec_secret_must_match_across_restarts(tmp_path: Path) -> None:
    DiskKVStore(tmp_path, codec=BlockCodec(b"one")).store(blocks_for(KEYS[:1]))
    reopened = DiskKVStore(tmp_path, codec=BlockCodec(b"two"))
    assert reopened.load(KEYS) == []
    assert reopened.stats().corrupt_blocks == 1


@pytest.mark.parametrize("bad", [0, -5, 2.5, True])
def test_a_bad_budget_is_a_config_error(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ConfigError):
        DiskKVStore(tmp_path, max_bytes=bad)  # type: ignore[arg-type]
