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
import time
from dataclasses import dataclass, field
from typing import Iterator

import cv2
import numpy as np
from PIL import Image

from .masks import RLEError, rle_check
from .shards import ShardReadError, is_url, sample_key

log = logging.getLogger(__name__)

__all__ = [
    "REASONS",
    "MEMBERS",
    "BadSample",
    "BadRecord",
    "RawRecord",
    "Record",
    "read_shard",
    "open_shard",
    "ShardStream",
    "ShardReadError",
    "parse_record",
    "decode_image",
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


class ShardStream(io.RawIOBase):
    """A shard's bytes, read once, front to back; the one place shards are opened and read.

    Remote shards (URLs, ``pipe:`` commands) are flaky: an error while opening or
    reading one (a command's non-zero exit, a dropped connection, a stream that
    ends early) is retried ``retries`` times, waiting ``retry_delay`` seconds
    before the first retry and twice as long before each next one; the re-opened
    stream skips the bytes already delivered, so the reader above never notices.
    When the retries are used up (at once for a local file) it raises
    :class:`ShardReadError` naming the shard, the attempts and the last error.
    The last 1024 bytes read are kept (``tail``) to check for the end-of-archive marker.
    """

    def __init__(self, shard: str, retries: int = 0, retry_delay: float = 1.0, opener=None):
        self.shard = shard
        self.retries = max(0, int(retries)) if is_url(shard) else 0
        self.retry_delay = max(0.0, float(retry_delay))
        self.opener = opener or _open
        self.attempts = 0  # retries used so far
        self.position = 0
        self.tail = b""
        self.ended = False
        self.raw = None
        self._connect()

    def readable(self):
        return True

    def _connect(self) -> None:
        while True:
            raw = None
            try:
                raw = self.opener(self.shard)
                skip = self.position
                while skip:  # a re-opened stream: discard what was already delivered
                    chunk = raw.read(min(skip, 1 << 20))
                    if not chunk:
                        _finish(raw)
                        raise EOFError(f"the stream ended after {self.position - skip} bytes, before byte {self.position}")
                    skip -= len(chunk)
                self.raw = raw
                return
            except Exception as exc:  # noqa: BLE001 - any failure to open is retried the same way
                _close_quietly(raw)
                self._wait_or_give_up(exc, raw)

    def _wait_or_give_up(self, exc: BaseException, raw=None) -> None:
        status = getattr(raw, "status", None)  # webdataset's pipes (pipe:, curl for http) know the exit status
        if isinstance(status, int) and status != 0:
            why = f"the command exited with status {status}"
        else:
            why = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        if self.attempts >= self.retries:
            tries = f" after {self.attempts + 1} attempts" if self.retries else ""
            raise ShardReadError(f"{why}{tries}") from None
        delay = self.retry_delay * 2**self.attempts
        self.attempts += 1
        log.warning("shard %s: %s; retry %d of %d in %.3g s", self.shard, why, self.attempts, self.retries, delay)
        time.sleep(delay)

    def readinto(self, buffer):
        if self.ended:
            return 0
        while True:
            try:
                data = self.raw.read(len(buffer))
                if not data:
                    _finish(self.raw)  # a command's exit status is known only now: failure raises
                    self.ended = True
                break
            except Exception as exc:  # noqa: BLE001 - a broken stream: re-open and continue where it broke
                raw, self.raw = self.raw, None
                _close_quietly(raw)
                self._wait_or_give_up(exc, raw)
                self._connect()
        n = len(data)
        buffer[:n] = data
        self.position += n
        self.tail = (self.tail + bytes(data))[-1024:]
        return n

    def drain(self) -> None:
        while self.read(1 << 16):
            pass

    def close(self):
        # A command cut off before its end (the reader needed only part of the shard) exits by SIGPIPE: not an error.
        if self.raw is not None and not self.ended:
            _close_quietly(self.raw)
        self.raw = None
        super().close()


def _finish(raw) -> None:
    """Close a stream that reached its end; a pipe's command that failed raises here."""
    close = getattr(raw, "close", None)
    if close is not None:
        close()


def _close_quietly(raw) -> None:
    try:
        if raw is not None:
            raw.close()
    except Exception:  # noqa: BLE001 - its status no longer matters
        pass


def _open(shard: str):
    from webdataset import gopen

    return gopen(shard, "rb")


def open_shard(shard: str, retries: int = 0, retry_delay: float = 1.0) -> ShardStream:
    """A shard's byte stream (retried for remote shards); raises :class:`ShardReadError` when it cannot be opened."""
    return ShardStream(shard, retries, retry_delay)


def read_shard(shard: str, start: int = 0, end: int | None = None, retries: int = 0,
               retry_delay: float = 1.0) -> Iterator[RawRecord | BadRecord]:
    """Records ``start <= offset < end`` of one shard, in tar order.

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
    cut = None
    try:
        tar = tarfile.open(fileobj=io.BufferedReader(stream, 1 << 20), mode="r|")
        for info in tar:
            if not info.isreg():
                continue
            key, ext = sample_key(info.name)
            if current is None or key != current.key:
                if current is not None and offset >= start:
                    yield current
                offset += 1
                if end is not None and offset >= end:
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
    except (tarfile.TarError, OSError, EOFError) as exc:
        cut = str(exc) or type(exc).__name__
        if offset < 0:  # nothing readable at all; reported once, by the reader of its first record
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
    masks: list  # run-length lists, all checked against (height, width)


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
        image = Image.open(io.BytesIO(data))
        size = image.size
    except Exception as exc:
        raise BadSample("bad_image", str(exc)) from None
    if image.format != "JPEG":
        raise BadSample("not_jpeg", f"decoded as {image.format}")
    if size != (width, height):
        raise BadSample("size_mismatch", f"members say {height}x{width}, image is {size[1]}x{size[0]}")

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
        except (ValueError, KeyError, TypeError) as exc:
            raise BadSample("bad_segmentation", str(exc)[:200]) from None
        for i, rle in enumerate(masks):
            try:
                rle_check(np.asarray(rle), height, width)
            except RLEError as exc:
                reason = "rle_out_of_bounds" if "reaches pixel" in str(exc) or "below 1" in str(exc) else "bad_segmentation"
                raise BadSample(reason, f"mask {i}: {exc}") from None
            except (TypeError, ValueError) as exc:
                raise BadSample("bad_segmentation", f"mask {i}: {exc}") from None
    return Record(raw.shard, raw.key, raw.offset, image, data, height, width, caption, masks)


_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}


def decode_image(record: Record, min_size: tuple[int, int] | None = None) -> np.ndarray:
    """HxWx3 uint8 **BGR**, decoded at a reduced scale where ``min_size`` (w, h) permits.

    libjpeg's DCT scaling (1/2, 1/4, 1/8) is exact and skips most of the
    inverse transforms; the result is never smaller than ``min_size``. OpenCV
    decodes straight into an array (no copy out of a PIL image), ignores EXIF
    orientation (height/width and the masks describe the stored pixels), and
    refuses truncated data: :class:`BadSample` ('bad_image').
    """
    factor = 1
    if min_size is not None:
        for k in (8, 4, 2):
            if math.ceil(record.width / k) >= min_size[0] and math.ceil(record.height / k) >= min_size[1]:
                factor = k
                break
    flags = _REDUCED[factor] | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        pixels = cv2.imdecode(np.frombuffer(record.data, np.uint8), flags)
    except cv2.error as exc:
        raise BadSample("bad_image", str(exc).strip().splitlines()[-1]) from None
    if pixels is None or pixels.ndim != 3:
        raise BadSample("bad_image", "the JPEG data is truncated or cannot be decoded")
    return pixels
