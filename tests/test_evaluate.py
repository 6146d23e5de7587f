"""`brushtrain evaluate` and the inpainting metrics: known answers, tiny scoring models, the command end to end
(BrushBench format with row-major RLE), 2 processes against 1, resume."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import randomize_zero_convs
from PIL import Image

from data.benchmarks import (
    BenchError,
    brushbench_items,
    folder_items,
    rle_decode_rowmajor,
)
from train.scoring import inpaint_metrics as im

ROOT = Path(__file__).resolve().parents[1]
TINY_MODELS = {"clip": "tiny", "aesthetic_head": "random", "lpips_backbone": "random", "hps": "tiny"}


def rle_rowmajor(mask: np.ndarray) -> list[int]:
    """Independent encoder: 1-based runs of ones over the row-major flattening."""
    flat = np.concatenate([[0], mask.reshape(-1).astype(np.int8), [0]])
    d = np.diff(flat)
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    return [int(v) for s, e in zip(starts, ends) for v in (s + 1, e - s)]


def rand_image(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


# ------------------------------------------------------------ formulas


def test_identical_images_give_the_perfect_scores():
    a = rand_image(0)
    keep = np.ones((32, 32))
    keep[5:20, 5:25] = 0
    for c in im.CONVENTIONS:
        assert im.mse(a, a, keep, c) == 0
    assert im.psnr(a, a, keep) == im.PSNR_CAP == 100.0
    assert im.psnr(a, a, keep, "reference") == 1000.0  # the reference script's value
    assert im.ssim(a, a, keep) == pytest.approx(1.0, abs=1e-9)
    model = im.build_lpips("random")
    assert im.lpips(model, a, a, keep) == pytest.approx(0.0, abs=1e-7)
    assert im.lpips(model, a, a, keep, "reference") == pytest.approx(0.0, abs=1e-7)


def test_constant_error_gives_the_exact_mse_and_psnr_and_the_reference_factor_3():
    target = np.full((16, 16, 3), 100, np.uint8)
    pred = target + 10  # 10/255 everywhere
    keep = np.zeros((16, 16))
    keep[:, :4] = 1  # 64 kept pixels
    pred[keep == 0] = 255  # hole content must not count
    e2 = (10 / 255) ** 2
    assert im.mse(pred, target, keep) == pytest.approx(e2, rel=1e-12)
    assert im.psnr(pred, target, keep) == pytest.approx(10 * math.log10(1 / e2), rel=1e-12)
    assert im.mse(pred, target, keep, "reference") == pytest.approx(3 * e2, rel=1e-12)
    offset = im.psnr(pred, target, keep) - im.psnr(pred, target, keep, "reference")
    assert offset == pytest.approx(10 * math.log10(3), abs=1e-9)
    assert offset == pytest.approx(4.77, abs=0.01)


def test_preserved_region_ignores_the_hole_and_an_empty_region_is_nan():
    a = rand_image(1)
    b = a.copy()
    keep = np.ones((32, 32))
    keep[8:24, 8:24] = 0
    b[keep == 0] = 255 - b[keep == 0]
    model = im.build_lpips("random")
    assert im.mse(b, a, keep) == 0
    assert im.ssim(b, a, keep) == pytest.approx(1.0, abs=1e-9)
    assert im.lpips(model, b, a, keep) == pytest.approx(0.0, abs=1e-7)
    assert math.isnan(im.mse(b, a, np.zeros((32, 32))))


def test_lpips_reference_convention_is_the_whole_image_mean_and_standard_is_normalised():
    """Reference: the mean over the whole (masked) image; standard: the same map averaged over kept pixels only.
    With a quarter of the image kept the standard number is larger: no dilution by the black hole."""
    import torch

    a, b = rand_image(2, 64), rand_image(3, 64)
    keep = np.zeros((64, 64))
    keep[:32, :32] = 1
    model = im.build_lpips("random")
    ref = im.lpips(model, b, a, keep, "reference")
    x0, k = im._tensor(b, keep)
    x1, _ = im._tensor(a, keep)
    layers = model.layer_distances(x0 * 2 - 1, x1 * 2 - 1)
    assert ref == pytest.approx(float(sum(d.mean() for d in layers)), rel=1e-5)
    full = sum(torch.nn.functional.interpolate(d, size=(64, 64), mode="bilinear", align_corners=False) for d in layers)
    std = im.lpips(model, b, a, keep)
    assert std == pytest.approx(float((full * k).sum() / k.sum()), rel=1e-5)
    assert std > ref > 0


def test_lpips_heads_are_torchmetrics_shipped_weights():
    import torch
    import torchmetrics.functional.image.lpips as tm

    model = im.build_lpips("random")
    shipped = torch.load(Path(tm.__file__).parent / "lpips_models" / "squeeze.pth", map_location="cpu", weights_only=True)
    for i in range(7):
        assert torch.equal(model.heads[i].model[1].weight, shipped[f"lin{i}.model.1.weight"])


def test_lpips_matches_torchmetrics_with_the_same_backbone():
    """Where torchvision loads (a CUDA build of torch, or a matching CPU torchvision): our LPIPS is torchmetrics'."""
    pytest.importorskip("torchvision")
    import torch
    from torchmetrics.functional.image.lpips import _LPIPS

    ours = im.build_lpips("random", seed=3)
    theirs = _LPIPS(pretrained=True, net="squeeze", pnet_rand=True)
    for i, sl in enumerate(ours.SLICES):
        for j in sl:
            theirs.net.slices[i]._modules[str(j)].load_state_dict(ours.features[j].state_dict())
    a = torch.rand(1, 3, 64, 64) * 2 - 1
    b = torch.rand(1, 3, 64, 64) * 2 - 1
    assert float(ours(a, b)[0]) == pytest.approx(float(theirs(a, b).flatten()[0]), rel=1e-5)


