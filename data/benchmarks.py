"""Inpainting benchmarks as lists of items: BrushBench, a folder of image + mask files, BrushData shards.

Every reader returns :class:`BenchItem` objects in a fixed order (the order the
table is written in); an item loads its image and hole mask only when asked.

* **BrushBench** (``brushbench DIR``): ``DIR/mapping_file.json`` maps an id to
  ``{"image": relative path, "caption": str, "inpainting_mask": rle,
  "outpainting_mask": rle}``. The RLE is a flat ``[start, length, ...]`` list,
  starts 1-based, decoded over the image flattened in **row-major (C)** order
  (unlike BrushData's column-major shards), 1 = the region to paint.
  ``--mask inside`` reads ``inpainting_mask``, ``outside`` ``outpainting_mask``.
* **folder** (``folder DIR``): ``STEM.jpg|jpeg|png`` with ``STEM_mask.png``
  (white = paint) and optionally ``STEM.txt`` (the caption); ``outside``
  paints the complement of the mask.
* **shards** (``shards SPEC``): BrushData records; the first segmentation mask
  (column-major RLE, 1 = object) is the hole for ``inside``, its complement for
  ``outside``. Records without a mask are skipped.

Bad input raises :class:`BenchError` (a ``ValueError``) naming the file and key.
This module does not import ``train``; the command turns these errors into its
own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["BenchItem", "BenchError", "BENCH_KINDS", "rle_decode_rowmajor", "read_bench", "brushbench_items",
           "folder_images", "folder_items", "shard_items"]

BENCH_KINDS = ("brushbench", "folder", "shards")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class BenchError(ValueError):
    """A benchmark file or entry that cannot be used (the message names it)."""


@dataclass
class BenchItem:
    id: str
    rel_path: str  # where the generated image goes under <out>/<method>/ (suffix replaced by .png)
    caption: str
    load: Callable[[], tuple[np.ndarray, np.ndarray]]  # -> (HxWx3 uint8 RGB, HxW uint8 hole, 1 = paint)

    @property
    def out_name(self) -> str:
        return str(Path(self.rel_path).with_suffix(".png"))


def rle_decode_rowmajor(rle, height: int, width: int, where: str = "mask") -> np.ndarray:
    """BrushBench RLE -> HxW uint8 (1 = paint): 1-based ``[start, length, ...]`` runs, row-major order."""
    try:
        arr = np.asarray(rle, dtype=np.int64).ravel()
    except (TypeError, ValueError):
        raise BenchError(f"{where}: run-length data must be a list of integers") from None
    if arr.size % 2:
        raise BenchError(f"{where}: run-length data has an odd number of values ({arr.size})")
    starts, lengths = arr[0::2] - 1, arr[1::2]
    n = height * width
    if starts.size and (starts.min() < 0 or lengths.min() < 0):
        raise BenchError(f"{where}: run-length data has a start below 1 or a negative length")
    if starts.size and int((starts + lengths).max()) > n:
        raise BenchError(f"{where}: run-length data reaches pixel {int((starts + lengths).max())} of a "
                         f"{height}x{width} mask ({n} pixels)")
    flat = np.zeros(n, np.uint8)
    for lo, length in zip(starts, lengths):
        flat[lo:lo + length] = 1
    return flat.reshape((height, width))


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise BenchError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as exc:  # noqa: BLE001 - any decoder error is a bad file
        raise BenchError(f"image {path} cannot be read: {exc}") from None


def brushbench_items(root: str | Path, mask: str = "inside") -> list[BenchItem]:
    root = Path(root)
    mapping_path = root / "mapping_file.json"
    if not mapping_path.is_file():
        raise BenchError(f"{root} is not a BrushBench folder: no mapping_file.json")
    try:
        mapping = json.loads(mapping_path.read_text())
    except ValueError as exc:
        raise BenchError(f"{mapping_path} is not valid JSON: {exc}") from None
    if not isinstance(mapping, dict):
        raise BenchError(f"{mapping_path} must map ids to entries")
    key = {"inside": "inpainting_mask", "outside": "outpainting_mask"}[mask]
    items = []
    for item_id, entry in mapping.items():
        where = f"{mapping_path} entry {item_id!r}"
        if not isinstance(entry, dict):
            raise BenchError(f"{where} is not an object")
        for needed in ("image", key):
            if needed not in entry:
                raise BenchError(f"{where} has no {needed!r}")
        if not (root / entry["image"]).is_file():
            raise BenchError(f"{where}: image {root / entry['image']} does not exist")
        from PIL import Image

        try:  # check the run-length data now (header only), not after the models have loaded
            with Image.open(root / entry["image"]) as im:
                width, height = im.size
        except Exception as exc:  # noqa: BLE001
            raise BenchError(f"{where}: image {root / entry['image']} cannot be read: {exc}") from None
        rle_decode_rowmajor(entry[key], height, width, f"{where} {key!r}")

        def load(entry=entry, where=where):
            image = _read_rgb(root / entry["image"])
            hole = rle_decode_rowmajor(entry[key], image.shape[0], image.shape[1], f"{where} {key!r}")
            return image, hole

        items.append(BenchItem(str(item_id), str(entry["image"]), str(entry.get("caption", "")), load))
    return items


def folder_images(folder: Path) -> list[Path]:
    """The images of a folder of ``STEM.jpg|png`` images with ``STEM_mask.png`` masks (a bench folder, a sample
    grid's folder), in name order: the masks themselves left out."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith("_mask"))


def folder_items(root: str | Path, mask: str = "inside") -> list[BenchItem]:
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise BenchError(f"bench folder {root} does not exist")
    items = []
    for path in folder_images(root):
        mask_path = root / f"{path.stem}_mask.png"
        if not mask_path.is_file():
            raise BenchError(f"image {path} has no mask {mask_path.name}")
        caption_path = root / f"{path.stem}.txt"
        caption = caption_path.read_text().strip() if caption_path.is_file() else ""

        def load(path=path, mask_path=mask_path):
            image = _read_rgb(path)
            with Image.open(mask_path) as m:
                hole = (np.asarray(m.convert("L")) > 127).astype(np.uint8)
            if hole.shape != image.shape[:2]:
                raise BenchError(f"mask {mask_path} is {hole.shape[1]}x{hole.shape[0]}, image {path} is "
                                 f"{image.shape[1]}x{image.shape[0]}")
            return image, (1 - hole if mask == "outside" else hole)

        items.append(BenchItem(path.stem, path.name, caption, load))
    if not items:
        raise BenchError(f"no images ({', '.join(IMAGE_SUFFIXES)}) with _mask.png masks in {root}")
    return items


def shard_items(spec: str, mask: str = "inside", limit: int | None = None) -> list[BenchItem]:
    """The records of the shards (in order) that have a segmentation mask; decoded now (shards stream)."""
    from data.masks import rle_decode
    from data.records import BadRecord, BadSample, decode_pixels, parse_record, read_shard
    from data.shards import expand_shards

    try:
        shards = expand_shards(spec)
    except Exception as exc:  # noqa: BLE001 - a bad spec or no files
        raise BenchError(f"shards {spec!r}: {exc}") from None
    if not shards:
        raise BenchError(f"shards {spec!r} names no files")
    items = []
    for shard in shards:
        for raw in read_shard(shard):
            if isinstance(raw, BadRecord):
                continue
            try:
                record = parse_record(raw)
                if not record.masks:
                    continue
                pixels, order = decode_pixels(record)  # as training decodes (EXIF orientation applied)
            except BadSample:
                continue
            image = np.ascontiguousarray(pixels if order == "RGB" else pixels[..., ::-1])
            obj = rle_decode(record.masks[0], record.height, record.width)
            hole = 1 - obj if mask == "outside" else obj
            items.append(BenchItem(record.key, f"{record.key}.png", record.caption,
                                   lambda image=image, hole=hole: (image, hole)))
            if limit is not None and len(items) >= limit:
                return items
    if not items:
        raise BenchError(f"shards {spec!r} hold no readable record with a segmentation mask")
    return items


def read_bench(kind: str, source: str, mask: str = "inside", limit: int | None = None) -> list[BenchItem]:
    if kind not in BENCH_KINDS:
        raise BenchError(f"bench kind {kind!r}: choose from {', '.join(BENCH_KINDS)}")
    if mask not in ("inside", "outside"):
        raise BenchError(f"mask {mask!r}: choose inside or outside")
    if kind == "shards":
        return shard_items(source, mask, limit)
    items = brushbench_items(source, mask) if kind == "brushbench" else folder_items(source, mask)
    return items[:limit] if limit is not None else items
