"""Masks: BrushData run-length codes, random brush strokes, boxes, borders, the mix policy.

Conventions. A *region* mask is HxW uint8 with 1 on the region (a segmented
object, a brush stroke, a box). The training pipeline turns regions into the
branch's *keep* mask (1 = known pixel, 0 = hole) as BRUSHNET.md section 5
says; see :meth:`MaskPolicy.keep_mask`. Randomness always comes from a
``numpy.random.Generator`` passed in.

BrushData RLE: a flat list ``[start1, len1, start2, len2, ...]`` of runs of ones
over the mask flattened in column-major (Fortran) order, starts 1-based.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import cv2
import numpy as np

from train.errors import UserError

__all__ = [
    "RLEError",
    "rle_check",
    "rle_decode",
    "rle_encode",
    "brush_mask",
    "box_mask",
    "border_mask",
    "opening",
    "MaskPolicy",
    "MASK_SOURCES",
]

MASK_SOURCES = ("segmentation", "brush", "box", "border")


class RLEError(UserError, ValueError):
    """Run-length data that does not describe a mask of the stated size."""


def _runs(rle: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    arr = np.asarray(rle)
    if arr.ndim != 1 or arr.size % 2:
        raise RLEError(f"run-length data must be a flat list of (start, length) pairs, got {arr.size} values")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(arr == np.round(arr)):
            raise RLEError("run-length values must be integers")
    arr = arr.astype(np.int64, copy=False)
    return arr[0::2] - 1, arr[1::2]


def rle_check(rle: Sequence[int] | np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(0-based starts, lengths) after checking every run lies inside an HxW mask."""
    starts, lengths = _runs(rle)
    if starts.size:
        if starts.min() < 0 or lengths.min() < 0:
            raise RLEError("run-length data has a start below 1 or a negative length")
        end = int((starts + lengths).max())
        if end > height * width:
            raise RLEError(f"run-length data reaches pixel {end} of a {height}x{width} mask ({height * width} pixels)")
    return starts, lengths


def rle_decode(
    rle: Sequence[int] | np.ndarray, height: int, width: int, columns: tuple[int, int] | None = None
) -> np.ndarray:
    """HxW uint8 mask (1 = object) from BrushData run-length data.

    ``columns=(x0, x1)`` decodes only those columns (an Hx(x1-x0) array): in
    column-major order they are one contiguous stretch, so a crop window costs
    only its own pixels. Vectorised: run starts and ends become +1/-1 marks whose
    running sum is the mask.
    """
    starts, lengths = rle_check(rle, height, width)
    x0, x1 = (0, width) if columns is None else columns
    if not 0 <= x0 <= x1 <= width:
        raise ValueError(f"columns {columns} outside a mask of width {width}")
    lo, n = x0 * height, (x1 - x0) * height
    begin = np.clip(starts - lo, 0, n)
    end = np.clip(starts + lengths - lo, 0, n)
    keep = end > begin
    marks = np.bincount(begin[keep], minlength=n + 1) - np.bincount(end[keep], minlength=n + 1)
    flat = (np.cumsum(marks[:n]) > 0).astype(np.uint8)
    return flat.reshape((height, x1 - x0), order="F")


