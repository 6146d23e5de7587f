"""A picture of what training will see: image | keep mask | masked image, with the caption."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from data.brushdata import BadDataError, BrushDataLoader, DataConfig

__all__ = ["preview_grid", "caption_strip"]


def caption_strip(text: str, width: int, height: int = 28, scale: float = 0.4, empty: str = "(empty caption)") -> np.ndarray:
    """A white strip ``width`` pixels wide with ``text`` on one line (cut with ... when too long)."""
    strip = np.full((height, width, 3), 255, np.uint8)
    max_chars = max(8, int(width / (scale * 19)))
    line = text if len(text) <= max_chars else text[: max_chars - 3] + "..."
    cv2.putText(strip, line or empty, (4, height - round(height * 0.3)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1,
                cv2.LINE_AA)
    return strip


def preview_grid(cfg: DataConfig, out: str | Path, samples: int = 8) -> Path:
    """Render ``samples`` training examples (after masking and augmentation) into one PNG."""
    loader = BrushDataLoader(cfg)
    rows = []
    for batch in loader:
        for i in range(len(batch["key"])):
            if batch["weight"][i] == 0:
                continue
            image = batch["image"][i].permute(1, 2, 0).numpy()
            keep = batch["keep_mask"][i, 0].numpy()
            masked = image * keep[..., None]
            mask_rgb = np.repeat((1 - keep)[..., None] * 255, 3, axis=2).astype(np.uint8)  # white = hole
            panel = np.concatenate([image, mask_rgb, masked], axis=1)
            label = f"{batch['key'][i]} [{batch['mask_source'][i]}] {batch['caption'][i]}"
            rows.append(np.concatenate([panel, caption_strip(label, panel.shape[1])], axis=0))
            if len(rows) == samples:
                break
        if len(rows) == samples:
            break
    if not rows:
        raise BadDataError(f"no good samples to preview in {cfg.shards}: {dict(loader.counters)}")
    grid = np.concatenate(rows, axis=0)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    known = out.suffix.lower() in Image.registered_extensions()
    Image.fromarray(grid).save(out, format=None if known else "PNG")  # PNG unless the name says otherwise
    return out
