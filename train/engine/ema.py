"""Exponential moving average of the branch weights (fp32), under DDP and DeepSpeed ZeRO-2/3."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

__all__ = ["BranchEMA"]


def _gathered(params: list[nn.Parameter]):
    """Full parameters for the duration of the block (ZeRO-3 partitions them; a no-op otherwise)."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    return contextlib.nullcontext()


class BranchEMA:
    """Shadow weights ``ema = d * ema + (1 - d) * w`` with warm-up ``d = min(decay, (1 + n) / (10 + n))``.

    Under ZeRO-3 every rank must call :meth:`update` together (the parameters are
    gathered for it). The shadow is identical on all ranks.
    """

    def __init__(self, module: nn.Module, decay: float, device: torch.device | str | None = None):
        self.decay = decay
        self.device = device
        self.updates = 0
        params = dict(module.named_parameters())
        with _gathered(list(params.values())):
            self.shadow = {n: p.detach().to(device=device or p.device, dtype=torch.float32).clone() for n, p in params.items()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        params = dict(module.named_parameters())
        with _gathered(list(params.values())):
            for name, p in params.items():
                shadow = self.shadow[name]
                shadow.mul_(d).add_(p.detach().to(device=shadow.device, dtype=torch.float32), alpha=1 - d)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": {k: v.cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise ValueError(f"EMA state does not match the branch: {sorted(missing)[:5]}")
        self.updates = int(state["updates"])
        for name, value in state["shadow"].items():
            self.shadow[name] = value.to(device=self.shadow[name].device, dtype=torch.float32)
