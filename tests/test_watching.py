"""Watching a run: W&B offline files, metrics on a fake clock, sample grids, progress, `brushtrain sample`."""

from __future__ import annotations

import glob
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from test_fit import SMALL, fit
from wandb_reader import summary

from train.callbacks.metrics import TrainingMetrics
from train.callbacks.progress import StepProgress, format_eta
from train.callbacks.samples import ValItem, grid_rows
from train.cli import main
from train.model.brushnet import BrushNetModel


def test_wandb_offline_run_holds_metrics_images_and_config_and_resumes_the_same_run(tmp_path):
    out = tmp_path / "run"
    common = [*SMALL, "logging.logger=wandb", "samples.enabled=true", "trainer.log_every_n_steps=2",
              "samples.every_n_steps=4", "samples.count=2", "samples.steps=2", "checkpoint.every_n_steps=4"]
    first = fit(out, "trainer.max_steps=4", *common)
    assert "offline" in first.stdout + first.stderr
    run_id = (out / "wandb_run_id").read_text().strip()
    runs = glob.glob(str(out / "wandb" / "offline-run-*" / f"run-{run_id}.wandb"))
    assert len(runs) == 1
    info = summary(runs[0])
    assert info["run_id"] == run_id
    for key in ["train/loss", "train/loss_smoothed", "train/lr", "train/skipped_steps", "throughput/samples_per_s",
                "throughput/samples_per_s_per_gpu", "time/data_wait_s", "time/compute_s", "grad_norm/zero_convs",
                "grad_norm/down", "param_change/up", "data/good", "data/bad", "eval/hole", "eval/hole_branch_off",
                "samples/captions"]:
        assert key in info["history_keys"], key
    assert {"model", "data", "optim", "trainer"} <= info["config_keys"]
    images = glob.glob(str(Path(runs[0]).parent / "files" / "media" / "images" / "*.png"))
    assert len(images) >= 2 * 2  # 2 items at step 0 and at step 4
    assert Image.open(images[0]).size[0] == 5 * 64  # masked | mask | result | original | branch off

    fit(out, "trainer.max_steps=6", *common)  # resumed: the same W&B run id
    resumed = glob.glob(str(out / "wandb" / "offline-run-*" / f"run-{run_id}.wandb"))
    assert len(resumed) == 2, "a second offline segment of the same run"
    assert (out / "wandb_run_id").read_text().strip() == run_id


def test_csv_metrics_are_on_disk_as_soon_as_they_are_logged(tmp_path):
    """A run killed outright (benchmarks/gpu_check.py SIGKILLs a case at its time limit) keeps the figures it
    logged: Lightning's CSVLogger would hold 100 steps' rows in memory until the run ends."""
    from train.callbacks.loggers import build_loggers

    (csv,) = build_loggers(SimpleNamespace(logging=SimpleNamespace(logger="csv")), tmp_path, {}, True)
    csv.log_metrics({"throughput/samples_per_s": 12.5}, step=5)
    csv.log_metrics({"throughput/samples_per_s": 13.0}, step=10)
    rows = (tmp_path / "logs" / "version_0" / "metrics.csv").read_text().splitlines()  # no finalize, no save
    assert rows[1:] == ["5,12.5", "10,13.0"] and rows[0] == "step,throughput/samples_per_s", rows


class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def _fake_trainer(step=0, world=1):
    strategy = SimpleNamespace(reduce=lambda t, reduce_op="sum": t * world)
    loggers = [SimpleNamespace(log_metrics=lambda m, step: logged.append((step, m)))]
    logged: list = []
    trainer = SimpleNamespace(global_step=step, world_size=world, is_global_zero=True, strategy=strategy,
                              loggers=loggers, datamodule=SimpleNamespace(counters={"good": 10, "bad/not_jpeg": 2}))
    return trainer, logged


