"""Reading BrushData records from shards, and checking each one.

A record is the tar members sharing a key (docs/reference.md section 4):
``KEY.image`` (JPEG), ``KEY.caption`` (UTF-8), ``KEY.height`` and ``KEY.width``
(ASCII decimal), ``KEY.segmentation`` (JSON ``{"mask": [rle, ...]}``).

Every way a record can be wrong has one reason name (``REASONS``). Readers never
raise on bad data: :func:`read_shard` yields :class:`BadRecord` items for
damaged tars, and :func:`parse_record` raises :class:`BadSample` with a reason,
which the pipeline counts and logs with shard and key.
"""

from __future__ import annotations

import io
import json
import logging
import math
import tarfile
from dataclasses import dataclass, field
from typing import Iterator

import cv2
import numpy as np
from PIL import Image, JpegImagePlugin

from data.masks import RLEError, rle_check
from data.shards import sample_key
from data.streams import not_a_tar, open_shard

log = logging.getLogger(__name__)

__all__ = [
    "REASONS",
    "MEMBERS",
    "BadSample",
    "BadRecord",
    "RawRecord",
    "Record",
    "read_shard",
    "parse_record",
    "decode_image",
    "decode_pixels",
    "jpeg_decoder",
    "exif_orientation",
]

MEMBERS = ("image", "caption", "height", "width", "segmentation")

REASONS = {
    "missing_member": "a required member (image, caption, height, width, segmentation) is absent",
    "bad_size": "height or width is not a positive decimal integer",
    "empty_image": "the image member is empty",
    "not_jpeg": "the image member is not JPEG data",
    "bad_image": "the JPEG data is truncated or cannot be decoded",
    "size_mismatch": "height/width disagree with the image's own size",
    "bad_segmentation": "the segmentation member is not valid JSON of the form {\"mask\": [rle, ...]}",
    "rle_out_of_bounds": "run-length data reaches past the image (or has starts below 1)",
    "bad_caption": "the caption is not UTF-8 text",
    "truncated_tar": "the shard ends in the middle of a record or a tar header",
    "unreadable_shard": "the shard cannot be opened or is not a tar file",
}

_JPEG_MAGIC = b"\xff\xd8\xff"
MAX_PIXELS = 1 << 30  # OpenCV's default limit (CV_IO_MAX_IMAGE_PIXELS): the reference cannot decode larger images


class BadSample(Exception):
    def __init__(self, reason: str, detail: str = ""):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class RawRecord:
    """The members of one record, as bytes, with where it came from."""

    shard: str
    key: str
    offset: int  # the record's index within its shard
    members: dict[str, bytes] = field(default_factory=dict)


@dataclass
class BadRecord:
    """A record (or a shard) that could not even be read completely."""

    shard: str
    key: str
    offset: int
    reason: str
    detail: str = ""


def read_shard(shard: str, start: int = 0, end: int | None = None, retries: int = 0,
               retry_delay: float = 1.0, planned: int | None = None) -> Iterator[RawRecord | BadRecord]:
    """Records ``start <= offset < end`` of one shard, in tar order.

    ``planned``: the shard's record count in the plan (``sizes.json``); the reader of its last records
    (``end == planned``) warns when the shard holds more (those are never read) or fewer.

    Members of records outside the range are skipped without being kept. A tar
    that was cut (an error inside a member, or no end-of-archive marker) yields
    one ``BadRecord('truncated_tar')``: for the record it cut, or, when the last
    record read is complete, for what followed it (the complete record is good).
    A remote shard is re-opened up to ``retries`` times first (:class:`ShardStream`);
    one that cannot be read at all is one ``BadRecord('unreadable_shard')``.
    """
    try:
        stream = open_shard(shard, retries, retry_delay)
    except Exception as exc:
        if start == 0:
            yield BadRecord(shard, "", 0, "unreadable_shard", str(exc))
        return
    offset, current = -1, None
    cut, head = None, b""
    try:
        buffered = io.BufferedReader(stream, 1 << 20)
        head = buffered.peek(8)[:8]
        tar = tarfile.open(fileobj=buffered, mode="r|")
        for info in tar:
            if not info.isreg():
                continue
            key, ext = sample_key(info.name)
            if current is None or key != current.key:
                if current is not None and offset >= start:
                    yield current
                offset += 1
                if end is not None and offset >= end:
                    if end == planned:
                        log.warning("shard %s holds more than the %d records its sizes.json entry gives it: the "
                                    "records after the %d-th are never read (run `brushtrain data index` on "
                                    "its folder)", shard, planned, planned)
                    current = None
                    break
                current = RawRecord(shard, key, offset)
            if offset >= start:
                data = tar.extractfile(info).read()
                if len(data) != info.size:
                    raise tarfile.ReadError("unexpected end of data")
                current.members[ext] = data
        else:
            stream.drain()
            if len(stream.tail) < 1024 or any(stream.tail):
                cut = "no end-of-archive marker: the file was cut at a header or member boundary"
            elif end is not None and end == planned and offset + 1 < planned:
                log.warning("shard %s holds %d records, its sizes.json entry %d (run `brushtrain data index` on its "
                            "folder)", shard, offset + 1, planned)
    except (tarfile.TarError, OSError, EOFError) as exc:
        cut = str(exc) or type(exc).__name__
        if offset < 0:  # nothing readable at all; reported once, by the reader of its first record
            cut = not_a_tar(head) or cut
            stream.close()
            if start == 0:
                yield BadRecord(shard, "", 0, "unreadable_shard", cut)
            return
    finally:
        stream.close()
    if current is None or offset < start:
        return
    if cut is None:
        yield current
    elif set(MEMBERS) <= current.members.keys():
        # Cut after a complete record (at a header or member boundary): the record is good,
        # what followed it is lost; the reader of the last record reports the cut once.
        yield current
        yield BadRecord(shard, f"{current.key} (what followed)", offset, "truncated_tar", cut)
    else:
        yield BadRecord(shard, current.key, offset, "truncated_tar", cut)


