"""Trainer pieces on their own: targets and losses, LR schedule, EMA, non-finite steps, launchers."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from diffusers import DDPMScheduler

from data.brushdata import DataConfig, MaskConfig
from data.datamodule import BrushDataModule
from data.synth import write_synthetic_shards
from launch.env import detect_launch
from train.engine.ema import BranchEMA
from train.engine.losses import (
    min_snr_weights,
    per_sample_mse,
    region_mse,
    snr,
    training_target,
)
from train.engine.module import BrushNetModule, NonFiniteError
from train.engine.optim import lr_at
from train.model.brushnet import BrushNetModel
from train.schema import EMAConfig, ModelConfig, OptimConfig


def test_targets_for_epsilon_and_v_prediction():
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    x0, noise = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    t = torch.tensor([0, 500, 999])
    assert torch.equal(training_target(sched, x0, noise, t, "epsilon"), noise)
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(training_target(sched, x0, noise, t, "v_prediction"), a.sqrt() * noise - (1 - a).sqrt() * x0)
    with pytest.raises(ValueError, match="prediction_type"):
        training_target(sched, x0, noise, t, "sample")


def test_min_snr_weights():
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    t = torch.tensor([1, 100, 900])
    s = snr(sched, t)
    w = min_snr_weights(sched, t, 5.0, "epsilon")
    torch.testing.assert_close(w, torch.minimum(s, torch.tensor(5.0)) / s)
    assert w[0] < 1 and w[-1] == pytest.approx(1.0)  # low noise is down-weighted, high noise untouched
    wv = min_snr_weights(sched, t, 5.0, "v_prediction")
    torch.testing.assert_close(wv, torch.minimum(s, torch.tensor(5.0)) / (s + 1))


def test_sdxl_time_ids_stay_on_the_batch_device():
    """The training step hands sdxl_time_ids the batch's sizes, which Lightning has moved to the GPU, and the
    target size as a plain pair: the rows must be built on the batch's device (a CPU part made torch.cat fail
    with 'Expected all tensors to be on the same device' at the first SDXL step on a GPU). 'meta' stands in
    for the GPU here."""
    from train.model.components import sdxl_time_ids

    sizes, crops = torch.tensor([[1024, 1280], [900, 1100]]), torch.tensor([[0, 128], [7, 0]])
    ids = sdxl_time_ids(sizes, crops, (1024, 1024))
    assert ids.tolist() == [[1024, 1280, 0, 128, 1024, 1024], [900, 1100, 7, 0, 1024, 1024]]
    on_device = sdxl_time_ids(sizes.to("meta"), crops.to("meta"), (1024, 1024))
    assert on_device.device.type == "meta" and on_device.shape == (2, 6) and on_device.dtype == torch.long
    assert sdxl_time_ids((64, 64), (0, 0), (64, 64)).tolist() == [[64, 64, 0, 0, 64, 64]]  # the pipeline's call


def test_losses():
    pred, target = torch.zeros(2, 4, 2, 2), torch.ones(2, 4, 2, 2)
    target[1] = 3
    assert per_sample_mse(pred, target).tolist() == [1.0, 9.0]
    region = torch.zeros(2, 1, 2, 2)
    region[0, 0, 0, 0] = 1
    err, count = region_mse(pred, target, region)
    assert (float(err), float(count)) == (4.0, 4.0)


def test_lr_schedule():
    cfg = OptimConfig(lr=1.0, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(0, cfg, 110) == pytest.approx(0.1)
    assert lr_at(9, cfg, 110) == pytest.approx(1.0)
    assert lr_at(10, cfg, 110) == pytest.approx(1.0)
    assert lr_at(60, cfg, 110) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(110, cfg, 110) == pytest.approx(0.1)
    assert lr_at(500, OptimConfig(lr=2.0), 10) == 2.0


def test_a_resume_that_changes_the_schedule_says_so_with_the_rates():
    """Raising trainer.max_steps on resume (what the 'already reached step' message suggests) moved a cosine
    schedule back up its curve, silently: at step 60 of 110 the rate was 0.55, resumed with max_steps 210 it is 0.87."""
    from train.engine.optim import schedule_change, schedule_settings

    cfg = OptimConfig(lr=1.0, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    saved = schedule_settings(cfg, 110)
    assert schedule_change(saved, cfg, 110, 60) is None
    assert schedule_change(None, cfg, 210, 60) is None  # a checkpoint from before the schedule was recorded
    said = schedule_change(saved, cfg, 210, 60)
    assert said == ("the learning-rate schedule changed since the checkpoint (trainer.max_steps 110 -> 210): at step 60 "
                    f"the rate is {lr_at(60, cfg, 210):.3g} where the checkpoint's run would have used 0.55 (a cosine "
                    "schedule stretched over the new max_steps)")
    assert f"{lr_at(60, cfg, 210):.3g}" == "0.868"
    constant = OptimConfig(lr=1.0)
    assert schedule_change(schedule_settings(constant, 110), constant, 210, 60) is None, "no curve: nothing to say"
    lower = OptimConfig(lr=0.5)
    assert schedule_change(schedule_settings(constant, 110), lower, 110, 60) == (
        "the learning-rate schedule changed since the checkpoint (optim.lr 1.0 -> 0.5): at step 60 the rate is 0.5 "
        "where the checkpoint's run would have used 1")


def test_ema_follows_the_weights():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    ema = BranchEMA(net, decay=0.5)
    start = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)  # warm-up decay min(0.5, 1/10) = 0.1
    torch.testing.assert_close(ema.shadow["weight"], 0.1 * start["weight"] + 0.9 * net.weight)
    restored = BranchEMA(net, decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 1 and torch.equal(restored.shadow["weight"], ema.shadow["weight"])


class _NanGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def _module(tiny_sd15, max_steps, max_in_a_row=3):
    branch = BrushNetModel.from_unet(tiny_sd15.unet)
    return BrushNetModule(tiny_sd15, branch, ModelConfig(base="tiny:sd15", frozen_dtype="fp32"),
                          OptimConfig(lr=1e-3, max_nonfinite_in_a_row=max_in_a_row), EMAConfig(), max_steps=max_steps)


def _trainer(tmp_path, max_steps):
    return L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path, precision="32-true")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nf")
    write_synthetic_shards(folder, 64, samples_per_shard=32, min_size=64, max_size=72)
    return folder


def _data(shards):
    return BrushDataModule(DataConfig(shards=[str(shards)], resolution=64, batch_size=4, num_workers=0,
                                      mask=MaskConfig(segmentation=1.0)))


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_a_non_finite_step_is_skipped_and_counted(tmp_path, tiny_sd15, shards, where):
    module = _module(tiny_sd15, max_steps=5)
    real = module.compute_loss
    calls = []

    def sometimes_bad(batch):
        calls.append(module.global_step)
        loss = real(batch)
        if len(calls) == 2:
            return loss * float("nan") if where == "loss" else _NanGrad.apply(loss)
        return loss

    module.compute_loss = sometimes_bad
    _trainer(tmp_path, 5).fit(module, datamodule=_data(shards))
    # A skipped step is still an optimizer step (as DeepSpeed's and the fp16 scaler's skips always are): the
    # step, LR and checkpoint schedules count attempts, so the run ends at step 5 after 5 batches.
    assert module.skipped_steps == 1 and module.global_step == 5 and calls == [0, 1, 2, 3, 4]
    assert all(torch.isfinite(p).all() for p in module.brushnet.parameters())


def test_too_many_non_finite_steps_stop_the_run(tmp_path, tiny_sd15, shards):
    module = _module(tiny_sd15, max_steps=10, max_in_a_row=3)
    module.compute_loss = lambda batch: torch.tensor(float("inf"), requires_grad=True)
    with pytest.raises(NonFiniteError, match="3 optimizer steps in a row were skipped"):
        _trainer(tmp_path, 10).fit(module, datamodule=_data(shards))


def test_only_the_branch_is_a_submodule_and_checkpointed(tiny_sd15):
    module = _module(tiny_sd15, max_steps=1)
    names = {n.split(".")[0] for n, _ in module.named_parameters()}
    assert names == {"brushnet"}
    assert all(k.startswith("brushnet.") for k in module.state_dict())
    assert all(not p.requires_grad for p in tiny_sd15.unet.parameters())


# --------------------------------------------------------------- launchers


@pytest.mark.parametrize("env, launcher, rank, overrides", [
    ({}, "none", 0, {}),
    ({"LOCAL_RANK": "1"}, "none", 1, {}),
    ({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}, "torchrun", 3,
     {"devices": 2, "num_nodes": 2}),
    ({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "LT_CLI_USED": "1",
      "LT_ACCELERATOR": "cpu", "LT_DEVICES": "2", "LT_NUM_NODES": "1", "LT_PRECISION": "32-true"}, "fabric", 0,
     {"devices": 2, "num_nodes": 1, "accelerator": "cpu", "precision": "32-true"}),
    ({"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8", "SLURM_NNODES": "2", "SLURM_STEP_ID": "0",
      "SLURM_NTASKS_PER_NODE": "4", "SLURM_JOB_NAME": "train"}, "slurm", 5, {"devices": 4, "num_nodes": 2}),
])
def test_launch_detection(env, launcher, rank, overrides):
    info = detect_launch(env)
    assert (info.launcher, info.rank, info.trainer_overrides) == (launcher, rank, overrides)


def _fake_trainer_for_checkpoints(step, write):
    strategy = SimpleNamespace(broadcast=lambda x: x, barrier=lambda name=None: None)
    return SimpleNamespace(global_step=step, current_epoch=0, world_size=1, is_global_zero=True, strategy=strategy,
                           save_checkpoint=write)


def test_a_checkpoint_appears_only_when_complete(tmp_path):
    import json as _json

    from train.engine.checkpointing import StepCheckpoint, find_latest, resolve_resume

    cb = StepCheckpoint(tmp_path / "checkpoints", every_n_steps=10, keep_last=2, branch_config={"a": 1})

    def good(path, weights_only=False):
        Path(path).write_bytes(b"weights")

    cb.save(_fake_trainer_for_checkpoints(10, good))
    first = find_latest(tmp_path / "checkpoints")
    assert first.name == "step-00000010" and _json.loads((first / "meta.json").read_text())["step"] == 10

    def dies_half_way(path, weights_only=False):  # a kill (or a second signal's exit) while writing
        Path(path).write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cb.save(_fake_trainer_for_checkpoints(20, dies_half_way))
    assert find_latest(tmp_path / "checkpoints") == first, "the half-written one is not a checkpoint"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-00000010"
    assert (first / "model.ckpt").read_bytes() == b"weights"
    assert resolve_resume("auto", tmp_path) == first / "model.ckpt"
    cb.save(_fake_trainer_for_checkpoints(30, good))  # the next save clears the debris, keeps the last 2
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step-00000010", "step-00000030"]


@pytest.fixture
def signal_state():
    """A fresh SignalState with its handlers installed, the previous handlers restored afterwards."""
    import signal as _signal

    from train.engine.signals import SignalState

    previous = {s: _signal.getsignal(s) for s in (_signal.SIGUSR1, _signal.SIGTERM)}
    state = SignalState()
    state.install()
    yield state
    for s, handler in previous.items():
        _signal.signal(s, handler)


def _preemption(signal_state, requeue=False):
    from train.engine.preemption import PreemptionHandler

    saves = []
    checkpoint = SimpleNamespace(last_saved_step=None, save=lambda trainer, module: saves.append(trainer.global_step))
    handler = PreemptionHandler(checkpoint, signal_state, requeue=requeue)
    trainer = SimpleNamespace(world_size=1, global_step=7, is_global_zero=True, should_stop=False)
    module = SimpleNamespace(device=torch.device("cpu"))
    return handler, trainer, module, saves


def test_preemption_handler_only_sets_a_flag_and_saves_once(signal_state):
    import signal as _signal

    handler, trainer, module, saves = _preemption(signal_state)
    handler.on_train_start(trainer, module)
    assert not trainer.should_stop
    _signal.raise_signal(_signal.SIGUSR1)
    _signal.raise_signal(_signal.SIGUSR1)  # a second signal: still just the flag
    assert saves == [] and handler.received == 2
    handler.on_train_batch_end(trainer, module, None, None, 0)
    assert saves == [7] and trainer.should_stop and handler.preempted


def test_a_signal_during_start_up_stops_at_train_start_with_nothing_to_save(signal_state, capsys):
    import signal as _signal

    _signal.raise_signal(_signal.SIGTERM)  # while models load: the process lives on, the flag is set
    handler, trainer, module, saves = _preemption(signal_state, requeue=True)
    handler.on_train_start(trainer, module)
    assert trainer.should_stop and handler.preempted and saves == []
    out = capsys.readouterr().out
    assert "termination signal received; stopping before the first step (at step 7)" in out
    assert "nothing to requeue" not in out, "SIGTERM stops without a requeue"


def test_a_signal_in_the_end_phase_skips_the_export(signal_state, tmp_path, capsys, monkeypatch):
    import signal as _signal

    from train.callbacks.export_on_end import ExportOnEnd

    handler, trainer, module, saves = _preemption(signal_state, requeue=True)
    trainer.strategy = SimpleNamespace(barrier=lambda name=None: None)
    export = ExportOnEnd(SimpleNamespace(last_saved=tmp_path / "ckpt", dirpath=tmp_path), tmp_path, preemption=handler)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert not handler.interrupts_end_phase(trainer, module)
    _signal.raise_signal(_signal.SIGUSR1)  # during the final eval
    export.on_train_end(trainer, module)
    assert export.exported == [] and handler.preempted and saves == []
    out = capsys.readouterr().out
    assert "time-limit warning (requeue) signal received; stopping after the final checkpoint (step 7)" in out
    assert "not a SLURM job, nothing to requeue" in out


def test_a_failed_end_of_run_export_still_meets_the_other_ranks_at_the_barrier(tmp_path):
    """Rank 0 exports, then every rank meets at a barrier: an export that raises (the checkpoint stays intact) must
    still reach it, or the other ranks would wait there until the process group's timeout."""
    from train.callbacks.export_on_end import ExportOnEnd
    from train.engine.integrity import CheckpointError

    met = []
    trainer = SimpleNamespace(is_global_zero=True, strategy=SimpleNamespace(barrier=lambda name=None: met.append(name)))
    (tmp_path / "brushnet").mkdir()
    (tmp_path / "brushnet" / "notes.txt").write_text("not a branch")  # a folder the export must not replace
    export = ExportOnEnd(SimpleNamespace(last_saved=tmp_path / "ckpt", dirpath=tmp_path), tmp_path)
    with pytest.raises(CheckpointError, match="is not a branch folder"):
        export.on_train_end(trainer, None)
    assert met == ["brushtrain-export"] and export.exported == []
    assert (tmp_path / "brushnet" / "notes.txt").read_text() == "not a branch"
