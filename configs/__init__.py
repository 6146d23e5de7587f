"""The shipped configs, as package data: the recipes, DeepSpeed settings, the default CPU job and the
architecture files of the generated bases (``random:sd15``, ``tiny:sd15`` & co.).

``resolve("sd15_segmentation")``, ``resolve("deepspeed/zero2.yaml")`` or ``resolve("configs/tiny_cpu.yaml")``
find a shipped file from any working directory; a path that exists is used as given.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CONFIG_DIR", "ARCHITECTURES", "DEFAULT", "resolve", "shipped"]

CONFIG_DIR = Path(__file__).resolve().parent
ARCHITECTURES = CONFIG_DIR / "architectures"
DEFAULT = CONFIG_DIR / "tiny_cpu.yaml"


def shipped() -> list[str]:
    """The shipped YAML configs by name (``deepspeed/zero2`` for the nested ones)."""
    return sorted(str(p.relative_to(CONFIG_DIR).with_suffix("")) for p in CONFIG_DIR.rglob("*.yaml"))


def resolve(name: str | Path) -> Path:
    """``name`` if it exists, else the shipped config it names (with or without ``configs/`` and ``.yaml``);
    a name that is neither comes back unchanged, for the caller to report."""
    path = Path(name)
    if path.exists():
        return path
    relative = Path(*path.parts[1:]) if path.parts[:1] == ("configs",) else path
    for candidate in (CONFIG_DIR / relative, CONFIG_DIR / relative.with_name(relative.name + ".yaml")):
        if not path.is_absolute() and candidate.is_file():
            return candidate
    return path