@dataclass
class Record:
    """A checked record: still-encoded image plus parsed fields."""

    shard: str
    key: str
    offset: int
    image: Image.Image  # opened (the header is read and checked), not decoded
    data: bytes  # the JPEG bytes
    height: int
    width: int
    caption: str
    masks: list  # run-length data, one 1-D array per mask, all checked against (height, width)
    orientation: int = 1  # the JPEG's EXIF orientation (1-8), applied when decoding; height/width are after it


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8) that OpenCV's imdecode applies, as the reference decodes; 1 when absent."""
    if "exif" not in image.info:
        return 1
    try:
        value = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - unreadable EXIF data: OpenCV applies nothing either
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Stored pixels -> as displayed, OpenCV's ExifTransform step for step (so the pixels are the reference's)."""
    if orientation >= 5:
        pixels = cv2.transpose(pixels)
    flip = {2: 1, 3: -1, 4: 0, 6: 1, 7: -1, 8: 0}.get(orientation)
    return pixels if flip is None else cv2.flip(pixels, flip)


def _positive_int(data: bytes, name: str) -> int:
    text = data.decode("ascii", errors="replace").strip()
    if not text.isdigit() or int(text) <= 0:
        raise BadSample("bad_size", f"{name} is {text[:20]!r}")
    return int(text)


def parse_record(raw: RawRecord, require_segmentation: bool = True) -> Record:
    """Check a record's members; raise :class:`BadSample` naming the first problem."""
    required = MEMBERS if require_segmentation else tuple(m for m in MEMBERS if m != "segmentation")
    missing = [m for m in required if m not in raw.members]
    if missing:
        raise BadSample("missing_member", f"no {', '.join(missing)}")
    height = _positive_int(raw.members["height"], "height")
    width = _positive_int(raw.members["width"], "width")

    data = raw.members["image"]
    if not data:
        raise BadSample("empty_image")
    if not data.startswith(_JPEG_MAGIC):
        raise BadSample("not_jpeg", f"starts with {data[:4].hex()}")
    try:
        # The JPEG reader itself, not Image.open: that one turns a camera's multi-picture JPEG (MPO: the primary
        # image, then more) into format "MPO", and refuses images over 179 M pixels as decompression bombs, where
        # the decoders (and the reference's cv2.imdecode) read the primary image and only the header is read here.
        image = JpegImagePlugin.JpegImageFile(io.BytesIO(data))
        size = image.size
    except Exception as exc:
        raise BadSample("bad_image", f"unreadable JPEG header: {exc}") from None
    if size[0] * size[1] > MAX_PIXELS:
        raise BadSample("bad_image", f"{size[1]}x{size[0]} is more than {MAX_PIXELS} pixels (OpenCV's limit)")
    orientation = exif_orientation(image)
    shown = size[::-1] if orientation >= 5 else size  # (w, h) as displayed: EXIF orientations 5-8 transpose
    if shown != (width, height):
        turned = f" after its EXIF orientation {orientation} (stored {size[1]}x{size[0]})" if orientation != 1 else ""
        raise BadSample("size_mismatch", f"members say {height}x{width}, image is {shown[1]}x{shown[0]}{turned}")

    try:
        caption = raw.members["caption"].decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise BadSample("bad_caption", str(exc)) from None

    masks: list = []
    if "segmentation" in raw.members:
        try:
            seg = json.loads(raw.members["segmentation"])
            masks = seg["mask"]
            if not isinstance(masks, list) or not all(isinstance(m, list) for m in masks):
                raise TypeError("'mask' must be a list of lists")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:  # RecursionError: nesting too deep for json
            raise BadSample("bad_segmentation", str(exc)[:200]) from None
        arrays = []
        for i, rle in enumerate(masks):
            try:
                arrays.append(np.asarray(rle))  # converted once: the crop samples the array (rle_sample)
                rle_check(arrays[-1], height, width)
            except RLEError as exc:
                reason = "rle_out_of_bounds" if exc.out_of_bounds else "bad_segmentation"
                raise BadSample(reason, f"mask {i}: {exc}") from None
            except (TypeError, ValueError) as exc:
                raise BadSample("bad_segmentation", f"mask {i}: {exc}") from None
        masks = arrays
    return Record(raw.shard, raw.key, raw.offset, image, data, height, width, caption, masks, orientation)


