"""One checked record -> one training example (the reference recipe, docs/reference.md section 5).

Per sample: a square crop of the image resized so its short side equals the
resolution (random or centred), the mask source and its keep mask in that crop
(opening and inversion included, with the reference's statistics: see
:class:`data.masks.MaskPolicy`), caption dropout. Output is uint8 (normalising
to [-1, 1] happens on the device, see :func:`data.batch.model_inputs`).

Only the crop window is worked on: the JPEG is decoded at the smallest DCT
scale that still covers the target size (straight into RGB where simplejpeg
is installed) and one resize brings it to the resolution, written into the
batch's memory when the caller gives it (``out``); masks are sampled or drawn
directly at the crop's pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from data.masks import CropGeometry, MaskPolicy
from data.records import Record, decode_pixels

__all__ = ["Example", "make_example", "crop_window", "crop_geometry"]


@dataclass
class Example:
    image: np.ndarray  # RxRx3 uint8 (the batch holds a channels-first view of it)
    keep_mask: np.ndarray  # 1xRxR uint8, 1 = known pixel
    caption: str
    original_size: tuple[int, int]  # (height, width) of the source image
    crop_top_left: tuple[int, int]  # (top, left) of the crop in the resized image
    key: str  # "shard-name/key"
    mask_source: str
    seed: int = 0  # the sample's own seed for the trainer's per-sample randomness (noise, timestep, VAE sample)


def crop_window(height: int, width: int, resolution: int, rng: np.random.Generator, random_crop: bool = True):
    """Square crop of the image resized to short side = ``resolution``.

    Returns ``(y0, x0, side)`` in the given (height, width) pixel grid and the
    crop's ``(top, left)`` in the resized image.
    """
    scale = resolution / min(height, width)
    rh, rw = max(resolution, round(height * scale)), max(resolution, round(width * scale))
    if random_crop:
        top, left = int(rng.integers(0, rh - resolution + 1)), int(rng.integers(0, rw - resolution + 1))
    else:
        top, left = (rh - resolution) // 2, (rw - resolution) // 2
    side = min(height, width, max(1, round(resolution / scale)))
    y0 = min(height - side, int(round(top / scale)))
    x0 = min(width - side, int(round(left / scale)))
    return (y0, x0, side), (top, left)


def crop_geometry(height: int, width: int, decoded: tuple[int, int], window: tuple[int, int, int],
                  resolution: int) -> CropGeometry:
    """The crop ``window`` = (y0, x0, side) of an image decoded at ``decoded`` = (dh, dw), in original pixels."""
    (dh, dw), (y0, x0, side) = decoded, window
    fy, fx = height / dh, width / dw
    return CropGeometry(height, width, top=y0 * fy, left=x0 * fx, span_y=side * fy, span_x=side * fx, size=resolution)


def _interpolation(side: int, size: int) -> int:
    # bicubic; area averaging only when shrinking 2x or more (the JPEG draft usually did that part)
    return cv2.INTER_AREA if side >= 2 * size else cv2.INTER_CUBIC


def _into(out: np.ndarray, result: np.ndarray) -> np.ndarray:
    if result is not out and not np.shares_memory(result, out):  # OpenCV allocated instead (an unusual `out`)
        np.copyto(out, result)
    return out


def _crop_to(crop: np.ndarray, order: str, size: int, out: np.ndarray | None) -> np.ndarray:
    """The square ``crop`` (``order`` channels) resized to ``size`` as RGB, written into ``out`` if given."""
    if out is None:
        out = np.empty((size, size, 3), np.uint8)
    if crop.shape[0] == size and crop.shape[1] == size:
        if order == "RGB":
            np.copyto(out, crop)
            return out
        return _into(out, cv2.cvtColor(crop, cv2.COLOR_BGR2RGB, dst=out))
    interpolation = _interpolation(crop.shape[0], size)
    if order == "RGB":
        return _into(out, cv2.resize(crop, (size, size), dst=out, interpolation=interpolation))
    resized = cv2.resize(crop, (size, size), interpolation=interpolation)  # swap the channels after: fewer pixels
    return _into(out, cv2.cvtColor(resized, cv2.COLOR_BGR2RGB, dst=out))


def make_example(
    record: Record,
    resolution: int,
    policy: MaskPolicy,
    rng: np.random.Generator,
    caption_dropout: float = 0.0,
    random_crop: bool = True,
    out: np.ndarray | None = None,
) -> Example:
    """``out``: an RxRx3 uint8 C-contiguous array the image is written into (a slot of the batch), else a new one."""
    h, w = record.height, record.width
    short = min(h, w)
    # Decode at the smallest DCT scale whose short side still reaches the resolution.
    target = (math.ceil(w * resolution / short), math.ceil(h * resolution / short))
    pixels, order = decode_pixels(record, min_size=target if short > resolution else None)
    dh, dw = pixels.shape[:2]
    (y0, x0, side), (top, left) = crop_window(dh, dw, resolution, rng, random_crop)
    image = _crop_to(pixels[y0 : y0 + side, x0 : x0 + side], order, resolution, out)

    source = policy.choose(rng)
    geometry = crop_geometry(h, w, (dh, dw), (y0, x0, side), resolution)
    keep = policy.keep_mask(source, geometry, rng, masks=record.masks)

    caption = "" if caption_dropout and rng.random() < caption_dropout else record.caption
    return Example(
        image=image,
        keep_mask=keep[None],
        caption=caption,
        original_size=(h, w),
        crop_top_left=(top, left),
        key=f"{record.shard.rsplit('/', 1)[-1]}/{record.key}",
        mask_source=source,
    )