def test_metrics_on_a_fake_clock():
    clock = _Clock()
    m = TrainingMetrics(every_n_steps=2, flops_per_sample=1e12, peak_tflops=10.0, peak_source="test", clock=clock)
    trainer, logged = _fake_trainer(world=2)
    module = SimpleNamespace(device=torch.device("cpu"), skipped_steps=1, diagnostics={"grad_norm/all": 3.0})
    marker = m.end_marker()
    m.on_train_start(trainer, module)
    batch = {"weight": torch.tensor([1.0, 1.0, 1.0, 0.0]), "key": ["a", "b", "c", "<pad>"]}
    for step, (wait, compute, other) in enumerate([(0.5, 1.0, 0.0), (0.25, 1.0, 0.25)], start=1):
        clock.t += wait
        m.on_train_batch_start(trainer, module, batch, step)
        clock.t += compute
        trainer.global_step = step
        m.on_train_batch_end(trainer, module, torch.tensor(2.0), batch, step)
        clock.t += other
        marker.on_train_batch_end(trainer, module, None, batch, step)
    (step, metrics), = logged
    assert step == 2
    # window: 2 steps, 0.75 s waiting, 2 s computing, 0.25 s in other callbacks (the last 0.25 s is in the next window)
    assert metrics["time/step_s"] == pytest.approx((0.75 + 2.0) / 2)
    assert metrics["time/data_wait_fraction"] == pytest.approx(0.75 / 2.75)
    assert metrics["throughput/samples_per_s_per_gpu"] == pytest.approx(6 / 2.75)  # pads do not count
    assert metrics["throughput/samples_per_s"] == pytest.approx(12 / 2.75)  # summed over 2 ranks
    assert metrics["perf/mfu"] == pytest.approx(6 / 2.75 * 1e12 / 10e12)
    assert metrics["train/loss_smoothed"] == pytest.approx(2.0)
    assert metrics["data/good"] == 20 and metrics["data/bad/not_jpeg"] == 4 and metrics["data/bad"] == 4
    assert metrics["train/skipped_steps"] == 1 and metrics["grad_norm/all"] == 3.0

    # The smoothed loss is callback state in checkpoints: after a resume it continues, where it restarted from
    # the first loss of the resumed run.
    resumed = TrainingMetrics(every_n_steps=1, clock=clock)
    resumed.load_state_dict(m.state_dict())
    trainer2, logged2 = _fake_trainer(world=1)
    resumed.on_train_start(trainer2, module)
    resumed.on_train_batch_start(trainer2, module, batch, 3)
    trainer2.global_step = 3
    resumed.on_train_batch_end(trainer2, module, torch.tensor(4.0), batch, 3)
    assert logged2[-1][1]["train/loss_smoothed"] == pytest.approx(0.9 * 2.0 + 0.1 * 4.0)


def test_progress_lines_and_eta():
    clock, lines = _Clock(), []
    stream = SimpleNamespace(write=lines.append, flush=lambda: None)
    progress = StepProgress(max_steps=100, every_n_steps=10, bar=False, clock=clock, stream=stream)
    trainer = SimpleNamespace(global_step=0, is_global_zero=True, callback_metrics={"train/loss": torch.tensor(0.5)})
    progress.on_train_start(trainer, None)
    clock.t += 20.0
    trainer.global_step = 10
    progress.on_train_batch_end(trainer, None, None, None, 9)
    text = "".join(lines)
    assert "step 10/100 (10.0%) loss 0.5000" in text and "0.50 steps/s, eta 3m 00s" in text
    assert format_eta(2 * 86400 + 3 * 3600) == "2d 3h" and format_eta(59) == "0m 59s"


def test_sample_grid_layout():
    r = 16
    items = [ValItem(np.full((r, r, 3), 100, np.uint8), np.zeros((r, r), np.uint8), "a"), ValItem(
        np.full((r, r, 3), 50, np.uint8), np.full((r, r), 255, np.uint8), "b")]
    results = np.full((2, r, r, 3), 200, np.uint8)
    off = np.full((2, r, r, 3), 10, np.uint8)
    rows = grid_rows(items, results, off)
    assert [row.shape for row in rows] == [(r + 22, 5 * r, 3)] * 2
    row = rows[1][:r]
    assert (row[:, :r] == 0).all(), "masked input: all hole -> black"
    assert (row[:, r : 2 * r] == 255).all(), "mask: white = paint"
    assert (row[:, 2 * r : 3 * r] == 200).all() and (row[:, 3 * r : 4 * r] == 50).all() and (row[:, 4 * r :] == 10).all()


@pytest.mark.parametrize("extra", [[], ["trainer.strategy=deepspeed", "deepspeed.allow_cpu=true", "deepspeed.stage=3"]],
                         ids=["ddp", "zero3"])
def test_two_process_runs_with_samples_finish(tmp_path, extra):
    out = tmp_path / "run"
    result = fit(out, *SMALL, "samples.enabled=true", "trainer.devices=2", "trainer.max_steps=4", "samples.every_n_steps=2",
                 "samples.count=2", "samples.steps=2", "checkpoint.every_n_steps=4", "eval.at_start=false", *extra,
                 timeout=600)
    grids = sorted(p.name for p in (out / "samples").glob("*.png"))
    assert grids == ["step-00000000.png", "step-00000002.png", "step-00000004.png"], result.stdout[-2000:]
    assert result.stdout.count("inpainting samples in") == 3  # rank 0 only


def test_sample_command_writes_an_image_of_the_input_size(tmp_path, capsys):
    from train.model.tiny import write_tiny_base

    base = write_tiny_base(tmp_path / "base", "sd15")
    from train.model.components import load_base

    BrushNetModel.from_unet(load_base(base).unet).save_pretrained(tmp_path / "branch")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    mask = np.zeros((70, 90), np.uint8)
    mask[10:40, 20:60] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    args = ["sample", "--base", str(base), "--brushnet", str(tmp_path / "branch"), "--image", str(tmp_path / "in.png"),
            "--mask", str(tmp_path / "mask.png"), "--prompt", "a red box", "--steps", "3", "--out",
            str(tmp_path / "out.png"), "--grid", str(tmp_path / "grids" / "grid.png"), "--scheduler", "ddim"]
    assert main(args) == 0  # (the grid's folder is made, as the result's is)
    assert Image.open(tmp_path / "out.png").size == (90, 70)
    assert Image.open(tmp_path / "grids" / "grid.png").size == (4 * 90, 70)
    Image.fromarray(mask[:50]).save(tmp_path / "small.png")
    capsys.readouterr()
    assert main(["sample", "--base", str(base), "--brushnet", str(tmp_path / "branch"), "--image", str(tmp_path / "in.png"),
                 "--mask", str(tmp_path / "small.png"), "--prompt", "x", "--out", str(tmp_path / "x.png")]) == 2
    assert "is 90x50, image is 90x70" in capsys.readouterr().err


