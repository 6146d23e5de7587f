"""Train a BrushNet branch.

  brushtrain fit                                       # the default job: configs/tiny_cpu.yaml
  brushtrain fit -c configs/sd15_segmentation.yaml trainer.devices=8 data.batch_size=4
  brushtrain fit -c configs/sd15_segmentation.yaml -c configs/deepspeed/zero2.yaml resume=auto
  brushtrain fit -c configs/sdxl_random.yaml --print-config        # what a run will use, then exit

Config files are merged in order over the defaults (train/schema.py), then
``key=value`` overrides; launchers (torchrun, fabric run, srun) set
trainer.devices / num_nodes to the processes they started. The resolved config
is written to <output_dir>/config.yaml, checkpoints to <output_dir>/checkpoints,
the final branch to <output_dir>/brushnet (reference layout).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from .config import compose, to_public_dict, to_yaml
from .validation import generated as _generated

__all__ = ["add_arguments", "run", "load_fit_config", "DEFAULT_CONFIG"]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "tiny_cpu.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", action="append", default=[], metavar="YAML",
                        help=f"config file(s), merged in order (default: {DEFAULT_CONFIG.relative_to(CONFIG_DIR.parent)})")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, applied last")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (files, overrides and launcher settings; secrets redacted) "
                             "as YAML and exit")


def _config_path(name: str) -> Path:
    path = Path(name)
    if not path.exists() and not path.suffix and (CONFIG_DIR / f"{name}.yaml").is_file():
        return CONFIG_DIR / f"{name}.yaml"  # `-c tiny_cpu` works too
    return path


def load_fit_config(files, overrides, launch=None):
    from launch.env import detect_launch

    from .schema import FitConfig

    launch = launch or detect_launch()
    files = [_config_path(f) for f in files] or [DEFAULT_CONFIG]
    forced = [f"trainer.{k}={v}" for k, v in launch.trainer_overrides.items()]
    cfg = compose(FitConfig, files, list(overrides) + forced)
    return cfg, launch


def _wait_for(path: Path, what: str, timeout: float = 1800) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if time.time() > deadline:
            raise TimeoutError(f"waited {timeout:.0f}s for rank 0 to write {what} ({path})")
        time.sleep(1)


def _prepare_files(cfg, launch) -> None:
    """Rank 0 writes synthetic shards / generated models if asked and missing; the others wait for them."""
    from data.synth import write_synthetic_shards

    from .tiny import write_generated_base

    jobs = []
    if cfg.synth.enabled:
        s = cfg.synth
        for folder, n, seed in ((s.train_dir, s.train_samples, s.seed), (s.eval_dir, s.eval_samples, s.seed + 1)):
            if n > 0:
                jobs.append((Path(folder), lambda folder=folder, n=n, seed=seed: _synth_atomic(
                    write_synthetic_shards, Path(folder), n, s.per_shard, seed, s.min_size, s.max_size)))
    if _generated(cfg.model.base):
        path = _generated_path(cfg)
        jobs.append((path / "model_index.json", lambda: write_generated_base(path, cfg.model.base, seed=cfg.trainer.seed)))
    for marker, job in jobs:
        if marker.exists():
            continue
        if launch.is_rank_zero:
            job()
        else:
            _wait_for(marker, "prepared files")


def _synth_atomic(write, folder: Path, n, per_shard, seed, min_size, max_size) -> None:
    from data.writer import atomic_directory

    if folder.exists() and any(folder.glob("*.tar")):
        return
    with atomic_directory(folder) as tmp:
        write(tmp, n, per_shard, seed, min_size, max_size)
    print(f"wrote {n} synthetic records to {folder}", flush=True)


def _finished_step(checkpoint: Path | None) -> int | None:
    """The step a checkpoint of ours was taken at (from its meta.json), if known."""
    import json

    if checkpoint is None:
        return None
    meta = (checkpoint if checkpoint.is_dir() else checkpoint.parent) / "meta.json"
    return int(json.loads(meta.read_text())["step"]) if meta.is_file() else None


def _generated_path(cfg) -> Path:
    """Where tiny:<kind> / random:<kind> bases are written: <output_dir>/base-<tiny|random>-<kind>."""
    return Path(cfg.output_dir) / f"base-{cfg.model.base.replace(':', '-')}"


def _data_config(cfg):
    from omegaconf import OmegaConf

    from data.brushdata import DataConfig, MaskConfig
    from data.shards import shard_specs

    data = OmegaConf.to_container(cfg.data, resolve=True)
    mask = MaskConfig(**data.pop("mask"))
    data["shards"] = shard_specs(data["shards"]) or ([cfg.synth.train_dir] if cfg.synth.enabled else [])
    return DataConfig(mask=mask, **data)


def _quiet_libraries() -> None:
    """Keep the run's output to what matters: drop known-harmless library chatter."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")  # ours is, via the datamodule
    warnings.filterwarnings("ignore", message=".*IterableDataset. has .__len__. defined.*")  # exact by design
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda r: "litlogger" not in r.getMessage())
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed would warn that it fell back to the CPU
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()


