"""The image preprocessing of each scoring model, rule for rule (HxWx3 uint8 RGB in, normalised CHW float out).

Each scorer was trained (and is published) with its own resize rule; using another moves the scores:

* :func:`clip_processor` (``clip_similarity``, ``aesthetic``): CLIPImageProcessor's for the OpenAI models:
  shortest side to ``size`` (PIL bicubic, the long side ``int(size * long / short)``), centre crop (offsets
  floored).
* :func:`short_side_center_crop` (``image_reward``): torchvision's ``Resize(size, BICUBIC)`` on a PIL image
  (long side ``int(size * long / short)``) then ``CenterCrop(size)`` (offsets ``round((H - size) / 2)``), as
  ImageReward's ``_transform``.
* :func:`resize_max_pad` (``hps_v21``): HPS's ``ResizeMaxSize``: ``ToTensor`` first, then the float tensor
  resized so its longest side is ``size`` (bicubic, unclamped; sides ``round(side * scale)``; antialiased as
  torchvision >= 0.17 does on tensors, or not, as torchvision 0.13 of BrushNet's tested environment did)
  and padded with 0 to a square (``(size - w) // 2`` left, ``(size - h) // 2`` top, the rest right and bottom)
  before normalising. HPS skips the resize when the longest side already is ``size``; the padding is then still
  applied here, where HPS would hand a non-square tensor to the model and fail.

All normalise with the OpenAI CLIP mean and std.
"""

from __future__ import annotations

import numpy as np

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

__all__ = ["OPENAI_MEAN", "OPENAI_STD", "clip_processor", "short_side_center_crop", "resize_max_pad", "normalize"]


def normalize(x):
    """CHW float in [0, 1] -> OpenAI-normalised."""
    import torch

    mean = torch.tensor(OPENAI_MEAN, dtype=x.dtype)[:, None, None]
    std = torch.tensor(OPENAI_STD, dtype=x.dtype)[:, None, None]
    return (x - mean) / std


def _to_tensor(img):
    import torch

    return torch.from_numpy(np.asarray(img, np.float32) / 255.0).permute(2, 0, 1).contiguous()


def _pil(img):
    from PIL import Image

    return img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img, np.uint8))


def clip_processor(img, size: int):
    from PIL import Image

    im = _pil(img).convert("RGB")
    w, h = im.size
    w, h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    im = im.resize((w, h), Image.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    return normalize(_to_tensor(im.crop((left, top, left + size, top + size))))


def short_side_center_crop(img, size: int):
    from PIL import Image

    im = _pil(img).convert("RGB")
    w, h = im.size
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.BICUBIC)
        w, h = nw, nh
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return normalize(_to_tensor(im.crop((left, top, left + size, top + size))))


def resize_max_pad(img, size: int, antialias: bool = True):
    import torch
    import torch.nn.functional as F

    x = _to_tensor(_pil(img).convert("RGB"))
    h, w = x.shape[1:]
    scale = size / float(max(h, w))
    if scale != 1.0:
        h, w = round(h * scale), round(w * scale)
        x = F.interpolate(x[None], size=(h, w), mode="bicubic", align_corners=False,
                          antialias=antialias)[0]
    pad_h, pad_w = size - h, size - w
    if pad_h or pad_w:
        x = torch.nn.functional.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)
    return normalize(x)
