"""Shard lists, sample counts and the per-epoch plan of who reads what.

Shard specs: local ``.tar`` paths, directories (every ``*.tar`` inside), glob
patterns, brace patterns (``shards/{00000..00999}.tar``), ``::``-joined lists,
and the URL forms WebDataset opens (``http(s)://``, ``pipe:CMD``, ``s3://``,
``gs://``, ``hf://``, ``ais://``...).

Sample counts come from a ``sizes.json`` beside the shards (``{"name.tar": n}``,
written by ``brushtrain data build|synth|index``), else from reading the tar
headers (local files: a seek per member, no data read; URLs: the stream).

The plan: each epoch, the shard order is shuffled with ``(seed, epoch)``; the
resulting sequence of samples is cut into ``world_size * workers`` contiguous
ranges of (almost) equal sample counts, one per (rank, worker) slot. Ranges are
lists of :class:`Segment` (shard, first sample, end sample), so a slot may read
part of a shard and no sample belongs to two slots.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from common.errors import UserError
from data.streams import ShardReadError, is_url, not_a_tar, open_shard

__all__ = [
    "ShardSpecError",
    "ShardReadError",
    "UnreadableShardsError",
    "Segment",
    "expand_shards",
    "shard_specs",
    "shard_sizes",
    "sizes_beside",
    "count_samples",
    "sample_key",
    "epoch_segments",
    "split_segments",
    "write_sizes",
    "SIZES_FILE",
]

log = logging.getLogger(__name__)
SIZES_FILE = "sizes.json"


class ShardSpecError(UserError, ValueError):
    """A shard spec that names no shard, or a shard that cannot be found."""


class UnreadableShardsError(UserError, OSError):
    """Not one of the shards could be read: the run cannot start."""

    exit_code = 1


def shard_specs(value) -> list[str]:
    """A config's shard value (one spec or a list of specs) as a list of strings."""
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [str(value)]
    return [str(v) for v in value]


def expand_shards(specs: str | Sequence[str]) -> list[str]:
    """Every shard the specs name, in a stable order (duplicates removed)."""
    from webdataset.shardlists import expand_urls

    specs = shard_specs(specs)
    out: list[str] = []
    for spec in specs:
        matched: list[str] = []
        for item in expand_urls(str(spec)):
            if is_url(item):
                matched.append(item)
            elif os.path.isdir(item):
                matched += sorted(str(p) for p in Path(item).glob("*.tar"))
            elif any(c in item for c in "*?["):
                matched += sorted(p for p in glob.glob(item) if p.endswith(".tar"))
            elif os.path.isfile(item):
                matched.append(item)
            else:
                raise ShardSpecError(f"shard {item!r} (from {spec!r}) does not exist")
        if not matched:
            raise ShardSpecError(f"shard spec {spec!r} matches no .tar file")
        out += matched
    return list(dict.fromkeys(out))


def sample_key(member_name: str) -> tuple[str, str]:
    """(key, extension) of a tar member, WebDataset's rule: the key ends at the first dot of the basename."""
    from webdataset.tariterators import base_plus_ext

    key, ext = base_plus_ext(member_name)
    return (key, ext) if key is not None else (member_name, "")


def count_samples(shard: str, retries: int = 0, retry_delay: float = 1.0) -> int:
    """Samples (distinct consecutive keys) in one shard, from tar headers only where possible.

    A damaged shard counts the samples before the damage; one with none readable
    raises :class:`ShardReadError` (remote shards are retried first, see
    :class:`data.streams.ShardStream`).
    """
    keys, last, stream, head = 0, None, None, b""
    try:
        if is_url(shard):
            stream = io.BufferedReader(open_shard(shard, retries, retry_delay), 1 << 16)
            head = stream.peek(8)[:8]
            tar = tarfile.open(fileobj=stream, mode="r|")  # as the reader opens it: plain tar only
        else:
            with open(shard, "rb") as f:
                head = f.read(8)
            tar = tarfile.open(shard, mode="r:")  # random access: seeks over member data
        with tar:
            for info in tar:
                if info.isreg():
                    key, _ = sample_key(info.name)
                    if key != last:
                        keys, last = keys + 1, key
    except (tarfile.TarError, OSError, EOFError) as exc:  # truncated: count what is there
        if keys == 0:
            raise ShardReadError(f"{shard}: {not_a_tar(head) or exc}") from None
        log.warning("shard %s is damaged after %d samples (%s); counting those", shard, keys, exc)
    finally:
        if stream is not None:
            stream.close()
    return keys