def run(args: argparse.Namespace) -> int:
    from .checkpointing import resolve_resume
    from .validation import validate

    cfg, launch = load_fit_config(args.config, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    _quiet_libraries()
    validate(cfg, launch)  # every setting, before any model, file or logger
    say = (lambda m: print(f"brushtrain fit: {m}", flush=True)) if launch.is_rank_zero else (lambda m: None)
    resume = resolve_resume(cfg.resume, cfg.output_dir, say)  # verified; damaged checkpoints are skipped
    done = _finished_step(resume)
    if done is not None and done >= cfg.trainer.max_steps:
        return _already_done(cfg, launch, resume, done)
    _prepare_files(cfg, launch)
    return train(cfg, launch, resume)


def _already_done(cfg, launch, resume: Path, done: int) -> int:
    """The newest checkpoint is at (or past) max_steps: finish an export a signal cut short, else nothing to do."""
    from .checkpointing import export_final

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
          f"nothing to do. Raise trainer.max_steps to train on; the branch is in {out / 'brushnet'}", flush=True)
    return 0


def _callbacks(cfg, out: Path, base, branch, data_cfg, io) -> list:
    """Checkpoints, held-out eval, export, metrics, progress and samples, in the order they must run."""
    from data.shards import shard_specs

    from .checkpointing import ExportOnEnd, StepCheckpoint
    from .evaluation import DenoisingEval
    from .flops import training_flops_per_sample
    from .metrics import TrainingMetrics
    from .progress import StepProgress
    from .samples import SampleGrids

    checkpoint = StepCheckpoint(out / "checkpoints", cfg.checkpoint.every_n_steps, cfg.checkpoint.keep_last,
                                branch.plain_config(), io=io, save_on_end=cfg.checkpoint.save_on_end)
    from .preemption import PreemptionHandler
    from .signals import SIGNALS

    # Checkpoint first (on_train_end saves before eval and export read it), then the preemption check.
    preemption = PreemptionHandler(checkpoint, SIGNALS, requeue=cfg.trainer.requeue_on_signal)
    callbacks = [checkpoint, preemption]
    eval_shards = shard_specs(cfg.eval.shards) or ([cfg.synth.eval_dir] if cfg.synth.enabled else [])
    if eval_shards:
        from omegaconf import OmegaConf

        callbacks.append(DenoisingEval(OmegaConf.merge(cfg.eval, {"shards": eval_shards}), data_cfg, out / "eval.json",
                                       preemption=preemption))
        if cfg.eval.get("metrics"):  # the inpainting metrics of `brushtrain evaluate` (train/metric_eval.py)
            from .metric_eval import InpaintMetricsEval

            callbacks.append(InpaintMetricsEval(cfg.eval, data_cfg, eval_shards, out / "eval_metrics.json",
                                                preemption=preemption))
    if cfg.checkpoint.export_on_end:
        callbacks.append(ExportOnEnd(checkpoint, out, ema=cfg.ema.enabled, preemption=preemption))
    every = cfg.trainer.log_every_n_steps
    flops = training_flops_per_sample(base, branch, cfg.data.resolution)["total"]
    metrics = TrainingMetrics(every, flops_per_sample=flops, peak_override=cfg.metrics.peak_tflops)
    callbacks += [metrics, StepProgress(cfg.trainer.max_steps, every, bar=cfg.trainer.progress_bar, metrics=metrics)]
    if cfg.samples.enabled:
        callbacks.append(SampleGrids(cfg.samples, out / "samples", data_cfg=data_cfg))
    # Metrics time the training step before the other callbacks run, and everything else up to here.
    return [metrics] + [c for c in callbacks if c is not metrics] + [metrics.end_marker()]


