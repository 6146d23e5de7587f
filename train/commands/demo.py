"""Inpaint a synthetic image with tiny models, on CPU, with nothing downloaded.

Writes a tiny Stable Diffusion model folder (SD1.5 or SDXL layout, random
weights), a BrushNet branch initialised from its UNet (saved in the reference
layout and loaded back), then inpaints a synthetic picture through the full
pipeline and writes input, mask, result and a side-by-side grid.

  brushtrain demo                       # embedded defaults
  brushtrain demo kind=sdxl steps=10    # key=value overrides
  brushtrain demo -c configs/demo.yaml  # a YAML file (keys as below)

Keys: out_dir, kind (sd15|sdxl), size, steps, seed, prompt, negative_prompt,
guidance_scale, conditioning_scale, scheduler, blend.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np


@dataclass
class DemoConfig:
    out_dir: str = "runs/demo"
    kind: str = "sd15"
    size: int = 128
    steps: int = 20
    seed: int = 0
    prompt: str = "a red ball on a table"
    negative_prompt: str = ""
    guidance_scale: Optional[float] = None  # None: 7.5 for SD1.5, 5.0 for SDXL
    conditioning_scale: float = 1.0
    scheduler: str = "unipc"
    blend: bool = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", action="append", default=[], metavar="YAML",
                        help="config file(s), merged in order over the defaults")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, applied last")


def synthetic_scene(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A gradient background with a disc and a box; the mask (white = paint) covers the disc."""
    import cv2

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    base = rng.uniform(40, 200, size=3).astype(np.float32)
    image = np.stack([base[0] + 50 * xx, base[1] + 50 * yy, base[2] + 25 * (xx + yy)], axis=-1)
    image = np.clip(image, 0, 255).astype(np.uint8)
    centre = (int(size * 0.4), int(size * 0.45))
    radius = max(2, size // 6)
    cv2.circle(image, centre, radius, (220, 30, 30), thickness=-1)
    cv2.rectangle(image, (int(size * 0.65), int(size * 0.6)), (int(size * 0.9), int(size * 0.85)), (30, 60, 200), -1)
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, centre, radius + max(1, size // 32), 255, thickness=-1)
    return image, mask


def _check(cfg) -> None:
    """Every key's range, all problems in one ConfigError (they were tracebacks from the pipeline or OpenCV)."""
    from train.config import ConfigError
    from train.model.pipeline import generation_problems

    problems = []
    if cfg.kind not in ("sd15", "sdxl"):
        problems.append(f"kind must be 'sd15' or 'sdxl', got {cfg.kind!r}")
    if cfg.size < 8:
        problems.append(f"size must be >= 8 (the VAE's factor), got {cfg.size}")
    problems += generation_problems(cfg.steps, cfg.conditioning_scale, cfg.guidance_scale, cfg.scheduler)
    if problems:
        raise ConfigError("; ".join(problems))


def run(args: argparse.Namespace) -> int:
    from train.config import compose

    cfg = compose(DemoConfig, args.config, args.overrides)
    _check(cfg)

    import torch
    from PIL import Image

    from train.model.brushnet import BrushNetModel
    from train.model.components import load_base
    from train.model.pipeline import BrushNetInpaintPipeline, mask_pictures
    from train.model.tiny import write_tiny_base

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base_dir = write_tiny_base(out / f"tiny-{cfg.kind}", kind=cfg.kind, seed=cfg.seed)
    base = load_base(base_dir).freeze()
    branch_dir = out / f"brushnet-{cfg.kind}"
    BrushNetModel.from_unet(base.unet).save_pretrained(branch_dir)
    branch = BrushNetModel.from_pretrained(branch_dir).eval().requires_grad_(False)

    image, mask = synthetic_scene(cfg.size, np.random.default_rng(cfg.seed))
    pipe = BrushNetInpaintPipeline(base, branch, scheduler=cfg.scheduler)
    result = pipe(
        image, mask, cfg.prompt, negative_prompt=cfg.negative_prompt, num_inference_steps=cfg.steps,
        guidance_scale=cfg.guidance_scale, conditioning_scale=cfg.conditioning_scale,
        generator=torch.Generator().manual_seed(cfg.seed), blend=cfg.blend, output_type="np",
    )[0]

    masked, mask_rgb = mask_pictures(image, mask)
    panels = [image, mask_rgb, masked, result]
    Image.fromarray(image).save(out / "input.png")
    Image.fromarray(mask).save(out / "mask.png")
    Image.fromarray(result).save(out / "inpainted.png")
    Image.fromarray(np.concatenate(panels, axis=1)).save(out / "grid.png")

    import cv2

    far = cv2.dilate(mask, np.ones((23, 23), np.uint8)) == 0  # farther than the blur radius from the hole
    kept = int(np.abs(result[far].astype(int) - image[far].astype(int)).max()) if far.any() else 0
    print(f"base model:   {base_dir}  ({cfg.kind}, random tiny weights)")
    print(f"branch:       {branch_dir}  (reference layout, {sum(p.numel() for p in branch.parameters()):,} parameters)")
    print(f"inpainted:    {out / 'inpainted.png'}  ({cfg.steps} {cfg.scheduler} steps, seed {cfg.seed})")
    print(f"grid:         {out / 'grid.png'}  (input | mask | masked input | result)")
    print(f"known pixels beyond the blend border changed by at most {kept} (0 expected with blend on)")
    return 0
