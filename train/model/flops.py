"""FLOPs of one training sample, counted on the real architecture (meta tensors, no memory, no time).

The cost model of docs/reference.md section 8: VAE encode of image and masked image,
text encoder(s) forward, branch forward + backward (weight and activation
gradients), frozen UNet forward + activation-gradient backward (no weight
gradients). PyTorch's ``FlopCounterMode`` counts the matmuls and convolutions
of exactly that computation on meta-device copies of the models; for SD1.5 at
512 px it gives 5.30 TFLOP per sample, as the table says. MFU =
achieved FLOP/s / the peak of the device.
"""

from __future__ import annotations

import torch

__all__ = ["training_flops_per_sample", "PEAK_TFLOPS", "peak_tflops"]

# Dense bf16 tensor-core peaks (TFLOP/s), by device-name substring.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0, "V100": 125.0}


def peak_tflops(device: torch.device, override: float | None = None) -> tuple[float | None, str]:
    """(peak TFLOP/s, where it came from) for MFU; None on CPUs unless configured."""
    if override:
        return float(override), "metrics.peak_tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in PEAK_TFLOPS.items():
            if key in name:
                return value, f"{name} dense bf16"
        return None, f"unknown peak for {name} (set metrics.peak_tflops)"
    return None, "no peak for CPUs (set metrics.peak_tflops)"


def _meta_copy(module):
    if hasattr(module, "from_config"):  # diffusers models
        return type(module).from_config(module.config)
    return type(module)(module.config)  # transformers models


def training_flops_per_sample(base, branch, resolution: int) -> dict[str, float]:
    """FLOPs per training sample, broken down as in docs/reference.md section 8."""
    from torch.utils.flop_counter import FlopCounterMode

    from train.model.components import vae_scale_factor
    from train.model.injection import brushnet_unet_forward

    with torch.device("meta"):
        unet = _meta_copy(base.unet).requires_grad_(False)
        vae = _meta_copy(base.vae).requires_grad_(False)
        encoders = [_meta_copy(enc).requires_grad_(False) for _, enc in base.text_pairs]
        net = type(branch).from_config(branch.config)

    def count(fn, grad: bool = False) -> float:
        with torch.set_grad_enabled(grad), FlopCounterMode(display=False) as counter:
            fn()
        return float(counter.get_total_flops())

    latent = resolution // vae_scale_factor(base.vae)
    with torch.device("meta"):
        pixels = torch.zeros(2, 3, resolution, resolution)
        sample = torch.zeros(1, unet.config.in_channels, latent, latent)
        cond = torch.zeros(1, branch.config.conditioning_channels, latent, latent)
        t = torch.zeros(1, dtype=torch.long)
        embeds = torch.zeros(1, 77, unet.config.cross_attention_dim)
        added = None
        if unet.config.addition_embed_type == "text_time":
            pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
            added = {"text_embeds": torch.zeros(1, pooled), "time_ids": torch.zeros(1, 6)}
    out = {
        "vae_encode": count(lambda: vae.encode(pixels).latent_dist.mode()),
        "text": sum(count(lambda e=enc: e(torch.zeros(1, 77, dtype=torch.long, device="meta"))) for enc in encoders),
        "branch_and_unet": count(
            lambda: brushnet_unet_forward(unet, net, sample, t, embeds, cond, added_cond_kwargs=added).sum().backward(),
            grad=True,
        ),
    }
    out["total"] = sum(out.values())
    return out
