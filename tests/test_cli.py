"""The command line as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from train.cli import main


def test_help_lists_the_commands():
    script = Path(sys.executable).parent / "brushtrain"  # the installed console script
    for cmd in ([str(script), "--help"], [sys.executable, "-m", "train", "--help"]):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        assert "demo" in out and "BrushNet" in out


def test_demo_writes_an_inpainted_image(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    assert main(["demo", f"out_dir={out_dir}", "steps=2", "size=64"]) == 0
    result = np.asarray(Image.open(out_dir / "inpainted.png"))
    image = np.asarray(Image.open(out_dir / "input.png"))
    mask = np.asarray(Image.open(out_dir / "mask.png"))
    assert result.shape == image.shape == (64, 64, 3)
    assert Image.open(out_dir / "grid.png").size == (4 * 64, 64)
    assert (out_dir / "brushnet-sd15" / "config.json").is_file()
    assert (out_dir / "tiny-sd15" / "model_index.json").is_file()
    assert not np.array_equal(result[mask > 127], image[mask > 127])
    assert "changed by at most 0" in capsys.readouterr().out


def test_demo_rejects_bad_config(tmp_path, capsys):
    assert main(["demo", f"out_dir={tmp_path}", "nosuchkey=1"]) == 2
    err = capsys.readouterr().err
    assert "nosuchkey" in err and "config error" in err
    assert main(["demo", f"out_dir={tmp_path}", "steps=many"]) == 2
    assert "steps" in capsys.readouterr().err
    assert main(["demo", "-c", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_demo_refuses_out_of_range_values_in_one_message(tmp_path, capsys):
    """steps=0 ran with no step, steps=-1 / size=4 / scheduler=nosuch were tracebacks."""
    assert main(["demo", f"out_dir={tmp_path}", "steps=-1", "size=4", "scheduler=nosuch", "conditioning_scale=-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("brushtrain demo: config error: size must be >= 8 (the VAE's factor), got 4; steps must be "
                          ">= 1, got -1; conditioning_scale must be >= 0 (0 = branch off), got -1.0; scheduler: unknown "
                          "scheduler 'nosuch'")
    assert "Traceback" not in err and not any(tmp_path.iterdir())


def test_overrides_may_follow_a_later_config_option(tmp_path, capsys, monkeypatch):
    import train.commands.fit as fit_module

    seen = {}
    monkeypatch.setattr(fit_module, "run", lambda args: seen.update(config=args.config, overrides=args.overrides))
    assert main(["fit", "-c", "a.yaml", "resume=auto", "-c", "b.yaml", "x=1"]) == 0
    assert seen == {"config": ["a.yaml", "b.yaml"], "overrides": ["resume=auto", "x=1"]}


README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
# Where the README describes each command's flags (up to the next top-level heading).
README_SECTIONS = {"fit": "## Training", "export": "## Training", "evaluate": "## Evaluate", "data": "## Data",
                   "sample": "**`brushtrain sample`**", "demo": "`brushtrain demo`"}


def _readme_section(command: str | None) -> str:
    if command is None:
        return README
    start = README.index(README_SECTIONS[command])
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def _flags(parser, path=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _flags(sub, (*path, name))
        elif action.option_strings and "-h" not in action.option_strings:
            yield path, action.option_strings


def test_every_flag_is_described_in_its_readme_section():
    from train.cli import build_parser

    missing = [f"{' '.join(path) or 'brushtrain'} {'/'.join(options)}" for path, options in _flags(build_parser())
               if not any(o in _readme_section(path[0] if path else None) for o in options)]
    assert missing == [], "flags the README does not describe where their command is"


def test_every_config_key_is_in_the_readme():
    from omegaconf import OmegaConf

    from train.commands.demo import DemoConfig
    from train.schema import FitConfig

    def leaves(node, prefix=""):
        for key in node.keys():
            child = node._get_node(key)
            yield from leaves(child, f"{prefix}{key}.") if OmegaConf.is_dict(child) else [f"{prefix}{key}"]

    def documented(key: str) -> bool:  # by full name, or as a leaf of a group with its own table (`data.mask.*`)
        parent, _, leaf = key.rpartition(".")
        return f"`{key}`" in README or (f"`{parent}.*`" in README and f"`{leaf}`" in README)

    assert [k for k in leaves(OmegaConf.structured(FitConfig)) if not documented(k)] == []
    demo = _readme_section("demo")
    assert [k for k in leaves(OmegaConf.structured(DemoConfig)) if f"`{k}`" not in demo] == []


def test_version(capsys):
    import pytest
    from importlib.metadata import version

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out == f"brushtrain {version('brushtrain')}\n"


def test_every_flag_of_every_command_says_what_it_does():
    """`brushtrain data bench --help` listed --samples, --batch-size and the shards with no word on them."""
    import argparse

    from train.cli import build_parser

    silent = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                silent.append(" ".join([*path, *(action.option_strings or [action.dest])]))

    walk(build_parser(), ["brushtrain"])
    assert not silent, silent
