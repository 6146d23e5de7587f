"""The inpainting pipeline: mask conventions, paste-back, determinism, schedulers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from conftest import randomize_zero_convs
from PIL import Image

from train.model.brushnet import BrushNetModel
from train.model.pipeline import (
    SCHEDULERS,
    BrushNetInpaintPipeline,
    blend_with_blurred_mask,
    hole_from_user_mask,
    keep_from_hole,
)


def _scene(h=72, w=88, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 : h // 2, w // 4 : w // 2] = 255
    return image, mask


@pytest.fixture
def pipe(tiny_base):
    branch = BrushNetModel.from_unet(tiny_base.unet)
    randomize_zero_convs(branch, scale=0.3)
    return BrushNetInpaintPipeline(tiny_base, branch)


def _run(pipe, image, mask, seed=0, **kw):
    kw.setdefault("num_inference_steps", 3)
    return pipe(image, mask, "a cat", generator=torch.Generator().manual_seed(seed), output_type="np", **kw)


def test_known_pixels_beyond_the_blurred_border_are_kept(pipe):
    image, mask = _scene()
    out = _run(pipe, image, mask)[0]
    assert out.shape == image.shape and out.dtype == np.uint8
    far = cv2.dilate(mask, np.ones((21, 21), np.uint8)) == 0  # more than 10 px (the 21x21 blur radius) away
    assert far.sum() > 1000
    assert np.array_equal(out[far], image[far])
    hole = mask > 0
    assert not np.array_equal(out[hole], image[hole]), "the hole must be painted"


def test_without_blending_the_whole_image_is_generated(pipe):
    image, mask = _scene()
    out = _run(pipe, image, mask, blend=False)[0]
    far = cv2.dilate(mask, np.ones((21, 21), np.uint8)) == 0
    assert not np.array_equal(out[far], image[far])


def test_fixed_seed_is_deterministic_and_seeds_differ(pipe):
    image, mask = _scene()
    a, b = _run(pipe, image, mask, seed=7), _run(pipe, image, mask, seed=7)
    c = _run(pipe, image, mask, seed=8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_batch_of_prompts_and_pil_output(pipe):
    image, mask = _scene()
    out = pipe(Image.fromarray(image), Image.fromarray(mask), ["a cat", "a dog", "a tree"],
               negative_prompt="blurry", num_inference_steps=2, guidance_scale=3.0,
               generator=torch.Generator().manual_seed(0))
    assert len(out) == 3 and all(isinstance(im, Image.Image) and im.size == (88, 72) for im in out)
    assert not np.array_equal(np.asarray(out[0]), np.asarray(out[1])), "different prompts, different images"


@pytest.mark.parametrize("scheduler", ["ddim", "DDIMScheduler", "euler", "dpmpp"])
def test_other_schedulers(tiny_sd15, scheduler):
    pipe = BrushNetInpaintPipeline(tiny_sd15, BrushNetModel.from_unet(tiny_sd15.unet), scheduler=scheduler)
    image, mask = _scene(64, 64)
    out = _run(pipe, image, mask)
    assert out.shape == (1, 64, 64, 3)
    assert type(pipe.scheduler).__name__ == SCHEDULERS.get(scheduler, scheduler)


def test_unknown_scheduler_is_refused(tiny_sd15):
    with pytest.raises(ValueError, match="unknown scheduler 'nope'"):
        BrushNetInpaintPipeline(tiny_sd15, BrushNetModel.from_unet(tiny_sd15.unet), scheduler="nope")


def test_branch_sees_the_keep_mask_and_the_scale(pipe, monkeypatch):
    """White user pixels become 0 (hole) in the branch's mask channel; the scale reaches it."""
    seen = []
    forward = pipe.brushnet.forward

    def spy(*args, **kwargs):
        seen.append((args[3].clone(), kwargs["conditioning_scale"]))
        return forward(*args, **kwargs)

    monkeypatch.setattr(pipe.brushnet, "forward", spy)
    image = np.full((64, 64, 3), 200, np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[:32, :32] = 255  # paint the top-left quadrant
    _run(pipe, image, mask, num_inference_steps=1, conditioning_scale=0.4)
    cond, scale = seen[0]
    assert scale == 0.4
    assert cond.shape[1] == 5
    keep = cond[:, 4]
    h, w = keep.shape[-2:]
    assert torch.all(keep[:, : h // 2, : w // 2] == 0) and torch.all(keep[:, h // 2 :, :] == 1)
    assert cond.shape[0] == 2, "classifier-free guidance doubles the branch batch"


def test_user_mask_conventions():
    assert hole_from_user_mask(np.array([[0, 255]], np.uint8)).tolist() == [[0.0, 1.0]]
    assert hole_from_user_mask(np.array([[False, True]])).tolist() == [[0.0, 1.0]]
    assert hole_from_user_mask(np.array([[0.2, 0.9]], np.float32)).tolist() == [[0.0, 1.0]]
    rgb = np.zeros((1, 2, 3), np.uint8)
    rgb[0, 1] = 255
    assert hole_from_user_mask(Image.fromarray(rgb)).tolist() == [[0.0, 1.0]]
    assert keep_from_hole(np.array([0.0, 1.0])).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="HxW"):
        hole_from_user_mask(np.zeros((1, 2, 3, 4)))


def test_blend_formula():
    original = np.full((41, 41, 3), 10, np.uint8)
    generated = np.full((41, 41, 3), 250, np.uint8)
    hole = np.zeros((41, 41), np.float32)
    hole[20, 20] = 1
    out = blend_with_blurred_mask(original, generated, hole)
    assert out[20, 20].tolist() == [250] * 3  # inside the hole: generated
    assert out[0, 0].tolist() == [10] * 3  # far away: original
    assert 10 < out[20, 24, 0] < 250  # on the blurred border: a mix


def test_a_branch_for_another_layout_or_no_branch_is_refused_by_name(tiny_sd15, tiny_sdxl, tmp_path):
    """An SDXL branch on an SD1.5 base failed inside the first denoising step (a ValueError about added_cond_kwargs),
    a UNet folder given as the branch with 'unsupported BrushNet config'; both are user mistakes (UserError)."""
    from common.errors import UserError
    from conftest import OFFICIAL

    from train.model.brushnet import BranchError
    from train.model.components import ModelLoadError, load_base

    with pytest.raises(BranchError, match="made for the SDXL layout, the base's UNet has the SD1.5 layout"):
        BrushNetInpaintPipeline(tiny_sd15, BrushNetModel.from_unet(tiny_sdxl.unet))
    with pytest.raises(BranchError, match="made for the SD1.5 layout, the base's UNet has the SDXL layout"):
        BrushNetInpaintPipeline(tiny_sdxl, BrushNetModel.from_unet(tiny_sd15.unet))
    with pytest.raises(BranchError, match="unet holds a UNet2DConditionModel, not a BrushNet branch"):
        BrushNetModel.from_pretrained(OFFICIAL / "unet")
    with pytest.raises(BranchError, match="is not a branch folder: it has no config.json"):
        BrushNetModel.from_pretrained(tmp_path)
    with pytest.raises(BranchError, match="does not exist"):
        BrushNetModel.from_pretrained(tmp_path / "missing")
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelLoadError, match=f"base model {tmp_path} cannot be loaded"):
        load_base(tmp_path)
    assert issubclass(BranchError, UserError) and issubclass(ModelLoadError, UserError)
