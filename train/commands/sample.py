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

__all__ = ["add_arguments", "run", "device_problem", "GENERATION_FLAGS"]

# The generation flags as sample and evaluate name them (train.model.pipeline.generation_problems)
GENERATION_FLAGS = ("--steps", "--scale", "--guidance", "--scheduler")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="diffusers model folder or hub id (SD1.5 or SDXL layout)")
    parser.add_argument("--brushnet", required=True, help="branch folder (reference layout) or hub id")
    parser.add_argument("--image", required=True, help="the image to inpaint")
    parser.add_argument("--mask", required=True, help="mask image, white = paint")
    parser.add_argument("--prompt", required=True, help="the text prompt (BrushData's captions describe the whole image)")
    parser.add_argument("--negative-prompt", default="", help="what to steer away from (default: none)")
    parser.add_argument("--out", required=True, help="where to write the result (PNG or JPEG)")
    parser.add_argument("--grid", help="also write input | mask | masked input | result here")
    parser.add_argument("--seed", type=int, default=0, help="the generator's seed (default %(default)s)")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (default %(default)s)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale (default: 7.5 for SD1.5, 5.0 for SDXL, as the reference)")
    parser.add_argument("--scale", type=float, default=1.0, help="conditioning_scale of the branch (0 = branch off)")
    parser.add_argument("--scheduler", default="unipc", help="unipc, ddim, ddpm, pndm, euler, euler_a, dpmpp or a class name")
    parser.add_argument("--no-blend", action="store_true", help="skip the blurred-mask paste-back")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default=None, help="default: fp16 on CUDA, fp32 on CPU")


def _open_image(flag: str, path: str):
    """The file behind --image / --mask as a loaded PIL image, or UsageError naming the flag and the file."""
    from PIL import Image, UnidentifiedImageError

    from train.config import UsageError

    if not Path(path).is_file():
        raise UsageError(f"{flag} {path} does not exist" if not Path(path).exists() else f"{flag} {path} is not a file")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise UsageError(f"{flag} {path} is not an image PIL can read ({exc})") from None


def device_problem(flag: str, spec: str | None) -> str | None:
    """Why --device ``spec`` cannot be used here (not a torch device name, no such GPU), or None."""
    import torch

    if spec is None:
        return None
    try:
        device = torch.device(spec)
    except RuntimeError:
        return f"{flag} {spec!r} is not a device name (cpu, cuda, cuda:1, ...)"
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"{flag} {spec}: this machine has no CUDA GPU (use cpu)"
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        return f"{flag} {spec}: this machine has {torch.cuda.device_count()} CUDA GPU(s)"
    if device.type not in ("cpu", "cuda", "mps"):
        return f"{flag} {spec}: use cpu or cuda"
    return None


def _check_arguments(args: argparse.Namespace):
    """Every argument, before a model loads: (image, mask)."""
    from PIL import Image

    from train.config import UsageError
    from train.model.brushnet import branch_folder_problem
    from train.model.components import hub_id_like
    from train.model.pipeline import generation_problems

    problems = generation_problems(args.steps, args.scale, args.guidance, args.scheduler, GENERATION_FLAGS)
    for flag, path in (("--out", args.out), ("--grid", args.grid)):
        if path and Path(path).suffix.lower() not in Image.registered_extensions():
            problems.append(f"{flag} {path}: the file name must end in an image type (.png, .jpg, ...)")
        elif path and Path(path).is_dir():
            problems.append(f"{flag} {path} is a folder; give a file name (.png, .jpg, ...)")
    device = device_problem("--device", args.device)
    if device:
        problems.append(device)
    branch = branch_folder_problem(args.brushnet)
    if branch:
        problems.append(f"--brushnet: {branch}")
    if not Path(args.base).expanduser().exists() and not hub_id_like(args.base):
        problems.append(f"--base {args.base} does not exist (and is not a hub id like org/name)")
    if problems:
        raise UsageError("; ".join(problems))
    image, mask = _open_image("--image", args.image).convert("RGB"), _open_image("--mask", args.mask)
    if mask.size != image.size:
        raise UsageError(f"mask {args.mask} is {mask.size[0]}x{mask.size[1]}, image is {image.size[0]}x{image.size[1]}")
    if min(image.size) < 8:
        raise UsageError(f"image {args.image} is {image.size[0]}x{image.size[1]}; both sides must be >= 8 (the VAE's factor)")
    return image, mask


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from train.model.pipeline import BrushNetInpaintPipeline
    from train.setup.runtime import quiet_libraries

    image, mask = _check_arguments(args)
    quiet_libraries()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    from train.model.components import DTYPES

    dtype = DTYPES[args.dtype or ("fp16" if device.startswith("cuda") else "fp32")]
    pipe = BrushNetInpaintPipeline.from_pretrained(args.base, args.brushnet, scheduler=args.scheduler, dtype=dtype,
                                                   device=device)
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
        Path(args.grid).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate([rgb, mask_rgb, masked, np.asarray(result)], axis=1)).save(args.grid)
        print(f"wrote {args.grid} (input | mask | masked input | result)")
    return 0
