"""Checkpoint -> a branch folder in the reference layout (config.json + safetensors).

Works on our step checkpoints from DDP / single-process runs (Lightning's
``model.ckpt``, read with ``weights_only=True``) and from DeepSpeed ZeRO-2/3
runs (shards consolidated to fp32 with DeepSpeed's own ``zero_to_fp32``), and
on a run folder or its ``checkpoints/`` (the newest intact checkpoint) or ``checkpoints/latest`` (the one it
names). The checkpoint is verified
against its manifest first (``train/engine/integrity.py``); a damaged one is refused
with the reason. ``--ema`` exports the EMA weights. The output folder must be new,
empty or an earlier export (which is replaced): anything else is refused, never deleted.
"""

from __future__ import annotations

__all__ = ["add_arguments", "run"]


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="a step checkpoint folder, a .ckpt file, a DeepSpeed folder, a run's output_dir "
                                              "or its checkpoints/ (the newest intact), or checkpoints/latest")
    parser.add_argument("out_dir", help="the branch folder to write (config.json + diffusion_pytorch_model.safetensors): "
                                        "a new or empty folder, or an earlier export, which is replaced")
    parser.add_argument("--ema", action="store_true", help="export the EMA weights")


def run(args) -> int:
    from pathlib import Path

    from train.engine.export import export_branch

    replaced = Path(args.out_dir).is_dir() and any(Path(args.out_dir).iterdir())
    out = export_branch(args.checkpoint, args.out_dir, ema=args.ema)
    print(f"{'replaced the earlier export in' if replaced else 'wrote'} {out} "
          f"(reference BrushNet layout{', EMA weights' if args.ema else ''})")
    return 0
