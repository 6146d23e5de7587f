"""Opening a shard: the one place shard bytes are read, with retries for remote shards (URLs, ``pipe:``)."""

from __future__ import annotations

import io
import logging
import time

log = logging.getLogger(__name__)

__all__ = ["ShardReadError", "ShardStream", "open_shard", "is_url", "not_a_tar"]

_URL_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://", "gcs://", "hf://", "ais://", "file://")


class ShardReadError(OSError):
    """A shard that could not be opened or read to its end (after the retries a remote one gets)."""


def is_url(spec: str) -> bool:
    return spec.startswith(_URL_PREFIXES)


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


_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


def not_a_tar(head: bytes) -> str | None:
    """Why a shard starting with ``head`` (its first bytes) is no tar file, when its format says so: a
    compressed tar (a ``.tar.gz`` renamed, ``tar czf``). BrushData shards are plain tar files."""
    for magic, kind in _COMPRESSED.items():
        if head.startswith(magic):
            return f"{kind}-compressed data, not a tar file (BrushData shards are plain tar: decompress it)"
    return None


def open_shard(shard: str, retries: int = 0, retry_delay: float = 1.0) -> ShardStream:
    """A shard's byte stream (retried for remote shards); raises :class:`ShardReadError` when it cannot be opened."""
    return ShardStream(shard, retries, retry_delay)
