"""The training stream: coverage under DDP, equal batch counts, resume, augmentations, bad data."""

from __future__ import annotations

import collections
import dataclasses
import logging
import shutil

import cv2
import numpy as np
import pytest
import torch
from bad_shards import members, write_bad_dataset, write_tar, write_unusual_dataset, write_uneven_shards

from data.batch import model_inputs
from data.brushdata import PAD_KEY, BadDataError, BrushDataLoader, DataConfig, MaskConfig, pad_batch, real_samples
from data.shards import (
    Segment,
    ShardSpecError,
    expand_shards,
    shard_sizes,
    split_segments,
)
from data.writer import ShardWriter, brushdata_members, encode_jpeg

UNEVEN = [13, 40, 5, 22, 31, 9, 17]  # 137 records in 7 shards


@pytest.fixture(scope="module")
def uneven_shards(tmp_path_factory):
    return write_uneven_shards(tmp_path_factory.mktemp("uneven"), UNEVEN)


def _cfg(shards, **kw):
    base = dict(shards=[str(shards)], resolution=32, batch_size=4, num_workers=2, shuffle_buffer=8, seed=3)
    base.update(kw)
    return DataConfig(**base)


def _run(loader, limit=None):
    out = []
    for i, batch in enumerate(loader):
        out.append(batch)
        if limit is not None and i + 1 == limit:
            break
    return out


def _real_keys(batches):
    return [k for b in batches for k, w in zip(b["key"], b["weight"]) if w > 0]


def test_two_ranks_two_workers_see_every_sample_once_with_equal_batch_counts(uneven_shards):
    keys, counts = [], []
    for rank in range(2):
        loader = BrushDataLoader(_cfg(uneven_shards), rank=rank, world_size=2)
        batches = _run(loader)
        counts.append((len(batches), len(loader)))
        keys += _real_keys(batches)
    assert counts[0] == counts[1] and counts[0][0] == counts[0][1]
    seen = collections.Counter(keys)
    assert len(seen) == sum(UNEVEN) and max(seen.values()) == 1


@pytest.mark.parametrize("world, workers, batch", [(3, 1, 5), (2, 3, 7), (4, 2, 1)])
def test_coverage_for_other_layouts(uneven_shards, world, workers, batch):
    keys, lengths = [], set()
    for rank in range(world):
        loader = BrushDataLoader(_cfg(uneven_shards, num_workers=workers, batch_size=batch), rank, world)
        batches = _run(loader)
        lengths.add(len(batches))
        keys += _real_keys(batches)
        # Every batch has the one shape a compiled step needs (dynamic=False): a worker's short last batch is
        # filled up with blank samples of weight 0 at its end, which no counter takes for data.
        for b in batches:
            assert {len(b[k]) for k in ("image", "keep_mask", "caption", "original_size", "crop_top_left", "key",
                                        "mask_source", "sample_seed", "weight")} == {batch}
            assert b["image"].shape[1:] == (3, 32, 32) and b["keep_mask"].shape[1:] == (1, 32, 32)
            real = int((b["weight"] > 0).sum())
            assert b["weight"][:real].eq(1).all() and b["weight"][real:].eq(0).all()
            assert b["key"][real:] == [PAD_KEY] * (batch - real) and PAD_KEY not in b["key"][:real]
            if real:  # a filled-up batch (a pad batch, weight 0 throughout, repeats the last batch's pixels)
                assert b["image"][real:].eq(0).all() and b["keep_mask"][real:].eq(1).all()
            assert real_samples(b)["key"] == b["key"][:real] and len(real_samples(b)["image"]) == real
        assert loader.counters["good"] == len(_real_keys(batches))
    assert len(lengths) == 1
    assert sorted(keys) == sorted(set(keys)) and len(keys) == sum(UNEVEN)


def test_a_rank_without_data_pads_with_full_size_batches(tmp_path):
    """A rank that never gets a good sample still hands out batches of data.batch_size (blank, weight 0)."""
    pad = pad_batch(None, 32, 5)
    assert pad["image"].shape == (5, 3, 32, 32) and pad["keep_mask"].shape == (5, 1, 32, 32)
    assert pad["weight"].eq(0).all() and pad["key"] == [PAD_KEY] * 5 and "__meta__" not in pad
    assert real_samples(pad)["key"] == [] and real_samples(pad)["weight"].numel() == 0


