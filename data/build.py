"""Building BrushData shards from COCO annotations or from a folder of images, masks and captions.

Both builders copy JPEG bytes as they are (other formats are re-encoded as
JPEG; an EXIF orientation is set to 1 in the copy, since sizes and masks are
taken of the stored pixels and training turns images as the reference does),
encode each mask as BrushData run-length data, write size-capped shards
atomically with a ``sizes.json``, and return a summary: records written,
inputs skipped by reason, shards and bytes.
"""

from __future__ import annotations

import collections
import io
import logging
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from common.errors import UserError
from data.records import exif_orientation
from data.writer import ShardWriter, brushdata_members, encode_jpeg

__all__ = ["BuildError", "build_from_coco", "build_from_folder", "IMAGE_SUFFIXES"]

log = logging.getLogger(__name__)
# What reading an input image can raise: damaged or unknown data, and PIL's refusal of images over 179 M pixels
_UNREADABLE = (OSError, ValueError, Image.DecompressionBombError)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def _jpeg_and_size(path: Path) -> tuple[bytes, int, int]:
    """The record's JPEG bytes and (height, width) of its stored pixels, which the masks describe."""
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if im.format == "JPEG" and im.mode in ("RGB", "L"):
            if exif_orientation(im) != 1:
                # Training decodes as the reference does, turning the image by its EXIF orientation; the masks
                # and sizes here are of the stored pixels, so the copy says "upright" (the pixel data unchanged).
                upright = _upright(data)
                if upright is None:
                    return encode_jpeg(np.asarray(im.convert("RGB")), quality=95), im.height, im.width
                data = upright
            return data, im.height, im.width
        rgb = np.asarray(im.convert("RGB"))
    return encode_jpeg(rgb, quality=95), rgb.shape[0], rgb.shape[1]


def _upright(data: bytes) -> bytes | None:
    """The JPEG with the orientation tag of its EXIF data set to 1 (in place: nothing else changes), or None when
    the tag cannot be found where the format puts it (the first IFD of the APP1 Exif segment)."""
    out = bytearray(data)
    pos = 2  # after SOI
    while pos + 4 <= len(out) and out[pos] == 0xFF:
        marker, length = out[pos + 1], int.from_bytes(out[pos + 2 : pos + 4], "big")
        if marker == 0xDA:  # start of scan: no more headers
            return None
        body = pos + 4
        if marker == 0xE1 and out[body : body + 6] == b"Exif\0\0":
            tiff = body + 6
            order = {b"II": "little", b"MM": "big"}.get(bytes(out[tiff : tiff + 2]))
            if order is None:
                return None
            ifd = tiff + int.from_bytes(out[tiff + 4 : tiff + 8], order)
            if ifd + 2 > pos + 2 + length:
                return None
            for i in range(int.from_bytes(out[ifd : ifd + 2], order)):
                entry = ifd + 2 + 12 * i
                if entry + 12 > pos + 2 + length:
                    return None
                if int.from_bytes(out[entry : entry + 2], order) == 0x0112:
                    if int.from_bytes(out[entry + 2 : entry + 4], order) != 3:  # SHORT, as the standard says
                        return None
                    out[entry + 8 : entry + 10] = (1).to_bytes(2, order)
                    return bytes(out)
            return None
        pos += 2 + length
    return None


def _summary(writer: ShardWriter, skipped: collections.Counter) -> dict:
    return {
        "samples": writer.total_samples,
        "skipped": dict(sorted(skipped.items())),
        "shards": [str(p) for p in writer.shards],
        "bytes": writer.total_bytes,
    }


class BuildError(UserError, ValueError):
    """Input the builders cannot use (an annotation file that is not COCO JSON, ...); the message names it."""


def _coco(path: str | Path, flag: str):
    """pycocotools' COCO index of ``path``, or BuildError when the file is not COCO JSON (it asserts / raises)."""
    from pycocotools.coco import COCO

    if not Path(path).is_file():
        raise BuildError(f"{flag} {path} does not exist")
    try:
        return COCO(str(path))
    except (ValueError, AssertionError, UnicodeDecodeError, TypeError, KeyError) as exc:
        raise BuildError(f"{flag} {path} is not a COCO annotation file (a JSON object with images and annotations): "
                         f"{type(exc).__name__}: {str(exc)[:200]}") from None


