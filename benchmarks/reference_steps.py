"""The reference loader's per-sample work, re-implemented (our code) for side-by-side timing and statistics.

What the reference ``train_brushnet.py`` does for each sample (docs/reference.md section 5),
step by step and at the image's original size: decode the
whole JPEG; turn the chosen run-length mask into a bitmap with a Python loop over
runs, or draw a random brush with PIL on a canvas of the image's size
(``random_brush_gen(4, h, w)``: 0-3 strokes, its ``h, w = mask.size`` quirk
included); opening (8x8 erode then dilate) with p=0.3; masked image; with p=0.5
invert (``masked = image - masked``, ``mask = 1 - mask``); then resize image,
masked image and mask separately (short side = resolution, ``ceil`` sizes,
``cv2.INTER_CUBIC`` for all three), crop the same random square
(``randint(0, size - resolution)`` inclusive), convert to float tensors and
normalise to [-1, 1] on the CPU. Tokenising is left out (BrushTrain tokenises in
the trainer), so the timing compares the same work.

Randomness comes from a ``numpy.random.Generator`` passed in (the reference uses
the global ``random``/``np.random`` state; the distributions are the same).
"""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw


def rle_to_mask_loop(rle: list, height: int, width: int) -> np.ndarray:
    starts = np.asarray(rle[0::2], dtype=int) - 1
    ends = starts + np.asarray(rle[1::2], dtype=int)
    flat = np.zeros(height * width, dtype=np.uint8)
    for lo, hi in zip(starts, ends):
        flat[lo:hi] = 1
    return flat.reshape((height, width), order="F")


def random_brush_pil(height: int, width: int, rng: np.random.Generator, max_tries: int = 4,
                     min_num_vertex: int = 0, max_num_vertex: int = 8, width_px: int = 128) -> np.ndarray:
    """The reference's ``random_brush_gen(max_tries, h, w)``: 1 = stroke, on an H x W canvas."""
    mean_angle, angle_range = 2 * math.pi / 5, 2 * math.pi / 15
    average_radius = math.sqrt(height * height + width * width) / 8
    mask = Image.new("L", (width, height), 0)
    for _ in range(rng.integers(max_tries)):
        num_vertex = rng.integers(min_num_vertex, max_num_vertex)
        angle_min = mean_angle - rng.uniform(0, angle_range)
        angle_max = mean_angle + rng.uniform(0, angle_range)
        angles = [2 * math.pi - rng.uniform(angle_min, angle_max) if i % 2 == 0 else rng.uniform(angle_min, angle_max)
                  for i in range(num_vertex)]
        h, w = mask.size  # the reference's quirk: PIL's size is (W, H)
        vertex = [(int(rng.integers(0, w)), int(rng.integers(0, h)))]
        for i in range(num_vertex):
            r = np.clip(rng.normal(loc=average_radius, scale=average_radius // 2), 0, 2 * average_radius)
            new_x = np.clip(vertex[-1][0] + r * math.cos(angles[i]), 0, w)
            new_y = np.clip(vertex[-1][1] + r * math.sin(angles[i]), 0, h)
            vertex.append((int(new_x), int(new_y)))
        draw = ImageDraw.Draw(mask)
        draw.line(vertex, fill=1, width=width_px)
        for v in vertex:
            draw.ellipse((v[0] - width_px // 2, v[1] - width_px // 2, v[0] + width_px // 2, v[1] + width_px // 2), fill=1)
        rng.random(), rng.random()  # the reference's two discarded transposes
    out = np.asarray(mask, np.uint8)
    if rng.random() > 0.5:
        out = np.flip(out, 0)
    if rng.random() > 0.5:
        out = np.flip(out, 1)
    return out


def _reference_edits(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, opening_p: float = 0.3,
                     invert_p: float = 0.5):
    """Opening (p=0.3), masked image, inversion (p=0.5), at the original size. mask: HxW uint8, 1 = keep."""
    mask = mask[:, :, None]
    if rng.random() < opening_p:
        kernel = np.ones((8, 8), np.uint8)
        mask = (cv2.dilate(cv2.erode(mask, kernel, iterations=1), kernel, iterations=1) > 0).astype(np.uint8)[:, :, None]
    masked = image * mask
    if rng.random() < invert_p:
        masked = image - masked
        mask = 1 - mask
    return masked, mask


def _resize_and_crop(arrays: list[np.ndarray], resolution: int, rng: np.random.Generator) -> list[np.ndarray]:
    h, w = arrays[0].shape[:2]
    scale = resolution / min(h, w)
    h_new, w_new = int(np.ceil(h * scale)), int(np.ceil(w * scale))
    top, left = int(rng.integers(0, h_new - resolution + 1)), int(rng.integers(0, w_new - resolution + 1))
    out = []
    for a in arrays:
        r = cv2.resize(a, (w_new, h_new), interpolation=cv2.INTER_CUBIC)
        if r.ndim == 2:
            r = r[:, :, None]
        out.append(r[top : top + resolution, left : left + resolution])
    return out


def reference_keep_mask(height: int, width: int, resolution: int, rng: np.random.Generator,
                        masks: list | None = None, random_mask: bool = True, opening_p: float = 0.3,
                        invert_p: float = 0.5) -> np.ndarray:
    """The keep mask (RxR uint8, 1 = known) the reference gives a sample of that size (mask path only;
    ``opening_p``/``invert_p`` other than the reference's 0.3/0.5 are for statistics)."""
    if random_mask:
        mask = (1 - random_brush_pil(height, width, rng)).astype(np.uint8)
    elif masks:
        mask = rle_to_mask_loop(masks[int(rng.integers(len(masks)))], height, width)
    else:
        mask = np.ones((height, width), np.uint8)
    _, mask = _reference_edits(np.zeros((height, width, 1), np.uint8), mask, rng, opening_p, invert_p)
    (mask,) = _resize_and_crop([mask], resolution, rng)
    return mask[:, :, 0]


def reference_sample(members: dict, resolution: int, random_mask: bool, rng: np.random.Generator) -> dict:
    """One sample through the reference's steps; returns normalised float tensors."""
    image = cv2.imdecode(np.frombuffer(members["image"], np.uint8), cv2.IMREAD_COLOR)
    height, width = int(members["height"]), int(members["width"])
    caption = members["caption"].decode("utf-8")
    masks = json.loads(members["segmentation"])["mask"]  # decoded in both modes, as the reference does
    mask = rle_to_mask_loop(masks[int(rng.integers(len(masks)))], height, width) if masks else np.ones((height, width), np.uint8)
    if random_mask:
        mask = (1 - random_brush_pil(height, width, rng)).astype(np.uint8)
    masked, mask = _reference_edits(image, mask, rng)
    image, masked, mask = _resize_and_crop([image, masked, mask], resolution, rng)
    image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGR2RGB)
    masked = cv2.cvtColor(np.ascontiguousarray(masked), cv2.COLOR_BGR2RGB)
    pixels = torch.tensor(image.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    masked_pixels = torch.tensor(masked.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    mask_t = torch.tensor(mask.astype(np.float32)).permute(2, 0, 1)
    return {"pixels": pixels, "masked_pixels": masked_pixels, "mask": mask_t, "caption": caption}
