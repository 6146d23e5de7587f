"""Train a BrushNet branch.

  brushtrain fit                                       # the default job: configs/tiny_cpu.yaml
  brushtrain fit -c configs/sd15_segmentation.yaml trainer.devices=8 data.batch_size=4
  brushtrain fit -c configs/sd15_segmentation.yaml -c configs/deepspeed/zero2.yaml resume=auto
  brushtrain fit -c configs/sdxl_random.yaml --print-config        # what a run will use, then exit

Config files (paths, or shipped configs by name: ``-c sd15_segmentation``) are merged in order over
the defaults (train/schema.py), then
``key=value`` overrides; launchers (torchrun, fabric run, srun) set
trainer.devices / num_nodes to the processes they started. The resolved config
is written to <output_dir>/config.yaml, checkpoints to <output_dir>/checkpoints,
the final branch to <output_dir>/brushnet (reference layout).

Every key with its default and meaning: the README's "Every brushtrain fit key"
(and train/schema.py); the values a run would use: --print-config.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from configs import DEFAULT
from train.config import compose, to_yaml

__all__ = ["add_arguments", "run", "train", "load_fit_config", "DEFAULT_CONFIG"]

DEFAULT_CONFIG = DEFAULT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", action="append", default=[], metavar="YAML",
                        help="config file(s) or shipped config names (sd15_segmentation, deepspeed/zero2, ...), merged "
                             "in order (default: tiny_cpu)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, applied last")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (files, overrides and launcher settings; secrets redacted) "
                             "as YAML and exit; keys and types are checked, values only when a run starts")


def load_fit_config(files, overrides, launch=None):
    """(config, launch): the files over the defaults, the overrides, then what the launcher decides."""
    from launch.env import detect_launch
    from train.schema import FitConfig

    launch = launch or detect_launch()
    forced = [f"trainer.{k}={v}" for k, v in launch.trainer_overrides.items()]
    return compose(FitConfig, list(files) or [DEFAULT_CONFIG], list(overrides) + forced), launch


def run(args: argparse.Namespace) -> int:
    from train.engine.checkpointing import resolve_resume
    from train.setup.prepare import finished_step, prepare_files
    from train.setup.runtime import quiet_libraries
    from train.setup.validation import validate

    cfg, launch = load_fit_config(args.config, args.overrides)  # 1. the config
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    quiet_libraries()
    validate(cfg, launch)  # 2. every setting, before any model, file or logger
    say = (lambda m: print(f"brushtrain fit: {m}", flush=True)) if launch.is_rank_zero else (lambda m: None)
    resume = resolve_resume(cfg.resume, cfg.output_dir, say)  # verified; damaged checkpoints are skipped
    done = finished_step(resume)
    if done is not None and done >= cfg.trainer.max_steps:
        return _already_done(cfg, launch, resume, done)
    prepare_files(cfg, launch)  # 3. synthetic shards, generated bases (rank 0; the others wait)
    return train(cfg, launch, resume)  # 4. build and 5. fit


def train(cfg, launch, resume: Path | None = None, datamodule=None) -> int:
    """Build the models and the Trainer and fit, from ``resume`` (a verified checkpoint) if given;
    ``datamodule`` replaces the shard stream (benchmarks/overhead.py feeds fixed batches)."""
    import lightning as L

    from data.datamodule import BrushDataModule
    from train.setup.build import (
        build_models,
        build_module,
        build_trainer,
        data_config,
        resolve_shards,
    )

    out = Path(cfg.output_dir)
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    base, branch = build_models(cfg)
    module = build_module(cfg, base, branch)
    shards = resolve_shards(cfg)
    data_cfg = data_config(cfg, shards)
    trainer, preemption = build_trainer(cfg, launch, base, branch, data_cfg, shards)
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(to_yaml(cfg))
        where = f"resuming from {resume}" if resume else "starting fresh"
        how = "no launcher" if launch.launcher == "none" else f"{launch.launcher} launch"
        print(f"brushtrain fit: {where}; output in {out} ({how}, {trainer.world_size} process(es))",
              flush=True)
    trainer.fit(module, datamodule=datamodule or BrushDataModule(data_cfg), ckpt_path=str(resume) if resume else None,
                weights_only=True)
    if trainer.is_global_zero:
        state = "stopped on a signal" if preemption.preempted else "finished"
        print(f"brushtrain fit: {state} at step {trainer.global_step}", flush=True)
    return 0


def _already_done(cfg, launch, resume: Path, done: int) -> int:
    """The newest checkpoint is at (or past) max_steps: finish an export a signal cut short, else nothing to do."""
    from train.engine.export import export_final

    out = Path(cfg.output_dir)
    if not launch.is_rank_zero:
        return 0
    folder = resume if resume.is_dir() else resume.parent
    exported = out / "brushnet" / "config.json"
    if cfg.checkpoint.export_on_end and (
            not exported.is_file() or exported.stat().st_mtime < (folder / "meta.json").stat().st_mtime):
        print(f"brushtrain fit: {out} reached step {done}; exporting {folder.name} (its export had not been written)",
              flush=True)
        export_final(folder, out, ema=cfg.ema.enabled)
        return 0
    print(f"brushtrain fit: {out} already reached step {done} (trainer.max_steps={cfg.trainer.max_steps}); "
          f"nothing to do. Raise trainer.max_steps to train on (a cosine schedule then stretches over the new "
          f"max_steps; the run says how the rate changes); the branch is in {out / 'brushnet'}", flush=True)
    return 0
