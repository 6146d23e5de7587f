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


@dataclass
class WithList:
    shards: list = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)


def test_files_that_are_not_a_yaml_mapping_are_named(tmp_path):
    cases = {
        "broken.yaml": ("steps: [1\n", r"broken\.yaml is not valid YAML: .*line"),
        "list.yaml": ("- 1\n- 2\n", r"list\.yaml must hold a mapping of keys .*got a list"),
        "binary.yaml": (None, r"binary\.yaml is not valid YAML"),
        "clash.yaml": ("shards: {a: 1}\n", r"clash\.yaml: key 'shards': got a mapping, expected a list"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff" if text is None else text.encode())
        with pytest.raises(ConfigError, match=message):
            compose(WithList, [path])
    with pytest.raises(ConfigError, match="is a folder, not a YAML file"):
        compose(WithList, [tmp_path])
    with pytest.raises(ConfigError, match=r"shards=\{a: 1\}: key 'shards': got a mapping, expected a list"):
        compose(WithList, overrides=["shards={a: 1}"])


def test_override_values_that_are_not_yaml_are_named_with_a_fix():
    """`data.shards=...` (the README's placeholder typed as written) or an unclosed bracket: a YAML ParserError
    traceback from OmegaConf.from_dotlist, where every other bad override was one message."""
    with pytest.raises(ConfigError) as info:
        compose(Schema, overrides=["inner.api_key=[a", "name=...", "steps=3"])
    text = str(info.value)
    assert text.startswith("command-line overrides inner.api_key=<redacted>: the value '<redacted>' is not valid YAML "
                           "(values are read as YAML): close its brackets, or quote it, e.g. inner.api_key='\"<redacted>\"'; "
                           "name=...: the value '...' is not valid YAML"), text
    assert "[a" not in text, "a secret-looking key's value is not echoed"
    assert compose(Schema, overrides=["name=\"...\""]).name == "..."