try:  # libjpeg-turbo 3 with its SIMD paths, decoding straight into RGB (optional: OpenCV otherwise)
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - depends on the install
    _simplejpeg = None

_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}


def jpeg_decoder() -> str:
    """The JPEG decoder the stream uses: ``simplejpeg`` when it is installed, else ``opencv``."""
    return "simplejpeg" if _simplejpeg is not None else "opencv"


def _scale_factor(width: int, height: int, min_size: tuple[int, int] | None) -> int:
    """The largest of 8, 4, 2 (else 1) whose reduced size still covers ``min_size`` (w, h)."""
    if min_size is not None:
        for k in (8, 4, 2):
            if math.ceil(width / k) >= min_size[0] and math.ceil(height / k) >= min_size[1]:
                return k
    return 1


def decode_pixels(record: Record, min_size: tuple[int, int] | None = None) -> tuple[np.ndarray, str]:
    """``(pixels, order)``: HxWx3 uint8 in channel ``order`` ('RGB' or 'BGR', whichever the decoder gives
    without a conversion), decoded at a reduced scale where ``min_size`` (w, h) permits.

    libjpeg's DCT scaling by 1/2, 1/4, 1/8 is exact and skips most of the
    inverse transforms; the result is never smaller than ``min_size``. Only
    these factors are used: libjpeg-turbo's other ones (7/8, 3/4, 5/8, ...)
    have no SIMD code and decode slower than the full size does (measured:
    2.6 ms at 7/8 against 1.7 ms at full size for a 600x800 JPEG).

    With simplejpeg the pixels are RGB, with OpenCV BGR; both run libjpeg-turbo
    with the same settings (accurate integer DCT, smooth chroma upsampling) and
    give the same pixels (tests/test_decode.py; an OpenCV built against IJG
    libjpeg instead, as some conda or system builds are, scales differently:
    the stream stays valid, but its batches are not bit-identical to those of a
    machine with simplejpeg). The EXIF orientation is applied, as the reference's
    ``cv2.imdecode(..., IMREAD_COLOR)`` does: the pixels are the image as
    displayed, which height/width and the masks describe. Data that cannot be
    decoded completely (truncated, corrupt) raises :class:`BadSample` ('bad_image').
    """
    turned = record.orientation >= 5
    width, height = (record.height, record.width) if turned else (record.width, record.height)  # as stored
    if min_size is not None and turned:
        min_size = (min_size[1], min_size[0])
    factor = _scale_factor(width, height, min_size)
    if _simplejpeg is not None:
        try:
            # the smallest libjpeg scale >= (h/k, w/k) is 1/k itself
            pixels = _simplejpeg.decode_jpeg(record.data, "RGB", min_height=math.ceil(height / factor),
                                             min_width=math.ceil(width / factor))
        except ValueError:
            pass  # OpenCV decides, as before simplejpeg was used: the same images are accepted and refused
        else:
            if pixels.ndim == 3 and pixels.shape[2] == 3:
                return _orient(pixels, record.orientation), "RGB"
    flags = _REDUCED[factor] | cv2.IMREAD_IGNORE_ORIENTATION  # applied below, after the reduced-scale decode
    try:
        pixels = cv2.imdecode(np.frombuffer(record.data, np.uint8), flags)
    except cv2.error as exc:
        raise BadSample("bad_image", str(exc).strip().splitlines()[-1]) from None
    if pixels is None or pixels.ndim != 3:
        raise BadSample("bad_image", "the JPEG data is truncated or cannot be decoded")
    return _orient(pixels, record.orientation), "BGR"


def decode_image(record: Record, min_size: tuple[int, int] | None = None) -> np.ndarray:
    """HxWx3 uint8 **BGR**, decoded at a reduced scale where ``min_size`` (w, h) permits (see
    :func:`decode_pixels`, which the training stream uses to skip the channel swap)."""
    pixels, order = decode_pixels(record, min_size)
    return pixels if order == "BGR" else cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
