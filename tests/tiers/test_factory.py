"""``build_chain``: the chain the settings name, and the settings that name it (file, env, flag)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stratacache.cli import main
from stratacache.config import Settings
from stratacache.errors import ConfigError
from stratacache.tiers import MemoryTier, SQLiteTier, TierEntry
from stratacache.tiers.coherence import CoherentTier
from stratacache.tiers.factory import build_chain
from stratacache.tiers.redis import RedisTier

from .contract import FakeClock


@pytest.mark.parametrize(
    ("chain", "redis", "expected"),
    [
        (None, False, ("memory", "sqlite")),
        (None, True, ("memory", "redis")),
        ("memory,sqlite,redis", True, ("memory", "sqlite", "redis")),
        (" memory , redis ", True, ("memory", "redis")),
        ("sqlite", False, ("sqlite",)),
    ],
)
async def test_the_chain_the_settings_name(
    tmp_path: Path,
    *,
    clock: FakeClock,
    redis_url: str,
    chain: str | None,
    redis: bool,
    expected: tuple[str, ...],
) -> None:
    settings = Settings(data_dir=tmp_path, chain=chain, redis_url=redis_url if redis else None)
    assert settings.chain_tiers == expected
    built = build_chain(settings, clock=clock)
    try:
        assert tuple(tier.name for tier in built.tiers) == expected
        # The instance's own tiers follow the other instances' invalidations when Redis is there.
        kinds: dict[str, type] = {
            "memory": CoherentTier if redis else MemoryTier,
            "sqlite": CoherentTier if redis else SQLiteTier,
            "redis": RedisTier,
        }
        for tier in built.tiers:
            assert isinstance(tier, kinds[tier.name])
        stored = TierEntry(b"v", clock() + 10)
        assert await built.set("k", stored)
        for tier in built.tiers:
            assert await tier.get("k") == stored
        clock.advance(10)  # every tier runs on the one clock
        assert await built.get("k") is None
    finally:
        await built.close()


def test_redis_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="redis_url is not set"):
        Settings(chain="memory,redis")
    with pytest.raises(ConfigError, match="distinct tiers"):
        Settings(chain="memory,memory")
    with pytest.raises(ConfigError, match="distinct tiers"):
        Settings(chain="memory,postgres")
    with pytest.raises(ConfigError, match="distinct tiers"):
        Settings(chain=" , ")
    with pytest.raises(ConfigError, match="redis_url must be") as info:
        Settings(redis_url="http://user:hunter2@host")
    assert "hunter2" not in str(info.value)
    with pytest.raises(ConfigError, match="redis_timeout"):
        Settings(redis_timeout=0)
    with pytest.raises(ConfigError, match="redis_prefix"):
        Settings(redis_prefix="")


def test_redis_settings_from_file_env_and_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "strata.toml"
    config.write_text('redis_url = "redis://file:6379/0"\nchain = "memory,sqlite,redis"\n')
    settings = Settings.load(config_file=config)
    assert settings.redis_url == "redis://file:6379/0"
    assert settings.chain_tiers == ("memory", "sqlite", "redis")
    env = {"STRATA_REDIS_URL": "redis://env:6379/1", "STRATA_REDIS_TIMEOUT": "0.5"}
    settings = Settings.load(config_file=config, env=env)
    assert settings.redis_url == "redis://env:6379/1"
    assert settings.redis_timeout == 0.5

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("STRATA_REDIS_URL", "redis://env:6379/1")
    flags = ["--redis", "redis://:s3cret@flag:6379/2", "--chain", "memory,redis"]
    code = main(["serve", *flags, "--print-config"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["redis_url"] == "redis://:***@flag:6379/2"
    assert printed["chain"] == "memory,redis"
