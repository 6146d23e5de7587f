"""Every bad setting is refused before any work, as a user types it: one message, exit 2, no traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from train.cli import main
from train.schema import FitConfig
from train.setup.validation import RULES, TYPE_ONLY

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "official-tiny"  # a reference SD1.5 and SDXL branch, and a UNet folder
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")

# (overrides typed on the command line, a piece of the message that must name the problem)
BAD_SETTINGS = [
    (["trainer.precision=bf17"], "trainer.precision must be one of Lightning's: "),
    (["optim.lr=-1"], "optim.lr must be a learning rate > 0, got -1.0"),
    (["optim.lr=0"], "optim.lr must be a learning rate > 0, got 0.0"),
    (["data.mask.brush=-1"], "data.mask.brush must be a weight >= 0, got -1.0"),
    (["data.mask.segmentation=0", "data.mask.brush=0"], "data.mask weights (segmentation, brush, box, border) must have a positive sum"),
    (["data.num_workers=-2"], "data.num_workers must be an integer >= 0"),
    (["data.batch_size=0"], "data.batch_size must be an integer >= 1, got 0"),
    (["data.batch_size=two"], "data.batch_size=two: key 'data.batch_size': Value 'two'"),
    (["data.resolution=100"], "data.resolution=100 must be a multiple of 64 for this base (VAE downsampling 8 x UNet downsampling 8); try 64 or 128"),
    (["model.base=tiny:sdxl", "data.resolution=80"], "data.resolution=80 must be a multiple of 32 for this base"),
    (["data.caption_dropout=1.5"], "data.caption_dropout must be a probability in [0, 1], got 1.5"),
    (["data.max_bad_fraction=2"], "data.max_bad_fraction must be a fraction in [0, 1], got 2.0"),
    (["data.prefetch_factor=0"], "data.prefetch_factor must be an integer >= 1, got 0"),
    (["data.worker_start=thread"], "data.worker_start must be forkserver, fork, spawn, got 'thread'"),
    (["data.shard_retries=-1"], "data.shard_retries must be an integer >= 0 (0: no retry), got -1"),
    (["data.sizes_file=/no/sizes.json"], "data.sizes_file must be null or an existing sizes.json"),
    (["data.seed=-3"], "data.seed must be an integer in 0 .. 2**32-1, got -3"),
    (["optim.betas=[0.9]"], "optim.betas must be two numbers in [0, 1)"),
    (["optim.eps=0"], "optim.eps must be a number > 0, got 0.0"),
    (["optim.schedule=linear"], "optim.schedule must be 'constant' or 'cosine', got 'linear'"),
    (["optim.min_lr_ratio=2"], "optim.min_lr_ratio must be a ratio in [0, 1], got 2.0"),
    (["optim.grad_clip=-1"], "optim.grad_clip must be a number >= 0 (0: no clipping), got -1.0"),
    (["ema.decay=1.5"], "ema.decay must be a number in [0, 1], got 1.5"),
    (["ema.every=0"], "ema.every must be an integer >= 1 (optimizer steps), got 0"),
    (["model.frozen_dtype=fp8"], "model.frozen_dtype must be bf16 | fp16 | fp32, got 'fp8'"),
    (["model.min_snr_gamma=-5"], "model.min_snr_gamma must be null (plain MSE) or a number > 0, got -5.0"),
    (["model.prediction_type=sample"], "model.prediction_type must be null, epsilon or v_prediction"),
    (["trainer.max_steps=0"], "trainer.max_steps must be an integer >= 1, got 0"),
    (["trainer.devices=0"], "trainer.devices must be auto (all GPUs; 1 process on CPU) or a count >= 1 (processes per node), got 0"),
    (["trainer.devices=[0,1]"], "trainer.devices must be auto (all GPUs; 1 process on CPU) or a count >= 1"),
    (["trainer.num_nodes=0"], "trainer.num_nodes must be an integer >= 1, got 0"),
    (["trainer.num_nodes=2"], "trainer.num_nodes=2 needs a launcher on every node"),
    (["trainer.strategy=fsdp"], "trainer.strategy must be auto, ddp or deepspeed, got 'fsdp'"),
    (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps must be an integer >= 1, got 0"),
    (["trainer.seed=-1"], "trainer.seed must be an integer in 0 .. 2**32-1, got -1"),
    (["trainer.precision=16-mixed"], "trainer.precision=16-mixed is not supported on the CPU"),
    (["trainer.precision=bf16-true"], "trainer.precision=bf16-true casts the branch to bf16 with no autocast, so the "
     "frozen parts must be bf16 too: set model.frozen_dtype=bf16 (got fp32)"),  # was a dtype-mismatch traceback
    (["trainer.precision=16-true", "model.frozen_dtype=bf16"], "set model.frozen_dtype=fp16 (got bf16)"),
    (["trainer.precision=64-true"], "trainer.precision=64-true: the frozen parts run in model.frozen_dtype"),
    pytest.param(["trainer.precision=bf16-mixed", "model.frozen_dtype=fp16"],
                 "trainer.precision=bf16-mixed with model.frozen_dtype=fp16 does not run on the CPU", marks=NO_GPU),
    (["trainer.strategy=deepspeed", "deepspeed.allow_cpu=true", "deepspeed.stage=4"], "deepspeed.stage must be ZeRO stage 1, 2 or 3, got 4"),
    (["trainer.strategy=deepspeed", "deepspeed.allow_cpu=true", "deepspeed.offload_params=true"], "deepspeed.offload_params=true needs deepspeed.stage=3 (got 2)"),
    (["trainer.strategy=deepspeed", "deepspeed.allow_cpu=true", "trainer.precision=64-true"], "trainer.precision=64-true is not available with DeepSpeed"),
    (["deepspeed.bucket_size=0"], "deepspeed.bucket_size must be an integer >= 1"),
    (["checkpoint.every_n_steps=-5"], "checkpoint.every_n_steps must be an integer >= 0 (0: only at the end and on a signal), got -5"),
    (["checkpoint.keep_last=0"], "checkpoint.keep_last must be an integer >= 1, got 0"),
    (["eval.timesteps=[100,1000]"], "eval.timesteps must be a non-empty list of timesteps in 0 .. 999, got [100, 1000]"),
    (["eval.samples=0"], "eval.samples must be an integer >= 1, got 0"),
    (["eval.every_n_steps=-1"], "eval.every_n_steps must be an integer >= 0 (0: only at the start and end), got -1"),
    (["samples.source=shards"], "samples.source=shards needs samples.shards"),
    (["samples.source=folder", "samples.folder=/no/folder"], "samples.source=folder needs samples.folder to be an existing folder"),
    (["samples.scheduler=nosuch"], "samples.scheduler must be unipc, "),
    (["samples.count=0"], "samples.count must be an integer >= 1, got 0"),
    (["samples.every_n_steps=-200"], "samples.every_n_steps must be an integer >= 0 (0: only at the start), got -200"),
    (["samples.source=folder", f"samples.folder={FIXTURES}"], "holds no STEM.jpg / STEM.png images"),  # was after loading
    ([f"data.sizes_file={FIXTURES}/brushnet_keys.json"], "is not a JSON object of shard name -> record count"),
    ([f"data.sizes_file={ROOT}/README.md"], "data.sizes_file"),  # was a JSONDecodeError traceback
    (["synth.min_size=200"], "synth.min_size=200 is larger than synth.max_size=96"),
    (["synth.per_shard=0"], "synth.per_shard must be an integer >= 1, got 0"),
    (["metrics.peak_tflops=0"], "metrics.peak_tflops must be null (known GPUs) or a number > 0, got 0.0"),
    (["logging.logger=mlflow"], "logging.logger must be wandb, csv, tensorboard or none, got 'mlflow'"),
    (["logging.wandb_mode=sometimes"], "logging.wandb_mode must be null (offline unless logged in), online or offline"),
    (["model.base=tiny:sd99"], "generated bases are tiny:sd15, tiny:sdxl, random:sd15, random:sdxl"),
    (["model.brushnet=./no/such/branch"], "model.brushnet './no/such/branch' does not exist"),
    ([f"model.brushnet={FIXTURES}/unet"], f"model.brushnet: {FIXTURES}/unet holds a UNet2DConditionModel, not a BrushNet branch"),
    ([f"model.brushnet={FIXTURES}/sdxl/brushnet"], f"model.brushnet '{FIXTURES}/sdxl/brushnet' does not fit model.base "
     "'tiny:sd15': it was made for the SDXL layout, the base's UNet has the SD1.5 layout (block_out_channels"),
    (["model.base=tiny:sdxl", "data.resolution=64", f"model.brushnet={FIXTURES}/brushnet"],
     "does not fit model.base 'tiny:sdxl': it was made for the SD1.5 layout, the base's UNet has the SDXL layout"),
    ([f"model.vae={FIXTURES}/unet"], f"model.vae '{FIXTURES}/unet' holds a UNet2DConditionModel, not a VAE (AutoencoderKL)"),
    ([f"model.vae={FIXTURES}"], f"model.vae '{FIXTURES}' is not a VAE folder (no readable config.json, nor vae/config.json)"),
    ([f"model.base={FIXTURES}/sdxl"], f"model.base '{FIXTURES}/sdxl' is not a complete diffusers model folder (no "
     "scheduler, text_encoder, tokenizer, vae, text_encoder_2, tokenizer_2)"),
    (["resume=/no/checkpoint"], "resume '/no/checkpoint' does not exist"),
    (["resume=true"], "resume 'True' does not exist (a checkpoint path or 'auto'); to continue from the newest "
     "intact checkpoint in output_dir, use resume=auto"),
    (["resume=latest"], "resume 'latest' does not exist (a checkpoint path or 'auto'); to continue from the newest"),
    (["data.shards=/nowhere/shard-{0..3}.tar", "synth.enabled=false"], "data.shards: shard '/nowhere/shard-0.tar'"),
    (["synth.enabled=false"], "data.shards is empty (set it, or synth.enabled=true for synthetic data)"),
    pytest.param(["trainer.accelerator=gpu"], "trainer.accelerator must be one this machine has: auto, cpu, got 'gpu'",
                 marks=NO_GPU),
]


@pytest.mark.parametrize("overrides, message", BAD_SETTINGS, ids=[
    " ".join(p.values[0] if hasattr(p, "values") else p[0])[:60] for p in BAD_SETTINGS])
def test_a_bad_setting_is_refused_before_any_work(tmp_path, capsys, overrides, message):
    out = tmp_path / "run"
    code = main(["fit", f"output_dir={out}", *overrides])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.err.startswith("brushtrain fit: config error: "), captured.err
    assert message in captured.err, captured.err
    assert "Traceback" not in captured.err and captured.err.count("\n") == 1, "one line, no traceback"
    assert captured.out == ""
    assert not out.exists(), "nothing was written"


def test_all_problems_in_one_message_from_a_real_process(tmp_path):
    out = tmp_path / "run"
    bad = ["optim.lr=-1", "data.num_workers=-2", "trainer.precision=bf17", "data.mask.brush=-1", "eval.samples=0"]
    result = subprocess.run([sys.executable, "-m", "train", "fit", f"output_dir={out}", *bad], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "brushtrain fit" in line]
    assert len(lines) == 1 and lines[0].startswith("brushtrain fit: config error: 5 problems: "), result.stderr[-3000:]
    for key in ("optim.lr", "data.num_workers", "trainer.precision", "data.mask.brush", "eval.samples"):
        assert key in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not out.exists() and not (ROOT / "wandb").exists()


def _leaves(node, prefix=""):
    for key in node.keys():
        child = node._get_node(key)
        if OmegaConf.is_dict(child):
            yield from _leaves(child, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_every_key_has_a_rule_and_every_rule_a_key():
    keys = set(_leaves(OmegaConf.structured(FitConfig)))
    ruled = [rule.key for rule in RULES]
    assert len(ruled) == len(set(ruled)), "one line per key"
    assert keys - set(ruled) - TYPE_ONLY == set(), "keys without a validation rule (add one line to train.setup.validation.RULES)"
    assert set(ruled) - keys == set(), "rules for keys the schema does not have"


def test_the_shipped_configs_pass(tmp_path):
    from train.commands.fit import load_fit_config
    from train.setup.validation import problems

    shards = tmp_path / "shards"
    assert main(["data", "synth", str(shards), "--samples", "4", "--per-shard", "4"]) == 0
    for name in ("tiny_cpu", "sd15_segmentation", "sd15_random", "sdxl_segmentation"):
        extra = [] if torch.cuda.is_available() or name == "tiny_cpu" else ["trainer.accelerator=cpu", "trainer.precision=32-true"]
        cfg, launch = load_fit_config([f"configs/{name}.yaml"], [f"data.shards={shards}", f"output_dir={tmp_path / name}", *extra])
        assert problems(cfg, launch) == [], name


def test_branches_of_the_base_s_layout_pass(tmp_path):
    from train.commands.fit import load_fit_config
    from train.setup.validation import problems

    for base, branch in (("tiny:sd15", FIXTURES / "brushnet"), ("tiny:sdxl", FIXTURES / "sdxl" / "brushnet")):
        cfg, launch = load_fit_config([], [f"model.base={base}", f"model.brushnet={branch}", "data.resolution=64",
                                           f"output_dir={tmp_path}"])
        assert problems(cfg, launch) == [], base


def test_an_export_folder_the_end_of_the_run_could_not_replace_is_refused_before_training(tmp_path, capsys):
    """The run ends by replacing <output_dir>/brushnet (and brushnet-ema) whole, so a folder holding anything else
    is refused there; it used to be found only after the whole run (and other ranks waited at the export's barrier)."""
    from train.commands.fit import load_fit_config
    from train.setup.validation import problems

    out = tmp_path / "run"
    (out / "brushnet-ema").mkdir(parents=True)
    (out / "brushnet-ema" / "notes.txt").write_text("mine")
    cfg, launch = load_fit_config([], [f"output_dir={out}", "ema.enabled=true"])
    assert problems(cfg, launch) == [f"checkpoint.export_on_end: {out / 'brushnet-ema'} exists and is not a branch "
                                     "folder (it holds notes.txt); the export replaces the whole folder, so give a new "
                                     "one (an earlier export is replaced)"]
    assert main(["fit", f"output_dir={out}", "ema.enabled=true"]) == 2
    assert "checkpoint.export_on_end: " in capsys.readouterr().err
    assert sorted(p.name for p in out.rglob("*")) == ["brushnet-ema", "notes.txt"]  # nothing written, nothing lost
    for fine in (["ema.enabled=false"], ["ema.enabled=true", "checkpoint.export_on_end=false"]):
        cfg, launch = load_fit_config([], [f"output_dir={out}", *fine])
        assert problems(cfg, launch) == [], fine
    shutil.copytree(FIXTURES / "brushnet", out / "brushnet")  # an earlier export (a branch folder) is replaced
    (out / "brushnet-ema" / "notes.txt").unlink()
    cfg, launch = load_fit_config([], [f"output_dir={out}", "ema.enabled=true"])
    assert problems(cfg, launch) == []


def test_cross_checks_for_keys_other_branches_add():
    """The recipe's keys (brush_min_strokes, model.vae) are checked as soon as the schema has them."""
    from train.setup.validation import _brush_strokes, _vae

    cfg = OmegaConf.create({"data": {"mask": {"brush_min_strokes": 3, "brush_max_strokes": 1}}, "model": {"vae": "./no/vae"}})
    assert _brush_strokes(cfg, None) == ["data.mask.brush_min_strokes=3 is larger than data.mask.brush_max_strokes=1"]
    assert _vae(cfg, None) == ["model.vae './no/vae' does not exist (and is not a hub id like org/name)"]
    fine = OmegaConf.create({"data": {"mask": {"brush_min_strokes": 0, "brush_max_strokes": 3}}, "model": {"vae": "madebyollin/sdxl-vae-fp16-fix"}})
    assert _brush_strokes(fine, None) == [] and _vae(fine, None) == []
    absent = OmegaConf.create({"data": {"mask": {"brush_max_strokes": 3}}, "model": {}})
    assert _brush_strokes(absent, None) == [] and _vae(absent, None) == []
