"""AdamW for the branch, and the learning-rate schedule as a pure function of the step."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Iterable

import torch

__all__ = ["ADAM_IMPLS", "build_optimizer", "optimizer_choice", "lr_at", "schedule_settings", "schedule_change"]

# deepspeed.adam: which AdamW runs under DeepSpeed on GPUs without optimizer offload.
ADAM_IMPLS = ("torch", "deepspeed")


def optimizer_choice(deepspeed_cfg=None, use_deepspeed: bool = False, on_cuda: bool = False) -> str:
    """Which AdamW :func:`build_optimizer` makes: ``deepspeed_cpu_adam``, ``deepspeed_fused_adam`` or
    ``torch_fused``.

    * DeepSpeed with ``offload_optimizer``: DeepSpeed's CPU Adam (the step runs on the CPU).
    * DeepSpeed on GPUs (ZeRO-1/2/3): ``torch.optim.AdamW(fused=True)``, one multi-tensor CUDA
      kernel that ships with PyTorch, so no CUDA compiler is needed; ``deepspeed.adam=deepspeed``
      picks DeepSpeed's ``FusedAdam`` instead, which builds its kernel with ``nvcc`` at the first
      step (and fails on machines without a CUDA toolkit).
    * Otherwise ``torch.optim.AdamW(fused=True)`` as well, on CPUs too: PyTorch ships fused AdamW kernels
      for both, so the CPU runs (the tests, the GPU check's dry run) step through the same optimizer, under
      DeepSpeed and fp16 scaling included, as a GPU run does.
    """
    impl = getattr(deepspeed_cfg, "adam", "torch") if deepspeed_cfg is not None else "torch"
    if impl not in ADAM_IMPLS:
        raise ValueError(f"deepspeed.adam must be one of {', '.join(ADAM_IMPLS)}, got {impl!r}")
    if use_deepspeed and deepspeed_cfg is not None and deepspeed_cfg.offload_optimizer:
        return "deepspeed_cpu_adam"
    if use_deepspeed and on_cuda and impl == "deepspeed":
        return "deepspeed_fused_adam"
    return "torch_fused"


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg, deepspeed_cfg=None, use_deepspeed: bool = False,
                    on_cuda: bool = False) -> torch.optim.Optimizer:
    """AdamW for the trainable ``params``, as :func:`optimizer_choice` says."""
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    params = [p for p in params if p.requires_grad]
    choice = optimizer_choice(deepspeed_cfg, use_deepspeed, on_cuda)
    if choice == "deepspeed_cpu_adam":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, adamw_mode=True, **kwargs)
    if choice == "deepspeed_fused_adam":
        from deepspeed.ops.adam import FusedAdam

        return FusedAdam(params, adam_w_mode=True, **kwargs)
    opt = torch.optim.AdamW(params, fused=True, **kwargs)
    opt.register_load_state_dict_post_hook(_stay_fused)
    return opt


def _stay_fused(optimizer: torch.optim.Optimizer) -> None:
    """``load_state_dict`` takes the param groups' flags from the checkpoint: state saved by a non-fused AdamW
    (CPU runs before they were fused) would make this one step unfused while it still tells a GradScaler it
    handles the scaling itself (the step then fails). The optimizer stays what it was built as."""
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, None


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


def schedule_settings(cfg, max_steps: int) -> dict:
    """What decides :func:`lr_at`'s curve, as saved in a checkpoint."""
    return {"lr": float(cfg.lr), "warmup_steps": int(cfg.warmup_steps), "schedule": str(cfg.schedule),
            "min_lr_ratio": float(cfg.min_lr_ratio), "max_steps": int(max_steps)}


def schedule_change(saved: dict | None, cfg, max_steps: int, step: int) -> str | None:
    """A sentence when the learning-rate curve differs from the checkpoint's (None if not, or not recorded).

    The rate is a function of the step and these settings, so a resume with another ``trainer.max_steps``
    (extending a finished run, say) moves a cosine schedule back up its curve: said, with the rates, since the
    loss will show it."""
    if not saved:
        return None
    now = schedule_settings(cfg, max_steps)
    changed = [k for k in now if k in saved and saved[k] != now[k]]
    if not changed:
        return None
    old_cfg, old_max = SimpleNamespace(**{**now, **saved}), saved.get("max_steps", max_steps)
    end = max(step + 1, max_steps, old_max)
    probes = {step, *range(step, end + 1, max(1, (end - step) // 64)), end}
    if all(math.isclose(lr_at(t, old_cfg, old_max), lr_at(t, cfg, max_steps)) for t in probes):
        return None  # e.g. max_steps under a constant schedule: the same rates from here on
    before, after = lr_at(step, old_cfg, old_max), lr_at(step, cfg, max_steps)
    what = ", ".join(f"{'trainer' if k == 'max_steps' else 'optim'}.{k} {saved[k]} -> {now[k]}" for k in changed)
    return (f"the learning-rate schedule changed since the checkpoint ({what}): at step {step} the rate is "
            f"{after:.3g} where the checkpoint's run would have used {before:.3g}"
            + (" (a cosine schedule stretched over the new max_steps)" if "max_steps" in changed
               and now["schedule"] == "cosine" else ""))
