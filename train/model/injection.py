"""Adding BrushNet residuals into a stock, frozen diffusers UNet.

No forked UNet: while :func:`inject_residuals` is active, forward hooks on the
UNet's own submodules add the branch residuals at the reference's places
(docs/reference.md section 2):

* down residual 0: a pre-hook on ``down_blocks[0]`` adds it to the ``conv_in``
  output *after* the UNet stored that output as skip 0, so skip 0 stays clean;
* inside each down block: after each (resnet[, cross-attention]) layer, i.e. on
  the layer's last module, before the block stores the layer's skip; then after
  the downsampler, before its skip is stored;
* after the mid block;
* inside each up block: after each (resnet[, cross-attention]) layer, then after
  the upsampler.

Each hook owns one residual, fixed at registration, and has no other effect:
when gradient checkpointing re-runs a layer during backward, the hook (if it is
still attached) recomputes the same sum. The hooks are removed when the context
exits, also on error, so the UNet's plain ``forward`` is untouched afterwards.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from train.model.brushnet import BrushNetModel, BrushNetOutput

__all__ = ["InjectionPoint", "injection_points", "inject_residuals", "brushnet_unet_forward"]


@dataclass(frozen=True)
class InjectionPoint:
    """Where one residual enters: ``module`` is hooked; ``pre`` = added to its input."""

    name: str
    module: nn.Module
    pre: bool = False


def _layer_ends(block: nn.Module, block_name: str) -> list[InjectionPoint]:
    """The last module of each (resnet[, attention]) layer, then the sampler."""
    points = []
    attentions = getattr(block, "attentions", None)
    for i, resnet in enumerate(block.resnets):
        if attentions is not None and i < len(attentions) and attentions[i] is not None:
            points.append(InjectionPoint(f"{block_name}.attentions.{i}", attentions[i]))
        else:
            points.append(InjectionPoint(f"{block_name}.resnets.{i}", resnet))
    for attr in ("downsamplers", "upsamplers"):
        samplers = getattr(block, attr, None)
        if samplers is not None:
            points.append(InjectionPoint(f"{block_name}.{attr}.{len(samplers) - 1}", samplers[-1]))
    return points


def injection_points(unet: nn.Module) -> tuple[list[InjectionPoint], InjectionPoint, list[InjectionPoint]]:
    """(down, mid, up) injection points of a diffusers ``UNet2DConditionModel``."""
    down = [InjectionPoint("down_blocks.0 (input: conv_in output)", unet.down_blocks[0], pre=True)]
    for i, block in enumerate(unet.down_blocks):
        down += _layer_ends(block, f"down_blocks.{i}")
    mid = InjectionPoint("mid_block", unet.mid_block)
    up = []
    for i, block in enumerate(unet.up_blocks):
        up += _layer_ends(block, f"up_blocks.{i}")
    return down, mid, up


def _checked(residual: torch.Tensor, like: torch.Tensor, where: str) -> torch.Tensor:
    if residual.shape != like.shape:
        # Broadcasting would hide a batch mismatch (e.g. a CFG-doubled UNet batch).
        raise ValueError(f"BrushNet residual for {where} has shape {tuple(residual.shape)}, UNet feature has {tuple(like.shape)}")
    return residual.to(dtype=like.dtype)


def _output_hook(residual: torch.Tensor, where: str):
    def hook(module, args, output):
        if torch.is_tensor(output):
            return output + _checked(residual, output, where)
        if isinstance(output, tuple) and output and torch.is_tensor(output[0]):
            return (output[0] + _checked(residual, output[0], where),) + tuple(output[1:])
        raise TypeError(f"cannot inject into {where}: unexpected output type {type(output).__name__}")

    return hook


def _input_hook(residual: torch.Tensor, where: str):
    def hook(module, args, kwargs):
        if "hidden_states" in kwargs:
            hidden = kwargs["hidden_states"]
            return args, {**kwargs, "hidden_states": hidden + _checked(residual, hidden, where)}
        return (args[0] + _checked(residual, args[0], where),) + tuple(args[1:]), kwargs

    return hook


@contextmanager
def inject_residuals(
    unet: nn.Module,
    down: Sequence[torch.Tensor],
    mid: torch.Tensor,
    up: Sequence[torch.Tensor],
) -> Iterator[None]:
    """While active, every ``unet(...)`` call adds these residuals at the reference places."""
    down_points, mid_point, up_points = injection_points(unet)
    if (len(down), len(up)) != (len(down_points), len(up_points)):
        raise ValueError(
            f"branch gives {len(down)}/1/{len(up)} down/mid/up residuals but the UNet has "
            f"{len(down_points)}/1/{len(up_points)} injection points: was the branch built from this UNet's config?"
        )
    handles = []
    try:
        for point, residual in zip(down_points + [mid_point] + up_points, list(down) + [mid] + list(up)):
            if point.pre:
                handles.append(point.module.register_forward_pre_hook(_input_hook(residual, point.name), with_kwargs=True))
            else:
                handles.append(point.module.register_forward_hook(_output_hook(residual, point.name)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def brushnet_unet_forward(
    unet: nn.Module,
    brushnet: "BrushNetModel",
    sample: torch.Tensor,
    timestep: torch.Tensor | float | int,
    encoder_hidden_states: torch.Tensor,
    brushnet_cond: torch.Tensor,
    conditioning_scale: float = 1.0,
    added_cond_kwargs: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Noise prediction of the stock ``unet`` with the branch's residuals added.

    ``brushnet_cond`` is ``concat(masked_image_latents, keep_mask)`` at latent
    size (keep_mask: 1 = known pixel, 0 = hole).
    """
    residuals: BrushNetOutput = brushnet(
        sample,
        timestep,
        encoder_hidden_states,
        brushnet_cond,
        conditioning_scale=conditioning_scale,
        added_cond_kwargs=added_cond_kwargs,
        return_dict=True,
    )
    with inject_residuals(
        unet, residuals.down_block_res_samples, residuals.mid_block_res_sample, residuals.up_block_res_samples
    ):
        return unet(
            sample,
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            added_cond_kwargs=added_cond_kwargs,
            return_dict=False,
        )[0]