def test_sample_command_refuses_bad_input_by_name_without_traceback(tmp_path, capsys, monkeypatch):
    """Each was a traceback (a non-image file, an unknown scheduler, an SDXL branch on SD1.5, --device cuda without
    a GPU) or a silent result (--steps 0 wrote the noise decoded, --scale -1 ran a negated branch)."""
    from train.model.tiny import write_tiny_base

    base = write_tiny_base(tmp_path / "base", "sd15")
    official = Path(__file__).parent / "fixtures" / "official-tiny"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "in.png")
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(tmp_path / "mask.png")
    (tmp_path / "notes.png").write_text("not a picture")

    def sample(*extra, image="in.png", mask="mask.png", branch=official / "brushnet"):
        capsys.readouterr()
        code = main(["sample", "--base", str(base), "--brushnet", str(branch), "--image", str(tmp_path / image),
                     "--mask", str(tmp_path / mask), "--prompt", "x", "--steps", "2", "--out", str(tmp_path / "o.png"),
                     *extra])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("brushtrain sample: ") and "Traceback" not in err, err
        return err

    assert f"--image {tmp_path / 'notes.png'} is not an image PIL can read" in sample(image="notes.png")
    assert f"--mask {tmp_path / 'notes.png'} is not an image PIL can read" in sample(mask="notes.png")
    assert "--steps must be >= 1, got 0; --scale must be >= 0 (0 = branch off), got -1.0" in sample(
        "--steps", "0", "--scale", "-1")
    assert "--scheduler: unknown scheduler 'nosuch'" in sample("--scheduler", "nosuch")
    assert "--device 'gpu' is not a device name" in sample("--device", "gpu")
    assert "the file name must end in an image type" in sample("--grid", str(tmp_path / "grid"))
    assert f"--brushnet: {official / 'unet'} holds a UNet2DConditionModel, not a BrushNet branch" in sample(
        branch=official / "unet")
    assert "made for the SDXL layout, the base's UNet has the SD1.5 layout" in sample(branch=official / "sdxl" / "brushnet")
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("arch, resolution, tflop", [("sd15", 512, 5.30), ("sdxl", 1024, 29.2)])
def test_flop_model_matches_brushnet_md(arch, resolution, tflop):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from train.model.components import BaseModel
    from train.model.flops import training_flops_per_sample

    root = Path(__file__).resolve().parents[1] / "configs" / "architectures" / arch
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae"))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(root / "text_encoder_2")) if arch == "sdxl" else None
        branch = BrushNetModel.from_unet(unet, load_weights_from_unet=False)
    flops = training_flops_per_sample(BaseModel(unet, vae, te, None, None, te2, None), branch, resolution)
    assert round(flops["total"] / 1e12, 1) == tflop
    if arch == "sd15":
        assert round(flops["vae_encode"] / 1e12, 2) == 2.23  # 42 % of the total, as the table says


def test_validation_items_from_a_folder_and_from_shards(tmp_path):
    from data.brushdata import DataConfig
    from data.synth import write_synthetic_shards
    from train.callbacks.evaluation import heldout_batches
    from train.callbacks.samples import items_from_batch, items_from_folder

    folder = tmp_path / "val"
    folder.mkdir()
    for stem in ("a", "b"):
        Image.fromarray(np.full((40, 30, 3), 90, np.uint8)).save(folder / f"{stem}.jpg")
        mask = np.zeros((40, 30), np.uint8)
        mask[:20] = 255
        Image.fromarray(mask).save(folder / f"{stem}_mask.png")
        (folder / f"{stem}.txt").write_text(f"prompt {stem}\n")
    items = items_from_folder(folder, count=4, resolution=32)
    assert [i.prompt for i in items] == ["prompt a", "prompt b"]
    assert items[0].image.shape == (32, 32, 3) and items[0].mask.shape == (32, 32)
    assert (items[0].mask[:16] == 255).all() and (items[0].mask[16:] == 0).all()

    write_synthetic_shards(tmp_path / "shards", 6, samples_per_shard=6, min_size=40, max_size=48)
    batches = heldout_batches(DataConfig(shards=[str(tmp_path / "shards")], resolution=32, batch_size=4), [str(tmp_path / "shards")], 3)
    from_shards = [i for b in batches for i in items_from_batch(b, 3)][:3]
    assert len(from_shards) == 3 and all(i.image.shape == (32, 32, 3) and i.prompt for i in from_shards)
    assert all(set(np.unique(i.mask)) <= {0, 255} for i in from_shards)