def test_missing_weights_are_skipped_with_a_reason(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    suite = im.MetricSuite(im.METRICS, im.MetricModels(clip=str(tmp_path / "no-clip")))
    assert "squeezenet1_1" in suite.skipped["lpips"]
    assert "could not be loaded" in suite.skipped["clip_similarity"]
    assert set(suite.skipped) == {"lpips", "clip_similarity", "aesthetic", "hps_v21", "image_reward"}
    scores = suite.score(rand_image(0), rand_image(0), np.zeros((32, 32)), "x")
    assert set(scores) == {"psnr", "mse", "ssim"}  # skipped ones are absent, never 0


def test_unknown_metric_names_are_refused():
    with pytest.raises(ValueError, match="'psnrr'"):
        im.check_metric_names(["psnr", "psnrr"])


def test_clip_and_aesthetic_scores_with_tiny_models():
    import torch

    suite = im.MetricSuite(["clip_similarity", "aesthetic"], im.MetricModels(**TINY_MODELS))
    assert suite.skipped == {}
    img = rand_image(4, 48)
    s = suite.score(img, img, np.zeros((48, 48)), "a red ball")
    feats = suite._clip.image_features([img])
    assert float(feats.norm()) == pytest.approx(1.0, abs=1e-5)
    cos = float((feats * suite._clip.text_features(["a red ball"])).sum())
    assert s["clip_similarity"] == pytest.approx(100 * max(cos, 0.0), abs=1e-4)
    head = suite._aesthetic
    expected = float((feats[0] @ head.weight[0] + head.bias[0]).detach())
    assert s["aesthetic"] == pytest.approx(expected, abs=1e-5)
    # the image features depend on the image
    other = suite._clip.image_features([rand_image(5, 48)])
    assert not torch.allclose(feats, other)


# -------------------------------------------------------------- readers


def test_brushbench_rle_is_row_major_and_one_means_paint(tmp_path):
    mask = np.zeros((4, 6), np.uint8)
    mask[1, 2:5] = 1  # a horizontal run: one run in row-major order, three in column-major
    assert rle_rowmajor(mask) == [1 * 6 + 2 + 1, 3]
    assert np.array_equal(rle_decode_rowmajor([9, 3], 4, 6), mask)
    with pytest.raises(BenchError, match="odd number"):
        rle_decode_rowmajor([1, 2, 3], 4, 6)
    with pytest.raises(BenchError, match="reaches pixel 25"):
        rle_decode_rowmajor([20, 6], 4, 6)


def write_bench(root: Path, n: int = 3, size: int = 64) -> Path:
    (root / "images").mkdir(parents=True)
    mapping = {}
    for k in range(n):
        Image.fromarray(rand_image(10 + k, size)).save(root / "images" / f"im{k}.png")
        m = np.zeros((size, size), np.uint8)
        m[8 + 4 * k: size // 2 + 4 * k, 10: size - 12] = 1
        mapping[f"id{k}"] = {"image": f"images/im{k}.png", "caption": f"a thing {k}",
                             "inpainting_mask": rle_rowmajor(m), "outpainting_mask": rle_rowmajor(1 - m)}
    (root / "mapping_file.json").write_text(json.dumps(mapping))
    return root


def test_brushbench_reader_and_its_errors(tmp_path):
    root = write_bench(tmp_path / "bb", n=2)
    items = brushbench_items(root, "inside")
    image, hole = items[1].load()
    assert image.shape == (64, 64, 3) and hole[12:36, 10:52].all() and hole.sum() == 24 * 42
    _, outside = brushbench_items(root, "outside")[1].load()
    assert np.array_equal(outside, 1 - hole)
    mapping = json.loads((root / "mapping_file.json").read_text())
    bad = dict(mapping, id1=dict(mapping["id1"], inpainting_mask=[5, 10**6]))
    (root / "mapping_file.json").write_text(json.dumps(bad))
    with pytest.raises(BenchError, match=r"entry 'id1' 'inpainting_mask': run-length data reaches pixel"):
        brushbench_items(root)
    del bad["id1"]["inpainting_mask"]
    (root / "mapping_file.json").write_text(json.dumps(bad))
    with pytest.raises(BenchError, match=r"entry 'id1' has no 'inpainting_mask'"):
        brushbench_items(root)
    bad = dict(mapping, id1=dict(mapping["id1"], image="images/nope.png"))
    (root / "mapping_file.json").write_text(json.dumps(bad))
    with pytest.raises(BenchError, match="nope.png does not exist"):
        brushbench_items(root)


def test_folder_reader(tmp_path):
    Image.fromarray(rand_image(0)).save(tmp_path / "a.png")
    m = np.zeros((32, 32), np.uint8)
    m[:10] = 255
    Image.fromarray(m).save(tmp_path / "a_mask.png")
    (tmp_path / "a.txt").write_text("a cat\n")
    (item,) = folder_items(tmp_path)
    image, hole = item.load()
    assert item.caption == "a cat" and hole[:10].all() and hole.sum() == 320
    Image.fromarray(rand_image(1)).save(tmp_path / "b.jpg")
    with pytest.raises(BenchError, match="b.jpg has no mask b_mask.png"):
        folder_items(tmp_path)


def test_shard_reader_uses_the_first_column_major_mask(tmp_path):
    from data.benchmarks import shard_items
    from data.masks import rle_decode
    from data.writer import ShardWriter, brushdata_members, encode_jpeg

    obj = np.zeros((24, 32), np.uint8)
    obj[2:10, 20:30] = 1
    rle_f = [int(v) for s, e in zip(*[iter(np.flatnonzero(np.diff(np.concatenate(
        [[0], obj.reshape(-1, order="F"), [0]])) != 0))] * 2) for v in (s + 1, e - s)]
    assert np.array_equal(rle_decode(rle_f, 24, 32), obj)
    with ShardWriter(tmp_path, prefix="t", max_samples=10) as w:
        w.write("k0", brushdata_members(encode_jpeg(rand_image(0, 32)[:24]), 24, 32, "no mask", []))
        w.write("k1", brushdata_members(encode_jpeg(rand_image(1, 32)[:24]), 24, 32, "a box", [rle_f]))
    (item,) = shard_items(str(tmp_path / "*.tar"))
    image, hole = item.load()
    assert item.id == "k1" and item.caption == "a box" and image.shape == (24, 32, 3)
    assert np.array_equal(hole, obj)
    (outside,) = shard_items(str(tmp_path / "*.tar"), "outside")
    assert np.array_equal(outside.load()[1], 1 - obj)


def test_shard_reader_turns_images_by_their_exif_orientation_as_training_does(tmp_path):
    import io

    import cv2

    from data.benchmarks import shard_items
    from data.masks import rle_encode
    from data.writer import ShardWriter, brushdata_members

    stored = np.zeros((24, 32, 3), np.uint8)
    stored[2:10, 20:30] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, format="JPEG", quality=100, exif=exif.tobytes())
    shown = cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]  # the reference's
    obj = (shown[..., 0] > 127).astype(np.uint8)
    with ShardWriter(tmp_path, prefix="t", max_samples=10) as w:
        w.write("k0", brushdata_members(buf.getvalue(), 32, 24, "turned", [rle_encode(obj)]))
    (item,) = shard_items(str(tmp_path / "*.tar"))
    image, hole = item.load()
    assert image.shape == (32, 24, 3) and np.array_equal(image, shown)
    assert np.array_equal(hole, obj)


