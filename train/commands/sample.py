"""Inpaint an image from the command line with a base model and a branch (ours or a reference release).

  brushtrain sample --base runs/tiny_cpu/base-tiny-sd15 --brushnet runs/tiny_cpu/brushnet \\
      --image photo.jpg --mask mask.png --prompt "a red ball" --out result.png --grid grid.png
  brushtrain sample --base stable-diffusion-v1-5/stable-diffusion-v1-5 --brushnet brushnet_segmentation_mask \\
      --image in.jpg --mask m.png --prompt "..." --steps 50 --scale 1.0 --device cuda --dtype fp16

The mask is white where the image is to be painted. The result has the input's
size. With --grid, also writes input | mask | masked input | result.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from train.schema import DTYPE_NAMES

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="diffusers model folder or hub id (SD1.5 or SDXL layout)")
    parser.add_argument("--brushnet", required=True, help="branch folder (reference layout) or hub id")
    parser.add_argument("--image", required=True, help="the image to inpaint")
    parser.add_argument("--mask", required=True, help="mask image, white = paint")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--out", required=True, help="where to write the result (PNG or JPEG)")
    parser.add_argument("--grid", help="also write input | mask | masked input | result here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale (default: 7.5 for SD1.5, 5.0 for SDXL, as the reference)")
    parser.add_argument("--scale", type=float, default=1.0, help="conditioning_scale of the branch (0 = branch off)")
    parser.add_argument("--scheduler", default="unipc", help="unipc, ddim, ddpm, pndm, euler, euler_a, dpmpp or a class name")
    parser.add_argument("--no-blend", action="store_true", help="skip the blurred-mask paste-back")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default=None, help="default: fp16 on CUDA, fp32 on CPU")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from train.config import UsageError
    from train.model.pipeline import BrushNetInpaintPipeline

    for name in ("image", "mask"):
        if not Path(getattr(args, name)).is_file():
            raise FileNotFoundError(f"--{name} {getattr(args, name)} does not exist")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    from train.model.components import DTYPES

    dtype = DTYPES[args.dtype or ("fp16" if device.startswith("cuda") else "fp32")]
    pipe = BrushNetInpaintPipeline.from_pretrained(args.base, args.brushnet, scheduler=args.scheduler, dtype=dtype,
                                                   device=device)
    image = Image.open(args.image).convert("RGB")
    mask = Image.open(args.mask)
    if mask.size != image.size:
        raise UsageError(f"mask {args.mask} is {mask.size[0]}x{mask.size[1]}, image is {image.size[0]}x{image.size[1]}")
    result = pipe(image, mask, args.prompt, negative_prompt=args.negative_prompt, num_inference_steps=args.steps,
                  guidance_scale=args.guidance, conditioning_scale=args.scale, blend=not args.no_blend,
                  generator=torch.Generator().manual_seed(args.seed))[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result.save(args.out)
    print(f"wrote {args.out} ({result.size[0]}x{result.size[1]}, {args.steps} {args.scheduler} steps, seed {args.seed})")
    if args.grid:
        from train.model.pipeline import mask_pictures

        rgb = np.asarray(image)
        masked, mask_rgb = mask_pictures(rgb, mask)
        Image.fromarray(np.concatenate([rgb, mask_rgb, masked, np.asarray(result)], axis=1)).save(args.grid)
        print(f"wrote {args.grid} (input | mask | masked input | result)")
    return 0