def rle_encode(mask: np.ndarray) -> list[int]:
    """BrushData run-length data of a 2-D mask (non-zero = object)."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    flat = np.concatenate([[0], (mask.ravel(order="F") != 0).astype(np.int8), [0]])
    changes = np.flatnonzero(flat[1:] != flat[:-1])
    starts, ends = changes[0::2], changes[1::2]
    out = np.empty(starts.size * 2, dtype=np.int64)
    out[0::2] = starts + 1
    out[1::2] = ends - starts
    return out.tolist()


# ------------------------------------------------------------- generators


def brush_mask(
    height: int,
    width: int,
    rng: np.random.Generator,
    min_strokes: int = 1,
    max_strokes: int = 4,
    max_segments: int = 7,
    mean_angle: float = 2 * math.pi / 5,
    angle_range: float = 2 * math.pi / 15,
    stroke_width: int = 128,
) -> np.ndarray:
    """Random free-form brush strokes (BRUSHNET.md section 5); 1 = stroke (the hole).

    Each stroke is a polyline of 0..``max_segments`` segments starting at a random
    point, turning by angles around ``mean_angle`` (alternately left and right,
    spread up to ``angle_range``), segment lengths ~ N(r, r/2) clipped to [0, 2r]
    with r = sqrt(H^2 + W^2) / 8, drawn ``stroke_width`` wide with round caps at
    the vertices. The whole mask is then flipped vertically/horizontally with p=0.5.
    """
    mask = np.zeros((height, width), np.uint8)
    radius = math.sqrt(height**2 + width**2) / 8
    for _ in range(int(rng.integers(min_strokes, max_strokes + 1))):
        n_seg = int(rng.integers(0, max_segments + 1))
        lo = mean_angle - rng.uniform(0, angle_range)
        hi = mean_angle + rng.uniform(0, angle_range)
        turns = rng.uniform(lo, hi, size=n_seg)
        turns[0::2] = 2 * math.pi - turns[0::2]
        lengths = np.clip(rng.normal(radius, radius / 2, size=n_seg), 0, 2 * radius)
        x, y = float(rng.integers(0, width)), float(rng.integers(0, height))
        points = [(int(x), int(y))]
        for angle, length in zip(turns, lengths):
            x = float(np.clip(x + length * math.cos(angle), 0, width))
            y = float(np.clip(y + length * math.sin(angle), 0, height))
            points.append((int(x), int(y)))
        pts = np.asarray(points, np.int32)
        if len(points) > 1:
            cv2.polylines(mask, [pts], isClosed=False, color=1, thickness=stroke_width)
        for px, py in points:
            cv2.circle(mask, (int(px), int(py)), stroke_width // 2, 1, thickness=-1)
    if rng.random() < 0.5:
        mask = mask[::-1]
    if rng.random() < 0.5:
        mask = mask[:, ::-1]
    return np.ascontiguousarray(mask)


def box_mask(
    height: int, width: int, rng: np.random.Generator, min_frac: float = 0.1, max_frac: float = 0.6
) -> np.ndarray:
    """One random axis-aligned box, sides a random fraction of the image; 1 = box (the hole)."""
    bh = max(1, int(round(height * rng.uniform(min_frac, max_frac))))
    bw = max(1, int(round(width * rng.uniform(min_frac, max_frac))))
    top, left = int(rng.integers(0, height - bh + 1)), int(rng.integers(0, width - bw + 1))
    mask = np.zeros((height, width), np.uint8)
    mask[top : top + bh, left : left + bw] = 1
    return mask


def border_mask(
    height: int, width: int, rng: np.random.Generator, min_frac: float = 0.1, max_frac: float = 0.4
) -> np.ndarray:
    """Outpainting: a random margin on each side; 1 = border (the hole), centre kept."""
    top, bottom = (int(height * rng.uniform(min_frac, max_frac) / 2) for _ in range(2))
    left, right = (int(width * rng.uniform(min_frac, max_frac) / 2) for _ in range(2))
    mask = np.ones((height, width), np.uint8)
    mask[top : height - bottom, left : width - right] = 0
    if mask.all():  # degenerate sizes: keep at least the central pixel
        mask[height // 2, width // 2] = 0
    return mask


def opening(mask: np.ndarray, kernel: int = 8) -> np.ndarray:
    """Erode then dilate with a ``kernel`` x ``kernel`` square (removes thin parts)."""
    return cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((kernel, kernel), np.uint8))


# ------------------------------------------------------------------ policy


@dataclass(frozen=True)
class MaskPolicy:
    """Where each sample's mask comes from, and the reference's random edits.

    ``weights`` picks the source per sample (normalised): ``segmentation`` (one
    of the sample's masks at random; the reference's segmentation variant),
    ``brush`` (random strokes; the random-mask variant), ``box`` and ``border``
    (outpainting). Then, as the reference does, with ``opening_p`` an opening
    with an ``opening_kernel`` square, and with ``invert_p`` the keep and hole
    regions swap.

    Segmentation regions are *kept* (the object is the known part, so the model
    paints around it) and become the hole after inversion; brush strokes, boxes
    and borders are holes. With ``invert_p=0.5`` both cases are equally likely.
    """

    weights: Mapping[str, float] = field(default_factory=lambda: {"segmentation": 1.0})
    opening_p: float = 0.3
    opening_kernel: int = 8
    invert_p: float = 0.5
    brush: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self):
        unknown = set(self.weights) - set(MASK_SOURCES)
        if unknown:
            raise ValueError(f"unknown mask sources {sorted(unknown)}; choose from {MASK_SOURCES}")
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError(f"mask source weights must be >= 0 with a positive sum, got {dict(self.weights)}")
        for name, p in (("opening_p", self.opening_p), ("invert_p", self.invert_p)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {p}")

    @property
    def needs_segmentation(self) -> bool:
        return self.weights.get("segmentation", 0) > 0

    def choose(self, rng: np.random.Generator) -> str:
        names = [n for n in MASK_SOURCES if self.weights.get(n, 0) > 0]
        p = np.array([self.weights[n] for n in names], dtype=np.float64)
        return names[int(rng.choice(len(names), p=p / p.sum()))]

    def keep_mask(self, source: str, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Keep mask (1 = known) from a region mask of ``source``, with opening and inversion."""
        keep = region if source == "segmentation" else 1 - region
        if self.opening_p and rng.random() < self.opening_p:
            keep = opening(keep, self.opening_kernel)
        if self.invert_p and rng.random() < self.invert_p:
            keep = 1 - keep
        return keep.astype(np.uint8, copy=False)

    def region(self, source: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        """A generated region (brush, box or border) at the given size."""
        if source == "brush":
            return brush_mask(height, width, rng, **self.brush)
        if source == "box":
            return box_mask(height, width, rng)
        if source == "border":
            return border_mask(height, width, rng)
        raise ValueError(f"{source!r} masks come from the data, not a generator")
