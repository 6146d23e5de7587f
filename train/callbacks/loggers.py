"""Experiment loggers: W&B (offline unless logged in), TensorBoard or CSV, plus a local CSV always.

W&B: project, entity, run name, group and tags come from ``logging.*``; the
resolved config (secrets redacted) is the run's config; the run id is kept in
``<output_dir>/wandb_run_id`` so a resumed or requeued job continues the same
run. Without an API key (``WANDB_API_KEY`` or a ``wandb login``) the run is
written offline under ``<output_dir>/wandb`` and can be uploaded later with
``wandb sync <output_dir>/wandb/offline-run-*``. Loggers write on rank 0 only.
"""

from __future__ import annotations

import netrc
import os
import secrets
import string
from pathlib import Path

__all__ = ["build_loggers", "wandb_logged_in", "wandb_run_id"]


def wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators(os.environ.get("WANDB_BASE_URL", "api.wandb.ai").split("//")[-1])
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


def wandb_run_id(out: Path, write: bool) -> str:
    """The run id of this output folder (created by rank 0 on the first start)."""
    path = out / "wandb_run_id"
    if path.is_file():
        return path.read_text().strip()
    alphabet = string.ascii_lowercase + string.digits
    run_id = "".join(secrets.choice(alphabet) for _ in range(8))  # W&B's id format
    if write:
        out.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(run_id + "\n")
        os.replace(tmp, path)
    return run_id


def build_loggers(cfg, out: Path, public_config: dict, is_rank_zero: bool) -> list:
    from lightning.pytorch.loggers import CSVLogger

    kind = cfg.logging.logger
    if kind in ("none", None, False):
        return []
    # logs/version_N/metrics.csv, one folder per (re)start. Written at every log call (metrics come every
    # trainer.log_every_n_steps steps, so this is a few rows): Lightning's default holds 100 steps' rows in memory
    # until the run ends, so a run killed before that (SIGKILL at a benchmark's time limit, the kernel's OOM killer)
    # left no figures at all.
    csv = CSVLogger(out, name="logs", flush_logs_every_n_steps=1)
    if kind == "csv":
        return [csv]
    if kind == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        return [TensorBoardLogger(out, name="tensorboard"), csv]
    if kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        mode = cfg.logging.wandb_mode or os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")
        run_id = wandb_run_id(out, write=is_rank_zero)
        wandb = WandbLogger(
            project=cfg.logging.project, entity=cfg.logging.entity, name=cfg.logging.name, group=cfg.logging.group,
            tags=list(cfg.logging.tags), save_dir=str(out), offline=mode == "offline", id=run_id, resume="allow",
            config=public_config,
        )
        return [wandb, csv]
    from train.config import ConfigError

    raise ConfigError(f"logging.logger must be wandb, csv, tensorboard or none, got {kind!r}")
