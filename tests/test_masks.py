"""Run-length codes, brush strokes, boxes, borders, opening, the mask policy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from data.masks import (
    MaskPolicy,
    RLEError,
    border_mask,
    box_mask,
    brush_mask,
    opening,
    rle_decode,
    rle_encode,
)


def naive_decode(rle, h, w):
    """The format's definition, run by run (an oracle independent of the vectorised code)."""
    flat = np.zeros(h * w, np.uint8)
    for start, length in zip(rle[0::2], rle[1::2]):
        flat[start - 1 : start - 1 + length] = 1
    return flat.reshape((h, w), order="F")


def test_layout_is_column_major_and_one_based():
    mask = rle_decode([1, 2, 6, 1], 2, 3)  # pixels 0,1 (column 0) and 5 (row 1, column 2)
    assert mask.tolist() == [[1, 0, 0], [1, 0, 1]]
    assert rle_encode(mask) == [1, 2, 6, 1]


@pytest.mark.parametrize("h, w", [(1, 1), (1, 9), (7, 1), (5, 8), (13, 4), (32, 17)])
def test_round_trips_and_column_windows(h, w):
    rng = np.random.default_rng(h * 100 + w)
    cases = [np.zeros((h, w), np.uint8), np.ones((h, w), np.uint8)]
    for corner in [(0, 0), (h - 1, w - 1), (0, w - 1), (h - 1, 0)]:
        m = np.zeros((h, w), np.uint8)
        m[corner] = 1
        cases.append(m)
    cases += [(rng.random((h, w)) < p).astype(np.uint8) for p in (0.1, 0.5, 0.9)]
    for m in cases:
        rle = rle_encode(m)
        assert np.array_equal(rle_decode(rle, h, w), m)
        assert np.array_equal(naive_decode(rle, h, w), m)
        x0 = int(rng.integers(0, w + 1))
        x1 = int(rng.integers(x0, w + 1))
        assert np.array_equal(rle_decode(rle, h, w, columns=(x0, x1)), m[:, x0:x1])
    assert rle_encode(np.zeros((h, w), np.uint8)) == []
    assert rle_encode(np.ones((h, w), np.uint8)) == [1, h * w]


def test_overlapping_and_unsorted_runs_decode_like_the_definition():
    rle = [10, 5, 2, 3, 12, 6]
    assert np.array_equal(rle_decode(rle, 5, 5), naive_decode(rle, 5, 5))


def test_bad_run_length_data_is_refused():
    with pytest.raises(RLEError, match="reaches pixel 13 of a 3x4"):
        rle_decode([10, 4], 3, 4)
    with pytest.raises(RLEError, match="pairs"):
        rle_decode([1, 2, 3], 3, 4)
    with pytest.raises(RLEError, match="below 1"):
        rle_decode([0, 2], 3, 4)
    assert rle_decode([9, 4], 3, 4).sum() == 4  # exactly to the last pixel is fine


def test_brush_masks_are_deterministic_per_seed_with_bounded_coverage():
    a = brush_mask(256, 256, np.random.default_rng(5), stroke_width=64)
    b = brush_mask(256, 256, np.random.default_rng(5), stroke_width=64)
    c = brush_mask(256, 256, np.random.default_rng(6), stroke_width=64)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert set(np.unique(a)) <= {0, 1}
    coverage = [brush_mask(256, 256, np.random.default_rng(s), stroke_width=64).mean() for s in range(100)]
    assert 0 < min(coverage) and max(coverage) < 0.9
    assert 0.05 < np.mean(coverage) < 0.5


def test_a_stroke_without_segments_is_a_round_dot_of_the_stroke_width():
    dot = brush_mask(200, 200, np.random.default_rng(0), min_strokes=1, max_strokes=1, max_segments=0, stroke_width=40)
    # A disc of radius 20, possibly cut by the border.
    assert 0 < dot.sum() <= math.pi * 21 * 21
    ys, xs = np.nonzero(dot)
    assert np.ptp(ys) <= 41 and np.ptp(xs) <= 41


def test_box_and_border_regions():
    rng = np.random.default_rng(0)
    for _ in range(50):
        box = box_mask(64, 48, rng, 0.1, 0.6)
        ys, xs = np.nonzero(box)
        assert box.sum() == (np.ptp(ys) + 1) * (np.ptp(xs) + 1)  # a solid rectangle
        assert 0.01 <= box.mean() <= 0.36 + 1e-9
        border = border_mask(64, 48, rng, 0.1, 0.4)
        ys, xs = np.nonzero(border == 0)  # the kept part is one centred rectangle
        assert (border == 0).sum() == (np.ptp(ys) + 1) * (np.ptp(xs) + 1)
        assert border[32, 24] == 0 and 0 < border.mean() < 0.64


def test_opening_removes_thin_parts():
    m = np.zeros((40, 40), np.uint8)
    m[5:25, 5:25] = 1
    m[30, :] = 1  # a 1-pixel line
    out = opening(m, 8)
    assert out[30].sum() == 0 and out[10:20, 10:20].all()


def test_policy_sources_keep_convention_and_inversion():
    rng = np.random.default_rng(0)
    region = np.zeros((8, 8), np.uint8)
    region[2:6, 2:6] = 1
    plain = MaskPolicy(opening_p=0, invert_p=0)
    assert np.array_equal(plain.keep_mask("segmentation", region, rng), region)  # the object is kept
    assert np.array_equal(plain.keep_mask("brush", region, rng), 1 - region)  # a stroke is the hole
    inverted = MaskPolicy(opening_p=0, invert_p=1)
    assert np.array_equal(inverted.keep_mask("segmentation", region, rng), 1 - region)

    mix = MaskPolicy(weights={"segmentation": 1, "brush": 3})
    picks = [mix.choose(rng) for _ in range(4000)]
    assert 0.70 < picks.count("brush") / len(picks) < 0.80
    with pytest.raises(ValueError, match="unknown mask sources"):
        MaskPolicy(weights={"scribble": 1})
    with pytest.raises(ValueError, match="positive sum"):
        MaskPolicy(weights={"brush": 0})
