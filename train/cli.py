"""The ``brushtrain`` command (also ``python -m train``).

Each sub-command lives in its own module with ``add_arguments(parser)`` and
``run(args) -> int``; heavy libraries are imported inside ``run`` so that
``brushtrain --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# name -> (module, one-line help)
COMMANDS = {
    "fit": ("train.commands.fit", "train a BrushNet branch (default: the tiny CPU job, configs/tiny_cpu.yaml)"),
    "export": ("train.commands.export", "checkpoint (DDP or DeepSpeed ZeRO) -> branch folder in the reference layout"),
    "sample": ("train.commands.sample", "inpaint an image with a base model and a branch folder"),
    "evaluate": ("train.commands.evaluate", "generate a benchmark (BrushBench, a folder, shards) and score it: PSNR, LPIPS, CLIP, ..."),
    "demo": ("train.commands.demo", "inpaint a synthetic image with tiny models on CPU (no downloads)"),
    "data": ("data.cli", "BrushData shard tools: build, synth, validate, preview, bench, index"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brushtrain",
        description="BrushTrain: train and run BrushNet inpainting branches for Stable Diffusion (SD1.5, SDXL).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(name, help=help_text, description=module.__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("brushtrain")
    except PackageNotFoundError:  # run from a checkout that was not installed
        return "(not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["fit"]:
        # The process is `brushtrain fit`: before the heavy imports, so that a requeue/stop signal
        # during start-up is remembered (and acted on when training starts), not fatal.
        from train.engine.signals import install

        install()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also come after a later option (`fit -c a.yaml k=v -c b.yaml k2=v2`).
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from common.errors import UserError

    try:
        return int(args._run(args) or 0)
    except UserError as exc:  # bad input or environment: one message, no traceback
        if not exc.reported and not (exc.rank_zero_only and _rank() != 0):
            print(f"brushtrain {args.command}: {exc.prefix}{exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except (FileNotFoundError, FileExistsError) as exc:
        print(f"brushtrain {args.command}: {exc}", file=sys.stderr)
        return 2


def _rank() -> int:
    from launch.env import detect_launch

    return detect_launch().rank


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
