"""Writing BrushData shards: size-capped tar files, each written atomically, plus ``sizes.json``."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Sequence

import numpy as np

from data.masks import rle_encode
from data.shards import write_sizes

__all__ = ["ShardWriter", "brushdata_members", "encode_jpeg"]


def encode_jpeg(image: np.ndarray, quality: int = 92) -> bytes:
    """HxWx3 uint8 RGB -> JPEG bytes."""
    import cv2

    ok, buf = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def brushdata_members(jpeg: bytes, height: int, width: int, caption: str, masks: Sequence[np.ndarray | list]) -> dict[str, bytes]:
    """The member bytes of one record; masks are HxW arrays (non-zero = object) or RLE lists."""
    rles = [m if isinstance(m, list) else rle_encode(m) for m in masks]
    return {
        "image": jpeg,
        "caption": caption.encode("utf-8"),
        "height": str(height).encode("ascii"),
        "width": str(width).encode("ascii"),
        "segmentation": json.dumps({"mask": rles}, separators=(",", ":")).encode("utf-8"),
    }


class ShardWriter:
    """Writes records into ``{prefix}-{index:05d}.tar`` files under ``out_dir``.

    A shard is closed when it holds ``max_samples`` records or would exceed
    ``max_bytes``. Each shard is written to a temporary name and renamed when
    complete, so a reader never sees half a shard; ``sizes.json`` is updated
    (atomically) as each shard completes.
    """

    def __init__(self, out_dir: str | Path, prefix: str = "shard", max_samples: int = 1000,
                 max_bytes: int | None = None, start_index: int = 0):
        if max_samples < 1:
            raise ValueError("max_samples must be >= 1")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix, self.max_samples, self.max_bytes = prefix, max_samples, max_bytes
        self.index = start_index
        self.shards: list[Path] = []
        self.total_samples = 0
        self.total_bytes = 0
        self._tar = None
        self._tmp: Path | None = None
        self._count = 0
        self._bytes = 0

    def _open(self) -> None:
        final = self.out_dir / f"{self.prefix}-{self.index:05d}.tar"
        self._tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
        self._count = self._bytes = 0

    def _close(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        final = self.out_dir / f"{self.prefix}-{self.index:05d}.tar"
        with open(self._tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self._tmp, final)
        write_sizes(self.out_dir, {final.name: self._count})
        self.shards.append(final)
        self.total_bytes += final.stat().st_size
        self.index += 1
        self._tar = None

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if "." in key or "/" in key:
            raise ValueError(f"record key {key!r} must not contain '.' or '/'")
        size = sum(len(v) + 512 for v in members.values())
        if self._tar is not None and (
            self._count >= self.max_samples or (self.max_bytes and self._bytes and self._bytes + size > self.max_bytes)
        ):
            self._close()
        if self._tar is None:
            self._open()
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        self._bytes += size
        self.total_samples += 1

    def close(self) -> None:
        self._close()

    def abort(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tmp.unlink(missing_ok=True)
            self._tar = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.abort() if exc_type else self.close()
