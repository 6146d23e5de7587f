"""Which AdamW runs where (no CUDA compiler needed under ZeRO), and the ZeRO stage / optimizer settings."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from train.cli import main
from train.config import ConfigError
from train.engine.optim import build_optimizer, optimizer_choice
from train.engine.strategy import deepspeed_config
from train.schema import DeepSpeedConfig, OptimConfig


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_on_gpus_uses_torch_fused_adamw_unless_asked_for_deepspeeds(stage):
    ds = DeepSpeedConfig(stage=stage)
    assert optimizer_choice(ds, use_deepspeed=True, on_cuda=True) == "torch_fused"
    assert optimizer_choice(DeepSpeedConfig(stage=stage, adam="deepspeed"), use_deepspeed=True, on_cuda=True) == \
        "deepspeed_fused_adam"
    for adam in ("torch", "deepspeed"):  # offloaded optimizer states: DeepSpeed's CPU Adam either way
        offload = DeepSpeedConfig(stage=stage, adam=adam, offload_optimizer=True)
        assert optimizer_choice(offload, use_deepspeed=True, on_cuda=True) == "deepspeed_cpu_adam"


def test_without_deepspeed_or_cuda_it_is_the_same_fused_torch_adamw():
    # CPU runs step through the optimizer a GPU run uses (PyTorch's fused AdamW has CPU kernels too)
    assert optimizer_choice(DeepSpeedConfig(), use_deepspeed=False, on_cuda=True) == "torch_fused"
    assert optimizer_choice(DeepSpeedConfig(), use_deepspeed=False, on_cuda=False) == "torch_fused"
    # DeepSpeed's FusedAdam needs CUDA: on CPU (the tests) the torch one
    assert optimizer_choice(DeepSpeedConfig(adam="deepspeed"), use_deepspeed=True, on_cuda=False) == "torch_fused"
    assert optimizer_choice(None) == "torch_fused"
    with pytest.raises(ValueError, match="deepspeed.adam"):
        optimizer_choice(DeepSpeedConfig(adam="apex"), use_deepspeed=True, on_cuda=True)


def test_the_gpu_zero_optimizer_is_a_fused_torch_adamw_that_steps():
    # torch's fused AdamW also runs on CPU tensors, so the object the GPU path builds can be built and stepped here.
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    frozen = torch.nn.Linear(3, 3).requires_grad_(False)
    params = list(net.parameters()) + list(frozen.parameters())
    opt = build_optimizer(params, OptimConfig(lr=0.1), DeepSpeedConfig(stage=2), use_deepspeed=True, on_cuda=True)
    assert type(opt) is torch.optim.AdamW and opt.defaults["fused"] is True
    assert sum(len(g["params"]) for g in opt.param_groups) == 2  # trainable parameters only
    before = net.weight.detach().clone()
    net(torch.randn(5, 4)).pow(2).mean().backward()
    opt.step()
    assert not torch.equal(before, net.weight)
    cpu = build_optimizer(net.parameters(), OptimConfig(), DeepSpeedConfig(), use_deepspeed=False, on_cuda=False)
    assert cpu.defaults["fused"] is True


def test_zero_stage_1_config_and_bad_settings():
    zero = deepspeed_config(OmegaConf.structured(DeepSpeedConfig(stage=1)), batch_size=2, grad_clip=1.0)
    assert zero["zero_optimization"]["stage"] == 1 and "allgather_bucket_size" in zero["zero_optimization"]
    with pytest.raises(ConfigError, match="1, 2 or 3"):
        deepspeed_config(DeepSpeedConfig(stage=4), batch_size=2, grad_clip=1.0)
    with pytest.raises(ConfigError, match="deepspeed.adam"):
        deepspeed_config(DeepSpeedConfig(adam="apex"), batch_size=2, grad_clip=1.0)


@pytest.mark.parametrize("overrides, message", [
    (["deepspeed.stage=4"], "deepspeed.stage must be 1, 2 or 3"),
    (["deepspeed.adam=apex"], "deepspeed.adam must be one of torch, deepspeed"),
    (["model.compile.branch=true", "deepspeed.stage=3"], "model.compile.branch does not work with deepspeed.stage=3"),
    (["model.compile.unet=true", "model.compile.mode=reduce-overhead"], "CUDA-graph"),
])
def test_bad_speed_settings_are_refused_before_any_work(tmp_path, capsys, overrides, message):
    code = main(["fit", f"output_dir={tmp_path}", "trainer.strategy=deepspeed", "deepspeed.allow_cpu=true", *overrides])
    err = capsys.readouterr().err
    assert code == 2 and "config error" in err and message in err, err
    assert not any(tmp_path.iterdir()), "nothing was written"


def test_state_from_a_non_fused_adamw_loads_into_the_fused_one_and_steps_under_a_grad_scaler():
    # CPU checkpoints written before CPU runs were fused hold fused=None in their param groups
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    old = torch.optim.AdamW(net.parameters(), lr=1e-2)
    net(torch.randn(5, 4)).pow(2).mean().backward()
    old.step()
    opt = build_optimizer(net.parameters(), OptimConfig(lr=1e-2), DeepSpeedConfig(), use_deepspeed=False, on_cuda=False)
    opt.load_state_dict(old.state_dict())
    assert opt.param_groups[0]["fused"] is True and opt.state[net.weight]["step"] == 1
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    before = net.weight.detach().clone()
    opt.zero_grad()
    scaler.scale(net(torch.randn(5, 4)).pow(2).mean()).backward()
    scaler.unscale_(opt)  # as the module does before clipping
    scaler.step(opt)  # without the hook: "Expected grad_scale and found_inf to be None" (non-fused step)
    scaler.update()
    assert not torch.equal(before, net.weight) and opt.state[net.weight]["step"] == 2