def _devices(cfg) -> tuple[str, object, int]:
    """(accelerator, devices, processes on this node); CPU processes get an equal share of the cores."""
    import torch

    accelerator = cfg.trainer.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    devices = cfg.trainer.devices
    n_local = (torch.cuda.device_count() if accelerator == "gpu" else 1) if devices == "auto" else int(devices)
    if accelerator == "cpu":
        # Oversubscribed OpenMP threads spin and crawl: at most an equal share of the cores per local
        # process (`fabric run` sets OMP_NUM_THREADS to all cores in every process), and no more than
        # OMP_NUM_THREADS when that is set (slurm/env.sh sets it to the task's CPUs).
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // max(1, n_local))
        if os.environ.get("OMP_NUM_THREADS", "").isdigit():
            threads = max(1, min(threads, int(os.environ["OMP_NUM_THREADS"])))
        torch.set_num_threads(threads)
    return accelerator, devices, n_local


def train(cfg, launch, resume: Path | None = None, datamodule=None) -> int:
    """Build the models and the Trainer and fit, from ``resume`` (a verified checkpoint) if given;
    ``datamodule`` replaces the shard stream (benchmarks/overhead.py feeds fixed batches)."""
    import lightning as L

    from data.datamodule import BrushDataModule

    from .brushnet import BrushNetModel
    from .checkpointing import GuardedCheckpointIO
    from .components import load_base
    from .loggers import build_loggers
    from .module import BrushNetModule
    from .strategy import build_strategy

    out = Path(cfg.output_dir)
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    base_path = _generated_path(cfg) if _generated(cfg.model.base) else cfg.model.base
    base = load_base(base_path, vae=cfg.model.vae, **({"revision": cfg.model.revision} if cfg.model.revision else {}))
    branch = BrushNetModel.from_pretrained(cfg.model.brushnet) if cfg.model.brushnet else BrushNetModel.from_unet(base.unet)

    accelerator, devices, n_local = _devices(cfg)
    strategy = build_strategy(cfg, "cpu" if accelerator == "cpu" else "gpu", n_local * cfg.trainer.num_nodes)
    module = BrushNetModule(
        base, branch, cfg.model, cfg.optim, cfg.ema, max_steps=cfg.trainer.max_steps, seed=cfg.trainer.seed,
        deepspeed_cfg=cfg.deepspeed, accumulate_grad_batches=cfg.trainer.accumulate_grad_batches,
        freeze_conv_in_bias=cfg.model.tie_conv_in_bias and not cfg.model.brushnet,
        diagnostics_every=cfg.trainer.log_every_n_steps if cfg.metrics.diagnostics else 0,
        record_keys_to=str(out / "consumed") if cfg.debug.record_keys else None,
    )
    data_cfg = _data_config(cfg)
    io = GuardedCheckpointIO()  # a write error while checkpointing reaches every rank (StepCheckpoint)
    plugins = [io]
    if launch.launcher == "slurm":
        from lightning.pytorch.plugins.environments import SLURMEnvironment

        plugins.append(SLURMEnvironment(auto_requeue=False))  # our handler saves collectively, then requeues
    trainer = L.Trainer(
        accelerator=accelerator, devices=devices, num_nodes=cfg.trainer.num_nodes, strategy=strategy,
        precision=cfg.trainer.precision, max_steps=cfg.trainer.max_steps, max_epochs=-1,
        logger=build_loggers(cfg, out, to_public_dict(cfg), launch.is_rank_zero) or False,
        callbacks=_callbacks(cfg, out, base, branch, data_cfg, io), enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=cfg.trainer.log_every_n_steps,
        default_root_dir=out, num_sanity_val_steps=0, limit_val_batches=0, plugins=plugins,
    )
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(to_yaml(cfg))
        where = f"resuming from {resume}" if resume else "starting fresh"
        print(f"brushtrain fit: {where}; output in {out} ({launch.launcher} launch, {trainer.world_size} process(es))",
              flush=True)
    trainer.fit(module, datamodule=datamodule or BrushDataModule(data_cfg), ckpt_path=str(resume) if resume else None,
                weights_only=True)
    if trainer.is_global_zero:
        state = "stopped on a signal" if module.preempted else "finished"
        print(f"brushtrain fit: {state} at step {trainer.global_step}", flush=True)
    return 0
