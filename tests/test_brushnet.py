"""The branch: layout, initialisation from a UNet, injection positions, gradients."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_zero_convs, stock_output, unet_inputs
from reference_unet import assert_matches_reference, reference_brushnet_unet

from train.model.brushnet import BrushNetModel, residual_counts
from train.model.injection import (
    brushnet_unet_forward,
    inject_residuals,
    injection_points,
)

EXPECTED_COUNTS = {"sd15": (12, 1, 15), "sdxl": (9, 1, 11)}


def _kind(base) -> str:
    return "sdxl" if base.is_sdxl else "sd15"


def _hook_count(module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


# ------------------------------------------------------------------ layout


def test_residual_counts_follow_the_config(tiny_base):
    unet = tiny_base.unet
    branch = BrushNetModel.from_unet(unet)
    expected = EXPECTED_COUNTS[_kind(tiny_base)]
    assert residual_counts(unet.config) == expected
    assert branch.residual_counts == expected
    down, mid, up = branch(**unet_inputs(unet), return_dict=False)
    assert (len(down), 1, len(up)) == expected
    points = injection_points(unet)
    assert (len(points[0]), 1, len(points[2])) == expected


def test_residual_counts_for_an_unusual_layout():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=[8, 16], layers_per_block=[1, 3], norm_num_groups=4,
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
        cross_attention_dim=16, attention_head_dim=2,
    )
    # down: conv_in + 1 + 3 resnets + 1 downsampler; up: (3+1) + (1+1) resnets + 1 upsampler
    assert residual_counts(unet.config) == (6, 1, 7)
    branch = BrushNetModel.from_unet(unet)
    randomize_zero_convs(branch)
    inputs = unet_inputs(unet)
    out = branch(**inputs)
    assert (len(out.down_block_res_samples), len(out.up_block_res_samples)) == (6, 7)
    assert_matches_reference(unet, branch, inputs, scales=(1.0,), atol=1e-6)


def test_from_unet_copies_shared_weights(tiny_base):
    unet = tiny_base.unet
    branch = BrushNetModel.from_unet(unet)
    for name in ["time_embedding", "mid_block.resnets", "down_blocks", "up_blocks"] + (["add_embedding"] if tiny_base.is_sdxl else []):
        ours = dict(branch.get_submodule(name).named_parameters())
        theirs = dict(unet.get_submodule(name).named_parameters())
        assert ours, name
        for key, value in ours.items():
            assert torch.equal(value, theirs[key]), f"{name}.{key} not copied"

    w = branch.conv_in_condition.weight
    assert w.shape[1] == 9
    assert torch.equal(w[:, :4], unet.conv_in.weight)
    assert torch.equal(w[:, 4:8], unet.conv_in.weight)
    assert torch.count_nonzero(w[:, 8]) == 0, "mask channel must start at zero"
    assert torch.equal(branch.conv_in_condition.bias, unet.conv_in.bias)
    assert branch.conv_in_condition.bias.data_ptr() != unet.conv_in.bias.data_ptr(), "bias must be a copy, not tied"
    for name, p in branch.named_parameters():
        if name.startswith("brushnet_"):
            assert torch.count_nonzero(p) == 0, f"zero conv {name} is not zero"


def test_unsupported_branch_config_is_rejected():
    with pytest.raises(ValueError, match="mid_block_type"):
        BrushNetModel(block_out_channels=(8, 16), down_block_types=("DownBlock2D",) * 2,
                      up_block_types=("UpBlock2D",) * 2, norm_num_groups=4, mid_block_type="UNetMidBlock2DCrossAttn")
    with pytest.raises(ValueError, match="down_block_types"):
        BrushNetModel(block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D",) * 2, norm_num_groups=4)


# ---------------------------------------------------------------- injection


def test_zero_convs_at_zero_give_the_stock_unet_exactly(tiny_base):
    unet = tiny_base.unet
    branch = BrushNetModel.from_unet(unet)
    inputs = unet_inputs(unet)
    assert torch.equal(brushnet_unet_forward(unet, branch, **inputs), stock_output(unet, inputs))


def test_conditioning_scale_zero_gives_the_stock_unet(tiny_base):
    unet = tiny_base.unet
    branch = BrushNetModel.from_unet(unet)
    randomize_zero_convs(branch)
    inputs = unet_inputs(unet)
    stock = stock_output(unet, inputs)
    assert torch.equal(brushnet_unet_forward(unet, branch, **inputs, conditioning_scale=0.0), stock)
    assert not torch.allclose(brushnet_unet_forward(unet, branch, **inputs, conditioning_scale=1.0), stock)


def test_each_residual_enters_where_the_reference_adds_it(tiny_base):
    """One non-zero residual at a time: hooks == explicit reference loop, != stock."""
    unet = tiny_base.unet
    inputs = unet_inputs(unet)
    stock = stock_output(unet, inputs)
    branch = BrushNetModel.from_unet(unet)
    randomize_zero_convs(branch)
    out = branch(**inputs)
    residuals = list(out.down_block_res_samples) + [out.mid_block_res_sample] + list(out.up_block_res_samples)
    n_down = len(out.down_block_res_samples)
    for k in range(len(residuals)):
        only_k = [r if i == k else torch.zeros_like(r) for i, r in enumerate(residuals)]
        down, mid, up = only_k[:n_down], only_k[n_down], only_k[n_down + 1 :]
        with inject_residuals(unet, down, mid, up):
            got = stock_output(unet, inputs)
        ref = reference_brushnet_unet(unet, inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"],
                                      down, mid, up, inputs.get("added_cond_kwargs"))
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-6, msg=f"residual {k}")
        assert not torch.allclose(got, stock), f"residual {k} had no effect"


def test_all_residuals_match_the_reference_loop_at_several_scales(tiny_base):
    unet = tiny_base.unet
    branch = BrushNetModel.from_unet(unet)
    randomize_zero_convs(branch, seed=3, scale=0.5)
    assert_matches_reference(unet, branch, unet_inputs(unet, seed=5), scales=(0.3, 1.0, 2.0))


def test_first_skip_connection_stays_uninjected(tiny_sd15):
    unet = tiny_sd15.unet
    inputs = unet_inputs(unet)
    c0 = unet.config.block_out_channels[0]
    captured = []
    last = unet.up_blocks[-1].resnets[-1]  # consumes cat([hidden, skip 0])
    handle = last.register_forward_pre_hook(lambda m, args: captured.append(args[0].detach().clone()))
    try:
        stock_output(unet, inputs)
        branch = BrushNetModel.from_unet(unet)
        out = branch(**inputs)
        zeros = [torch.zeros_like(r) for r in out.up_block_res_samples]
        down = [torch.ones_like(out.down_block_res_samples[0])] + [torch.zeros_like(r) for r in out.down_block_res_samples[1:]]
        with inject_residuals(unet, down, torch.zeros_like(out.mid_block_res_sample), zeros):
            stock_output(unet, inputs)
    finally:
        handle.remove()
    stock_in, injected_in = captured
    assert torch.equal(injected_in[:, -c0:], stock_in[:, -c0:]), "skip 0 must be the un-injected conv_in output"
    assert not torch.allclose(injected_in[:, :-c0], stock_in[:, :-c0]), "down residual 0 must reach the down path"


def test_hooks_are_removed_after_forward_and_after_errors(tiny_sd15):
    unet = tiny_sd15.unet
    before = _hook_count(unet)
    branch = BrushNetModel.from_unet(unet)
    randomize_zero_convs(branch)
    inputs = unet_inputs(unet)
    brushnet_unet_forward(unet, branch, **inputs)
    assert _hook_count(unet) == before
    assert torch.equal(unet(inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"]).sample,
                       stock_output(unet, inputs))

    out = branch(**inputs)
    half = [r[:1] for r in out.down_block_res_samples]  # batch 1 residuals for a batch 2 UNet call
    with pytest.raises(ValueError, match="shape"):
        with inject_residuals(unet, half, out.mid_block_res_sample, out.up_block_res_samples):
            stock_output(unet, inputs)
    assert _hook_count(unet) == before


def test_branch_from_another_layout_is_refused(tiny_sd15, tiny_sdxl):
    xl_branch = BrushNetModel.from_unet(tiny_sdxl.unet)
    out = xl_branch(**unet_inputs(tiny_sdxl.unet))
    with pytest.raises(ValueError, match="9/1/11 .* 12/1/15"):
        with inject_residuals(tiny_sd15.unet, out.down_block_res_samples, out.mid_block_res_sample, out.up_block_res_samples):
            pass


# ---------------------------------------------------------------- gradients


def _grads(unet, branch, inputs):
    branch.zero_grad(set_to_none=True)
    target = torch.randn(inputs["sample"].shape, generator=torch.Generator().manual_seed(1))
    loss = torch.nn.functional.mse_loss(brushnet_unet_forward(unet, branch, **inputs), target)
    loss.backward()
    return {n: p.grad.clone() for n, p in branch.named_parameters() if p.grad is not None}


def test_gradients_reach_the_branch_only(tiny_base):
    unet = tiny_base.unet
    unet.requires_grad_(False)
    branch = BrushNetModel.from_unet(unet).train()
    grads = _grads(unet, branch, unet_inputs(unet))
    assert all(p.grad is None for p in unet.parameters())
    assert set(grads) == {n for n, _ in branch.named_parameters()}, "every branch parameter takes part"
    zero_conv_grads = [g for n, g in grads.items() if n.startswith("brushnet_") and n.endswith("weight")]
    assert all(torch.count_nonzero(g) > 0 for g in zero_conv_grads), "zero convs must learn from step one"


def test_gradient_checkpointing_gives_the_same_gradients(tiny_base):
    unet = tiny_base.unet
    unet.requires_grad_(False)
    branch = BrushNetModel.from_unet(unet).train()
    randomize_zero_convs(branch)
    inputs = unet_inputs(unet)
    plain = _grads(unet, branch, inputs)
    unet.enable_gradient_checkpointing()
    branch.enable_gradient_checkpointing()
    assert branch.up_blocks[0].gradient_checkpointing and branch.down_blocks[0].gradient_checkpointing
    checkpointed = _grads(unet, branch, inputs)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)
    assert _hook_count(unet) == 0


def test_bf16_autocast_forward_and_backward(tiny_base):
    unet = tiny_base.unet
    unet.requires_grad_(False)
    branch = BrushNetModel.from_unet(unet).train()
    randomize_zero_convs(branch)
    inputs = unet_inputs(unet)
    reference = brushnet_unet_forward(unet, branch, **inputs).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = brushnet_unet_forward(unet, branch, **inputs)
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), reference, rtol=0.1, atol=0.1)
    out.float().pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in branch.parameters())
    assert _hook_count(unet) == 0
