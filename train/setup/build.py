"""What ``brushtrain fit`` builds from a checked config: the shard lists (resolved once), the data config,
the base and branch, the Lightning module, the callbacks in the order they must run, and the Trainer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from train.setup.prepare import base_path

__all__ = ["Shards", "resolve_shards", "data_config", "build_models", "build_module", "build_trainer"]


@dataclass(frozen=True)
class Shards:
    """Every shard list of a run, as lists of specs; the synthetic folders stand in where ``synth.enabled``."""

    train: list[str]
    eval: list[str]
    samples: list[str]


def resolve_shards(cfg) -> Shards:
    from data.shards import shard_specs

    synth = cfg.synth.enabled
    return Shards(train=shard_specs(cfg.data.shards) or ([cfg.synth.train_dir] if synth else []),
                  eval=shard_specs(cfg.eval.shards) or ([cfg.synth.eval_dir] if synth else []),
                  samples=shard_specs(cfg.samples.shards))


def data_config(cfg, shards: Shards):
    from omegaconf import OmegaConf

    from data.brushdata import DataConfig, MaskConfig

    data = OmegaConf.to_container(cfg.data, resolve=True)
    mask = MaskConfig(**data.pop("mask"))
    data["shards"] = shards.train
    return DataConfig(mask=mask, **data)


def build_models(cfg):
    """(frozen base, branch): the branch from ``model.brushnet`` or copied from the base's UNet."""
    from train.model.brushnet import BrushNetModel, check_fits
    from train.model.components import load_base

    base = load_base(base_path(cfg), vae=cfg.model.vae, **({"revision": cfg.model.revision} if cfg.model.revision else {}))
    if not cfg.model.brushnet:
        return base, BrushNetModel.from_unet(base.unet)
    branch = BrushNetModel.from_pretrained(cfg.model.brushnet)
    # validation checked local folders already; a hub branch is known only now
    check_fits(branch.config, base.unet.config, f"model.brushnet {cfg.model.brushnet}", f"model.base {cfg.model.base}")
    return base, branch


def build_module(cfg, base, branch):
    from train.engine.module import BrushNetModule

    return BrushNetModule(
        base, branch, cfg.model, cfg.optim, cfg.ema, max_steps=cfg.trainer.max_steps, seed=cfg.trainer.seed,
        deepspeed_cfg=cfg.deepspeed, accumulate_grad_batches=cfg.trainer.accumulate_grad_batches,
        freeze_conv_in_bias=cfg.model.tie_conv_in_bias and not cfg.model.brushnet,
        diagnostics_every=cfg.trainer.log_every_n_steps if cfg.metrics.diagnostics else 0,
        record_keys_to=str(Path(cfg.output_dir) / "consumed") if cfg.debug.record_keys else None,
    )


def build_callbacks(cfg, base, branch, data_cfg, shards: Shards, io):
    """(callbacks, preemption handler): checkpoints, preemption, held-out eval, export, metrics, progress and
    samples, in the order they must run."""
    from omegaconf import OmegaConf

    from train.callbacks.evaluation import DenoisingEval
    from train.callbacks.export_on_end import ExportOnEnd
    from train.callbacks.metrics import TrainingMetrics
    from train.callbacks.progress import StepProgress
    from train.callbacks.samples import SampleGrids
    from train.engine.checkpointing import StepCheckpoint
    from train.engine.preemption import PreemptionHandler
    from train.engine.signals import SIGNALS
    from train.model.flops import training_flops_per_sample

    out = Path(cfg.output_dir)
    checkpoint = StepCheckpoint(out / "checkpoints", cfg.checkpoint.every_n_steps, cfg.checkpoint.keep_last,
                                branch.plain_config(), io=io, save_on_end=cfg.checkpoint.save_on_end)
    # Checkpoint first (on_train_end saves before eval and export read it), then the preemption check.
    preemption = PreemptionHandler(checkpoint, SIGNALS, requeue=cfg.trainer.requeue_on_signal)
    callbacks = [checkpoint, preemption]
    if shards.eval:
        callbacks.append(DenoisingEval(OmegaConf.merge(cfg.eval, {"shards": shards.eval}), data_cfg, out / "eval.json",
                                       preemption=preemption))
        if cfg.eval.metrics:  # the inpainting metrics of `brushtrain evaluate`, on the same held-out set
            from train.callbacks.metric_eval import InpaintMetricsEval

            callbacks.append(InpaintMetricsEval(cfg.eval, data_cfg, shards.eval, out / "eval_metrics.json",
                                                preemption=preemption))
    if cfg.checkpoint.export_on_end:
        callbacks.append(ExportOnEnd(checkpoint, out, ema=cfg.ema.enabled, preemption=preemption))
    every = cfg.trainer.log_every_n_steps
    flops = training_flops_per_sample(base, branch, cfg.data.resolution)["total"]
    metrics = TrainingMetrics(every, flops_per_sample=flops, peak_override=cfg.metrics.peak_tflops)
    callbacks += [metrics, StepProgress(cfg.trainer.max_steps, every, bar=cfg.trainer.progress_bar, metrics=metrics)]
    if cfg.samples.enabled:
        callbacks.append(SampleGrids(OmegaConf.merge(cfg.samples, {"shards": shards.samples}), out / "samples",
                                     data_cfg=data_cfg, preemption=preemption))
    # Metrics time the training step before the other callbacks run, and everything else up to here.
    return [metrics] + [c for c in callbacks if c is not metrics] + [metrics.end_marker()], preemption


def build_trainer(cfg, launch, base, branch, data_cfg, shards: Shards):
    """(Trainer, preemption handler) for the run, with its strategy, loggers, callbacks and plugins."""
    import lightning as L

    from train.callbacks.loggers import build_loggers
    from train.config import to_public_dict
    from train.engine.checkpointing import GuardedCheckpointIO
    from train.engine.strategy import build_strategy
    from train.setup.runtime import devices

    out = Path(cfg.output_dir)
    accelerator, n_devices, n_local = devices(cfg)
    strategy = build_strategy(cfg, "cpu" if accelerator == "cpu" else "gpu", n_local * cfg.trainer.num_nodes)
    io = GuardedCheckpointIO()  # a write error while checkpointing reaches every rank (StepCheckpoint)
    plugins = [io]
    if launch.launcher == "slurm":
        from lightning.pytorch.plugins.environments import SLURMEnvironment

        plugins.append(SLURMEnvironment(auto_requeue=False))  # our handler saves collectively, then requeues
    callbacks, preemption = build_callbacks(cfg, base, branch, data_cfg, shards, io)
    trainer = L.Trainer(
        accelerator=accelerator, devices=n_devices, num_nodes=cfg.trainer.num_nodes, strategy=strategy,
        precision=cfg.trainer.precision, max_steps=cfg.trainer.max_steps, max_epochs=-1,
        logger=build_loggers(cfg, out, to_public_dict(cfg), launch.is_rank_zero) or False,
        callbacks=callbacks, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=cfg.trainer.log_every_n_steps,
        default_root_dir=out, num_sanity_val_steps=0, limit_val_batches=0, plugins=plugins,
        benchmark=cfg.trainer.benchmark,
    )
    return trainer, preemption
