"""Scan shards: good records, bad records by reason (with shard and key), size statistics."""

from __future__ import annotations

import collections
import functools
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from data.records import BadRecord, BadSample, decode_pixels, parse_record, read_shard
from data.shards import sizes_beside

__all__ = ["ShardReport", "validate_shard", "validate_shards"]


@dataclass
class ShardReport:
    shard: str
    good: int = 0
    bad: dict = field(default_factory=dict)  # reason -> count
    bad_keys: list = field(default_factory=list)  # (key, reason, detail), first 100
    heights: list = field(default_factory=list)
    widths: list = field(default_factory=list)
    masks: list = field(default_factory=list)  # masks per good record
    bytes: list = field(default_factory=list)  # image bytes per good record
    records: int = 0  # records in the shard, good and bad (what sizes.json must say)
    damaged: bool = False  # unreadable or cut off: its record count is unknown


def validate_shard(shard: str, retries: int = 0, retry_delay: float = 1.0) -> ShardReport:
    """Every check the training stream makes, plus a full decode of each image.

    A remote shard that fails is retried first (``retries``, ``retry_delay``, as in
    training); one that still cannot be read is reported (``unreadable_shard``,
    ``truncated_tar``), never raised.
    """
    report = ShardReport(shard)
    bad = collections.Counter()

    def note(key, reason, detail):
        bad[reason] += 1
        if len(report.bad_keys) < 100:
            report.bad_keys.append((key, reason, detail[:200]))

    for item in read_shard(shard, retries=retries, retry_delay=retry_delay):
        if isinstance(item, BadRecord):
            note(item.key, item.reason, item.detail)
            report.damaged = True  # the two reasons read_shard gives: unreadable_shard, truncated_tar
            continue
        report.records += 1
        try:
            record = parse_record(item)
            decode_pixels(record, min_size=(64, 64))  # reads all the JPEG data: truncation shows
        except BadSample as exc:
            note(item.key, exc.reason, exc.detail)
            continue
        report.good += 1
        report.heights.append(record.height)
        report.widths.append(record.width)
        report.masks.append(len(record.masks))
        report.bytes.append(len(item.members["image"]))
    report.bad = dict(bad)
    return report


def _stats(values: list) -> dict:
    if not values:
        return {}
    arr = np.asarray(values)
    return {"min": int(arr.min()), "median": float(np.median(arr)), "max": int(arr.max()), "mean": round(float(arr.mean()), 2)}


def validate_shards(shards: list[str], workers: int = 1, retries: int = 0, retry_delay: float = 1.0) -> dict:
    """One summary over all shards (the ``validate --json`` object)."""
    one = functools.partial(validate_shard, retries=retries, retry_delay=retry_delay)
    if workers > 1 and len(shards) > 1:
        with ProcessPoolExecutor(workers) as pool:
            reports = list(pool.map(one, shards))
    else:
        reports = [one(s) for s in shards]
    bad = collections.Counter()
    for r in reports:
        bad.update(r.bad)
    stale, cache = {}, {}
    for r in reports:  # a wrong count in sizes.json: training reads that many records, never the others
        table = None if r.damaged else sizes_beside(r.shard, cache)
        name = r.shard.rsplit("/", 1)[-1]
        if table is not None and name in table and table[name] != r.records:
            stale[r.shard] = {"sizes_json": table[name], "records": r.records}
    cat = lambda name: [v for r in reports for v in getattr(r, name)]  # noqa: E731
    return {
        "samples": sum(r.good for r in reports),
        "bad": dict(sorted(bad.items())),
        "bad_total": sum(bad.values()),
        "sizes_mismatch": stale,  # shard -> {"sizes_json": n, "records": m}, where its sizes.json is wrong
        "shards": len(shards),
        "per_shard": {r.shard: {"samples": r.good, "bad": r.bad} for r in reports},
        "bad_records": [{"shard": r.shard, "key": k, "reason": why, "detail": d} for r in reports for k, why, d in r.bad_keys],
        "height": _stats(cat("heights")),
        "width": _stats(cat("widths")),
        "masks_per_sample": _stats(cat("masks")),
        "image_bytes": _stats(cat("bytes")),
    }
