"""One checked record -> one training example (the reference recipe, docs/reference.md section 5).

Per sample: a square crop of the image resized so its short side equals the
resolution (random or centred), the mask source and its keep mask in that crop
(opening and inversion included, with the reference's statistics: see
:class:`data.masks.MaskPolicy`), caption dropout. Output is uint8 (normalising
to [-1, 1] happens on the device, see :func:`data.batch.model_inputs`).

Only the crop window is worked on: the JPEG is decoded at the smallest DCT
scale that still covers the target size and one resize brings it to the
resolution; masks are sampled or drawn directly at the crop's pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from data.masks import CropGeometry, MaskPolicy
from data.records import Record, decode_image

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


def _resize(array: np.ndarray, size: int) -> np.ndarray:
    if array.shape[0] == size and array.shape[1] == size:
        return array
    # bicubic; area averaging only when shrinking 2x or more (the JPEG draft usually did that part)
    interp = cv2.INTER_AREA if array.shape[0] >= 2 * size else cv2.INTER_CUBIC
    return cv2.resize(array, (size, size), interpolation=interp)


def make_example(
    record: Record,
    resolution: int,
    policy: MaskPolicy,
    rng: np.random.Generator,
    caption_dropout: float = 0.0,
    random_crop: bool = True,
) -> Example:
    h, w = record.height, record.width
    short = min(h, w)
    # Decode at the smallest DCT scale whose short side still reaches the resolution.
    target = (math.ceil(w * resolution / short), math.ceil(h * resolution / short))
    pixels = decode_image(record, min_size=target if short > resolution else None)  # BGR
    dh, dw = pixels.shape[:2]
    (y0, x0, side), (top, left) = crop_window(dh, dw, resolution, rng, random_crop)
    image = cv2.cvtColor(_resize(pixels[y0 : y0 + side, x0 : x0 + side], resolution), cv2.COLOR_BGR2RGB)

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
