"""``brushtrain data`` tools: synth, build (COCO, folder), validate, preview, bench, index."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
from bad_shards import unusual_records, write_bad_dataset, write_unusual_dataset
from PIL import Image

from data.masks import rle_decode
from data.records import parse_record, read_shard
from data.shards import expand_shards
from train.cli import main


def _json_out(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_synth_then_validate_json(tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path / "s"), "--samples", "25", "--per-shard", "10", "--seed", "1"]) == 0
    assert _json_out(capsys)["samples"] == 25
    assert sorted(p.name for p in (tmp_path / "s").glob("*.tar")) == ["synth-00000.tar", "synth-00001.tar", "synth-00002.tar"]
    assert json.loads((tmp_path / "s" / "sizes.json").read_text()) == {
        "synth-00000.tar": 10, "synth-00001.tar": 10, "synth-00002.tar": 5}
    assert not list((tmp_path / "s").glob(".*tmp*")), "no temporary files left"
    assert main(["data", "validate", str(tmp_path / "s"), "--json", "--strict"]) == 0
    report = _json_out(capsys)
    assert (report["samples"], report["bad"], report["shards"]) == (25, {}, 3)
    assert 64 <= report["height"]["min"] and report["height"]["max"] <= 128
    assert main(["data", "synth", str(tmp_path / "fixed"), "--samples", "3", "--size", "40x70"]) == 0
    capsys.readouterr()
    assert main(["data", "validate", str(tmp_path / "fixed"), "--json"]) == 0
    report = _json_out(capsys)
    assert (report["height"]["min"], report["height"]["max"], report["width"]["min"], report["width"]["max"]) == (40, 40, 70, 70)


def test_synthetic_masks_are_exact(tmp_path):
    from data.synth import synth_record

    rng = np.random.default_rng(0)
    for _ in range(20):
        rec = synth_record(rng, 40, 60)
        union = np.zeros(rec.image.shape[:2], bool)
        for m in rec.masks:
            assert not (union & (m > 0)).any(), "visible parts do not overlap"
            union |= m > 0
            colours = rec.image[m > 0].reshape(-1, 3)
            assert (colours == colours[0]).all(), "a mask covers exactly one flat-coloured shape"


def test_validate_counts_every_bad_kind_and_strict_fails(tmp_path, capsys):
    expected = write_bad_dataset(tmp_path / "bad")
    assert main(["data", "validate", str(tmp_path / "bad"), "--json"]) == 0
    report = _json_out(capsys)
    assert report["samples"] == expected["good"]
    assert report["bad"] == expected["bad"]
    assert report["shards"] == 2
    assert {b["key"] for b in report["bad_records"]} >= {f"bad_{r}" for r in expected["bad"] if r != "truncated_tar"}
    assert main(["data", "validate", str(tmp_path / "bad"), "--strict"]) == 1
    text = capsys.readouterr().out
    assert "bad_image: 1" in text and "mixed-00000.tar bad_size" in text


def test_validate_judges_unusual_records_as_training_does(tmp_path, capsys):
    expected = write_unusual_dataset(tmp_path / "odd")
    assert main(["data", "validate", str(tmp_path / "odd"), "--json"]) == 0
    report = _json_out(capsys)
    assert (report["samples"], report["bad"]) == (len(expected["good_keys"]), expected["bad"])
    assert {b["key"]: b["reason"] for b in report["bad_records"]} == {
        key: reason for key, _, reason in unusual_records() if reason is not None}


def test_validate_reports_a_wrong_sizes_json(tmp_path, capsys):
    from bad_shards import members, write_tar

    write_tar(tmp_path / "a.tar", [(f"a{i}", members(seed=i)) for i in range(10)])
    write_tar(tmp_path / "b.tar", [(f"b{i}", members(seed=i)) for i in range(3)])
    (tmp_path / "sizes.json").write_text(json.dumps({"a.tar": 4, "b.tar": 3}))
    assert main(["data", "validate", str(tmp_path), "--json"]) == 0
    report = _json_out(capsys)
    assert report["samples"] == 13 and report["sizes_mismatch"] == {
        str(tmp_path / "a.tar"): {"sizes_json": 4, "records": 10}}
    assert main(["data", "validate", str(tmp_path), "--strict"]) == 1
    assert "sizes.json is wrong for" in capsys.readouterr().out
    assert main(["data", "index", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["data", "validate", str(tmp_path), "--json", "--strict"]) == 0
    assert _json_out(capsys)["sizes_mismatch"] == {}


def test_validate_in_parallel_agrees(tmp_path, capsys):
    write_bad_dataset(tmp_path / "bad")
    main(["data", "validate", str(tmp_path / "bad"), "--json"])
    serial = _json_out(capsys)
    main(["data", "validate", str(tmp_path / "bad"), "--json", "--workers", "2"])
    parallel = _json_out(capsys)
    assert (serial["samples"], serial["bad"]) == (parallel["samples"], parallel["bad"])


def _coco_fixture(tmp_path):
    from pycocotools import mask as mask_utils

    images_dir = tmp_path / "images"
    images_dir.mkdir()
    rng = np.random.default_rng(0)
    images, annotations, captions = [], [], []
    rle_mask = np.zeros((30, 40), np.uint8, order="F")
    rle_mask[5:15, 20:35] = 1
    crowd = mask_utils.encode(np.asfortranarray(rle_mask))
    crowd["counts"] = crowd["counts"].decode()
    for image_id, (h, w) in enumerate([(30, 40), (36, 28)], start=1):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images_dir / f"{image_id:03d}.jpg", quality=95)
        images.append({"id": image_id, "file_name": f"{image_id:03d}.jpg", "height": h, "width": w})
        annotations.append({"id": 10 * image_id, "image_id": image_id, "category_id": 1, "iscrowd": 0, "area": 50.0,
                            "bbox": [2, 2, 10, 10], "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]})
        captions.append({"id": 100 + image_id, "image_id": image_id, "caption": f" picture {image_id} "})
    annotations.append({"id": 99, "image_id": 1, "category_id": 1, "iscrowd": 1, "area": 150.0, "bbox": [20, 5, 15, 10],
                        "segmentation": crowd})
    cats = [{"id": 1, "name": "thing"}]
    (tmp_path / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": cats}))
    (tmp_path / "captions.json").write_text(json.dumps({"images": images, "annotations": captions}))
    return images_dir


def test_build_from_coco(tmp_path, capsys):
    from pycocotools.coco import COCO

    images_dir = _coco_fixture(tmp_path)
    out = tmp_path / "shards"
    args = ["data", "build", "coco", "--images", str(images_dir), "--instances", str(tmp_path / "instances.json"),
            "--captions", str(tmp_path / "captions.json"), "--out", str(out), "--max-samples", "1"]
    assert main(args + ["--include-crowd"]) == 0
    summary = _json_out(capsys)
    assert summary["samples"] == 2 and len(summary["shards"]) == 2
    coco = COCO(str(tmp_path / "instances.json"))
    records = [r for s in expand_shards(str(out)) for r in read_shard(s)]
    assert [r.key for r in records] == ["000000000001", "000000000002"]
    for raw in records:
        rec = parse_record(raw)
        image_id = int(raw.key)
        anns = sorted(coco.imgToAnns[image_id], key=lambda a: a["id"])
        assert rec.caption == f"picture {image_id}"
        assert len(rec.masks) == len(anns)
        for rle, ann in zip(rec.masks, anns):
            assert np.array_equal(rle_decode(rle, rec.height, rec.width), coco.annToMask(ann))
        assert raw.members["image"] == (images_dir / f"{image_id:03d}.jpg").read_bytes(), "JPEG bytes copied as they are"
    assert main(args + ["--out", str(tmp_path / "nocrowd")]) == 0
    first = next(read_shard(expand_shards(str(tmp_path / "nocrowd"))[0]))
    assert len(parse_record(first).masks) == 1, "crowd annotations are left out by default"


def test_build_from_folder(tmp_path, capsys):
    images, masks = tmp_path / "img", tmp_path / "msk"
    images.mkdir(), masks.mkdir()
    rng = np.random.default_rng(1)
    for stem in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(images / f"{stem}.png")
        (images / f"{stem}.txt").write_text(f"caption {stem}\n")
    m = np.zeros((20, 24), np.uint8)
    m[3:9, 4:10] = 255
    Image.fromarray(m).save(masks / "a_0.png")
    Image.fromarray(255 - m).save(masks / "a_1.png")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(masks / "b.png")  # wrong size: b is skipped
    assert main(["data", "build", "folder", "--images", str(images), "--masks", str(masks), "--out", str(tmp_path / "o")]) == 0
    summary = _json_out(capsys)
    assert summary["samples"] == 1 and summary["skipped"] == {"mask_size_mismatch": 1}
    rec = parse_record(next(read_shard(summary["shards"][0])))
    assert rec.caption == "caption a" and rec.image.format == "JPEG"
    assert np.array_equal(rle_decode(rec.masks[0], 20, 24), (m > 127).astype(np.uint8))
    assert np.array_equal(rle_decode(rec.masks[1], 20, 24), (m <= 127).astype(np.uint8))


def test_build_keeps_exif_turned_jpegs_aligned_with_their_masks(tmp_path, capsys):
    """The builders copy JPEG bytes and take sizes and masks of the stored pixels. Training turns an image by its
    EXIF orientation as the reference does, so the copy's orientation is set to 1 (two bytes change, no pixel);
    copied as they were, these records were size mismatches (or, turned 180 degrees, misaligned)."""
    import io

    import cv2

    images, masks = tmp_path / "img", tmp_path / "msk"
    images.mkdir(), masks.mkdir()
    stored = np.zeros((20, 30, 3), np.uint8)
    stored[2:8, 3:12] = 255
    for orientation in (3, 6):
        exif = Image.Exif()
        exif[0x0112] = orientation
        exif[0x010F] = "a camera"
        Image.fromarray(stored).save(images / f"p{orientation}.jpg", quality=100, exif=exif.tobytes())
        Image.fromarray(stored[..., 0]).save(masks / f"p{orientation}.png")
    assert main(["data", "build", "folder", "--images", str(images), "--masks", str(masks),
                 "--out", str(tmp_path / "o")]) == 0
    summary = _json_out(capsys)
    assert summary["samples"] == 2 and summary["skipped"] == {"no_caption (written with an empty caption)": 2}
    for raw in read_shard(summary["shards"][0]):
        rec = parse_record(raw)
        original = (images / f"{raw.key.split('_')[0]}.jpg").read_bytes()
        assert len(rec.data) == len(original) and sum(a != b for a, b in zip(rec.data, original)) == 1
        assert Image.open(io.BytesIO(rec.data)).getexif()[0x010F] == "a camera"
        assert (rec.orientation, rec.height, rec.width) == (1, 20, 30)
        pixels = cv2.imdecode(np.frombuffer(rec.data, np.uint8), cv2.IMREAD_COLOR)  # as the reference decodes
        assert np.array_equal(rle_decode(rec.masks[0], 20, 30), (pixels[..., 0] > 127).astype(np.uint8))


def test_shards_roll_over_by_bytes(tmp_path, capsys):
    main(["data", "synth", str(tmp_path / "s"), "--samples", "12", "--per-shard", "100"])
    capsys.readouterr()
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(6):
        Image.fromarray(np.full((64, 64, 3), i * 40, np.uint8)).save(images / f"{i}.jpg")
    assert main(["data", "build", "folder", "--images", str(images), "--out", str(tmp_path / "o"), "--max-bytes", "4kB"]) == 0
    summary = _json_out(capsys)
    assert summary["samples"] == 6 and len(summary["shards"]) >= 2
    for shard in summary["shards"]:
        with tarfile.open(shard) as tar:
            assert tar.getmembers()


def test_preview_and_bench(tmp_path, capsys):
    main(["data", "synth", str(tmp_path / "s"), "--samples", "20", "--per-shard", "10"])
    capsys.readouterr()
    out = tmp_path / "grid.png"
    assert main(["data", "preview", str(tmp_path / "s"), "--out", str(out), "--samples", "3", "--resolution", "48",
                 "--mask-mode", "segmentation=1,brush=1"]) == 0
    grid = Image.open(out)
    assert grid.size[0] == 3 * 48 and grid.size[1] == 3 * (48 + 28)
    assert main(["data", "bench", str(tmp_path / "s"), "--resolution", "32", "--samples", "30", "--mask-mode", "brush"]) == 0
    result = _json_out(capsys)
    assert result["samples_per_s"] > 0 and result["samples"] >= 30 and "masks" not in result


def test_bench_mask_statistics_follow_the_policy(tmp_path, capsys):
    main(["data", "synth", str(tmp_path / "s"), "--samples", "40", "--per-shard", "20"])
    capsys.readouterr()
    args = ["data", "bench", str(tmp_path / "s"), "--resolution", "32", "--samples", "30", "--mask-stats"]
    assert main(args + ["--mask-mode", "brush"]) == 0
    masks = _json_out(capsys)["masks"]
    assert set(masks) == {"samples", "hole_fraction_mean", "no_hole_fraction", "all_hole_fraction",
                          "hole_fraction_histogram"}
    assert len(masks["hole_fraction_histogram"]) == 10 and sum(masks["hole_fraction_histogram"]) == masks["samples"]
    assert masks["samples"] >= 30 and 0 <= masks["hole_fraction_mean"] <= 1
    # A config's data.mask: no inversion and no strokes at all gives crops without holes only.
    config = tmp_path / "run.yaml"
    config.write_text("data:\n  resolution: 24\n  mask:\n    segmentation: 0\n    brush: 1\n    invert_p: 0\n"
                      "    brush_max_strokes: 0\n")
    assert main(["data", "bench", str(tmp_path / "s"), "--samples", "20", "--mask-stats", "--config", str(config)]) == 0
    result = _json_out(capsys)
    assert result["resolution"] == 24 and result["masks"]["no_hole_fraction"] == 1.0
    config.write_text("data:\n  mask:\n    brush_wdth: 3\n")
    assert main(["data", "bench", str(tmp_path / "s"), "--config", str(config)]) == 2
    assert "brush_wdth" in capsys.readouterr().err


def test_index_writes_sizes(tmp_path, capsys):
    main(["data", "synth", str(tmp_path / "s"), "--samples", "15", "--per-shard", "10"])
    (tmp_path / "s" / "sizes.json").unlink()
    capsys.readouterr()
    assert main(["data", "index", str(tmp_path / "s")]) == 0
    assert json.loads((tmp_path / "s" / "sizes.json").read_text()) == {"synth-00000.tar": 10, "synth-00001.tar": 5}


def test_bad_mask_mode_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["data", "bench", str(tmp_path), "--mask-mode", "scribble"])
    assert "unknown mask source 'scribble'" in capsys.readouterr().err


def _tool_fixture(tmp_path) -> None:
    main(["data", "synth", str(tmp_path / "good"), "--samples", "4", "--per-shard", "4"])
    (tmp_path / "empty").mkdir()
    tarfile.open(tmp_path / "empty" / "none.tar", "w").close()
    write_bad_dataset(tmp_path / "bad")
    (tmp_path / "bad_policy.yaml").write_text("data: {mask: {opening_p: 2}}\n")
    (tmp_path / "zero_resolution.yaml").write_text("data: {resolution: 0}\n")
    images = tmp_path / "images"
    images.mkdir()
    for stem in ("a", "b", "c"):
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(images / f"{stem}.jpg")
    (images / "a.txt").write_bytes(b"\xff\xfe not UTF-8")
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "b.png").write_bytes(b"not a PNG")
    (tmp_path / "folder.png").mkdir()


@pytest.mark.parametrize("args, message", [
    (["bench", "{t}/empty", "--samples", "5"], "hold no samples"),
    (["preview", "{t}/empty", "--out", "{t}/x.png"], "hold no samples"),
    (["preview", "{t}/bad/truncated-00001.tar", "{t}/bad/mixed-00000.tar", "--out", "{t}/x.png", "--mask-mode",
      "segmentation=0"], "--mask-mode: mask source weights must be >= 0 with a positive sum"),
    (["bench", "{t}/good", "--mask-mode", "brush=-1"], "--mask-mode: mask source weights must be >= 0"),
    (["preview", "{t}/good", "--out", "{t}/x.png", "--config", "{t}/bad_policy.yaml"],
     "bad_policy.yaml: opening_p must be in [0, 1], got 2.0"),
    (["bench", "{t}/good", "--config", "{t}/zero_resolution.yaml"], "data.resolution must be >= 8, got 0"),
    (["preview", "{t}/good", "--out", "{t}/good"], "give an image file name"),
    (["preview", "{t}/good", "--out", "{t}/folder.png"], "give an image file name"),
    (["synth", "{t}/s", "--min-size", "100", "--max-size", "50"], "--min-size 100 is larger than --max-size 50"),
    (["bench", "{t}/good", "--resolution", "0"], "argument --resolution: must be >= 8, got 0"),
    (["preview", "{t}/good", "--out", "{t}/x.png", "--resolution", "-5"], "argument --resolution: must be >= 8"),
    (["bench", "{t}/good", "--batch-size", "0"], "argument --batch-size: must be >= 1"),
    (["bench", "{t}/good", "--workers", "-1"], "argument --workers: must be >= 0"),
    (["bench", "{t}/good", "--samples", "0"], "argument --samples: must be >= 1"),
    (["preview", "{t}/good", "--out", "{t}/x.png", "--samples", "0"], "argument --samples: must be >= 1"),
    (["synth", "{t}/s", "--per-shard", "0"], "argument --per-shard: must be >= 1"),
    (["synth", "{t}/s", "--min-size", "0"], "argument --min-size: must be >= 16"),
    (["build", "folder", "--images", "{t}/images", "--out", "{t}/o", "--max-samples", "0"],
     "argument --max-samples: must be >= 1"),
])
def test_a_users_mistake_is_one_line_not_a_traceback(tmp_path, capsys, args, message):
    """Each of these printed a Python traceback (ValueError, ZeroDivisionError, cv2.error, RuntimeError...)."""
    _tool_fixture(tmp_path)
    capsys.readouterr()
    try:
        code = main(["data", *[a.replace("{t}", str(tmp_path)) for a in args]])
    except SystemExit as exc:  # argparse: usage, then the one-line error
        code = exc.code
    err = capsys.readouterr().err
    assert code in (1, 2) and message in err, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("brushtrain data")


def test_build_from_folder_skips_unreadable_masks_and_captions(tmp_path, capsys):
    _tool_fixture(tmp_path)
    capsys.readouterr()
    assert main(["data", "build", "folder", "--images", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"),
                 "--out", str(tmp_path / "o")]) == 0
    summary = _json_out(capsys)
    assert summary["samples"] == 1
    assert summary["skipped"] == {"caption_not_utf8": 1, "unreadable_mask": 1,
                                  "no_caption (written with an empty caption)": 1}


def test_a_preview_of_bad_records_only_says_so(tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    from bad_shards import DEFECTS, members, write_tar

    write_tar(tmp_path / "bad" / "x.tar", [(f"k{i}", DEFECTS["size_mismatch"](members(seed=i))) for i in range(3)])
    assert main(["data", "preview", str(tmp_path / "bad"), "--out", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert "no good samples to preview" in err and "size_mismatch" in err and "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["synth", "OUT", "--per-shard", "0"], "argument --per-shard: must be >= 1, got 0"),  # was ValueError in the writer
    (["synth", "OUT", "--samples", "0"], "argument --samples: must be >= 1, got 0"),  # wrote nothing, exit 0
    (["build", "folder", "--images", "SHARDS", "--out", "OUT", "--max-samples", "0"], "argument --max-samples: must be >= 1"),
    (["validate", "SHARDS", "--workers", "0"], "argument --workers: must be >= 1, got 0"),
    (["preview", "SHARDS", "--out", "OUT/p.png", "--resolution", "0"], "argument --resolution: must be >= 8, got 0"),
    (["preview", "SHARDS", "--out", "OUT/p.png", "--samples", "0"], "argument --samples: must be >= 1, got 0"),
    (["bench", "SHARDS", "--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),  # ZeroDivisionError
    (["bench", "SHARDS", "--workers", "-1"], "argument --workers: must be >= 0, got -1"),
])
def test_out_of_range_arguments_are_usage_errors(tmp_path, capsys, args, message):
    args = [a.replace("SHARDS", str(tmp_path)).replace("OUT", str(tmp_path / "out")) for a in args]
    with pytest.raises(SystemExit) as info:
        main(["data", *args])
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_unusable_inputs_are_one_message_without_traceback(tmp_path, capsys):
    """Each was a traceback (ValueError low >= high, PIL's unknown file extension, the mask policy's ValueError,
    pycocotools' AssertionError / UnicodeDecodeError) or, for a missing --masks folder, records without masks."""
    shards = tmp_path / "shards"
    assert main(["data", "synth", str(shards), "--samples", "4", "--per-shard", "4"]) == 0
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(16))
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "a.png")
    cases = [
        (["synth", str(tmp_path / "s"), "--min-size", "100", "--max-size", "50"], "--min-size 100 is larger than --max-size 50"),
        (["preview", str(shards), "--out", str(tmp_path / "grid")], f"--out {tmp_path / 'grid'}: give an image file name"),
        (["preview", str(shards), "--out", str(tmp_path / "g.png"), "--mask-mode", "segmentation=0"],
         "--mask-mode: mask source weights must be >= 0 with a positive sum"),
        (["bench", str(shards), "--mask-mode", "brush=-1"], "must be >= 0 with a positive sum"),
        (["build", "folder", "--images", str(tmp_path), "--masks", str(tmp_path / "nowhere"), "--out", str(tmp_path / "b")],
         f"--masks {tmp_path / 'nowhere'} is not a folder"),
        (["build", "coco", "--images", str(tmp_path), "--instances", str(tmp_path / "list.json"), "--out", str(tmp_path / "b")],
         f"--instances {tmp_path / 'list.json'} is not a COCO annotation file"),
        (["build", "coco", "--images", str(tmp_path), "--instances", str(tmp_path / "photo.png"), "--out", str(tmp_path / "b")],
         f"--instances {tmp_path / 'photo.png'} is not a COCO annotation file"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert main(["data", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("brushtrain data: ") and message in err and "Traceback" not in err, err
    assert not (tmp_path / "b").exists() and not (tmp_path / "s").exists()
