"""One config object per command: schema defaults < YAML files < ``key=value`` overrides.

Each command declares its schema as a dataclass; :func:`compose` merges the
layers with OmegaConf, rejects unknown keys and wrong types with one clear
message, and returns a read-only ``DictConfig`` that is passed down explicitly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Type

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from common.errors import UserError
from configs import resolve as resolve_config
from configs import shipped

__all__ = ["ConfigError", "UsageError", "compose", "to_yaml", "to_public_dict"]

# Config keys whose values must never be written to disk or logs.
SECRET_KEYS = ("api_key", "token", "password", "secret")


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be used; the message says which and why."""

    prefix = "config error: "


class UsageError(UserError, ValueError):
    """Command-line input that cannot be used (a file of the wrong size, ...); the message says why."""


def compose(schema: Type, files: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> DictConfig:
    merged = OmegaConf.structured(schema)
    for file in files:
        path = resolve_config(file)  # a path, or a shipped config by name (`-c sd15_segmentation`)
        if path.is_dir():
            raise ConfigError(f"config file {path} is a folder, not a YAML file")
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist (shipped configs: {', '.join(shipped())})")
        try:
            layer = OmegaConf.load(path)
        except (yaml.YAMLError, UnicodeDecodeError) as exc:  # not YAML at all: the parser's first line says where
            raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
        except OmegaConfBaseException as exc:
            raise ConfigError(f"{path}: {_describe(exc)}") from None
        if layer is None or not OmegaConf.is_dict(layer):  # a list or a plain value at the top
            raise ConfigError(f"{path} must hold a mapping of keys (e.g. 'trainer: {{max_steps: 10}}'), "
                              f"got a {'list' if OmegaConf.is_list(layer) else type(layer).__name__}")
        merged = _merge(merged, layer, str(path))
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got {bad}")
    problems = []
    for override in overrides:  # one at a time, so that every bad one is named in the same message
        try:
            layer = OmegaConf.from_dotlist([override])
        except yaml.YAMLError:  # the value is parsed as YAML: an unclosed [ or {, a lone ':' or '...'
            key, value = override.split("=", 1)
            if any(word in key.lower() for word in SECRET_KEYS):
                value = "<redacted>"  # never echo what may be a secret
            problems.append(f"{key}={value}: the value {value!r} is not valid YAML (values are read as YAML): close "
                            f"its brackets, or quote it, e.g. {key}='\"{value}\"'")
            continue
        except OmegaConfBaseException as exc:
            problems.append(f"{override}: {_describe(exc)}")
            continue
        try:
            merged = _merge(merged, layer, override)
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError(f"command-line override{'s' if len(problems) > 1 else ''} {'; '.join(problems)}")
    try:
        OmegaConf.resolve(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"command-line override: {_describe(exc)}") from None
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise ConfigError(f"required keys not set: {', '.join(missing)} (set them in a config file or as key=value)")
    OmegaConf.set_readonly(merged, True)
    return merged


def _merge(merged: DictConfig, layer: DictConfig, where: str) -> DictConfig:
    """``merged`` with ``layer`` over it, or a :class:`ConfigError` naming ``where`` and the key that cannot merge."""
    try:
        return OmegaConf.merge(merged, layer)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{where}: {_describe(exc)}") from None
    except TypeError:  # OmegaConf: a mapping where the schema holds a list, or a list where it holds a mapping
        raise ConfigError(f"{where}: {_container_clash(merged, layer)}") from None


def _container_clash(merged, layer, prefix: str = "") -> str:
    """Which key of ``layer`` is a mapping/list where ``merged`` has the other kind."""
    for key in layer.keys():
        new, old = layer._get_node(key), merged._get_node(key) if key in merged else None
        full = f"{prefix}{key}"
        if OmegaConf.is_dict(new) and OmegaConf.is_dict(old):
            found = _container_clash(old, new, full + ".")
            if found:
                return found
        elif old is not None and OmegaConf.is_config(new) and OmegaConf.is_config(old) \
                and OmegaConf.is_dict(new) != OmegaConf.is_dict(old):
            kind = lambda n: "a mapping" if OmegaConf.is_dict(n) else "a list"  # noqa: E731
            return f"key {full!r}: got {kind(new)}, expected {kind(old)}"
    return "a mapping and a list cannot be merged"


def _describe(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None)
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"key {key!r}: {first}" if key else first


def to_public_dict(cfg: DictConfig) -> dict:
    """The resolved config as plain data, values of secret-looking keys replaced by "<redacted>"."""

    def scrub(node):
        if isinstance(node, dict):
            return {k: ("<redacted>" if any(s in str(k).lower() for s in SECRET_KEYS) and v else scrub(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [scrub(v) for v in node]
        return node

    return scrub(OmegaConf.to_container(cfg, resolve=True))


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML with secret-looking values removed."""
    return OmegaConf.to_yaml(OmegaConf.create(to_public_dict(cfg)))
