"""Tests for stratacache.config: one frozen Settings from file < environment < flags."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from stratacache.config import DEFAULT_UPSTREAM, Settings
from stratacache.errors import ConfigError
from stratacache.llm.cache import RoutePolicy
from stratacache.llm.keys import Route
from stratacache.llm.policy import AdmissionMode
from stratacache.observability.pricing import Price


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "strata.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    settings = Settings.load()
    assert settings.host == "127.0.0.1"
    assert settings.port == 8080
    assert settings.upstream == DEFAULT_UPSTREAM
    assert settings.data_dir == Path(".strata")
    assert settings.admin_token is None
    assert settings.max_body_bytes == 8 * 1024 * 1024
    assert settings.key_file == Path(".strata/signing.key")
    assert settings.database == Path(".strata/cache.db")
    assert set(settings.routes) == set(Route)
    assert all(p == RoutePolicy() for p in settings.routes.values())


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.routes[Route.CHAT] = RoutePolicy()  # type: ignore[index]


def test_openai_base_url_is_the_default_upstream() -> None:
    settings = Settings.load(env={"OPENAI_BASE_URL": "http://127.0.0.1:8000/v1"})
    assert settings.upstream == "http://127.0.0.1:8000/v1"


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        'port = 9000\nhost = "0.0.0.0"\nupstream = "http://file:1/v1"\nadmin_token = "from-the-file"\n',
    )
    env = {"STRATA_PORT": "9100", "OPENAI_BASE_URL": "http://env:1/v1"}
    settings = Settings.load(config_file=config, env=env, overrides={"port": 9200, "host": None})
    assert settings.port == 9200  # flag
    assert settings.host == "0.0.0.0"  # file (the flag was not given)
    assert settings.upstream == "http://file:1/v1"  # file beats OPENAI_BASE_URL
    assert settings.admin_token == "from-the-file"
    assert Settings.load(config_file=config, env=env).port == 9100  # env beats file


def test_environment_values_are_typed() -> None:
    settings = Settings.load(
        env={
            "STRATA_DATA_DIR": "/tmp/strata-x",
            "STRATA_ADMIN_TOKEN": "token-from-env",
            "STRATA_SHARE_ACROSS_TENANTS": "yes",
            "STRATA_UPSTREAM_TIMEOUT": "2.5",
            "STRATA_MEMORY_MAX_ENTRIES": "none",
            "STRATA_MAX_BODY_BYTES": "1_000",
            "STRATA_SOMETHING_ELSE": "ignored: another face of stratacache may read it",
        }
    )
    assert settings.data_dir == Path("/tmp/strata-x")
    assert settings.admin_token == "token-from-env"
    assert settings.share_across_tenants is True
    assert settings.upstream_timeout == 2.5
    assert settings.memory_max_entries is None
    assert settings.max_body_bytes == 1000


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STRATA_PORT", "eighty"),
        ("STRATA_SHARE_ACROSS_TENANTS", "maybe"),
        ("STRATA_PORT", "70000"),
        ("STRATA_SIGNING", "rsa"),
        ("STRATA_LOG_LEVEL", "loud"),
        ("STRATA_ADMIN_TOKEN", "short"),
        ("STRATA_UPSTREAM", "ftp://example.com"),
        ("STRATA_UPSTREAM_TIMEOUT", "0"),
    ],
)
def test_bad_environment_values(name: str, value: str) -> None:
    with pytest.raises(ConfigError):
        Settings.load(env={name: value})


def test_routes_and_pricing_from_the_file(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        """
[routes."chat.completions"]
mode = "always"
ttl = 3600
stale_while_revalidate = 30

[routes.embeddings]
mode = "never"

[pricing."my-model"]
input = 1.5
output = 6
""",
    )
    settings = Settings.load(config_file=config)
    assert settings.routes[Route.CHAT] == RoutePolicy(
        mode=AdmissionMode.ALWAYS, ttl=3600, stale_while_revalidate=30
    )
    assert settings.routes[Route.EMBEDDINGS].mode is AdmissionMode.NEVER
    assert settings.routes[Route.RESPONSES] == RoutePolicy()
    assert settings.pricing == {"my-model": Price(input=1.5, output=6)}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("prot = 8080\n", "unknown setting"),
        ("port = '8080'\n", "expected int"),
        ("share_across_tenants = 1\n", "expected bool"),
        ('[routes."chat"]\nmode = "always"\n', "unknown route"),
        ('[routes."chat.completions"]\nmode = "sometimes"\n', "mode"),
        ('[routes."chat.completions"]\nttl = -5\n', "ttl"),
        ('[routes."chat.completions"]\ntll = 5\n', "unknown key"),
        ('[pricing."m"]\noutput = 5\n', "input"),
        ('[pricing."m"]\ninput = 1\nouptut = 2\n', "unknown key"),
        ("port = \n", "not valid TOML"),
    ],
)
def test_bad_files(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Settings.load(config_file=write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        Settings.load(config_file=tmp_path / "nope.toml")


def test_an_upstream_pointing_at_the_proxy_itself_is_refused() -> None:
    # The usual setup (OPENAI_BASE_URL pointing at the proxy) must not make the proxy call itself.
    with pytest.raises(ConfigError, match="proxy itself"):
        Settings.load(env={"OPENAI_BASE_URL": "http://127.0.0.1:8080/v1"})
    with pytest.raises(ConfigError, match="proxy itself"):
        Settings(upstream="http://localhost:9999/v1", port=9999)
    assert Settings(upstream="http://127.0.0.1:9999/v1", port=8080).port == 8080


def test_unknown_override() -> None:
    with pytest.raises(ConfigError, match="unknown setting"):
        Settings.load(overrides={"colour": "blue"})


def test_signing_key_file_override(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, signing_key_file=tmp_path / "elsewhere.key")
    assert settings.key_file == tmp_path / "elsewhere.key"


def test_semantic_settings_from_file_env_and_routes(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        """
semantic = true
semantic_threshold = 0.9
embedding_url = "http://127.0.0.1:9000/v1"
embedding_model = "bge-small"

[routes."chat.completions"]
semantic_threshold = 0.97

[routes.completions]
semantic = false
""",
    )
    settings = Settings.load(config_file=config, env={"STRATA_SEMANTIC_SHADOW": "yes"})
    assert settings.semantic is True
    assert settings.semantic_shadow is True
    assert settings.semantic_threshold == 0.9
    assert (settings.embedding_url, settings.embedding_model) == (
        "http://127.0.0.1:9000/v1",
        "bge-small",
    )
    assert settings.routes[Route.CHAT].semantic_threshold == 0.97
    assert settings.routes[Route.COMPLETIONS].semantic is False
    assert Settings().semantic is None  # unset: on when the extra is installed
    assert Settings.load(env={"STRATA_SEMANTIC": "false"}).semantic is False


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("semantic_threshold = 1.5\n", "semantic_threshold"),
        ("semantic = 'maybe'\n", "expected bool"),
        ('embedding_url = "ftp://x"\nembedding_model = "m"\n', "embedding_url"),
        ('embedding_url = "http://x/v1"\n', "embedding_model"),
        ('[routes."chat.completions"]\nsemantic_threshold = -2\n', "semantic_threshold"),
        ('[routes."chat.completions"]\nsemantic = 1\n', "semantic"),
    ],
)
def test_bad_semantic_settings(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Settings.load(config_file=write(tmp_path, text))
