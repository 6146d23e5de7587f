"""The reference loader's per-sample work, re-implemented (our code) for side-by-side timing.

What the reference ``train_brushnet.py`` does for each sample (BRUSHNET.md
sections 5 and 8), step by step: decode the whole JPEG to an array; turn the
chosen run-length mask into a bitmap with a Python loop over runs (or draw a
random brush with PIL at the image's size); opening with p=0.3; build the
masked image in float; invert with p=0.5; resize image, masked image and mask
(short side = resolution, bicubic, full images), crop the same random square
from all three, convert to float tensors and normalise to [-1, 1] on the CPU.
Tokenising is left out (BrushTrain tokenises in the trainer), so the
comparison covers the same work on both sides.
"""

from __future__ import annotations

import io
import json
import math
import random

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


def random_brush_pil(height: int, width: int, max_tries: int = 4, max_vertices: int = 8, width_px: int = 128) -> np.ndarray:
    mask = Image.new("L", (width, height), 0)
    radius = math.sqrt(height * height + width * width) / 8
    draw = ImageDraw.Draw(mask)
    for _ in range(random.randint(1, max_tries)):
        n = random.randint(0, max_vertices - 1)
        lo = 2 * math.pi / 5 - random.uniform(0, 2 * math.pi / 15)
        hi = 2 * math.pi / 5 + random.uniform(0, 2 * math.pi / 15)
        angles = [2 * math.pi - random.uniform(lo, hi) if i % 2 == 0 else random.uniform(lo, hi) for i in range(n)]
        vertices = [(random.randint(0, width), random.randint(0, height))]
        for a in angles:
            r = min(max(random.gauss(radius, radius / 2), 0), 2 * radius)
            x = min(max(vertices[-1][0] + r * math.cos(a), 0), width)
            y = min(max(vertices[-1][1] + r * math.sin(a), 0), height)
            vertices.append((int(x), int(y)))
        draw.line(vertices, fill=1, width=width_px)
        for vx, vy in vertices:
            draw.ellipse((vx - width_px // 2, vy - width_px // 2, vx + width_px // 2, vy + width_px // 2), fill=1)
    out = np.asarray(mask, np.uint8)
    if random.random() > 0.5:
        out = np.flip(out, 0)
    if random.random() > 0.5:
        out = np.flip(out, 1)
    return out


def _resize_short(img: Image.Image, resolution: int) -> Image.Image:
    w, h = img.size
    s = resolution / min(w, h)
    return img.resize((max(resolution, round(w * s)), max(resolution, round(h * s))), Image.BICUBIC)


def _to_tensor(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[..., None]
    return torch.from_numpy(arr).permute(2, 0, 1)


def reference_sample(members: dict, resolution: int, random_mask: bool) -> dict:
    """One sample through the reference's steps; returns normalised float tensors."""
    image = np.array(Image.open(io.BytesIO(members["image"])).convert("RGB"))
    height, width = int(members["height"]), int(members["width"])
    caption = members["caption"].decode("utf-8")
    if random_mask:
        mask = 1 - random_brush_pil(height, width)
    else:
        masks = json.loads(members["segmentation"])["mask"]
        mask = rle_to_mask_loop(random.choice(masks), height, width) if masks else np.ones((height, width), np.uint8)
    if random.random() < 0.3:
        kernel = np.ones((8, 8), np.uint8)
        mask = cv2.dilate(cv2.erode(mask, kernel), kernel)
    mask3 = mask[:, :, None].astype(np.float32)
    masked = image.astype(np.float32) * mask3
    if random.random() < 0.5:
        masked = image.astype(np.float32) - masked
        mask = 1 - mask
    pil_image = _resize_short(Image.fromarray(image), resolution)
    pil_masked = _resize_short(Image.fromarray(masked.astype(np.uint8)), resolution)
    pil_mask = _resize_short(Image.fromarray(mask * 255), resolution)
    w, h = pil_image.size
    top, left = random.randint(0, h - resolution), random.randint(0, w - resolution)
    box = (left, top, left + resolution, top + resolution)
    pixels = _to_tensor(pil_image.crop(box)) * 2 - 1
    masked_pixels = _to_tensor(pil_masked.crop(box)) * 2 - 1
    mask_t = (_to_tensor(pil_mask.crop(box)) > 0.5).float()
    return {"pixels": pixels, "masked_pixels": masked_pixels, "mask": mask_t, "caption": caption}
