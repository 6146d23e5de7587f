"""Reference checkpoint compatibility: their folders load here, ours have their layout."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import OFFICIAL, stock_output, unet_inputs
from diffusers import UNet2DConditionModel
from reference_unet import assert_matches_reference
from safetensors.torch import load_file, save_file

from train.model.brushnet import BrushNetModel
from train.model.injection import brushnet_unet_forward

LAYOUTS = {"sd15": OFFICIAL, "sdxl": OFFICIAL / "sdxl"}
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(params=sorted(LAYOUTS))
def official(request):
    return LAYOUTS[request.param]


def _keys(folder):
    return {k["name"]: tuple(k["shape"]) for k in json.loads((folder / "brushnet_keys.json").read_text())}


def test_reference_branch_loads_with_no_missing_or_unexpected_keys(official):
    branch, info = BrushNetModel.from_pretrained(official / "brushnet", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert {k: tuple(v.shape) for k, v in branch.state_dict().items()} == _keys(official)
    stored = load_file(official / "brushnet" / WEIGHTS)
    for name, value in branch.state_dict().items():
        assert torch.equal(value, stored[name]), name


def test_from_unet_has_the_reference_names_shapes_and_config_keys(official, tmp_path):
    unet = UNet2DConditionModel.from_pretrained(official / "unet")
    branch = BrushNetModel.from_unet(unet)
    branch.save_pretrained(tmp_path)
    saved = load_file(tmp_path / WEIGHTS)
    assert {k: tuple(v.shape) for k, v in saved.items()} == _keys(official)
    ours = json.loads((tmp_path / "config.json").read_text())
    theirs = json.loads((official / "brushnet" / "config.json").read_text())
    assert ours["_class_name"] == "BrushNetModel"
    public = lambda cfg: {k for k in cfg if not k.startswith("_")}  # noqa: E731
    assert public(ours) == public(theirs)
    # Same UNet -> same architecture values too (block types, channels, embeddings).
    assert {k: ours[k] for k in public(theirs)} == {k: theirs[k] for k in public(theirs)}


def test_save_and_load_round_trip_bit_exactly(official, tmp_path):
    branch = BrushNetModel.from_pretrained(official / "brushnet")
    branch.save_pretrained(tmp_path / "ours")
    again = BrushNetModel.from_pretrained(tmp_path / "ours")
    for (name, a), (name_b, b) in zip(branch.state_dict().items(), again.state_dict().items()):
        assert name == name_b and torch.equal(a, b), name
    # The file we write holds exactly the reference file's tensors.
    theirs, ours = load_file(official / "brushnet" / WEIGHTS), load_file(tmp_path / "ours" / WEIGHTS)
    assert theirs.keys() == ours.keys()
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs)


def test_reference_branch_in_a_stock_unet_matches_the_reference_loop(official):
    unet = UNet2DConditionModel.from_pretrained(official / "unet")
    branch = BrushNetModel.from_pretrained(official / "brushnet")
    inputs = unet_inputs(unet, size=16, seed=11)
    assert_matches_reference(unet, branch, inputs, scales=(0.0, 0.5, 1.0))
    assert torch.equal(brushnet_unet_forward(unet, branch, **inputs, conditioning_scale=0.0), stock_output(unet, inputs))


def test_partial_checkpoints_are_refused(official, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(official / "brushnet", folder)
    tensors = load_file(folder / WEIGHTS)
    tensors.pop("brushnet_mid_block.weight")
    tensors["extra.weight"] = torch.zeros(1)
    save_file(tensors, folder / WEIGHTS)
    with pytest.raises(ValueError, match="brushnet_mid_block.weight"):
        BrushNetModel.from_pretrained(folder)
    branch = BrushNetModel.from_pretrained(folder, strict=False)  # explicit opt-out still loads the rest
    assert torch.equal(branch.conv_in_condition.weight, tensors["conv_in_condition.weight"])


@pytest.mark.parametrize("arch, unet_m, branch_m", [("sd15", 859.5, 618.8), ("sdxl", 2567.5, 373.3)])
def test_full_size_parameter_counts(arch, unet_m, branch_m):
    """Built on the meta device from the real SD configs: sizes as docs/reference.md section 1 states."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs" / "architectures" / arch / "unet"
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root))
        branch = BrushNetModel.from_unet(unet, load_weights_from_unet=False)
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 1) == unet_m
    assert round(sum(p.numel() for p in branch.parameters()) / 1e6, 1) == branch_m
    assert branch.residual_counts == ((12, 1, 15) if arch == "sd15" else (9, 1, 11))