def build_from_coco(
    images_dir: str | Path,
    instances_json: str | Path,
    out_dir: str | Path,
    captions_json: str | Path | None = None,
    prefix: str = "coco",
    max_samples: int = 1000,
    max_bytes: int | None = None,
    min_area: float = 0.0,
    include_crowd: bool = False,
    limit: int | None = None,
) -> dict:
    """One record per COCO image: every (non-crowd) instance mask, the first caption if given."""
    instances = _coco(instances_json, "--instances")
    captions = _coco(captions_json, "--captions") if captions_json else None
    skipped: collections.Counter = collections.Counter()
    images_dir = Path(images_dir)
    ids = sorted(instances.imgs)[: limit if limit else None]
    with ShardWriter(out_dir, prefix=prefix, max_samples=max_samples, max_bytes=max_bytes) as writer:
        for image_id in ids:
            info = instances.imgs[image_id]
            path = images_dir / info["file_name"]
            try:
                jpeg, height, width = _jpeg_and_size(path)
            except _UNREADABLE as exc:
                skipped["unreadable_image"] += 1
                log.warning("skipping COCO image %s (%s): %s", image_id, path, exc)
                continue
            if (height, width) != (info["height"], info["width"]):
                skipped["size_mismatch"] += 1
                log.warning("skipping COCO image %s: annotation says %sx%s, file is %sx%s",
                            image_id, info["height"], info["width"], height, width)
                continue
            masks = [
                instances.annToMask(ann)
                for ann in sorted(instances.imgToAnns.get(image_id, []), key=lambda a: a["id"])
                if (include_crowd or not ann.get("iscrowd", 0)) and ann.get("area", 0) >= min_area
            ]
            caption = ""
            if captions is not None:
                anns = sorted(captions.imgToAnns.get(image_id, []), key=lambda a: a["id"])
                caption = anns[0]["caption"].strip() if anns else ""
                if not anns:
                    skipped["no_caption (written with an empty caption)"] += 1
            writer.write(f"{image_id:012d}", brushdata_members(jpeg, height, width, caption, masks))
    return _summary(writer, skipped)


def _mask_files(stem: str, masks_dir: Path) -> list[Path]:
    single = [p for p in (masks_dir / f"{stem}{s}" for s in (".png", ".bmp")) if p.is_file()]
    return single + sorted(p for p in masks_dir.glob(f"{stem}_*") if p.suffix.lower() in (".png", ".bmp"))


def build_from_folder(
    images_dir: str | Path,
    out_dir: str | Path,
    masks_dir: str | Path | None = None,
    captions_dir: str | Path | None = None,
    prefix: str = "folder",
    max_samples: int = 1000,
    max_bytes: int | None = None,
    images: Iterable[Path] | None = None,
) -> dict:
    """One record per image ``STEM.*``: masks ``STEM.png`` and/or ``STEM_*.png`` (non-zero = object)
    from ``masks_dir``, caption ``STEM.txt`` from ``captions_dir`` (default: beside the image)."""
    images_dir = Path(images_dir)
    masks_dir = Path(masks_dir) if masks_dir else None
    captions_dir = Path(captions_dir) if captions_dir else images_dir
    paths = sorted(images) if images is not None else sorted(
        p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images_dir}")
    skipped: collections.Counter = collections.Counter()
    with ShardWriter(out_dir, prefix=prefix, max_samples=max_samples, max_bytes=max_bytes) as writer:
        for index, path in enumerate(paths):
            try:
                jpeg, height, width = _jpeg_and_size(path)
            except _UNREADABLE as exc:
                skipped["unreadable_image"] += 1
                log.warning("skipping %s: %s", path, exc)
                continue
            masks = []
            bad_mask = None
            for mask_path in _mask_files(path.stem, masks_dir) if masks_dir else []:
                try:
                    with Image.open(mask_path) as m:
                        arr = np.asarray(m.convert("L"))
                except _UNREADABLE as exc:
                    log.warning("skipping %s: mask %s cannot be read: %s", path, mask_path, exc)
                    bad_mask = "unreadable_mask"
                    break
                if arr.shape != (height, width):
                    log.warning("skipping %s: mask %s is %s, image is %s", path, mask_path, arr.shape, (height, width))
                    bad_mask = "mask_size_mismatch"
                    break
                masks.append(arr > 127)
            if bad_mask:
                skipped[bad_mask] += 1
                continue
            caption_path = captions_dir / f"{path.stem}.txt"
            try:
                caption = caption_path.read_text(encoding="utf-8").strip() if caption_path.is_file() else ""
            except UnicodeDecodeError as exc:
                skipped["caption_not_utf8"] += 1
                log.warning("skipping %s: caption %s is not UTF-8 (%s)", path, caption_path, exc)
                continue
            if not caption_path.is_file():
                skipped["no_caption (written with an empty caption)"] += 1
            key = "".join(c if c.isalnum() or c in "-_" else "_" for c in path.stem) + f"_{index:07d}"
            writer.write(key, brushdata_members(jpeg, height, width, caption, masks))
    return _summary(writer, skipped)
