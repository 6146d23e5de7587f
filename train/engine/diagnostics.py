"""Is the branch learning? Gradient norms and weight change since the start, per block group.

Groups: ``embed`` (time/text-time embeddings, ``conv_in_condition``), ``down``,
``mid``, ``up`` (the copied UNet blocks) and ``zero_convs`` (the
``brushnet_*`` 1x1 convs that feed the UNet). Works under DDP and DeepSpeed
ZeRO-2/3 (DeepSpeed's ``safe_get_full_*`` helpers gather what is partitioned;
every rank must call these together).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["GROUPS", "group_of", "grad_norms", "ParamChange"]

GROUPS = ("embed", "down", "mid", "up", "zero_convs")


def group_of(name: str) -> str:
    if name.startswith("brushnet_"):
        return "zero_convs"
    if name.startswith("down_blocks."):
        return "down"
    if name.startswith("mid_block."):
        return "mid"
    if name.startswith("up_blocks."):
        return "up"
    return "embed"


def _trainable(module: nn.Module):
    """The parameters the optimizer owns (a frozen one, like the tied conv_in_condition bias, never changes)."""
    return [(name, p) for name, p in module.named_parameters() if p.requires_grad]


def _full(p: nn.Parameter, what: str, deepspeed: bool) -> torch.Tensor | None:
    if deepspeed:
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_grad

        return safe_get_full_grad(p) if what == "grad" else safe_get_full_fp32_param(p)
    return p.grad if what == "grad" else p.detach()


def grad_norms(module: nn.Module, deepspeed: bool = False) -> dict[str, float]:
    """L2 norm of the gradients per group, and overall (after backward, before the optimizer step)."""
    sums = dict.fromkeys(GROUPS, 0.0)
    for name, p in _trainable(module):
        g = _full(p, "grad", deepspeed)
        if g is not None:
            sums[group_of(name)] += float(g.detach().float().pow(2).sum())
    out = {f"grad_norm/{k}": math.sqrt(v) for k, v in sums.items()}
    out["grad_norm/all"] = math.sqrt(sum(sums.values()))
    return out


class ParamChange:
    """Relative change ||w - w0|| / ||w0|| per group since :meth:`snapshot` (zero convs: absolute ||w||)."""

    def __init__(self, keep: bool = True):
        self.keep = keep  # only the rank that reports keeps the (CPU) copy
        self.initial: dict[str, torch.Tensor] = {}

    def snapshot(self, module: nn.Module, deepspeed: bool = False) -> None:
        for name, p in _trainable(module):
            full = _full(p, "param", deepspeed)
            if self.keep:
                self.initial[name] = full.detach().float().cpu().clone()

    def measure(self, module: nn.Module, deepspeed: bool = False) -> dict[str, float]:
        diff, base = dict.fromkeys(GROUPS, 0.0), dict.fromkeys(GROUPS, 0.0)
        for name, p in _trainable(module):
            full = _full(p, "param", deepspeed)
            if not self.keep:
                continue
            w0 = self.initial[name]
            group = group_of(name)
            diff[group] += float((full.detach().float().cpu() - w0).pow(2).sum())
            base[group] += float(w0.pow(2).sum())
        if not self.keep:
            return {}
        out = {}
        for g in GROUPS:
            out[f"param_change/{g}"] = math.sqrt(diff[g]) / math.sqrt(base[g]) if base[g] > 0 else math.sqrt(diff[g])
        return out
