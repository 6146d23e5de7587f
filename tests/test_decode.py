"""The stream's JPEG decode: simplejpeg (when installed) and the OpenCV fallback give the same pixels, the
reduced-scale decode lands the crop where the full decode would, and images are written into the batch."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import torch
from bad_shards import members
from PIL import Image

import data.records as records
from data.brushdata import BrushDataLoader, DataConfig, MaskConfig
from data.masks import MaskPolicy
from data.records import BadSample, RawRecord, Record, decode_image, decode_pixels, parse_record
from data.transforms import crop_geometry, crop_window, make_example
from data.writer import ShardWriter, brushdata_members, encode_jpeg

simplejpeg = pytest.importorskip("simplejpeg", reason="the fast decoder is optional")


def _smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A photo-like RGB image: smooth gradients and a few hard edges (so misplaced crops show)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([127 + 100 * np.sin(xx / w * 5 + c) * np.cos(yy / h * 4 - c) for c in range(3)], -1)
    for _ in range(6):
        y, x, r = int(rng.integers(h)), int(rng.integers(w)), int(rng.integers(5, max(6, min(h, w) // 5)))
        cv2.circle(img, (x, y), r, [float(v) for v in rng.integers(0, 255, 3)], -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def _record(jpeg: bytes, h: int, w: int) -> Record:
    return Record("shard.tar", "k", 0, Image.open(io.BytesIO(jpeg)), jpeg, h, w, "", [])


def _pil_jpeg(img: np.ndarray, mode: str = "RGB", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).convert(mode).save(buf, format="JPEG", **kw)
    return buf.getvalue()


@pytest.fixture
def no_simplejpeg(monkeypatch):
    monkeypatch.setattr(records, "_simplejpeg", None)


@pytest.mark.parametrize("variant", ["420", "444", "gray", "progressive", "cmyk"])
@pytest.mark.parametrize("min_size", [None, (60, 50), (30, 25), (15, 12)])  # factors 1, 2, 4, 8
def test_both_decoders_give_the_same_pixels_at_every_scale(variant, min_size, monkeypatch):
    img = _smooth_image(101, 122)
    kw = {"420": {}, "444": {"subsampling": 0}, "gray": {}, "progressive": {"progressive": True}, "cmyk": {}}[variant]
    mode = {"gray": "L", "cmyk": "CMYK"}.get(variant, "RGB")
    record = _record(_pil_jpeg(img, mode, **kw), 101, 122)
    fast, order = decode_pixels(record, min_size)
    assert records.jpeg_decoder() == "simplejpeg"
    assert order == "RGB" and fast.shape[2] == 3
    if min_size is not None:
        assert fast.shape[1] >= min_size[0] and fast.shape[0] >= min_size[1]
    monkeypatch.setattr(records, "_simplejpeg", None)
    assert records.jpeg_decoder() == "opencv"
    slow, order = decode_pixels(record, min_size)
    assert order == "BGR"
    assert np.array_equal(fast, slow[..., ::-1])  # the same libjpeg-turbo settings: bit-identical
    assert np.array_equal(decode_image(record, min_size), slow)  # decode_image stays BGR


def _exif_jpeg(img: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_exif_orientation_is_applied_as_the_reference_decodes(orientation, monkeypatch):
    """The reference decodes with cv2.imdecode(..., IMREAD_COLOR), which turns the image by its EXIF orientation;
    height/width and the masks describe that. Both decoders give its pixels, at every scale; the members must
    give its size (a 90-degree turn with the stored size is a size_mismatch, as it breaks the reference)."""
    data = _exif_jpeg(_smooth_image(48, 72), orientation)
    buffer = np.frombuffer(data, np.uint8)
    shown = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    h, w = shown.shape[:2]
    assert (h, w) == ((72, 48) if orientation >= 5 else (48, 72))
    record = parse_record(RawRecord("s.tar", "k", 0, {**members(h, w), "image": data}))
    assert record.orientation == orientation
    for fallback in (False, True):
        if fallback:
            monkeypatch.setattr(records, "_simplejpeg", None)
        for k, flag in ((1, cv2.IMREAD_COLOR), (2, cv2.IMREAD_REDUCED_COLOR_2), (4, cv2.IMREAD_REDUCED_COLOR_4),
                        (8, cv2.IMREAD_REDUCED_COLOR_8)):
            assert np.array_equal(decode_image(record, (w // k, h // k)), cv2.imdecode(buffer, flag)), (fallback, k)
    if orientation >= 5:
        with pytest.raises(BadSample, match="EXIF orientation") as info:
            parse_record(RawRecord("s.tar", "k", 0, {**members(48, 72), "image": data}))
        assert info.value.reason == "size_mismatch"


@pytest.mark.parametrize("fallback", [False, True])
def test_damaged_jpeg_data_is_a_bad_image_with_either_decoder(fallback, monkeypatch):
    if fallback:
        monkeypatch.setattr(records, "_simplejpeg", None)
    jpeg = encode_jpeg(_smooth_image(64, 80))
    for data in (jpeg[: len(jpeg) // 2], jpeg[:3] + b"\x00" * 200):
        with pytest.raises(BadSample) as info:
            decode_pixels(Record("s", "k", 0, None, data, 64, 80, "", []))
        assert info.value.reason == "bad_image"


@pytest.mark.parametrize("size", [(600, 800), (1024, 1366), (300, 200), (90, 120)])
def test_the_reduced_scale_crop_is_the_full_size_crop_resized(size):
    """The image the stream makes (decoded at 1/2 or 1/4 where the size allows) is the crop window of the
    full-size decode that :func:`crop_geometry` names (the window the masks are sampled in), resized:
    within JPEG-scaling tolerance, so image and mask stay aligned."""
    h, w = size
    resolution = 64 if min(h, w) < 512 else 256
    record = _record(encode_jpeg(_smooth_image(h, w, seed=h)), h, w)
    full, _ = decode_pixels(record)
    policy = MaskPolicy(weights={"box": 1.0}, opening_p=0.0, invert_p=0.0)
    for seed in range(3):
        ex = make_example(record, resolution, policy, np.random.default_rng(seed))
        # the same window, recomputed from a full-size decode's point of view
        short = min(h, w)
        target = (int(np.ceil(w * resolution / short)), int(np.ceil(h * resolution / short)))
        dh, dw = decode_pixels(record, target if short > resolution else None)[0].shape[:2]
        window, top_left = crop_window(dh, dw, resolution, np.random.default_rng(seed), True)
        assert tuple(ex.crop_top_left) == top_left
        g = crop_geometry(h, w, (dh, dw), window, resolution)
        t, lft = round(g.top), round(g.left)
        side = round(g.span_y)
        assert abs(g.top - t) < 1e-9 and abs(g.span_y - side) < 1e-9  # whole original pixels
        ref = full[t : t + side, lft : lft + side]
        interp = cv2.INTER_AREA if side >= 2 * resolution else cv2.INTER_CUBIC  # the stream's rule
        ref = cv2.resize(ref, (resolution, resolution), interpolation=interp)
        diff = np.abs(ex.image.astype(np.int16) - ref.astype(np.int16))
        if (dh, dw) == (h, w):  # decoded at full size: exactly this
            assert diff.max() == 0
        assert diff.mean() < 1.5, (size, seed, diff.mean())  # measured 0.2-0.95: JPEG scaling vs area averaging
        # one pixel of misalignment at these hard edges costs far more than the scaling does
        shifted = np.abs(ex.image[:, 1:].astype(np.int16) - ref[:, :-1].astype(np.int16)).mean()
        assert shifted > 2 * diff.mean()


def _shards(folder, sizes):
    with ShardWriter(folder, prefix="d", max_samples=100) as writer:
        for i, (h, w) in enumerate(sizes):
            img = _smooth_image(h, w, seed=i)
            mask = (_smooth_image(h, w, seed=i + 50)[..., 0] > 127).astype(np.uint8)
            writer.write(f"s{i:03d}", brushdata_members(encode_jpeg(img), h, w, f"caption {i}", [mask]))


def _batches(folder, **kw):
    cfg = DataConfig(shards=[str(folder)], resolution=64, batch_size=3, num_workers=0, shuffle_buffer=4, seed=1,
                     mask=MaskConfig(segmentation=1.0, brush=1.0), **kw)
    return list(BrushDataLoader(cfg))


def test_the_stream_is_the_same_without_simplejpeg(tmp_path, monkeypatch):
    # sizes that decode at 1/4, 1/2 and full size (with a down- and an up-scaling resize)
    _shards(tmp_path, [(300, 400), (150, 200), (90, 120), (64, 64), (48, 60), (130, 97), (256, 256)])
    fast = _batches(tmp_path)
    monkeypatch.setattr(records, "_simplejpeg", None)
    slow = _batches(tmp_path)
    assert len(fast) == len(slow) == 3
    for a, b in zip(fast, slow):
        assert a["key"] == b["key"]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["keep_mask"], b["keep_mask"])


def test_images_are_written_into_the_batch_and_a_short_batch_is_filled_up(tmp_path):
    _shards(tmp_path, [(90, 120)] * 7)
    batches = _batches(tmp_path)
    assert [len(b["key"]) for b in batches] == [3, 3, 3]  # the last: 1 sample + 2 blank ones of weight 0
    assert [b["weight"].tolist() for b in batches] == [[1, 1, 1], [1, 1, 1], [1, 0, 0]]
    for b in batches:
        assert b["image"].shape == (3, 3, 64, 64)
        assert b["image"].untyped_storage().nbytes() == 3 * 64 * 64 * 3  # each batch its own memory
    assert batches[-1]["image"][0].any() and not batches[-1]["image"][1:].any()
    record = _record(encode_jpeg(_smooth_image(90, 120)), 90, 120)
    out = np.zeros((64, 64, 3), np.uint8)
    policy = MaskPolicy(weights={"box": 1.0})
    ex = make_example(record, 64, policy, np.random.default_rng(0), out=out)
    assert ex.image is out and out.any()
    assert np.array_equal(make_example(record, 64, policy, np.random.default_rng(0)).image, out)
