"""Read an offline W&B run file (``run-*.wandb``): the LevelDB-log-style record stream W&B writes,
with ``wandb_internal_pb2.Record`` protobufs inside. Test helper only."""

from __future__ import annotations

import struct
from pathlib import Path

BLOCK = 32768
HEADER = 7  # per record: crc32 (4), length (2), type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, "not a W&B run file"
    pos, pending = 7, b""
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:
            pos += left_in_block
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            pending = chunk
        elif kind == FIRST:
            pending = chunk
            continue
        elif kind == MIDDLE:
            pending += chunk
            continue
        elif kind == LAST:
            pending += chunk
        record = pb.Record()
        record.ParseFromString(pending)
        pending = b""
        yield record


def summary(path: str | Path) -> dict:
    """{'history_keys': set, 'config_keys': set, 'run_id': str, 'images': int}."""
    history, config, run_id = set(), set(), None
    for rec in records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            history.update(item.key or "/".join(item.nested_key) for item in rec.history.item)
        elif kind == "run":
            run_id = rec.run.run_id
            config.update(u.key for u in rec.run.config.update)
        elif kind == "config":
            config.update(u.key or "/".join(u.nested_key) for u in rec.config.update)
    return {"history_keys": history, "config_keys": config, "run_id": run_id}