def test_epochs_reshuffle_and_repeat_the_data(uneven_shards):
    loader = BrushDataLoader(_cfg(uneven_shards, num_workers=0))
    first, second = _real_keys(_run(loader)), _real_keys(_run(loader))
    assert sorted(first) == sorted(second) and first != second
    assert loader.epoch == 1 and loader.position()["epoch"] == 2  # both epochs handed out in full


def test_a_trainer_that_stops_at_len_gets_the_next_epoch(uneven_shards):
    loader = BrushDataLoader(_cfg(uneven_shards, num_workers=0))
    n = len(loader)
    first = _real_keys(_run(loader, n))  # stops after len() batches, never exhausting the iterator
    second = _real_keys(_run(loader, n))
    assert sorted(first) == sorted(second) and first != second
    partial = _real_keys(_run(loader, 3))  # an iteration abandoned mid-epoch continues
    rest = _real_keys(_run(loader))
    assert sorted(partial + rest) == sorted(first)


def test_resume_continues_the_identical_stream(uneven_shards):
    cfg = _cfg(uneven_shards)
    full = _run(BrushDataLoader(cfg, 1, 2))
    for cut in (1, 4, len(full) - 1):
        loader = BrushDataLoader(cfg, 1, 2)
        head = _run(loader, cut)
        state = loader.position()
        resumed = BrushDataLoader(cfg, 1, 2)
        resumed.restore(state)
        tail = _run(resumed)
        assert len(head) + len(tail) == len(full)
        for a, b in zip(head + tail, full):
            assert a["key"] == b["key"]
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["keep_mask"], b["keep_mask"])
            assert a["caption"] == b["caption"]


def test_resume_point_excludes_batches_fetched_ahead(uneven_shards):
    cfg = _cfg(uneven_shards, num_workers=0)
    full = _real_keys(_run(BrushDataLoader(cfg)))
    loader = BrushDataLoader(cfg)
    head = _run(loader, 5)  # the trainer has fetched 5 batches but finished only 4
    state = loader.position(batches_done=4)
    resumed = BrushDataLoader(cfg)
    resumed.restore(state)
    assert _real_keys(head[:4]) + _real_keys(_run(resumed)) == full


def test_resume_with_another_world_size_repeats_nothing(uneven_shards):
    loader = BrushDataLoader(_cfg(uneven_shards), 0, 1)
    head = _run(loader, 6)
    state = loader.position()
    seen = _real_keys(head)
    for rank in range(3):
        resumed = BrushDataLoader(_cfg(uneven_shards, num_workers=1), rank, 3)
        resumed.restore(state)
        seen += _real_keys(_run(resumed))
    counts = collections.Counter(seen)
    assert max(counts.values()) == 1
    assert len(counts) >= sum(UNEVEN) - 2 * 8  # at most the two old shuffle buffers are skipped


def test_resume_with_another_batch_size_continues_the_epoch_with_what_was_not_read(uneven_shards):
    """The position counts batches: resumed with batches of 2 instead of 4, the loader took the old count as its
    own, ran out of samples half way and served weight-0 pad batches for the rest of the epoch."""
    loader = BrushDataLoader(_cfg(uneven_shards), 0, 1)
    head = _run(loader, 3)
    state = loader.position()
    assert state["layout"]["batch_size"] == 4
    resumed = BrushDataLoader(_cfg(uneven_shards, batch_size=2), 0, 1)
    resumed.restore(state)
    rest = _run(resumed)
    assert all(len(b["key"]) == 2 for b in rest)
    counts = collections.Counter(_real_keys(head) + _real_keys(rest))
    assert max(counts.values()) == 1
    assert len(counts) >= sum(UNEVEN) - 2 * 8  # at most the two old shuffle buffers are skipped
    pads = sum(1 for b in rest if float(b["weight"].sum()) == 0)
    assert pads == 0, f"{pads} of {len(rest)} batches trained nothing"
    assert len(resumed) == 3 + len(rest)
    # A checkpoint from before the batch size was recorded: taken as this run's.
    del state["layout"]["batch_size"]
    same = BrushDataLoader(_cfg(uneven_shards), 0, 1)
    same.restore(state)
    assert _real_keys(head) + _real_keys(_run(same)) == _real_keys(_run(BrushDataLoader(_cfg(uneven_shards), 0, 1)))


