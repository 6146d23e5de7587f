"""Masks: BrushData run-length codes, random brush strokes, boxes, borders, the mix policy.

Conventions. A *region* mask is uint8 with 1 on the region (a segmented
object, a brush stroke, a box). The training pipeline turns regions into the
branch's *keep* mask (1 = known pixel, 0 = hole), see
:meth:`MaskPolicy.keep_mask`. Randomness always comes from a
``numpy.random.Generator`` passed in.

Masks are made directly in the training crop, with the reference recipe's
statistics (docs/reference.md section 5): the reference draws brush
strokes and opens masks on the *original* image, then resizes and crops. Here
the stroke geometry and the opening kernel are expressed in original-image
pixels and scaled by the resize (:class:`CropGeometry`), and only the crop
window (plus the opening's margin) is rasterised or decoded, whatever the size
of the original image.

BrushData RLE: a flat list ``[start1, len1, start2, len2, ...]`` of runs of ones
over the mask flattened in column-major (Fortran) order, starts 1-based.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import cv2
import numpy as np

from common.errors import UserError

__all__ = [
    "RLEError",
    "rle_check",
    "rle_decode",
    "rle_sample",
    "rle_encode",
    "CropGeometry",
    "brush_strokes",
    "draw_strokes",
    "brush_mask",
    "box_mask",
    "border_mask",
    "opening",
    "MaskPolicy",
    "MASK_SOURCES",
    "MASK_SPACES",
    "hole_fraction_stats",
]

MASK_SOURCES = ("segmentation", "brush", "box", "border")
MASK_SPACES = ("original", "crop")


class RLEError(UserError, ValueError):
    """Run-length data that does not describe a mask of the stated size; ``out_of_bounds``: its runs reach
    outside the mask (a start below 1, a negative length, past the last pixel), else it is malformed."""

    def __init__(self, message: str, out_of_bounds: bool = False):
        super().__init__(message)
        self.out_of_bounds = out_of_bounds


# Past any mask's last pixel, and small enough that a start plus a length stays inside int64: values beyond it
# (JSON allows any integer, and 1e400 is infinity) are clipped to it before any arithmetic, so none wraps around.
_RLE_LIMIT = 2**62


def _runs(rle: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(1-based starts, lengths) as int64, magnitudes above ``_RLE_LIMIT`` clipped to it."""
    arr = np.asarray(rle)
    if arr.ndim != 1 or arr.size % 2:
        raise RLEError(f"run-length data must be a flat list of (start, length) pairs, got {arr.size} values")
    if arr.size and arr.dtype == object and all(type(v) is int for v in arr.tolist()):  # integers past 64 bits
        arr = np.array([min(max(v, -_RLE_LIMIT), _RLE_LIMIT) for v in arr.tolist()], np.int64)
    elif arr.size and not np.issubdtype(arr.dtype, np.integer):
        if (not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all()
                or not np.all(arr == np.round(arr))):
            raise RLEError("run-length values must be integers")
        arr = np.clip(arr, -_RLE_LIMIT, _RLE_LIMIT)
    elif np.issubdtype(arr.dtype, np.unsignedinteger):
        arr = np.minimum(arr, _RLE_LIMIT)
    else:
        arr = np.clip(arr, -_RLE_LIMIT, _RLE_LIMIT)
    arr = arr.astype(np.int64, copy=False)
    return arr[0::2], arr[1::2]


