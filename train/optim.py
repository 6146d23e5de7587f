"""AdamW for the branch, and the learning-rate schedule as a pure function of the step."""

from __future__ import annotations

import math
from typing import Iterable

import torch

__all__ = ["build_optimizer", "lr_at"]


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg, deepspeed_cfg=None, use_deepspeed: bool = False,
                    on_cuda: bool = False) -> torch.optim.Optimizer:
    """AdamW: DeepSpeed's CPU Adam when optimizer states are offloaded, its fused Adam on GPUs,
    else ``torch.optim.AdamW`` (fused on CUDA)."""
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    params = [p for p in params if p.requires_grad]
    if use_deepspeed and deepspeed_cfg is not None and deepspeed_cfg.offload_optimizer:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, adamw_mode=True, **kwargs)
    if use_deepspeed and on_cuda:
        from deepspeed.ops.adam import FusedAdam

        return FusedAdam(params, adam_w_mode=True, **kwargs)
    return torch.optim.AdamW(params, fused=on_cuda or None, **kwargs)


def lr_at(step: int, cfg, max_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then constant or cosine.

    Stateless, so a resumed run has the right rate from the restored step alone.
    """
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        span = max(1, max_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        floor = cfg.lr * cfg.min_lr_ratio
        return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"optim.schedule must be 'constant' or 'cosine', got {cfg.schedule!r}")
