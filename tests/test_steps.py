"""One optimizer step, as the recipe defines it: gradient accumulation, fp16 loss scaling, the tied bias."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from data.brushdata import DataConfig, MaskConfig
from data.datamodule import BrushDataModule
from data.synth import write_synthetic_shards
from train.engine.module import BrushNetModule
from train.model.brushnet import BrushNetModel
from train.schema import EMAConfig, ModelConfig, OptimConfig


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("steps")
    write_synthetic_shards(folder, 32, samples_per_shard=16, min_size=64, max_size=80)
    return folder


def _module(base, accumulate=1, optim=None, freeze_bias=True, **model):
    return BrushNetModule(base, BrushNetModel.from_unet(base.unet), ModelConfig(base="tiny:sd15", frozen_dtype="fp32", **model),
                          optim or OptimConfig(lr=1e-3), EMAConfig(), max_steps=10, accumulate_grad_batches=accumulate,
                          freeze_conv_in_bias=freeze_bias)


def _fit(module, shards, tmp_path, batch_size, max_steps, plugins=None, precision="32-true"):
    data = BrushDataModule(DataConfig(shards=[str(shards)], resolution=64, batch_size=batch_size, num_workers=0,
                                      mask=MaskConfig(segmentation=1.0, brush=1.0), shuffle_buffer=8))
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path,
                        precision=None if plugins else precision, plugins=plugins)
    trainer.fit(module, datamodule=data)
    return trainer


def _capture_updates(module):
    """The gradients the optimizer applies (after unscaling and clipping), and the window losses."""
    seen = {"grads": [], "losses": []}
    hook = module.on_before_optimizer_step

    def capture(optimizer):
        hook(optimizer)
        seen["grads"].append({n: p.grad.clone() for n, p in module.brushnet.named_parameters() if p.grad is not None})
        seen["scaled"] = module._scaler() is not None

    module.on_before_optimizer_step = capture
    step = module.training_step

    def record(batch, batch_idx):
        out = step(batch, batch_idx)
        if module.at_step_boundary:
            seen["losses"].append(float(out))
        return out

    module.training_step = record
    return seen


def test_four_micro_batches_of_one_make_the_update_of_one_batch_of_four(tmp_path, tiny_sd15, shards):
    # eps=1 keeps AdamW's first steps a smooth function of the gradient (update ~ lr * g), so float noise in
    # near-zero gradients cannot flip a step's sign; lr=0.1 keeps the update well above the tolerance.
    optim = OptimConfig(lr=0.1, eps=1.0)
    whole, micro = _module(copy.deepcopy(tiny_sd15), optim=optim), _module(copy.deepcopy(tiny_sd15), accumulate=4, optim=optim)
    start = {n: p.detach().clone() for n, p in whole.brushnet.named_parameters()}
    a, b = _capture_updates(whole), _capture_updates(micro)
    _fit(whole, shards, tmp_path / "a", batch_size=4, max_steps=2)
    _fit(micro, shards, tmp_path / "b", batch_size=1, max_steps=2)
    assert whole.global_step == micro.global_step == 2
    assert len(a["grads"]) == len(b["grads"]) == 2
    assert a["losses"] == pytest.approx(b["losses"], rel=1e-5)
    for ga, gb in zip(a["grads"], b["grads"]):
        assert ga.keys() == gb.keys() and "conv_in_condition.bias" not in ga  # the tied bias has no gradient
        for name in ga:
            torch.testing.assert_close(gb[name], ga[name], rtol=1e-4, atol=1e-7, msg=name)
    for (name, pa), pb in zip(whole.brushnet.named_parameters(), micro.brushnet.parameters()):
        torch.testing.assert_close(pb, pa, rtol=1e-4, atol=2e-6, msg=name)
    moved = max(float((p.detach() - start[n]).abs().max()) for n, p in whole.brushnet.named_parameters())
    assert moved > 1e-4, moved  # the updates compared above are far larger than the tolerance


def test_the_tied_bias_never_trains_and_a_loaded_branch_trains_it(tmp_path, tiny_sd15, shards):
    tied = _module(copy.deepcopy(tiny_sd15))
    _fit(tied, shards, tmp_path / "tied", batch_size=2, max_steps=3)
    assert torch.equal(tied.brushnet.conv_in_condition.bias, tiny_sd15.unet.conv_in.bias)
    assert not tied.brushnet.conv_in_condition.weight.equal(BrushNetModel.from_unet(tiny_sd15.unet).conv_in_condition.weight)
    free = _module(copy.deepcopy(tiny_sd15), freeze_bias=False)
    _fit(free, shards, tmp_path / "free", batch_size=2, max_steps=3)
    assert not torch.equal(free.brushnet.conv_in_condition.bias, tiny_sd15.unet.conv_in.bias)
    assert "brushnet.conv_in_condition.bias" in tied.state_dict(), "the saved layout keeps the bias"


def _fp16_trainer_plugins(init_scale=2.0**16):
    return [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=init_scale))]


def test_fp16_clips_the_unscaled_gradient(tmp_path, tiny_sd15, shards):
    # Lightning unscales inside opt.step(); clipping there (not before) sees the true gradient: after
    # clipping to 1e-3 its norm is 1e-3, not 1e-3 / 65536 (what clipping the scaled gradient leaves).
    module = _module(copy.deepcopy(tiny_sd15), optim=OptimConfig(lr=1e-3, grad_clip=1e-3))
    seen = _capture_updates(module)
    _fit(module, shards, tmp_path, batch_size=2, max_steps=2, plugins=_fp16_trainer_plugins())
    assert seen["scaled"] and len(seen["grads"]) == 2
    for grads in seen["grads"]:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads.values()]))
        assert float(norm) == pytest.approx(1e-3, rel=1e-3)
    assert module._grad_norm > 1e-3  # the norm before clipping, unscaled (the loss scale is 65536)
    assert module.skipped_steps == 0 and module.overflow_steps == 0


class _InfGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


@pytest.mark.parametrize("floor, counted", [(1.0, False), (2.0**16, True)])
def test_fp16_overflow_steps_find_the_scale_and_count_only_at_the_floor(tmp_path, tiny_sd15, shards, floor, counted):
    module = _module(copy.deepcopy(tiny_sd15), optim=OptimConfig(lr=1e-3, min_loss_scale=floor))
    real, calls = module.compute_loss, []

    def overflow_on_the_second(batch):
        calls.append(1)
        loss = real(batch)
        return _InfGrad.apply(loss) if len(calls) == 2 else loss  # a finite loss whose gradient overflows

    module.compute_loss = overflow_on_the_second
    trainer = _fit(module, shards, tmp_path, batch_size=2, max_steps=3, plugins=_fp16_trainer_plugins())
    scale = trainer.precision_plugin.scaler.get_scale()
    assert module.global_step == 3 and len(calls) == 3
    if counted:  # at the floor: a non-finite step like any other, and the scale stays at the floor
        assert (module.skipped_steps, module.overflow_steps, scale) == (1, 0, 2.0**16)
    else:  # the scaler halved its scale: the normal way to find it, not a non-finite step
        assert (module.skipped_steps, module.overflow_steps, module.nonfinite_in_a_row, scale) == (0, 1, 0, 2.0**15)
    assert module.step_metrics["train/loss_scale"] == scale
    assert all(torch.isfinite(p).all() for p in module.brushnet.parameters())


def test_sdxl_vae_stays_in_fp32_under_fp16(tiny_sdxl, tiny_sd15):
    xl = tiny_sdxl.to(dtype=torch.float16)
    assert xl.unet.dtype == torch.float16 and xl.vae.dtype == torch.float32 and xl.vae_upcast
    with torch.autocast("cpu", dtype=torch.float16):
        with xl.vae_context():
            assert not torch.is_autocast_enabled("cpu")
    sd = tiny_sd15.to(dtype=torch.float16)
    assert sd.vae.dtype == torch.float16  # SD1.5's VAE is fine in fp16 (the reference trains it so)
    xl.vae.register_to_config(force_upcast=False)  # what an fp16-safe VAE (model.vae) says
    assert xl.to(dtype=torch.float16).vae.dtype == torch.float16


def test_pipeline_guidance_defaults_follow_the_reference(tiny_sd15, tiny_sdxl):
    from train.model.pipeline import default_guidance

    assert default_guidance(tiny_sd15) == 7.5 and default_guidance(tiny_sdxl) == 5.0


def test_ddp_all_reduces_only_the_last_micro_batch_of_a_step(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / "ddp_sync_script.py"
    result = subprocess.run([sys.executable, str(script), str(tmp_path), "3", "2"], capture_output=True, text=True,
                            timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        counts = json.loads((tmp_path / f"rank{rank}.json").read_text())
        # 2 optimizer steps of 3 micro-batches: one all-reduce of each gradient bucket per step, not per micro-batch.
        assert counts["global_step"] == 2 and counts["buckets"] >= 1
        assert counts["allreduce_calls"] == 2 * counts["buckets"], counts


def test_a_preemption_signal_waits_for_the_end_of_the_accumulation_window():
    import signal
    from types import SimpleNamespace

    from train.engine.preemption import PreemptionHandler

    saves = []
    checkpoint = SimpleNamespace(last_saved_step=None, save=lambda trainer, module: saves.append(trainer.global_step))
    handler = PreemptionHandler(checkpoint, requeue=False)
    trainer = SimpleNamespace(world_size=1, global_step=4, is_global_zero=True, should_stop=False)
    module = SimpleNamespace(device=torch.device("cpu"), at_step_boundary=False)
    handler.on_train_start(trainer, module)
    try:
        signal.raise_signal(signal.SIGUSR1)
        handler.on_train_batch_end(trainer, module, None, None, 0)  # mid-window: gradients of 1 micro-batch
        assert saves == [] and not trainer.should_stop
        module.at_step_boundary, trainer.global_step = True, 5
        handler.on_train_batch_end(trainer, module, None, None, 1)
    finally:
        handler.on_train_end(trainer, module)
    assert saves == [5] and trainer.should_stop