def test_after_a_layout_change_len_counts_the_epochs_earlier_batches(uneven_shards):
    """Lightning restores its batch index within the epoch (6 here) and stops the epoch at len(): len() must
    count the batches handed out under the old layout, or a resumed run ends its epoch (and training) at once."""
    loader = BrushDataLoader(_cfg(uneven_shards), 0, 1)
    _run(loader, 6)
    state = loader.position(batches_done=6)
    for rank in range(2):
        resumed = BrushDataLoader(_cfg(uneven_shards), rank, 2)
        resumed.restore(state)
        rest = _run(resumed)
        assert len(resumed) == 6 + len(rest) and len(rest) > 0
        again = resumed.position(batches_done=len(resumed))  # the end of that epoch: the next one, no offset
        assert again["epoch"] == state["epoch"] + 1 and again["offset"] == 0
    mid = BrushDataLoader(_cfg(uneven_shards), 0, 2)
    mid.restore(state)
    _run(mid, 2)
    later = mid.position(batches_done=8)  # Lightning's index: 6 before the change + 2 since
    assert later["offset"] == 6 and later["ranks"][0]["yielded"] == 2


def test_state_is_gathered_from_every_rank(uneven_shards):
    cfg = _cfg(uneven_shards, num_workers=1)
    loaders = [BrushDataLoader(cfg, r, 2) for r in range(2)]
    heads = [_run(loader, 3) for loader in loaders]
    local = [{"rank": r, **loaders[r]._snapshots[3]} for r in range(2)]
    state = loaders[0].__class__(cfg, 0, 2, gather=lambda mine: local).position()
    assert sorted(state["ranks"]) == [0, 1]
    for r in range(2):
        resumed = BrushDataLoader(cfg, r, 2)
        resumed.restore(state)
        full = _real_keys(_run(BrushDataLoader(cfg, r, 2)))
        assert _real_keys(heads[r]) + _real_keys(_run(resumed)) == full


