"""Test shards: uneven synthetic shard sets, and shards with one bad record of every kind
(the latter written with plain ``tarfile``, not our writer)."""

from __future__ import annotations

import functools
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg(h: int, w: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def members(h=40, w=56, seed=0, caption="a thing", masks=None) -> dict:
    if masks is None:
        masks = [[1 + h * 2, h * 3]]  # columns 2..4 fully
    return {
        "image": jpeg(h, w, seed), "caption": caption.encode(), "height": str(h).encode(), "width": str(w).encode(),
        "segmentation": json.dumps({"mask": masks}).encode(),
    }


def write_tar(path: Path, records: list[tuple[str, dict]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for key, mem in records:
            for ext, data in mem.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


# reason -> a function turning good members into a record with exactly that defect
def _drop(name):
    return lambda m: {k: v for k, v in m.items() if k != name}


DEFECTS = {
    "missing_member": _drop("caption"),
    "bad_size": lambda m: {**m, "height": b"forty"},
    "empty_image": lambda m: {**m, "image": b""},
    "not_jpeg": lambda m: {**m, "image": _png(m)},
    "bad_image": lambda m: {**m, "image": m["image"][: len(m["image"]) // 2]},
    "size_mismatch": lambda m: {**m, "width": b"57"},
    "bad_segmentation": lambda m: {**m, "segmentation": b"{\"mask\": [1, 2"},
    "rle_out_of_bounds": lambda m: {**m, "segmentation": json.dumps({"mask": [[40 * 56 - 3, 10]]}).encode()},
}


def _png(m) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(m["image"])).save(buf, format="PNG")
    return buf.getvalue()


def write_bad_dataset(folder: Path, good_per_shard: int = 6) -> dict:
    """Two shards: every defect once among good records, plus one truncated shard.

    Returns {"good": n, "bad": {reason: 1, ...}, "good_keys": [...]}.
    """
    folder.mkdir(parents=True, exist_ok=True)
    good_keys = []
    records = []
    for i, (reason, defect) in enumerate(DEFECTS.items()):
        for j in range(good_per_shard // 2):
            key = f"g{i:02d}{j:02d}"
            records.append((key, members(seed=i * 10 + j)))
            good_keys.append(key)
        records.append((f"bad_{reason}", defect(members(seed=100 + i))))
    write_tar(folder / "mixed-00000.tar", records)

    # A shard cut in the middle of its third record's image data.
    cut_records = [(f"t{j:03d}", members(seed=200 + j)) for j in range(4)]
    full = write_tar(folder / "cut.tmp", cut_records).read_bytes()
    (folder / "cut.tmp").unlink()
    offset = full.index(b"t002.image") + 512 + 100  # past the header, inside the data
    (folder / "truncated-00001.tar").write_bytes(full[:offset])
    good_keys += ["t000", "t001"]
    return {"good": len(good_keys), "bad": {**{r: 1 for r in DEFECTS}, "truncated_tar": 1}, "good_keys": good_keys}


def write_uneven_shards(folder: Path, sizes: list[int], seed: int = 0, prefix: str = "part",
                        min_size: int = 24, max_size: int = 48) -> Path:
    """Synthetic shards holding ``sizes[i]`` records each; keys k00000, k00001, ... across shards."""
    from data.synth import synth_record
    from data.writer import ShardWriter, brushdata_members, encode_jpeg

    rng = np.random.default_rng(seed)
    n = 0
    for i, size in enumerate(sizes):
        with ShardWriter(folder, prefix=prefix, max_samples=size, start_index=i) as writer:
            for _ in range(size):
                rec = synth_record(rng, min_size, max_size)
                h, w = rec.image.shape[:2]
                writer.write(f"k{n:05d}", brushdata_members(encode_jpeg(rec.image), h, w, rec.caption, rec.masks))
                n += 1
    return folder


def unusual_records() -> list[tuple[str, dict, str | None]]:
    """Records that once stopped the reader or were misjudged: (key, members, the reason they are skipped with,
    or None where they must train). Each is valid or invalid in one way only."""
    deep = b'{"mask": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    return [
        ("ok_plain", members(seed=1), None),
        ("ok_1x1", members(1, 1, seed=2, masks=[[1, 1]]), None),  # brush strokes 65536 px wide in a 512 px crop
        ("ok_2x300", members(2, 300, seed=3, masks=[[1, 2]]), None),
        ("ok_300x2", members(300, 2, seed=4, masks=[]), None),
        ("rle_infinite", {**members(seed=5), "segmentation": b'{"mask": [[1e400, 5]]}'}, "bad_segmentation"),
        ("rle_int64_wrap", {**members(seed=6), "segmentation": b'{"mask": [[2, 9223372036854775807]]}'},
         "rle_out_of_bounds"),
        ("rle_uint64", {**members(seed=7), "segmentation": b'{"mask": [[18446744073709551615, 1]]}'},
         "rle_out_of_bounds"),
        ("json_too_deep", {**members(seed=8), "segmentation": deep}, "bad_segmentation"),
        ("ok_mpo", {**members(seed=9), "image": _mpo(40, 56)}, None),  # a camera's multi-picture JPEG
        ("ok_180mp", {**members(seed=10, masks=[]), "image": _large_jpeg(), "height": b"13400", "width": b"13400"},
         None),  # past PIL's decompression-bomb limit (179 M pixels), not OpenCV's (2**30)
        ("header_past_2e30", {**members(16, 16, seed=11), "image": _claimed_size(jpeg(16, 16), 65000, 65000),
                              "height": b"65000", "width": b"65000"}, "bad_image"),
    ]


def _mpo(h: int, w: int) -> bytes:
    rng = np.random.default_rng(h * w)
    first, second = (Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for _ in range(2))
    buf = io.BytesIO()
    first.save(buf, format="MPO", save_all=True, append_images=[second])
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def _large_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (13400, 13400), 128).save(buf, format="JPEG", quality=50)  # 180 M pixels, 2 MB
    return buf.getvalue()


def _claimed_size(data: bytes, h: int, w: int) -> bytes:
    """The JPEG with its frame header (SOF0) claiming h x w."""
    out = bytearray(data)
    sof = out.index(b"\xff\xc0")
    out[sof + 5 : sof + 9] = h.to_bytes(2, "big") + w.to_bytes(2, "big")
    return bytes(out)


def write_unusual_dataset(folder: Path) -> dict:
    """One shard of :func:`unusual_records`; returns {"good_keys": [...], "bad": {reason: n}}."""
    folder.mkdir(parents=True, exist_ok=True)
    records = unusual_records()
    write_tar(folder / "unusual-00000.tar", [(key, mem) for key, mem, _ in records])
    bad: dict = {}
    for _, _, reason in records:
        if reason is not None:
            bad[reason] = bad.get(reason, 0) + 1
    return {"good_keys": [key for key, _, reason in records if reason is None], "bad": bad}