def sizes_beside(shard: str, cache: dict) -> dict | None:
    if is_url(shard) and not shard.startswith(("http://", "https://", "file://")):
        return None
    folder = shard.rsplit("/", 1)[0] if "/" in shard else "."
    if folder not in cache:
        cache[folder] = None
        location = f"{folder}/{SIZES_FILE}"
        try:
            if is_url(shard):
                from webdataset import gopen

                with gopen(location, "rb") as f:
                    cache[folder] = json.loads(f.read())
            elif os.path.isfile(location):
                cache[folder] = json.loads(Path(location).read_text())
        except Exception as exc:  # no sizes file there: fall back to counting
            log.debug("no usable %s: %s", location, exc)
    return cache[folder]


def shard_sizes(shards: Sequence[str], sizes_file: str | None = None, retries: int = 0,
                retry_delay: float = 1.0) -> list[int]:
    """Sample count of each shard: ``sizes_file`` or ``sizes.json`` beside the shards, else counted.

    A shard that cannot be read counts as 1 (its reader reports it as an
    ``unreadable_shard`` record); if none can be read, :class:`UnreadableShardsError`.
    """
    explicit = json.loads(Path(sizes_file).read_text()) if sizes_file else None
    cache: dict = {}
    sizes = []
    counted, unreadable = 0, []
    for shard in shards:
        name = shard.rsplit("/", 1)[-1]
        table = explicit if explicit is not None else sizes_beside(shard, cache)
        if table is not None and (name in table or shard in table):
            sizes.append(int(table.get(shard, table.get(name))))
            continue
        counted += 1
        try:
            sizes.append(count_samples(shard, retries, retry_delay))
        except ShardReadError as exc:
            log.warning("cannot read shard %s", exc)
            unreadable.append(str(exc))
            sizes.append(1)  # planned as one record, which its reader reports as unreadable
    if counted:
        log.info("counted samples of %d shard(s) without a %s entry", counted, SIZES_FILE)
    if unreadable and len(unreadable) == len(shards):
        tries = f" (each tried {retries + 1} time(s))" if any(is_url(s) for s in shards) else ""  # files: once
        raise UnreadableShardsError(f"none of the {len(shards)} shard(s) could be read{tries}; first: {unreadable[0]}")
    return sizes


def write_sizes(folder: str | Path, sizes: dict[str, int]) -> Path:
    """Merge ``sizes`` into ``folder/sizes.json``, atomically."""
    path = Path(folder) / SIZES_FILE
    table = json.loads(path.read_text()) if path.exists() else {}
    table.update(sizes)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(dict(sorted(table.items())), indent=1) + "\n")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Segment:
    """Samples ``start`` (inclusive) to ``end`` (exclusive) of shard number ``shard``."""

    shard: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


def epoch_segments(sizes: Sequence[int], seed: int, epoch: int, shuffle: bool = True) -> list[Segment]:
    """All samples of an epoch as whole-shard segments, shards in the epoch's order."""
    order = np.arange(len(sizes))
    if shuffle:
        order = np.random.default_rng([seed, epoch, 0x5AD]).permutation(len(sizes))
    return [Segment(int(i), 0, int(sizes[i])) for i in order if sizes[i] > 0]


def split_segments(segments: Iterable[Segment], parts: int) -> list[list[Segment]]:
    """Cut a sequence of segments into ``parts`` contiguous pieces with counts differing by at most 1."""
    segments = [s for s in segments if s.size > 0]
    total = sum(s.size for s in segments)
    bounds = [total * p // parts for p in range(parts + 1)]
    out: list[list[Segment]] = [[] for _ in range(parts)]
    offset = 0
    for seg in segments:
        lo, hi = offset, offset + seg.size
        for p in range(parts):
            a, b = max(lo, bounds[p]), min(hi, bounds[p + 1])
            if a < b:
                out[p].append(Segment(seg.shard, seg.start + a - lo, seg.start + b - lo))
        offset = hi
    return out
