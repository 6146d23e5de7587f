"""Diffusion training targets and losses (pure functions)."""

from __future__ import annotations

import torch

__all__ = ["training_target", "snr", "min_snr_weights", "per_sample_mse", "region_mse"]


def training_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                    prediction_type: str | None = None) -> torch.Tensor:
    """What the UNet predicts: the noise (epsilon) or the velocity (v-prediction)."""
    kind = prediction_type or scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {kind!r} (epsilon or v_prediction)")


def snr(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at each timestep."""
    alphas = scheduler.alphas_cumprod.to(device=timesteps.device, dtype=torch.float32)[timesteps]
    return alphas / (1 - alphas)


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023): min(SNR, gamma) / SNR, (+1 in the denominator for v)."""
    s = snr(scheduler, timesteps)
    clipped = torch.minimum(s, torch.full_like(s, gamma))
    return clipped / (s + 1) if prediction_type == "v_prediction" else clipped / s


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample, in float32."""
    return (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)


def region_mse(pred: torch.Tensor, target: torch.Tensor, region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of squared errors over ``region`` (B,1,h,w; 1 = inside) and the number of elements it covers."""
    err = (pred.float() - target.float()).pow(2) * region
    return err.sum(), region.sum() * pred.shape[1]