def _single_mask_shards(folder, size, n=12, seed=0):
    rng = np.random.default_rng(seed)
    recs = []
    with ShardWriter(folder, prefix="one", max_samples=100) as writer:
        for i in range(n):
            img = rng.integers(0, 255, (size, size + 8 * (i % 3), 3), dtype=np.uint8)
            mask = np.zeros(img.shape[:2], np.uint8)
            y, x = rng.integers(0, size // 2, 2)
            mask[y : y + size // 3, x : x + size // 2] = 1
            writer.write(f"s{i:03d}", brushdata_members(encode_jpeg(img), *img.shape[:2], f"caption {i}", [mask]))
            recs.append(mask)
    return recs


def test_keep_mask_is_the_segmentation_and_masked_pixels_match(tmp_path):
    masks = _single_mask_shards(tmp_path, 32)
    for invert in (0.0, 1.0):
        cfg = _cfg(tmp_path, num_workers=0, batch_size=1, mask=MaskConfig(opening_p=0.0, invert_p=invert),
                   random_crop=False)
        for batch in BrushDataLoader(cfg):
            i = int(batch["key"][0].split("/s")[1])
            h, w = masks[i].shape
            x0 = (w - h) // 2  # centre crop of the short side, no resize (h == resolution)
            expected = masks[i][:, x0 : x0 + h]
            keep = batch["keep_mask"][0, 0].numpy()
            assert np.array_equal(keep, expected if invert == 0 else 1 - expected)
            assert batch["original_size"][0].tolist() == [h, w]
            assert batch["crop_top_left"][0].tolist() == [0, x0]
            x = model_inputs(batch, "cpu")
            hole = x["keep_mask"] == 0
            assert torch.all(x["masked_pixels"][hole.expand_as(x["pixels"])] == -1)
            known = ~hole.expand_as(x["pixels"])
            assert torch.equal(x["masked_pixels"][known], x["pixels"][known])


def test_resized_masks_stay_aligned_with_the_image(tmp_path):
    masks = _single_mask_shards(tmp_path, 96)  # 96 px images at resolution 32
    cfg = _cfg(tmp_path, num_workers=0, batch_size=1, mask=MaskConfig(opening_p=0.0, invert_p=0.0), random_crop=False)
    for batch in BrushDataLoader(cfg):
        i = int(batch["key"][0].split("/s")[1])
        h, w = masks[i].shape
        x0 = (w - h) // 2
        expected = cv2.resize(masks[i][:, x0 : x0 + h], (32, 32), interpolation=cv2.INTER_NEAREST_EXACT)  # pixel centres
        keep = batch["keep_mask"][0, 0].numpy()
        assert (keep != expected).mean() < 0.03


def test_masks_stay_aligned_with_exif_turned_images(tmp_path):
    """Phones store pixels sideways with an EXIF orientation. The reference decodes with cv2.imdecode(IMREAD_COLOR),
    which turns them upright, and applies height/width and the masks to that; so does the stream (before, it
    trained on the stored pixels: a 180-degree turn put every mask on the wrong part of the image)."""
    import io

    from PIL import Image

    records = []
    for orientation in range(1, 9):
        stored = np.zeros((32, 48, 3), np.uint8)
        stored[4:20, 8:16] = 255  # a white box off every axis of symmetry
        exif = Image.Exif()
        exif[0x0112] = orientation
        buf = io.BytesIO()
        Image.fromarray(stored).save(buf, format="JPEG", quality=100, exif=exif.tobytes())
        shown = cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_COLOR)  # the reference's pixels
        h, w = shown.shape[:2]
        box = (shown[..., 0] > 127).astype(np.uint8)
        records.append((f"o{orientation}", brushdata_members(buf.getvalue(), h, w, "box", [box])))
    write_tar(tmp_path / "exif.tar", records)
    cfg = _cfg(tmp_path, num_workers=0, batch_size=1, resolution=32, random_crop=False,
               mask=MaskConfig(opening_p=0.0, invert_p=0.0))
    loader = BrushDataLoader(cfg)
    seen = set()
    for batch in loader:
        keep = batch["keep_mask"][0, 0].numpy()
        white = batch["image"][0, 0].numpy() > 127
        assert 0 < keep.sum() < keep.size
        assert (white == (keep == 1)).mean() > 0.97, batch["key"]
        seen.add(batch["key"][0])
    assert len(seen) == 8 and dict(loader.counters) == {"good": 8}


def test_caption_dropout_and_mask_sources(uneven_shards):
    dropped = _run(BrushDataLoader(_cfg(uneven_shards, caption_dropout=1.0, num_workers=0)))
    assert all(c == "" for b in dropped for c in b["caption"])
    kept = _run(BrushDataLoader(_cfg(uneven_shards, caption_dropout=0.0, num_workers=0)))
    assert all(c for b in kept for c, w in zip(b["caption"], b["weight"]) if w > 0)
    mixed = _run(BrushDataLoader(_cfg(uneven_shards, num_workers=0, mask=MaskConfig(segmentation=1, brush=1, box=1, border=1))))
    sources = collections.Counter(s for b in mixed for s, w in zip(b["mask_source"], b["weight"]) if w > 0)
    assert set(sources) == {"segmentation", "brush", "box", "border"}


def test_every_bad_record_kind_is_skipped_counted_and_logged(tmp_path, caplog):
    expected = write_bad_dataset(tmp_path / "bad")
    cfg = _cfg(tmp_path / "bad", num_workers=0, max_bad_fraction=1.0)
    with caplog.at_level(logging.WARNING, logger="data.brushdata"):
        batches = _run(BrushDataLoader(cfg))
        loader = BrushDataLoader(cfg)
        _run(loader)
    assert sorted(_real_keys(batches)) == sorted(f"{'truncated-00001.tar' if k.startswith('t') else 'mixed-00000.tar'}/{k}"
                                                 for k in expected["good_keys"])
    bad = {k[4:]: v for k, v in loader.counters.items() if k.startswith("bad/")}
    assert bad == expected["bad"]
    for reason in expected["bad"]:
        assert any(reason in r.message and ".tar" in r.message for r in caplog.records), reason
    assert any("mixed-00000.tar key=bad_not_jpeg" in r.message for r in caplog.records)


@pytest.mark.parametrize("workers", [0, 2])
def test_unusual_records_train_or_are_counted_with_their_reason(tmp_path, workers):
    """Records that once killed the loader (OpenCV's line-width limit, RLE values past 64 bits, JSON nested past
    Python's recursion limit) or were misjudged: each trains once or is counted once by its reason."""
    expected = write_unusual_dataset(tmp_path / "odd")
    cfg = _cfg(tmp_path / "odd", num_workers=workers, resolution=512, batch_size=2, max_bad_fraction=1.0,
               mask=MaskConfig(segmentation=1, brush=1, opening_p=0.0))
    for _ in range(2):  # two epochs: other crops, masks and strokes
        loader = BrushDataLoader(cfg)
        keys = _real_keys(_run(loader))
        assert sorted(keys) == sorted(f"unusual-00000.tar/{k}" for k in expected["good_keys"])
        assert {k[4:]: v for k, v in loader.counters.items() if k.startswith("bad/")} == expected["bad"]
        cfg = dataclasses.replace(cfg, seed=cfg.seed + 1)


def test_a_wrong_sizes_json_is_reported_not_silent(tmp_path, caplog):
    """Training reads as many records of a shard as sizes.json lists: the others of a shard that holds more were
    dropped without a word (validate counted them all)."""
    import json

    write_tar(tmp_path / "a.tar", [(f"a{i}", members(seed=i)) for i in range(10)])
    write_tar(tmp_path / "b.tar", [(f"b{i}", members(seed=i)) for i in range(3)])
    (tmp_path / "sizes.json").write_text(json.dumps({"a.tar": 4, "b.tar": 8}))
    with caplog.at_level(logging.WARNING, logger="data.records"):
        loader = BrushDataLoader(_cfg(tmp_path, num_workers=0, batch_size=2))
        assert len(_real_keys(_run(loader))) == 4 + 3
    messages = [r.getMessage() for r in caplog.records]
    assert any("a.tar holds more than the 4 records" in m and "never read" in m for m in messages), messages
    assert any("b.tar holds 3 records, its sizes.json entry 8" in m for m in messages), messages


def test_bad_fraction_ceiling_stops_the_run(tmp_path):
    write_bad_dataset(tmp_path / "bad")
    cfg = _cfg(tmp_path / "bad", num_workers=0, max_bad_fraction=0.05, bad_check_after=10)
    with pytest.raises(BadDataError, match=r"were bad .* above data.max_bad_fraction=0.05.*data validate"):
        _run(BrushDataLoader(cfg))


def test_two_workers_count_bad_records_once(tmp_path):
    expected = write_bad_dataset(tmp_path / "bad")
    loader = BrushDataLoader(_cfg(tmp_path / "bad", num_workers=2, max_bad_fraction=1.0), 0, 2)
    _run(loader)
    other = BrushDataLoader(_cfg(tmp_path / "bad", num_workers=2, max_bad_fraction=1.0), 1, 2)
    _run(other)
    total = collections.Counter()
    for l in (loader, other):
        total.update({k[4:]: v for k, v in l.counters.items() if k.startswith("bad/")})
    assert dict(total) == expected["bad"]


# ---------------------------------------------------------------- shard specs


def test_shard_specs(uneven_shards, tmp_path):
    names = sorted(p.name for p in uneven_shards.glob("*.tar"))
    assert [s.rsplit("/", 1)[-1] for s in expand_shards(str(uneven_shards))] == names
    brace = expand_shards(f"{uneven_shards}/part-{{00000..00002}}.tar")
    assert [s.rsplit("/", 1)[-1] for s in brace] == names[:3]
    assert len(expand_shards(f"{uneven_shards}/part-0000[0-3].tar")) == 4
    assert len(expand_shards([str(uneven_shards / names[0]), str(uneven_shards / names[1])])) == 2
    joined = expand_shards(f"{uneven_shards / names[0]}::{uneven_shards / names[1]}")
    assert len(joined) == 2
    with pytest.raises(ShardSpecError, match="does not exist"):
        expand_shards(str(tmp_path / "nope-{0..1}.tar"))
    with pytest.raises(ShardSpecError, match="matches no .tar"):
        expand_shards(str(tmp_path))


def test_pipe_urls_and_counting_without_sizes_json(uneven_shards, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(uneven_shards, copy)
    (copy / "sizes.json").unlink()
    local = expand_shards(str(copy))
    assert shard_sizes(local) == UNEVEN
    piped = [f"pipe:cat {s}" for s in local]
    assert shard_sizes(piped) == UNEVEN
    cfg = _cfg(uneven_shards, num_workers=0)
    via_pipe = dataclasses.replace(cfg, shards=piped)
    assert sorted(_real_keys(_run(BrushDataLoader(via_pipe)))) == sorted(_real_keys(_run(BrushDataLoader(cfg))))


def test_split_segments_is_contiguous_and_balanced():
    segs = [Segment(0, 0, 10), Segment(3, 5, 9), Segment(1, 0, 7)]
    parts = split_segments(segs, 4)
    sizes = [sum(s.size for s in p) for p in parts]
    assert sum(sizes) == 21 and max(sizes) - min(sizes) <= 1
    flat = [(s.shard, i) for p in parts for s in p for i in range(s.start, s.end)]
    assert flat == [(s.shard, i) for s in segs for i in range(s.start, s.end)]


def test_records_with_members_in_any_order_and_a_missing_end_marker(tmp_path):
    recs = [(f"r{i}", dict(reversed(list(members(seed=i).items())))) for i in range(3)]
    path = write_tar(tmp_path / "x.tar", recs)
    data = path.read_bytes()
    loader = BrushDataLoader(_cfg(tmp_path, num_workers=0, batch_size=1))
    assert len(_real_keys(_run(loader))) == 3
    end = data.rstrip(b"\0")
    cut = (len(end) + 511) // 512 * 512  # the archive without its end-of-archive blocks
    path.write_bytes(data[:cut])
    (tmp_path / "sizes.json").unlink(missing_ok=True)
    loader = BrushDataLoader(_cfg(tmp_path, num_workers=0, batch_size=1, max_bad_fraction=1.0))
    assert len(_real_keys(_run(loader))) == 3, "complete records before the cut are good"
    assert loader.counters["bad/truncated_tar"] == 1
    # Cut inside the last record's members (after its first member): that record is the bad one.
    last_member = data.rindex(b"r2.")
    path.write_bytes(data[: last_member + 512 + 512])
    loader = BrushDataLoader(_cfg(tmp_path, num_workers=0, batch_size=1, max_bad_fraction=1.0))
    assert len(_real_keys(_run(loader))) == 2
    assert loader.counters["bad/truncated_tar"] == 1


def test_an_unreadable_shard_is_counted_not_fatal(uneven_shards, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(uneven_shards, folder)
    (folder / "sizes.json").unlink()
    (folder / "zz-broken.tar").write_bytes(b"this is not a tar file at all" * 40)
    loader = BrushDataLoader(_cfg(folder, num_workers=0, max_bad_fraction=1.0))
    assert len(_real_keys(_run(loader))) == sum(UNEVEN)
    assert loader.counters["bad/unreadable_shard"] == 1


def test_a_compressed_shard_is_unreadable_with_the_reason(tmp_path, capsys):
    """A .tar.gz renamed .tar (or given by name) was 'invalid header', and 'tried 4 times' though files are read
    once."""
    import gzip

    from data.shards import UnreadableShardsError
    from data.validate import validate_shards

    plain = write_tar(tmp_path / "plain.tmp", [(f"r{i}", members(seed=i)) for i in range(3)]).read_bytes()
    (tmp_path / "x.tar").write_bytes(gzip.compress(plain))
    with pytest.raises(UnreadableShardsError) as info:
        BrushDataLoader(_cfg(tmp_path / "x.tar", num_workers=0))
    assert "gzip-compressed data, not a tar file" in str(info.value) and "tried" not in str(info.value)
    report = validate_shards([str(tmp_path / "x.tar")])
    assert report["bad"] == {"unreadable_shard": 1}
    assert "gzip-compressed data, not a tar file" in report["bad_records"][0]["detail"]


WORKERS_AFTER_THREADS = """
import sys
import threading
import time

import cv2
import numpy as np

from data.brushdata import BrushDataLoader, DataConfig


def busy(stop):  # a trainer thread that takes and releases locks the whole time (as gloo, logging, W&B do)
    while not stop.is_set():
        sys.getsizeof([0] * 64)
        time.sleep(0)


def main():
    cv2.setNumThreads(4)
    big = np.random.default_rng(0).integers(0, 255, (3000, 3000, 3), dtype=np.uint8)
    for _ in range(3):  # OpenCV's thread pool has run in this (the trainer's) process
        cv2.resize(big, (1500, 1500), interpolation=cv2.INTER_CUBIC)
    stop = threading.Event()
    threading.Thread(target=busy, args=(stop,), daemon=True).start()
    cfg = DataConfig(shards=[sys.argv[1]], resolution=32, batch_size=4, num_workers=2, shuffle_buffer=8, seed=3,
                     worker_start=sys.argv[2])
    n = 0
    for _ in range(3):  # three epochs: three rounds of worker starts
        n += sum(len(b["key"]) for b in BrushDataLoader(cfg))
    stop.set()
    print("samples", n)


if __name__ == "__main__":  # forkserver and spawn import the main module in each worker
    main()
"""


def test_workers_start_safely_in_a_threaded_process(uneven_shards, tmp_path):
    """A plain fork copies whatever locks the trainer's other threads hold (OpenCV's pool, the interpreter's
    own): the worker can hang forever (seen: the suite's ZeRO-3 fit, and test_masks before this file). The
    default start, forkserver, forks from a clean single-threaded server: every epoch completes."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "workers.py"
    script.write_text(WORKERS_AFTER_THREADS)
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(script), str(uneven_shards), "forkserver"], cwd=root,
                            env={**__import__("os").environ, "PYTHONPATH": str(root)}, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "samples" in result.stdout and int(result.stdout.split()[-1]) >= 3 * 137 - 3 * 4 * 2 * 2


WORKERS_UNDER_JOB_SIGNALS = """
import os
import signal
import sys

from data.brushdata import BrushDataLoader, DataConfig

got = []


def main():
    for signum in (signal.SIGUSR1, signal.SIGTERM):  # the trainer's own handlers (train.engine.signals)
        signal.signal(signum, lambda s, _frame: got.append(s))
    cfg = DataConfig(shards=[sys.argv[1]], resolution=32, batch_size=4, num_workers=2, shuffle_buffer=8, seed=3,
                     worker_start=sys.argv[2])
    n = 0
    for i, batch in enumerate(BrushDataLoader(cfg)):
        n += len(batch["key"])
        if i == 3:  # as SLURM sends them: to every process of the job step (here: this process group)
            os.killpg(0, signal.SIGUSR1)
            os.killpg(0, signal.SIGTERM)
    print("signals", sorted(got) == sorted([signal.SIGUSR1, signal.SIGTERM]), "samples", n)


if __name__ == "__main__":
    main()
"""


@pytest.mark.parametrize("start", ["forkserver", "spawn"])
def test_loader_workers_outlive_the_job_signals_the_trainer_acts_on(uneven_shards, tmp_path, start):
    """SLURM's requeue warning (SIGUSR1) and scancel's SIGTERM reach every process of the step. The workers, the
    fork server and the resource tracker must not die of them (the trainer then failed fetching a batch from a
    dead worker, or a restarted tracker printed tracebacks): the epoch completes and only the trainer saw them."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "signals.py"
    script.write_text(WORKERS_UNDER_JOB_SIGNALS)
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(script), str(uneven_shards), start], cwd=root, capture_output=True,
                            env={**__import__("os").environ, "PYTHONPATH": str(root)}, text=True, timeout=240,
                            start_new_session=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    words = result.stdout.split()
    assert words[:2] == ["signals", "True"] and int(words[-1]) >= 137 - 4 * 2 * 2, result.stdout


ITERATION_THAT_FAILS = """
import sys

import data.brushdata
from data.brushdata import BrushDataLoader, DataConfig


def fail(*args, **kwargs):
    raise RuntimeError("boom in a worker")


def main():
    mode, shards = sys.argv[1], sys.argv[2]
    if mode == "worker":  # an unexpected error inside a loader worker (fork: the workers inherit this patch)
        data.brushdata.make_example = fail
        cfg = DataConfig(shards=[shards], resolution=32, batch_size=4, num_workers=2, shuffle_buffer=8,
                         worker_start="fork")
    else:  # the bad-record ceiling, raised in this process while the workers run
        cfg = DataConfig(shards=[shards], resolution=32, batch_size=2, num_workers=2, shuffle_buffer=2,
                         max_bad_fraction=0.05, bad_check_after=1)
    for batch in BrushDataLoader(cfg):  # uncaught: the interpreter prints it and exits with status 1
        pass


if __name__ == "__main__":
    main()
"""


@pytest.mark.parametrize("mode", ["worker", "ceiling"])
def test_a_failed_iteration_ends_the_process_instead_of_hanging_at_exit(uneven_shards, tmp_path, mode):
    """Workers ignore SIGTERM (the job signals): when an iteration ends in an exception that nobody catches, the
    interpreter's exit terminates the daemon workers by SIGTERM and joins them. Unless the loader stopped them
    itself, it waited there forever (seen: a worker's OpenCV error in `brushtrain fit`)."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    shards = uneven_shards if mode == "worker" else tmp_path / "bad"
    if mode == "ceiling":
        write_bad_dataset(shards)
    script = tmp_path / "fails.py"
    script.write_text(ITERATION_THAT_FAILS)
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, str(script), mode, str(shards)], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(root)}, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the process hung after the exception")
    assert proc.returncode == 1, err[-3000:]
    expected = "RuntimeError: boom in a worker" if mode == "worker" else "BadDataError: "
    assert expected in err, err[-3000:]


BATCH_MEMORY_PROBE = """
import torch
from torch.utils.data import DataLoader, IterableDataset

from data.brushdata import _batch_memory


class Probe(IterableDataset):
    def __iter__(self):
        t = _batch_memory((2, 4, 4, 3))
        t.fill_(7)
        yield torch.tensor([t.is_shared(), tuple(t.shape) == (2, 4, 4, 3), bool((t == 7).all())])


if __name__ == "__main__":
    inside = next(iter(DataLoader(Probe(), batch_size=None, num_workers=1, multiprocessing_context="spawn")))
    print(*[bool(v) for v in inside], _batch_memory((2, 4, 4, 3)).is_shared())
"""


def test_batches_are_built_in_shared_memory_inside_a_worker(tmp_path):
    """A worker writes its batch straight into shared memory, so the queue to the trainer copies no pixels; in
    the trainer's own process (num_workers=0) the memory stays private."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "probe.py"
    script.write_text(BATCH_MEMORY_PROBE)
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(script)], cwd=root, capture_output=True, text=True, timeout=240,
                            env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["True", "True", "True", "False"]


def test_an_unknown_worker_start_is_refused(uneven_shards):
    with pytest.raises(ValueError, match="data.worker_start 'thread'"):
        list(BrushDataLoader(_cfg(uneven_shards, worker_start="thread")))


def test_workers_follow_the_trainers_sharing_strategy(uneven_shards, monkeypatch):
    """A forkserver worker starts from the server's state, not the trainer's: the sharing strategy is handed over
    in the worker's init function, which sets it there."""
    from data import brushdata

    made = []

    class Recording(brushdata.DataLoader):
        def __init__(self, *args, **kwargs):
            made.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(brushdata, "DataLoader", Recording)
    before, threads, cv_threads = torch.multiprocessing.get_sharing_strategy(), torch.get_num_threads(), cv2.getNumThreads()
    try:
        torch.multiprocessing.set_sharing_strategy("file_system")
        batch = next(iter(BrushDataLoader(_cfg(uneven_shards, num_workers=1))))
        assert len(batch["key"]) == 4
        init = made[0]["worker_init_fn"]
        assert init.args == ("file_system",) and made[0]["multiprocessing_context"].get_start_method() == "forkserver"
        torch.multiprocessing.set_sharing_strategy("file_descriptor")  # as a fresh worker starts
        init(0)
        assert torch.multiprocessing.get_sharing_strategy() == "file_system"
    finally:
        torch.multiprocessing.set_sharing_strategy(before)
        torch.set_num_threads(threads)  # the init function also set this process's thread counts
        cv2.setNumThreads(cv_threads)


def test_a_fork_server_that_cannot_start_falls_back_to_spawn(monkeypatch, caplog):
    from multiprocessing import forkserver

    from data import brushdata

    def refuse():
        raise OSError("AF_UNIX path too long")

    monkeypatch.setattr(forkserver, "ensure_running", refuse)
    brushdata._worker_context.cache_clear()  # decided once per process: decide again, with the refusing server
    try:
        with caplog.at_level(logging.WARNING, logger="data.brushdata"):
            ctx = brushdata._worker_context("forkserver")
    finally:
        brushdata._worker_context.cache_clear()
    assert ctx.get_start_method() == "spawn"
    assert "AF_UNIX path too long" in caplog.text and "spawn instead" in caplog.text


def test_a_resume_under_the_other_jpeg_decoder_warns_and_continues_the_same_stream(uneven_shards, monkeypatch,
                                                                                   caplog):
    from data import records

    cfg = _cfg(uneven_shards, num_workers=0)
    full = _run(BrushDataLoader(cfg))
    loader = BrushDataLoader(cfg)
    head = _run(loader, 3)
    state = loader.position()
    assert state["jpeg_decoder"] == records.jpeg_decoder()
    monkeypatch.setattr(records, "_simplejpeg", None)  # this process: OpenCV's decoder
    state["jpeg_decoder"] = "simplejpeg"
    resumed = BrushDataLoader(cfg)
    with caplog.at_level(logging.WARNING, logger="data.brushdata"):
        resumed.restore(state)
    assert "decoded JPEGs with simplejpeg, this process with opencv" in caplog.text
    tail = _run(resumed)
    assert [b["key"] for b in head + tail] == [b["key"] for b in full]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(head + tail, full))  # pip's OpenCV: same pixels