def rle_check(rle: Sequence[int] | np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(0-based starts, lengths) after checking every run lies inside an HxW mask."""
    starts, lengths = _runs(rle)
    if starts.size:
        if starts.min() < 1 or lengths.min() < 0:
            raise RLEError("run-length data has a start below 1 or a negative length", out_of_bounds=True)
        starts = starts - 1
        end = int((starts + lengths).max())
        if end > height * width:
            raise RLEError(f"run-length data reaches pixel {end} of a {height}x{width} mask ({height * width} pixels)",
                           out_of_bounds=True)
    return starts, lengths


def rle_decode(rle: Sequence[int] | np.ndarray, height: int, width: int) -> np.ndarray:
    """The whole HxW uint8 mask (1 = object) from BrushData run-length data (tools and tests; training
    samples only the crop, see :func:`rle_sample`). Vectorised: run starts and ends become +1/-1 marks
    whose running sum is the mask."""
    starts, lengths = rle_check(rle, height, width)
    n = height * width
    keep = lengths > 0
    marks = np.bincount(starts[keep], minlength=n + 1) - np.bincount((starts + lengths)[keep], minlength=n + 1)
    return (np.cumsum(marks[:n]) > 0).astype(np.uint8).reshape((height, width), order="F")


def rle_sample(rle: Sequence[int] | np.ndarray, height: int, width: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The mask at pixels ``(rows[i], cols[j])``: a ``len(rows) x len(cols)`` uint8 array (1 = object).
    ``rows`` and ``cols`` must be non-decreasing (a resize's sample points are).

    What a nearest-neighbour resize of the crop needs, at a cost set by the
    number of runs and the output size, not by the image: a 4000x3000 mask
    sampled into a 512x512 crop costs what a 512x512 one does. The runs are
    merged into disjoint sorted intervals (so overlapping and unsorted runs mean
    what the format's definition says); each interval's ends are located among
    the sampled positions by binary search (column, then row), and the output
    is filled as alternating stretches of 0 and 1 in column-major order.
    """
    starts, lengths = rle_check(rle, height, width)
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    keep = lengths > 0
    if not keep.any() or rows.size * cols.size == 0:
        return np.zeros((rows.size, cols.size), np.uint8)
    order = np.argsort(starts[keep], kind="stable")
    first, last = starts[keep][order], (starts + lengths)[keep][order]
    reach = np.maximum.accumulate(last)
    opens = np.concatenate([[True], first[1:] > reach[:-1]])  # a run that does not touch the ones before it
    begin = first[opens]
    end = reach[np.concatenate([np.flatnonzero(opens)[1:] - 1, [first.size - 1]])]
    columns, repeat = np.unique(cols, return_inverse=True)  # an upsampling repeats columns

    def position(pixel: np.ndarray) -> np.ndarray:
        """How many sampled positions (column-major) lie before each pixel index."""
        col, row = np.divmod(pixel, height)
        c = np.searchsorted(columns, col, side="left")
        here = (c < columns.size) & (columns[np.minimum(c, columns.size - 1)] == col)
        return c * rows.size + np.where(here, np.searchsorted(rows, row, side="left"), 0)

    n = rows.size * columns.size
    bounds = np.empty(2 * begin.size + 2, np.int64)
    bounds[0], bounds[-1] = 0, n
    bounds[1:-1:2], bounds[2:-1:2] = position(begin), position(end)
    values = np.zeros(bounds.size - 1, np.uint8)
    values[1::2] = 1
    inside = np.repeat(values, np.diff(bounds)).reshape(columns.size, rows.size)
    if columns.size != cols.size:
        inside = inside[repeat]
    return cv2.transpose(inside)  # 10x numpy's strided copy of the transpose


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


# ------------------------------------------------------------- the crop


@dataclass(frozen=True)
class CropGeometry:
    """Where a ``size`` x ``size`` training crop lies in its ``height`` x ``width`` original image.

    ``top``/``left`` are the crop's edges and ``span_y``/``span_x`` its extent,
    in original pixels (continuous coordinates: pixel k covers [k, k+1)), so
    crop pixel i has its centre at original row ``top + (i + 0.5) * span_y / size``.
    """

    height: int
    width: int
    top: float
    left: float
    span_y: float
    span_x: float
    size: int

    @property
    def scale(self) -> float:
        """Crop pixels per original pixel (the resize factor)."""
        return self.size / max(self.span_y, self.span_x)

    def _indices(self, start: float, span: float, limit: int, n: int, margin: int) -> tuple[np.ndarray, int]:
        i = np.arange(-margin, n + margin)
        src = np.floor(start + (i + 0.5) * span / n).astype(np.int64)
        inside = (src >= 0) & (src < limit)
        lead = int(np.count_nonzero(~inside[:margin]))
        return src[inside], margin - lead

    def sample_points(self, margin: int = 0):
        """Original (rows, cols) under each crop pixel, nearest neighbour, with up to ``margin`` extra
        pixels on every side where the image extends that far; and the (top, left) margin taken."""
        rows, mt = self._indices(self.top, self.span_y, self.height, self.size, margin)
        cols, ml = self._indices(self.left, self.span_x, self.width, self.size, margin)
        return rows, cols, (mt, ml)

    def to_crop(self, points: np.ndarray, margin_top_left: tuple[int, int] = (0, 0)) -> np.ndarray:
        """(x, y) original pixel coordinates -> crop pixel coordinates (of a canvas with that margin)."""
        sy, sx = self.size / self.span_y, self.size / self.span_x
        out = np.empty_like(points, dtype=np.float64)
        out[:, 0] = (points[:, 0] + 0.5 - self.left) * sx - 0.5 + margin_top_left[1]
        out[:, 1] = (points[:, 1] + 0.5 - self.top) * sy - 0.5 + margin_top_left[0]
        return out


# ------------------------------------------------------------- generators


def brush_strokes(
    height: int,
    width: int,
    rng: np.random.Generator,
    min_strokes: int = 0,
    max_strokes: int = 3,
    max_segments: int = 7,
    mean_angle: float = 2 * math.pi / 5,
    angle_range: float = 2 * math.pi / 15,
    transposed_starts: bool = True,
) -> list[np.ndarray]:
    """The reference's random free-form strokes on an ``height`` x ``width`` canvas, as polylines.

    ``min_strokes``..``max_strokes`` strokes (the reference: ``randint(4)`` = 0-3,
    so a quarter of its masks have no stroke), each a polyline of
    0..``max_segments`` segments from a random start, turning by angles around
    ``mean_angle`` (alternately left and right, spread up to ``angle_range``),
    segment lengths ~ N(r, r // 2) clipped to [0, 2r] with r = sqrt(H^2 + W^2) / 8,
    vertices truncated to whole pixels; then the whole mask is flipped
    vertically and horizontally with p=0.5 each. ``transposed_starts``: the
    reference reads ``h, w = mask.size`` from a PIL image (which is ``(W, H)``),
    so its start points and the clipping of vertices use the transposed box; on
    non-square images that changes where strokes fall (and how many leave the
    canvas), so it is kept by default to match the reference's statistics.

    Returns one ``(n, 2)`` float array of (x, y) vertex coordinates per stroke.
    """
    radius = math.sqrt(height**2 + width**2) / 8
    box_x, box_y = (height, width) if transposed_starts else (width, height)
    strokes = []
    for _ in range(int(rng.integers(min_strokes, max_strokes + 1))):
        n_seg = int(rng.integers(0, max_segments + 1))
        lo = mean_angle - rng.uniform(0, angle_range)
        hi = mean_angle + rng.uniform(0, angle_range)
        turns = rng.uniform(lo, hi, size=n_seg)
        turns[0::2] = 2 * math.pi - turns[0::2]
        lengths = np.clip(rng.normal(radius, radius // 2, size=n_seg), 0, 2 * radius)
        x, y = int(rng.integers(0, box_x)), int(rng.integers(0, box_y))
        points = [(x, y)]
        for angle, length in zip(turns, lengths):
            x = int(np.clip(x + length * math.cos(angle), 0, box_x))
            y = int(np.clip(y + length * math.sin(angle), 0, box_y))
            points.append((x, y))
        strokes.append(np.asarray(points, np.float64))
    flip_y, flip_x = rng.random() < 0.5, rng.random() < 0.5
    for pts in strokes:
        if flip_y:
            pts[:, 1] = height - 1 - pts[:, 1]
        if flip_x:
            pts[:, 0] = width - 1 - pts[:, 0]
    return strokes


_SHIFT = 4  # cv2 drawing with 1/16-pixel precision


_MAX_THICKNESS = 32767  # OpenCV's limit for a line's thickness


def draw_strokes(strokes: Sequence[np.ndarray], stroke_width: float, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise polylines (crop pixel coordinates) ``stroke_width`` wide with round caps at the vertices."""
    canvas = np.zeros(shape, np.uint8)
    thickness = max(1, int(round(stroke_width)))
    if thickness > _MAX_THICKNESS:
        return _draw_wide_strokes(canvas, strokes, thickness / 2)
    radius = int(round(stroke_width / 2 * (1 << _SHIFT)))
    for pts in strokes:
        fixed = np.round(pts * (1 << _SHIFT)).astype(np.int64)
        if np.abs(fixed).max(initial=0) > 2**30:  # far outside any canvas
            continue
        fixed = fixed.astype(np.int32)
        if len(fixed) > 1:
            cv2.polylines(canvas, [fixed], isClosed=False, color=1, thickness=thickness, shift=_SHIFT)
        for px, py in fixed:
            cv2.circle(canvas, (int(px), int(py)), radius, 1, thickness=-1, shift=_SHIFT)
    return canvas


def _draw_wide_strokes(canvas: np.ndarray, strokes: Sequence[np.ndarray], radius: float) -> np.ndarray:
    """Strokes wider than OpenCV draws (a 128 px brush on a 1-2 px image, scaled to the crop): every pixel
    within ``radius`` of a polyline (its vertices included), by distance, a row of the canvas at a time."""
    height, width = canvas.shape
    xs = np.arange(width, dtype=np.float64)
    for pts in strokes:
        pts = np.asarray(pts, np.float64)
        pairs = [(pts[0], pts[0])] if len(pts) == 1 else list(zip(pts[:-1], pts[1:]))
        for (ax, ay), (bx, by) in pairs:
            dx, dy = bx - ax, by - ay
            length2 = dx * dx + dy * dy
            for y in range(height):
                px, py = xs - ax, y - ay
                t = np.clip((px * dx + py * dy) / length2, 0, 1) if length2 else 0.0
                inside = (px - t * dx) ** 2 + (py - t * dy) ** 2 <= radius * radius
                canvas[y, inside] = 1
    return canvas


def brush_mask(height: int, width: int, rng: np.random.Generator, stroke_width: float = 128, **stroke_kw) -> np.ndarray:
    """Random strokes on a whole ``height`` x ``width`` canvas; 1 = stroke (the hole). See :func:`brush_strokes`."""
    return draw_strokes(brush_strokes(height, width, rng, **stroke_kw), stroke_width, (height, width))


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
    """Erode then dilate with a ``kernel`` x ``kernel`` square (removes parts thinner than the kernel)."""
    if kernel <= 1:
        return mask
    return cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((kernel, kernel), np.uint8))


# ------------------------------------------------------------------ policy


@dataclass(frozen=True)
class MaskPolicy:
    """Where each sample's mask comes from, and the reference's random edits, in the training crop.

    ``weights`` picks the source per sample (normalised): ``segmentation`` (one
    of the sample's masks at random, all-ones when it has none; the reference's
    segmentation variant), ``brush`` (random strokes, :func:`brush_strokes`; the
    random-mask variant), ``box`` and ``border`` (outpainting). Then, as the
    reference does, with ``opening_p`` an opening with an ``opening_kernel``
    square, and with ``invert_p`` the keep and hole regions swap.

    ``space="original"`` (the reference): the stroke geometry (radius from the
    original image's diagonal, ``brush["stroke_width"]``) and the opening kernel
    are in original-image pixels and scale with the resize to the crop.
    ``space="crop"``: they are in training-resolution pixels, as if the crop were
    the image (more and larger holes on large images; the reference's numbers
    then describe a 512 px image whatever the source size).

    Segmentation regions are *kept* (the object is the known part, so the model
    paints around it) and become the hole after inversion; brush strokes, boxes
    and borders are holes.
    """

    weights: Mapping[str, float] = field(default_factory=lambda: {"segmentation": 1.0})
    opening_p: float = 0.3
    opening_kernel: int = 8
    invert_p: float = 0.5
    space: str = "original"
    brush: Mapping[str, float] = field(default_factory=dict)  # brush_strokes() keywords + stroke_width

    def __post_init__(self):
        unknown = set(self.weights) - set(MASK_SOURCES)
        if unknown:
            raise ValueError(f"unknown mask sources {sorted(unknown)}; choose from {MASK_SOURCES}")
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError(f"mask source weights must be >= 0 with a positive sum, got {dict(self.weights)}")
        for name, p in (("opening_p", self.opening_p), ("invert_p", self.invert_p)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if self.space not in MASK_SPACES:
            raise ValueError(f"mask space must be one of {MASK_SPACES}, got {self.space!r}")

    @functools.cached_property
    def _sources(self) -> tuple[list[str], np.ndarray]:
        names = [n for n in MASK_SOURCES if self.weights.get(n, 0) > 0]
        cumulative = np.cumsum([self.weights[n] for n in names], dtype=np.float64)
        return names, cumulative / cumulative[-1]

    def choose(self, rng: np.random.Generator) -> str:
        names, cumulative = self._sources
        return names[min(int(np.searchsorted(cumulative, rng.random(), side="right")), len(names) - 1)]

    def _kernel(self, geometry: CropGeometry) -> int:
        if self.space == "crop":
            return self.opening_kernel
        return max(1, int(round(self.opening_kernel * geometry.scale)))

    def keep_mask(self, source: str, geometry: CropGeometry, rng: np.random.Generator,
                  masks: Sequence | None = None) -> np.ndarray:
        """The crop's keep mask (size x size uint8, 1 = known) for a sample whose mask comes from ``source``.

        ``masks``: the record's run-length masks (segmentation). The opening sees
        the image around the crop as the reference's full-size opening does.
        """
        size = geometry.size
        kernel = self._kernel(geometry)
        do_open = bool(self.opening_p) and rng.random() < self.opening_p and kernel > 1
        margin = kernel if do_open else 0
        if source == "segmentation":
            rows, cols, (mt, ml) = geometry.sample_points(margin)
            if masks:
                rle = masks[int(rng.integers(len(masks)))]
                keep = rle_sample(rle, geometry.height, geometry.width, rows, cols)
            else:  # no segmentation: the whole image is the "object" (as the reference does)
                keep = np.ones((rows.size, cols.size), np.uint8)
        elif source == "brush":
            keep, (mt, ml) = self._brush(geometry, rng, margin)
            keep = 1 - keep
        elif source in ("box", "border"):
            region = (box_mask if source == "box" else border_mask)(size, size, rng)
            keep, (mt, ml) = 1 - region, (0, 0)
        else:
            raise ValueError(f"unknown mask source {source!r}; choose from {MASK_SOURCES}")
        if do_open:
            keep = opening(keep, kernel)
        keep = keep[mt : mt + size, ml : ml + size]
        if self.invert_p and rng.random() < self.invert_p:
            keep = 1 - keep
        return np.ascontiguousarray(keep, dtype=np.uint8)

    def _brush(self, geometry: CropGeometry, rng: np.random.Generator, margin: int):
        params = dict(self.brush)
        width = float(params.pop("stroke_width", 128))
        if self.space == "crop":
            size = geometry.size
            return draw_strokes(brush_strokes(size, size, rng, **params), width, (size, size)), (0, 0)
        rows, cols, (mt, ml) = geometry.sample_points(margin)
        strokes = brush_strokes(geometry.height, geometry.width, rng, **params)
        strokes = [geometry.to_crop(s, (mt, ml)) for s in strokes]
        return draw_strokes(strokes, width * geometry.scale, (rows.size, cols.size)), (mt, ml)


# -------------------------------------------------------------- statistics


def hole_fraction_stats(hole_fractions: Sequence[float]) -> dict:
    """Statistics of per-sample hole fractions (hole = keep 0): their mean, the fraction of samples with no
    hole (under 0.1 % of the crop), with no known pixel (hole over 99.9 %), and a 10-bin histogram of
    counts over [0, 0.1), ..., [0.9, 1.0]."""
    fractions = np.asarray(hole_fractions, np.float64)
    if fractions.size == 0:
        return {"samples": 0, "hole_fraction_mean": None, "no_hole_fraction": None, "all_hole_fraction": None,
                "hole_fraction_histogram": [0] * 10}
    bins = np.clip((fractions * 10).astype(np.int64), 0, 9)
    return {
        "samples": int(fractions.size),
        "hole_fraction_mean": round(float(fractions.mean()), 4),
        "no_hole_fraction": round(float(np.mean(fractions < 0.001)), 4),
        "all_hole_fraction": round(float(np.mean(fractions > 0.999)), 4),
        "hole_fraction_histogram": np.bincount(bins, minlength=10).tolist(),
    }
