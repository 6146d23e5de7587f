"""Experiment loggers: CSV, TensorBoard or W&B (offline without an API key); rank 0 writes."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["build_logger"]


def build_logger(cfg, out: Path):
    kind = cfg.logging.logger
    if kind in ("none", None, False):
        return False
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(out, name="logs")  # logs/version_N/metrics.csv, one folder per (re)start
    if kind == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(out, name="tensorboard")
    if kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        mode = cfg.logging.wandb_mode or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        return WandbLogger(project=cfg.logging.project, entity=cfg.logging.entity, name=cfg.logging.name,
                           group=cfg.logging.group, tags=list(cfg.logging.tags), save_dir=str(out),
                           offline=mode == "offline")
    from .config import ConfigError

    raise ConfigError(f"logging.logger must be csv, tensorboard, wandb or none, got {kind!r}")
