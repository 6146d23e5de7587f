from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from omegaconf import OmegaConf

from train.config import ConfigError, compose, to_yaml


@dataclass
class Inner:
    lr: float = 1e-5
    api_key: str = ""


@dataclass
class Schema:
    name: str = "run"
    steps: int = 10
    inner: Inner = field(default_factory=Inner)


def test_precedence_defaults_files_overrides(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("steps: 20\ninner:\n  lr: 0.1\n")
    b.write_text("steps: 30\n")
    cfg = compose(Schema, [a, b], ["inner.lr=0.5"])
    assert (cfg.name, cfg.steps, cfg.inner.lr) == ("run", 30, 0.5)
    assert OmegaConf.is_readonly(cfg)


def test_unknown_keys_and_bad_types_are_named(tmp_path):
    with pytest.raises(ConfigError, match="inner.nope"):
        compose(Schema, overrides=["inner.nope=1"])
    with pytest.raises(ConfigError, match="steps"):
        compose(Schema, overrides=["steps=abc"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepz: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*stepz"):
        compose(Schema, [bad])
    with pytest.raises(ConfigError, match="key=value"):
        compose(Schema, overrides=["steps"])


def test_secrets_are_not_written():
    text = to_yaml(compose(Schema, overrides=["inner.api_key=sk-123"]))
    assert "sk-123" not in text and "<redacted>" in text
