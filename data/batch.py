"""From a uint8 batch to model inputs, on the device (normalising there, not in the loader)."""

from __future__ import annotations

import torch

__all__ = ["model_inputs"]


def model_inputs(batch: dict, device: torch.device | str, dtype: torch.dtype = torch.float32) -> dict:
    """``pixels`` and ``masked_pixels`` in [-1, 1] and the ``keep_mask`` (1 = known), on ``device``.

    ``masked_pixels = image * keep`` before normalising, so hole pixels are -1
    (black), as the reference prepares them (docs/reference.md section 3).
    """
    image = batch["image"].to(device, non_blocking=True)
    keep = batch["keep_mask"].to(device, non_blocking=True)
    pixels = image.to(dtype) / 127.5 - 1.0
    masked = (image * keep).to(dtype) / 127.5 - 1.0
    return {"pixels": pixels, "masked_pixels": masked, "keep_mask": keep.to(dtype)}
