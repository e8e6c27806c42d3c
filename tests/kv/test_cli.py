"""``strata kv-demo``: runs a tiny configuration end to end and reports reuse that changes nothing."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from stratacache.errors import ConfigError
from stratacache.kv.cli import kv_demo_command
from stratacache.kv.demo import DemoSettings

TINY = [
    "--prefix-tokens", "64", "--suffix-tokens", "5", "--block-size", "16", "--layers", "1",
    "--hidden", "32", "--heads", "4", "--kv-heads", "2", "--vocab", "64", "--repeats", "1",
    "--threads", "1",
]  # fmt: skip


@pytest.mark.parametrize("tier", ["memory", "disk", "memory+disk"])
def test_json_output_has_the_promised_fields(tier: str) -> None:
    result = CliRunner().invoke(kv_demo_command, [*TINY, "--tier", tier, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {"ttft_without_s", "ttft_with_s", "ttft_ratio", "max_logit_diff"} <= set(data)
    assert data["ttft_without_s"] > 0
    assert data["ttft_with_s"] > 0
    assert data["ttft_ratio"] == pytest.approx(data["ttft_without_s"] / data["ttft_with_s"])
    assert data["max_logit_diff"] <= 1e-5
    assert (data["prompt_tokens"], data["reused_tokens"], data["computed_tokens"]) == (69, 64, 5)
    assert data["tier"] == tier


def test_human_output_names_both_timings() -> None:
    result = CliRunner().invoke(kv_demo_command, TINY)
    assert result.exit_code == 0, result.output
    assert "TTFT without the tier" in result.output
    assert "TTFT with the tier" in result.output
    assert "64 reused" in result.output


def test_an_impossible_shape_is_a_clean_error() -> None:
    result = CliRunner().invoke(kv_demo_command, [*TINY, "--heads", "3"])
    assert result.exit_code == 1
    assert "multiple of heads" in result.output


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError):
        DemoSettings(prefix_tokens=0)
    with pytest.raises(ConfigError):
        DemoSettings(tier="cloud")  # type: ignore[arg-type]