# -------------------------------------------------------------- command


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny SD1.5 base folder, a branch whose zero convs are not zero (so it differs from the baseline),
    a BrushBench-format folder and a metric-models file of tiny random models."""
    from train.model.brushnet import BrushNetModel
    from train.model.components import load_base
    from train.model.tiny import write_tiny_base

    root = tmp_path_factory.mktemp("evaluate")
    base = write_tiny_base(root / "base", "sd15")
    branch = BrushNetModel.from_unet(load_base(base).unet)
    randomize_zero_convs(branch, scale=0.5)
    branch.save_pretrained(root / "branch")
    bench = write_bench(root / "bench", n=3)
    models = root / "models.json"
    models.write_text(json.dumps(TINY_MODELS))
    return {"root": root, "base": base, "branch": root / "branch", "bench": bench, "models": models}


def command(setup, out, *extra) -> list[str]:
    return ["evaluate", "--base", str(setup["base"]), "--brushnet", str(setup["branch"]), "--baseline",
            "--bench", "brushbench", str(setup["bench"]), "--out", str(out), "--steps", "2", "--resolution", "64",
            "--blend", "--metric-models", str(setup["models"]), *extra]


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_command_resumes_and_writes_every_output(setup, capsys):
    from train.cli import main

    out = setup["root"] / "one"
    assert main(command(setup, out, "--limit", "1")) == 0  # "interrupted" after the first image
    first = {m: (out / m / "images" / "im0.png").stat().st_mtime_ns for m in ("branch", "baseline")}
    assert not (out / "branch" / "images" / "im1.png").exists()
    assert main(command(setup, out)) == 0
    for m, mtime in first.items():
        assert (out / m / "images" / "im0.png").stat().st_mtime_ns == mtime  # not generated again
        assert (out / m / "images" / "im2.png").is_file()
    rows = read_csv(out / "per_image.csv")
    (setup["root"] / "one-standard.csv").write_bytes((out / "per_image.csv").read_bytes())
    assert list(rows[0]) == ["method", "id", *im.METRICS]
    assert [(r["method"], r["id"]) for r in rows] == [(m, f"id{k}") for m in ("branch", "baseline") for k in range(3)]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"branch", "baseline"} and set(summary["branch"]) == set(im.METRICS)
    psnr = [float(r["psnr"]) for r in rows if r["method"] == "branch"]
    assert summary["branch"]["psnr"]["n"] == 3
    assert summary["branch"]["psnr"]["mean"] == pytest.approx(sum(psnr) / 3)
    assert summary["branch"]["psnr"]["stderr"] == pytest.approx(np.std(psnr, ddof=1) / math.sqrt(3))
    assert "skipped" in summary["branch"]["image_reward"] and summary["branch"]["image_reward"]["n"] == 0
    assert all(r["image_reward"] == "" for r in rows)
    assert summary["branch"]["hps_v21"]["n"] == 3 and all(r["hps_v21"] != "" for r in rows)  # a tiny HPS scores
    assert summary["branch"]["psnr"] != summary["baseline"]["psnr"]  # the branch does something
    md = (out / "summary.md").read_text()
    assert "| branch |" in md and "image_reward: skipped:" in md
    assert Image.open(out / "grid-psnr.png").size == (3 * 64, 2 * 4 * (64 + 22))  # 4 best, 4 worst
    printed = capsys.readouterr().out
    assert "| baseline |" in printed and "skipped" in printed

    # The preserved-region numbers, recomputed here from the written files.
    image = np.asarray(Image.open(setup["bench"] / "images" / "im1.png").convert("RGB")).astype(np.float64) / 255
    mapping = json.loads((setup["bench"] / "mapping_file.json").read_text())
    keep = 1 - rle_decode_rowmajor(mapping["id1"]["inpainting_mask"], 64, 64).astype(np.float64)
    pred = np.asarray(Image.open(out / "branch" / "images" / "im1.png")).astype(np.float64) / 255
    per_element = (keep[..., None] * (pred - image) ** 2).sum() / (3 * keep.sum())
    row = next(r for r in rows if r["method"] == "branch" and r["id"] == "id1")
    assert float(row["mse"]) == pytest.approx(per_element, rel=1e-8)  # (values are rounded to 9 digits)
    assert float(row["psnr"]) == pytest.approx(10 * math.log10(1 / per_element), rel=1e-8)
    # with --blend, far from the hole the result is the original
    assert np.abs(pred[60:, :, :] - image[60:, :, :]).max() <= 1 / 255 + 1e-9

    # reference convention on the same images: no generation, MSE x3, PSNR 4.77 dB lower
    ref = setup["root"] / "one"
    assert main(command(setup, ref, "--metric-convention", "reference")) == 0
    ref_row = next(r for r in read_csv(ref / "per_image.csv") if r["method"] == "branch" and r["id"] == "id1")
    assert float(ref_row["mse"]) == pytest.approx(3 * per_element, rel=1e-8)
    assert float(row["psnr"]) - float(ref_row["psnr"]) == pytest.approx(10 * math.log10(3), abs=1e-6)


def test_two_processes_give_the_table_of_one(setup):
    one = setup["root"] / "one"
    if not (setup["root"] / "one-standard.csv").is_file():
        pytest.skip("needs test_command_resumes_and_writes_every_output")
    out = setup["root"] / "two"
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
               OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "train", *command(setup, out)], cwd=ROOT,
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "1 processes" not in outputs[0] and "over 2 process(es)" in outputs[0]
    # each rank generated its share: the images are those one process made, pixel for pixel
    for m in ("branch", "baseline"):
        for k in range(3):
            a = np.asarray(Image.open(one / m / "images" / f"im{k}.png"))
            b = np.asarray(Image.open(out / m / "images" / f"im{k}.png"))
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    rows1, rows2 = read_csv(setup["root"] / "one-standard.csv"), read_csv(out / "per_image.csv")
    assert [(r["method"], r["id"]) for r in rows1] == [(r["method"], r["id"]) for r in rows2]
    for r1, r2 in zip(rows1, rows2):
        for k in im.METRICS:
            assert (r1[k] == "") == (r2[k] == "")
            if k in im.PRESERVED:  # float64 throughout, rounded to 9 digits: the same text
                assert r1[k] == r2[k], (k, r1, r2)
            elif r1[k]:  # float32 CLIP / HPS with another thread count, on images that may differ by one level
                assert float(r1[k]) == pytest.approx(float(r2[k]), rel=2e-5, abs=1e-7)


def test_bad_input_is_one_message_without_traceback(setup, tmp_path, capsys):
    from train.cli import main

    bench = write_bench(tmp_path / "bb", n=1)
    mapping = json.loads((bench / "mapping_file.json").read_text())
    mapping["id0"]["inpainting_mask"] = [1, 2, 3]
    (bench / "mapping_file.json").write_text(json.dumps(mapping))
    args = command(setup, tmp_path / "out")
    args[args.index(str(setup["bench"]))] = str(bench)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "mapping_file.json entry 'id0' 'inpainting_mask': run-length data has an odd number" in err
    assert "Traceback" not in err
    assert main(command(setup, tmp_path / "out", "--metrics", "psnr", "fid")) == 2
    assert "'fid'" in capsys.readouterr().err
    assert not (tmp_path / "out" / "branch").exists()  # refused before any work


def test_a_rerun_with_other_generation_settings_is_refused_not_mixed(setup, tmp_path, capsys):
    """A rerun skips existing images: with another base, steps or seed it reported the old images under the new
    settings. Settings that only change the scoring (metrics, convention) still reuse them."""
    from train.cli import main
    from train.commands.evaluate import SETTINGS_FILE

    out = tmp_path / "out"
    assert main(command(setup, out, "--limit", "1", "--metrics", "psnr")) == 0
    image = out / "branch" / "images" / "im0.png"
    mtime = image.stat().st_mtime_ns
    assert json.loads((out / "branch" / SETTINGS_FILE).read_text())["steps"] == 2
    capsys.readouterr()
    assert json.loads((out / "branch" / SETTINGS_FILE).read_text())["dtype"] == "fp32"  # CPU's default
    for extra, differs in ((["--steps", "3"], "steps 2 then, 3 now"), (["--seed", "7"], "seed 1234 then, 7 now"),
                           (["--dtype", "bf16"], "dtype 'fp32' then, 'bf16' now"),
                           (["--base", "tiny:sd15"], f"base '{setup['base']}' then, 'tiny:sd15' now")):
        args = command(setup, out, "--limit", "1", "--metrics", "psnr")
        if extra[0] == "--base":
            args[args.index("--base") + 1] = extra[1]
        else:
            args += extra
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"brushtrain evaluate: {out / 'branch'} holds images generated with other settings ({differs}" in err, err
        assert "Traceback" not in err
    assert image.stat().st_mtime_ns == mtime
    assert main(command(setup, out, "--limit", "1", "--metrics", "psnr", "mse", "--metric-convention", "reference")) == 0
    assert image.stat().st_mtime_ns == mtime, "scoring settings reuse the images"
    for record in out.glob(f"*/{SETTINGS_FILE}"):  # an earlier version's records, without the dtype: still reused
        record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if k != "dtype"}))
    assert main(command(setup, out, "--limit", "1", "--metrics", "psnr", "--dtype", "bf16")) == 0
    assert image.stat().st_mtime_ns == mtime


def test_generation_flags_are_checked_before_any_work(setup, tmp_path, capsys):
    """An unknown --scheduler failed after the base loaded (ValueError traceback), --device gpu in torch."""
    from train.cli import main

    out = tmp_path / "out"
    for extra, message in ((["--scheduler", "nosuch"], "--scheduler: unknown scheduler 'nosuch'"),
                           (["--device", "gpu"], "--device 'gpu' is not a device name"),
                           (["--scale", "-1"], "--scale must be >= 0 (0 = branch off), got -1.0"),
                           (["--steps", "0", "--guidance", "-2"],
                            "--steps must be >= 1, got 0; --guidance must be >= 0 (unset: the pipeline's default), got -2.0")):
        assert main(command(setup, out, *extra)) == 2
        err = capsys.readouterr().err
        assert err.startswith("brushtrain evaluate: ") and message in err and "Traceback" not in err, err
    assert not out.exists()


def test_killed_run_resumes(setup, tmp_path):
    """Kill the command once its first image is written; the rerun keeps that image and completes the table."""
    import time

    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "train", *command(setup, out)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "branch" / "images" / "im0.png"
    deadline = time.monotonic() + 300
    while not first.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert first.exists()
    mtime = first.stat().st_mtime_ns
    assert not list(out.rglob(".*.tmp*")) or True  # a half-written temp file may remain; it is never read
    subprocess.run([sys.executable, "-m", "train", *command(setup, out)], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    assert first.stat().st_mtime_ns == mtime
    assert len(read_csv(out / "per_image.csv")) == 6


# ------------------------------------------------------------ training


FIT_SMALL = ["synth.train_samples=32", "synth.eval_samples=8", "eval.samples=8", "synth.per_shard=16",
             "logging.logger=csv", "samples.enabled=false", "ema.enabled=false", "checkpoint.every_n_steps=0",
             "data.num_workers=0", "data.batch_size=2"]
FIT_METRICS = ["eval.metrics=[psnr,mse,ssim,lpips,clip_similarity,aesthetic,hps_v21]", "eval.metric_samples=2",
               "eval.metric_steps=2", "eval.metric_models.clip=tiny", "eval.metric_models.lpips_backbone=random",
               "eval.every_n_steps=2", "trainer.max_steps=4", "trainer.accumulate_grad_batches=2"]


def run_fit(out: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "train", "fit", f"output_dir={out}", *FIT_SMALL, *overrides]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + "\n" + result.stderr[-6000:]
    return result


def logged_metrics(out: Path) -> dict[int, dict]:
    rows = {}
    for path in sorted(out.glob("logs/version_*/metrics.csv")):
        with open(path) as f:
            for r in csv.DictReader(f):
                values = {k: float(v) for k, v in r.items() if k.startswith("eval/") and v}
                if values:
                    rows.setdefault(int(r["step"]), {}).update(values)
    return rows


def test_training_logs_the_metrics_once_per_optimizer_step(tmp_path):
    """In the default suite (about 10 s): a callback calling a renamed module method broke eval.metrics in
    training while only slow tests ran it."""
    out = tmp_path / "run"
    result = run_fit(out, *FIT_METRICS)
    history = json.loads((out / "eval_metrics.json").read_text())
    assert [(h["label"], h["step"]) for h in history] == [("start", 0), ("during", 2), ("during", 4), ("end", 4)]
    assert set(history[0]["metrics"]) == {"psnr", "mse", "ssim", "lpips", "clip_similarity"}
    assert "aesthetic_head is not set" in history[0]["skipped"]["aesthetic"] and "hps_v21" in history[0]["skipped"]
    assert "hps_v21 skipped" in result.stdout
    logged = logged_metrics(out)
    assert {0, 2, 4} <= set(logged) and "eval/hps_v21" not in logged[2]  # skipped: not logged as a number
    assert "eval/hole" in logged[2] and "eval/psnr" in logged[2]  # beside the denoising loss
    during = history[1]["metrics"]
    assert logged[2]["eval/psnr"] == pytest.approx(during["psnr"]) and logged[2]["eval/mse"] == pytest.approx(during["mse"])
    # means over images: the mean PSNR is at least the PSNR of the mean MSE (Jensen), and a finite one
    assert 0 < during["mse"] < 1 and 100 > during["psnr"] >= 10 * math.log10(1 / during["mse"]) - 1e-9


def test_unknown_training_metric_is_refused_before_any_work(tmp_path, capsys):
    from train.cli import main

    assert main(["fit", f"output_dir={tmp_path / 'run'}", "eval.metrics=[psnr,fid]"]) == 2
    err = capsys.readouterr().err
    assert "eval.metrics must be a list of distinct metric names from psnr, mse" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_two_ranks_share_a_generated_tiny_base(setup, tmp_path):
    """--base tiny:sd15: rank 0 writes the base once, rank 1 waits for the finished folder."""
    out = tmp_path / "tiny"
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
               OMP_NUM_THREADS="1")
    args = ["evaluate", "--base", "tiny:sd15", "--baseline", "--bench", "brushbench", str(setup["bench"]),
            "--out", str(out), "--steps", "1", "--resolution", "64", "--limit", "2", "--metrics", "psnr", "mse"]
    procs = [subprocess.Popen([sys.executable, "-m", "train", *args], cwd=ROOT,
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert (out / "base-tiny-sd15" / "model_index.json").is_file()
    assert [r["id"] for r in read_csv(out / "per_image.csv")] == ["id0", "id1"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", [["trainer.strategy=ddp"],
                                      ["trainer.strategy=deepspeed", "deepspeed.allow_cpu=true", "deepspeed.stage=3"]],
                         ids=["ddp", "zero3"])
def test_training_metrics_under_two_processes(tmp_path, strategy):
    """No rank waits on a collective another never enters: under ZeRO-3 both ranks generate, rank 0 scores."""
    out = tmp_path / "run"
    run_fit(out, "trainer.devices=2", *strategy, "eval.metrics=[psnr,mse]", "eval.metric_samples=2",
            "eval.metric_steps=1", "eval.every_n_steps=2", "trainer.max_steps=2", "eval.at_start=false")
    history = json.loads((out / "eval_metrics.json").read_text())
    assert [(h["label"], h["step"]) for h in history] == [("during", 2), ("end", 2)]
    assert all(0 < h["metrics"]["mse"] < 1 and h["images"] == 2 for h in history)
