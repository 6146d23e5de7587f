"""Run-length codes, brush strokes, boxes, borders, opening, the mask policy."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from data.masks import (
    CropGeometry,
    MaskPolicy,
    RLEError,
    border_mask,
    box_mask,
    brush_mask,
    brush_strokes,
    draw_strokes,
    hole_fraction_stats,
    opening,
    rle_decode,
    rle_encode,
    rle_sample,
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
        rows = np.sort(rng.integers(0, h, size=int(rng.integers(1, 2 * h + 1))))
        cols = np.sort(rng.integers(0, w, size=int(rng.integers(1, 2 * w + 1))))
        assert np.array_equal(rle_sample(rle, h, w, rows, cols), m[np.ix_(rows, cols)])
    assert rle_encode(np.zeros((h, w), np.uint8)) == []
    assert rle_encode(np.ones((h, w), np.uint8)) == [1, h * w]


def test_overlapping_and_unsorted_runs_decode_like_the_definition():
    rle = [10, 5, 2, 3, 12, 6, 1, 20, 24, 0]
    assert np.array_equal(rle_decode(rle, 5, 5), naive_decode(rle, 5, 5))
    every = np.arange(5)
    assert np.array_equal(rle_sample(rle, 5, 5, every, every), naive_decode(rle, 5, 5))


def test_bad_run_length_data_is_refused():
    with pytest.raises(RLEError, match="reaches pixel 13 of a 3x4"):
        rle_decode([10, 4], 3, 4)
    with pytest.raises(RLEError, match="pairs"):
        rle_decode([1, 2, 3], 3, 4)
    with pytest.raises(RLEError, match="below 1"):
        rle_decode([0, 2], 3, 4)
    assert rle_decode([9, 4], 3, 4).sum() == 4  # exactly to the last pixel is fine


def test_run_length_values_past_64_bits_or_infinite_are_refused_not_wrapped():
    # JSON allows any integer (and 1e400 is infinity): numpy's int64 arithmetic wrapped such values around, so
    # [2, 2**63 - 1] passed the bounds check (start + length overflowed to a negative end) and [1e400, 5] crashed
    # the worker later in rle_sample (ValueError: repeats may not contain negative values).
    every = np.arange(4)
    for rle in ([2, 2**63 - 1], [2**63 - 1, 1], [2**64 - 1, 1], [1, 2**64 - 1], [10**30, 1], [1, 1, 1, -(10**30)],
                [2**62, 2**62]):
        with pytest.raises(RLEError) as info:
            rle_sample(rle, 3, 4, every[:3], every)
        assert info.value.out_of_bounds, rle
    for rle in ([float("inf"), 5], [1, float("nan")], [1e400, 5], [1.5, 2]):
        with pytest.raises(RLEError, match="integers") as info:
            rle_sample(rle, 3, 4, every[:3], every)
        assert not info.value.out_of_bounds
    assert rle_decode([9.0, 4.0], 3, 4).sum() == 4


def test_brush_masks_are_deterministic_per_seed_with_bounded_coverage():
    a = brush_mask(256, 256, np.random.default_rng(5), stroke_width=64, min_strokes=1)
    b = brush_mask(256, 256, np.random.default_rng(5), stroke_width=64, min_strokes=1)
    c = brush_mask(256, 256, np.random.default_rng(6), stroke_width=64, min_strokes=1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert set(np.unique(a)) <= {0, 1}
    coverage = [brush_mask(256, 256, np.random.default_rng(s), stroke_width=64, min_strokes=1).mean() for s in range(100)]
    assert 0 < min(coverage) and max(coverage) < 0.9
    assert 0.05 < np.mean(coverage) < 0.5


def test_the_reference_stroke_count_is_zero_to_three():
    counts = [len(brush_strokes(512, 512, np.random.default_rng(s))) for s in range(400)]
    assert set(counts) == {0, 1, 2, 3}
    assert 0.19 < counts.count(0) / len(counts) < 0.31  # randint(4): a quarter of the masks have no stroke
    assert not brush_mask(512, 512, np.random.default_rng(int(np.argmin(counts)))).any()


def test_transposed_starts_follow_the_reference_quirk_on_tall_images():
    # On a 768 x 256 (H x W) canvas the reference draws start x in [0, H) and y in [0, W): starts
    # fall right of the image and only in the top third (before the random flips).
    starts = np.array([s[0] for seed in range(300) for s in brush_strokes(768, 256, np.random.default_rng(seed))])
    xs = starts[:, 0]
    flipped_x = (xs > 255) | (xs < 0)
    assert flipped_x.mean() > 0.4  # two thirds of the box lies outside the image's columns (mirrored by flips)
    plain = np.array([s[0] for seed in range(300)
                      for s in brush_strokes(768, 256, np.random.default_rng(seed), transposed_starts=False)])
    assert ((plain[:, 0] >= 0) & (plain[:, 0] < 256) & (plain[:, 1] >= 0) & (plain[:, 1] < 768)).all()


def test_a_stroke_without_segments_is_a_round_dot_of_the_stroke_width():
    dot = brush_mask(200, 200, np.random.default_rng(0), min_strokes=1, max_strokes=1, max_segments=0, stroke_width=40)
    assert dot.any()
    # A disc of radius 20, possibly cut by the border.
    assert 0 < dot.sum() <= math.pi * 21 * 21
    ys, xs = np.nonzero(dot)
    assert np.ptp(ys) <= 41 and np.ptp(xs) <= 41


def test_brush_masks_on_images_of_one_or_two_pixels():
    # The reference's 128 px brush on a 1-2 px image, scaled to a 512 px crop, is 32768-65536 px wide: past
    # OpenCV's limit for a line (32767): cv2.polylines raised, and the loader worker with it.
    policy = MaskPolicy(weights={"brush": 1}, opening_p=0, invert_p=0, brush={"min_strokes": 1})
    for size in (1, 2):  # the crop is the whole image, and every stroke covers it
        geometry = CropGeometry(size, size, 0.0, 0.0, float(size), float(size), 512)
        assert geometry.scale * 128 > 32767
        for seed in range(8):
            assert not policy.keep_mask("brush", geometry, np.random.default_rng(seed)).any()
    tall = CropGeometry(3000, 2, 0.0, 0.0, 2.0, 2.0, 512)
    holes = [1 - policy.keep_mask("brush", tall, np.random.default_rng(seed)).mean() for seed in range(32)]
    assert {0.0, 1.0} <= set(holes)  # strokes elsewhere on the 3000 px column miss the crop, others cover it


def test_strokes_wider_than_opencv_draws_agree_with_it_below_its_limit():
    from data.masks import _draw_wide_strokes

    rng = np.random.default_rng(0)
    r = 16000
    for _ in range(5):  # one edge of the stroke crosses the 200 x 300 canvas
        angle = rng.uniform(0, 2 * math.pi)
        normal, along = np.array([math.cos(angle), math.sin(angle)]), np.array([-math.sin(angle), math.cos(angle)])
        mid = np.array([150.0, 100.0]) + normal * (r + rng.uniform(-80, 80))
        strokes = [np.array([mid - along * 2000, mid + along * 2000, mid + along * 3000 + normal * 1500])]
        by_opencv = draw_strokes(strokes, 2 * r - 2, (200, 300))
        by_distance = _draw_wide_strokes(np.zeros((200, 300), np.uint8), strokes, r - 1)
        assert 0.05 < by_opencv.mean() < 0.95
        assert (by_opencv == by_distance).mean() > 0.99


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


def _identity(h, w):
    return CropGeometry(h, w, 0.0, 0.0, float(h), float(w), h)


def test_policy_sources_keep_convention_and_inversion():
    rng = np.random.default_rng(0)
    region = np.zeros((8, 8), np.uint8)
    region[2:6, 2:6] = 1
    rle = rle_encode(region)
    plain = MaskPolicy(opening_p=0, invert_p=0)
    assert np.array_equal(plain.keep_mask("segmentation", _identity(8, 8), rng, [rle]), region)  # the object is kept
    assert plain.keep_mask("segmentation", _identity(8, 8), rng, []).all()  # no masks: the whole image
    inverted = MaskPolicy(opening_p=0, invert_p=1)
    assert np.array_equal(inverted.keep_mask("segmentation", _identity(8, 8), rng, [rle]), 1 - region)
    strokes = MaskPolicy(weights={"brush": 1}, opening_p=0, invert_p=0, brush={"min_strokes": 2, "stroke_width": 3})
    keep = strokes.keep_mask("brush", _identity(8, 8), rng)
    assert keep.min() == 0  # a stroke is the hole

    mix = MaskPolicy(weights={"segmentation": 1, "brush": 3})
    picks = [mix.choose(rng) for _ in range(4000)]
    assert 0.70 < picks.count("brush") / len(picks) < 0.80
    with pytest.raises(ValueError, match="unknown mask sources"):
        MaskPolicy(weights={"scribble": 1})
    with pytest.raises(ValueError, match="positive sum"):
        MaskPolicy(weights={"brush": 0})


def test_segmentation_in_a_crop_is_the_resized_crop_of_the_mask():
    # A 300 x 400 mask, a crop at (50, 120) of side 200 resized to 100 px: sampling the run-length data
    # equals decoding it whole, cropping and resizing by nearest neighbour.
    rng = np.random.default_rng(3)
    full = (rng.random((30, 40)) < 0.4).astype(np.uint8).repeat(10, 0).repeat(10, 1)
    geometry = CropGeometry(300, 400, 50.0, 120.0, 200.0, 200.0, 100)
    policy = MaskPolicy(opening_p=0, invert_p=0)
    keep = policy.keep_mask("segmentation", geometry, rng, [rle_encode(full)])
    expected = full[50:250, 120:320][1::2, 1::2]
    assert keep.shape == (100, 100) and np.array_equal(keep, expected)


def test_opening_in_the_crop_equals_opening_the_whole_image_then_cropping():
    rng = np.random.default_rng(4)
    for _ in range(20):
        full = (rng.random((48, 64)) < 0.5).astype(np.uint8).repeat(4, 0).repeat(4, 1)  # 192 x 256, ragged edges
        top, left = int(rng.integers(0, 64)), int(rng.integers(0, 128))
        geometry = CropGeometry(192, 256, float(top), float(left), 128.0, 128.0, 128)
        keep = MaskPolicy(opening_p=1, invert_p=0, opening_kernel=8).keep_mask("segmentation", geometry, rng,
                                                                               [rle_encode(full)])
        assert np.array_equal(keep, opening(full, 8)[top:top + 128, left:left + 128])


def test_strokes_scale_with_the_resize_and_only_the_crop_is_drawn():
    # A 3000 x 4000 image: strokes drawn in the 512 px crop match drawing them on the whole image,
    # resizing and cropping, sample by sample (the crop never allocates the 12 M pixel canvas).
    from data.transforms import crop_geometry, crop_window

    policy = MaskPolicy(weights={"brush": 1}, opening_p=0, invert_p=0, brush={"min_strokes": 1})
    for seed in range(6):
        rng = np.random.default_rng(seed)
        window, _ = crop_window(3000, 4000, 512, rng)
        geometry = crop_geometry(3000, 4000, (3000, 4000), window, 512)
        state = rng.bit_generator.state
        keep = policy.keep_mask("brush", geometry, rng)
        rng.bit_generator.state = state
        strokes = brush_strokes(3000, 4000, rng, min_strokes=1)
        (y0, x0, side) = window
        whole = draw_strokes(strokes, 128, (3000, 4000))[y0:y0 + side, x0:x0 + side]
        resized = cv2.resize(whole, (512, 512), interpolation=cv2.INTER_AREA) > 0.5
        assert abs((1 - keep).mean() - resized.mean()) < 0.01, seed


def test_the_opening_kernel_scales_with_the_resize():
    # The reference opens with 8x8 at the original size: a 12 px wide gap of kept pixels survives there,
    # and in a crop that halves the image it is 6 px wide and must survive too (an unscaled 8 px kernel
    # would remove it).
    full = np.zeros((400, 400), np.uint8)
    full[:, 194:206] = 1  # a 12 px band kept, the rest is the object's outside (hole after "segmentation")
    geometry = CropGeometry(400, 400, 0.0, 0.0, 400.0, 400.0, 200)
    policy = MaskPolicy(opening_p=1, invert_p=0)
    keep = policy.keep_mask("segmentation", geometry, np.random.default_rng(0), [rle_encode(full)])
    assert keep.sum() == 200 * 6 and keep[:, 96:104].sum() == 200 * 6  # (cv2's even kernels shift by a pixel)
    crop_space = MaskPolicy(opening_p=1, invert_p=0, space="crop")
    assert crop_space.keep_mask("segmentation", geometry, np.random.default_rng(0), [rle_encode(full)]).sum() == 0


def test_hole_fraction_statistics():
    keep = [np.ones((10, 10)), np.zeros((10, 10)), np.pad(np.zeros((5, 10)), ((0, 5), (0, 0)), constant_values=1)]
    stats = hole_fraction_stats([1 - k.mean() for k in keep])
    assert stats["hole_fraction_mean"] == 0.5 and stats["no_hole_fraction"] == round(1 / 3, 4)
    assert stats["all_hole_fraction"] == round(1 / 3, 4)
    assert stats["hole_fraction_histogram"] == [1, 0, 0, 0, 0, 1, 0, 0, 0, 1]
