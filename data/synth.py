"""Synthetic BrushData: coloured shapes on textured backgrounds, with exact masks and captions.

Each record has 1-4 shapes (discs, boxes, triangles); each shape's mask is its
visible part (later shapes occlude earlier ones), the caption names the shapes
and colours. Image sizes vary per record within ``[min_size, max_size]``, or are
one fixed ``size`` (height, width).
Everything is drawn from one seeded generator, so the same seed writes the same
bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from data.writer import ShardWriter, brushdata_members, encode_jpeg

__all__ = ["synth_record", "write_synthetic_shards", "COLOURS"]

COLOURS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40),
    "purple": (150, 50, 180), "orange": (240, 140, 30), "white": (245, 245, 245), "black": (20, 20, 20),
}
SHAPES = ("disc", "box", "triangle")
BACKGROUNDS = ("grass", "sand", "sky", "stone")
_BG_COLOURS = {"grass": (70, 140, 60), "sand": (200, 180, 130), "sky": (120, 170, 230), "stone": (128, 128, 128)}


@dataclass
class SynthRecord:
    image: np.ndarray
    masks: list[np.ndarray]
    caption: str


def synth_record(rng: np.random.Generator, min_size: int = 64, max_size: int = 128,
                 size: tuple[int, int] | None = None) -> SynthRecord:
    h, w = size if size is not None else (int(rng.integers(min_size, max_size + 1)) for _ in range(2))
    bg = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    base = np.array(_BG_COLOURS[bg], np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    shade = 0.85 + 0.3 * (yy / h) * rng.uniform(0.5, 1) + 0.05 * np.sin(xx / max(w, 1) * rng.uniform(4, 12))
    image = np.clip(base * shade[..., None] + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)

    regions: list[np.ndarray] = []
    names: list[str] = []
    for _ in range(int(rng.integers(1, 5))):
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        r = int(rng.integers(max(3, min(h, w) // 10), max(4, min(h, w) // 3)))
        cy, cx = int(rng.integers(r, max(r + 1, h - r))), int(rng.integers(r, max(r + 1, w - r)))
        region = np.zeros((h, w), np.uint8)
        if shape == "disc":
            cv2.circle(region, (cx, cy), r, 1, -1)
        elif shape == "box":
            cv2.rectangle(region, (cx - r, cy - r), (cx + r, cy + r), 1, -1)
        else:
            pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
            cv2.fillPoly(region, [pts], 1)
        for earlier in regions:  # occlusion: earlier masks lose what this shape covers
            earlier[region > 0] = 0
        image[region > 0] = COLOURS[colour]
        regions.append(region)
        names.append(f"a {colour} {shape}")
    masks = [m for m in regions if m.any()]
    caption = (", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]) + f" on {bg}"
    return SynthRecord(image, masks, caption)


def write_synthetic_shards(out_dir: str | Path, n_samples: int, samples_per_shard: int = 100, seed: int = 0,
                           min_size: int = 64, max_size: int = 128, prefix: str = "synth",
                           size: tuple[int, int] | None = None) -> ShardWriter:
    rng = np.random.default_rng(seed)
    with ShardWriter(out_dir, prefix=prefix, max_samples=samples_per_shard) as writer:
        for i in range(n_samples):
            rec = synth_record(rng, min_size, max_size, size)
            h, w = rec.image.shape[:2]
            writer.write(f"{prefix}{seed:04d}_{i:08d}", brushdata_members(encode_jpeg(rec.image), h, w, rec.caption, rec.masks))
    return writer
