"""Settings: YAML files, flag precedence, validation, and every shipped config loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from unlearnlm.cli import build_parser
from unlearnlm.errors import UnlearnError
from unlearnlm.settings import UnlearnConfig, load_yaml, settings_from_args

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path):
    """Through the command line, as `unlearnlm unlearn --config FILE` reads it: every key lands
    in the settings unchanged."""
    args = build_parser().parse_args(["unlearn", "--config", str(path), "--model", "m",
                                      "--forget", "f.jsonl", "--out", "o"])
    config = settings_from_args(UnlearnConfig, args)
    assert config.to_dict().items() >= load_yaml(path).items()
    assert config.method in ("icu", "ga")
    assert config.lr == 5e-6


def test_shipped_configs_exist():
    assert len(CONFIGS) >= 3


def test_flags_override_yaml_and_yaml_overrides_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1.0e-4\nbatch-size: 4\n")
    config = UnlearnConfig.from_sources(str(path), batch_size=2, seed=None)
    assert config.lr == 1e-4  # from the YAML
    assert config.batch_size == 2  # the flag wins
    assert config.seed == 42  # the default stays where neither says anything


@pytest.mark.parametrize(
    "text, message",
    [("lr: [1, 2\n", "not valid YAML"), ("- a\n- b\n", "mapping"), ("nope: 1\n", "nope")],
)
def test_bad_yaml_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UnlearnError, match=message):
        UnlearnConfig.from_sources(str(path))


def test_missing_yaml_file(tmp_path):
    with pytest.raises(UnlearnError, match="cannot read config file"):
        UnlearnConfig.from_sources(str(tmp_path / "none.yaml"))


def test_unknown_loss_term_is_refused():
    with pytest.raises(UnlearnError, match="unknown loss term"):
        UnlearnConfig(loss_weights={"forget_magic": 1.0})
