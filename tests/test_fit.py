"""`brushtrain fit` as users run it: the default job, DDP and DeepSpeed ZeRO resume, export, errors."""

from __future__ import annotations

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train.cli import main
from train.model.brushnet import BrushNetModel

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["synth.train_samples=96", "synth.eval_samples=16", "eval.samples=16", "synth.per_shard=32",
         "logging.logger=csv", "samples.enabled=false"]  # tests about W&B and samples turn them back on
WEIGHTS = "diffusion_pytorch_model.safetensors"


def fit(out: Path, *overrides: str, timeout: int = 900, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "train", "fit", f"output_dir={out}", *overrides]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    if check:
        assert result.returncode == 0, result.stdout[-4000:] + "\n" + result.stderr[-6000:]
    return result


def loss_curve(out: Path) -> dict[int, float]:
    curve = {}
    for path in sorted(glob.glob(str(out / "logs" / "version_*" / "metrics.csv"))):
        with open(path) as f:
            curve.update({int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")})
    return curve


def weights(folder: Path) -> dict:
    return load_file(str(folder / WEIGHTS))


def assert_same_weights(a: Path, b: Path, atol: float = 0.0) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst <= atol, f"branch weights differ by {worst}"


def test_default_job_learns_checkpoints_and_exports(tmp_path):
    out = tmp_path / "run"
    result = fit(out, "trainer.max_steps=250", "checkpoint.every_n_steps=100")
    assert "held-out masked-region denoising loss at start" in result.stdout
    start, end = json.loads((out / "eval.json").read_text())
    assert start["label"] == "start" and end["label"] == "end" and end["step"] == 250
    # The untrained branch is exactly the frozen UNet (zero convs): same numbers as branch off.
    assert start["branch"]["hole"] == pytest.approx(start["branch_off"]["hole"])
    assert end["branch"]["hole"] < 0.8 * start["branch"]["hole"], (start, end)
    assert end["branch"]["hole"] < 0.8 * end["branch_off"]["hole"]
    assert end["branch"]["known"] < 0.8 * end["branch_off"]["known"]

    steps = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert steps == ["step-00000200", "step-00000250"]  # every 100, the end, keep_last=2
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000250"
    assert not list((out / "checkpoints").glob("*.tmp*"))
    branch = BrushNetModel.from_pretrained(out / "brushnet")  # strict: every parameter present
    assert branch.residual_counts == (12, 1, 15)
    assert (out / "brushnet-ema" / WEIGHTS).is_file()
    config = (out / "config.yaml").read_text()
    assert "max_steps: 250" in config and "base: tiny:sd15" in config
    assert loss_curve(out), "losses are logged"


@pytest.mark.slow  # CI time: resume under 2 processes is in the default suite through ZeRO-1 and ZeRO-3 below
def test_ddp_two_processes_resume_is_exact(tmp_path):
    # With gradient accumulation on: N straight equals N/2 + resume + N/2.
    common = ["trainer.devices=2", "checkpoint.every_n_steps=6", "trainer.log_every_n_steps=1", "eval.at_start=false",
              "eval.at_end=false", "trainer.accumulate_grad_batches=2", *SMALL]
    straight, split = tmp_path / "straight", tmp_path / "split"
    fit(straight, "trainer.max_steps=12", *common)
    fit(split, "trainer.max_steps=6", *common)
    second = fit(split, "trainer.max_steps=12", *common)
    assert "resuming from" in second.stdout and "step-00000006" in second.stdout
    assert_same_weights(straight / "brushnet", split / "brushnet", atol=1e-6)
    assert_same_weights(straight / "brushnet-ema", split / "brushnet-ema", atol=1e-6)
    a, b = loss_curve(straight), loss_curve(split)
    assert sorted(a) == sorted(b) == list(range(1, 13))  # the loss of the step that ends at global step k
    assert all(abs(a[s] - b[s]) < 1e-6 for s in a), (a, b)


# ZeRO-2 is slow-only for CI time: its resume is covered by the compiled/eager chain and accumulation (slow) tests.
@pytest.mark.parametrize("stage", [1, pytest.param(2, marks=pytest.mark.slow), 3])
def test_deepspeed_zero_on_cpu_trains_resumes_and_exports(tmp_path, stage, monkeypatch):
    # DeepSpeed's shared-memory all-reduce is not compiled for CPU runs (gloo sums instead)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch_extensions"))
    common = ["trainer.devices=2", "trainer.strategy=deepspeed", "deepspeed.allow_cpu=true", f"deepspeed.stage={stage}",
              "checkpoint.every_n_steps=4", "trainer.log_every_n_steps=1", "eval.at_start=false", "eval.at_end=false",
              "trainer.accumulate_grad_batches=2", *SMALL]  # DeepSpeed's gradient_accumulation_steps
    straight, split = tmp_path / "straight", tmp_path / "split"
    fit(straight, "trainer.max_steps=8", *common)
    fit(split, "trainer.max_steps=4", *common)
    second = fit(split, "trainer.max_steps=8", *common)
    assert "resuming from" in second.stdout
    assert_same_weights(straight / "brushnet", split / "brushnet", atol=1e-6)
    assert_same_weights(straight / "brushnet-ema", split / "brushnet-ema", atol=1e-6)
    ckpt = split / "checkpoints" / "step-00000008"
    assert (ckpt / "checkpoint").is_dir(), "DeepSpeed's own (sharded) layout"
    # The export command consolidates the ZeRO shards with DeepSpeed's tools.
    assert main(["export", str(ckpt), str(tmp_path / "exported")]) == 0
    assert_same_weights(tmp_path / "exported", split / "brushnet")
    BrushNetModel.from_pretrained(tmp_path / "exported")
    trained = weights(split / "brushnet")
    assert any(torch.count_nonzero(v) for k, v in trained.items() if k.startswith("brushnet_")), "zero convs trained"
    base = load_file(str(split / "base-tiny-sd15" / "unet" / WEIGHTS))  # the tied bias is saved and never trained
    assert torch.equal(trained["conv_in_condition.bias"], base["conv_in.bias"])
    assert not (tmp_path / "torch_extensions").exists(), "no DeepSpeed op was built"


@pytest.mark.parametrize("strategy", [[], pytest.param(["trainer.strategy=deepspeed", "deepspeed.allow_cpu=true",
                                                        "deepspeed.stage=2"], marks=pytest.mark.slow)],
                         ids=["ddp", "zero2"])
def test_accumulated_micro_batches_make_the_update_of_one_big_batch(tmp_path, strategy):
    # 2 ranks: micro-batches of 1, 2 per step (DDP: no all-reduce on the first; ZeRO-2: DeepSpeed's
    # gradient_accumulation_steps) == batches of 2. eps=1 keeps AdamW's first steps a smooth function of
    # the gradient, so float noise in near-zero gradients cannot flip a step's sign.
    common = ["trainer.devices=2", "trainer.max_steps=3", "checkpoint.every_n_steps=3", "eval.at_start=false",
              "eval.at_end=false", "ema.enabled=false", "optim.eps=1.0", "data.num_workers=1", "trainer.log_every_n_steps=1",
              *strategy, *SMALL]
    fit(tmp_path / "whole", "data.batch_size=2", *common)
    fit(tmp_path / "micro", "data.batch_size=1", "trainer.accumulate_grad_batches=2", *common)
    assert_same_weights(tmp_path / "whole" / "brushnet", tmp_path / "micro" / "brushnet", atol=2e-6)
    a, b = loss_curve(tmp_path / "whole"), loss_curve(tmp_path / "micro")
    assert sorted(a) == sorted(b) == [1, 2, 3] and all(abs(a[s] - b[s]) < 1e-5 for s in a), (a, b)


def test_killed_run_resumes_with_resume_auto(tmp_path):
    out = tmp_path / "run"
    common = ["checkpoint.every_n_steps=5", "trainer.max_steps=40", "eval.at_start=false", "eval.at_end=false", *SMALL]
    cmd = [sys.executable, "-m", "train", "fit", f"output_dir={out}", *common]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (out / "checkpoints" / "step-00000010" / "meta.json").exists():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # The tiny config says resume: auto. Resumed with a longer run, the cosine schedule (warmup 20) stretches: said.
    result = fit(out, *common, "trainer.max_steps=44", "checkpoint.every_n_steps=4")
    assert "resuming from" in result.stdout
    assert ("brushtrain fit: the learning-rate schedule changed since the checkpoint (trainer.max_steps 40 -> 44): at "
            "step ") in result.stdout, result.stdout[-2000:]
    meta = json.loads((out / "checkpoints" / "step-00000044" / "meta.json").read_text())
    assert meta["step"] == 44
    BrushNetModel.from_pretrained(out / "brushnet")


def test_sdxl_layout_trains_and_exports(tmp_path):
    out = tmp_path / "xl"
    fit(out, "model.base=tiny:sdxl", "trainer.max_steps=4", "checkpoint.every_n_steps=4", "eval.at_start=false", *SMALL)
    branch = BrushNetModel.from_pretrained(out / "brushnet")
    assert branch.config.addition_embed_type == "text_time" and branch.residual_counts == (9, 1, 11)
    assert json.loads((out / "eval.json").read_text())[-1]["label"] == "end"


def test_export_command_from_a_ddp_checkpoint_and_a_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    fit(out, "trainer.max_steps=3", "checkpoint.every_n_steps=3", "eval.at_start=false", "eval.at_end=false", *SMALL)
    assert main(["export", str(out / "checkpoints" / "step-00000003"), str(tmp_path / "a")]) == 0
    assert main(["export", str(out), str(tmp_path / "b"), "--ema"]) == 0
    assert_same_weights(tmp_path / "a", out / "brushnet")
    assert_same_weights(tmp_path / "b", out / "brushnet-ema")
    reference_keys = json.loads((ROOT / "tests/fixtures/official-tiny/brushnet/config.json").read_text())
    ours = json.loads((tmp_path / "a" / "config.json").read_text())
    assert {k for k in ours if not k.startswith("_")} == {k for k in reference_keys if not k.startswith("_")}
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    capsys.readouterr()
    assert main(["export", str(tmp_path / "empty"), str(tmp_path / "c")]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "a"), str(tmp_path / "d")]) == 2  # a branch folder is not a checkpoint
    assert "neither a BrushTrain/Lightning checkpoint nor a DeepSpeed checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("overrides, message", [
    (["nosuch.key=1"], "nosuch"),
    (["model.base=/does/not/exist"], "model.base '/does/not/exist' does not exist"),
    (["data.shards=/nowhere/shard-{0..3}.tar", "synth.enabled=false"], "data.shards: shard"),
    (["trainer.strategy=deepspeed", "trainer.max_steps=1"], "needs CUDA GPUs"),
    (["optim.schedule=linear"], "optim.schedule"),
    (["resume=/no/checkpoint"], "resume '/no/checkpoint' does not exist"),
])
def test_bad_configs_are_refused_with_one_clear_message(tmp_path, capsys, overrides, message):
    code = main(["fit", f"output_dir={tmp_path}", *overrides])
    err = capsys.readouterr().err
    assert code == 2 and "config error" in err and message in err, err


@pytest.mark.parametrize("launcher", ["fabric", "torchrun"])
def test_external_launchers_start_each_process_once(tmp_path, launcher):
    """`fabric run` / `torchrun` start 2 processes; fit uses them (no second spawn) and finishes."""
    out = tmp_path / launcher
    bin_dir = Path(sys.executable).parent
    if launcher == "fabric":
        cmd = [str(bin_dir / "fabric"), "run", "--accelerator", "cpu", "--devices", "2"]
    else:
        cmd = [str(bin_dir / "torchrun"), "--nproc_per_node", "2", "--master_port", "29517"]
    cmd += ["launch/fit.py", f"output_dir={out}", "trainer.max_steps=4", "checkpoint.every_n_steps=4", "eval.at_start=false", *SMALL]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"({launcher} launch, 2 process(es))" in result.stdout
    assert result.stdout.count("brushtrain fit: starting fresh") == 1
    meta = json.loads((out / "checkpoints" / "step-00000004" / "meta.json").read_text())
    assert meta["world_size"] == 2
    BrushNetModel.from_pretrained(out / "brushnet")
