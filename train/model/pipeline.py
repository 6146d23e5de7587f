"""Inpainting with a frozen Stable Diffusion model and a BrushNet branch.

``image + user mask (white = paint) + prompt -> image``, for SD1.5 and SDXL,
with any diffusers scheduler (UniPC by default), classifier-free guidance, the
branch's ``conditioning_scale``, a seeded generator, a batch of prompts and the
reference's blurred-mask paste-back (docs/reference.md section 6).

User masks follow the usual inpainting convention (white = region to paint);
the branch wants the opposite (1 = known pixel). :func:`hole_from_user_mask`,
:func:`keep_from_hole` and :func:`user_mask_from_keep` are the only places this
project converts between the two (training data is made as keep masks
directly, see :class:`data.masks.MaskPolicy`).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Sequence, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from train.model.brushnet import BrushNetModel, check_fits, make_conditioning, vae_encode
from train.model.components import (
    BaseModel,
    encode_prompts,
    load_base,
    sdxl_time_ids,
    vae_scale_factor,
)
from train.model.injection import brushnet_unet_forward

__all__ = [
    "SCHEDULERS",
    "default_guidance",
    "BrushNetInpaintPipeline",
    "make_scheduler",
    "scheduler_class",
    "hole_from_user_mask",
    "keep_from_hole",
    "user_mask_from_keep",
    "mask_pictures",
    "blend_with_blurred_mask",
]

ImageLike = Union[Image.Image, np.ndarray]

# Friendly names for the schedulers users ask for most; any SchedulerMixin instance works too.
SCHEDULERS = {
    "unipc": "UniPCMultistepScheduler",
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpmpp": "DPMSolverMultistepScheduler",
}


def default_guidance(base: BaseModel) -> float:
    """The reference pipelines' classifier-free guidance default: 7.5 for SD1.5, 5.0 for SDXL."""
    return 5.0 if base.is_sdxl else 7.5


def scheduler_class(name: str):
    """The diffusers scheduler class a friendly name (see ``SCHEDULERS``) or a class name stands for; ValueError if none."""
    import diffusers

    cls_name = SCHEDULERS.get(name.lower(), name)
    cls = getattr(diffusers, cls_name, None)
    if cls is None or not cls_name.endswith("Scheduler") or not hasattr(cls, "from_config"):
        raise ValueError(f"unknown scheduler {name!r}; choose from {sorted(SCHEDULERS)} or a diffusers scheduler class")
    return cls


def generation_problems(steps: int, scale: float, guidance: float | None, scheduler: str,
                        names: tuple[str, str, str, str] = ("steps", "conditioning_scale", "guidance_scale",
                                                            "scheduler")) -> list[str]:
    """What is wrong with these generation settings (none: an empty list), each named as the caller's user knows
    it (``names``: steps, conditioning scale, guidance, scheduler), before any model loads."""
    problems = []
    if steps < 1:
        problems.append(f"{names[0]} must be >= 1, got {steps}")
    if scale < 0:
        problems.append(f"{names[1]} must be >= 0 (0 = branch off), got {scale}")
    if guidance is not None and guidance < 0:
        problems.append(f"{names[2]} must be >= 0 (unset: the pipeline's default), got {guidance}")
    try:
        scheduler_class(scheduler)
    except ValueError as exc:
        problems.append(f"{names[3]}: {exc}")
    return problems


def make_scheduler(name_or_scheduler, base_config):
    """A scheduler from a friendly name (see ``SCHEDULERS``) or a diffusers class name, or as given."""
    if not isinstance(name_or_scheduler, str):
        return name_or_scheduler
    return scheduler_class(name_or_scheduler).from_config(base_config)


# ----------------------------------------------------------------------- masks


def hole_from_user_mask(mask: ImageLike) -> np.ndarray:
    """User mask (white / non-zero = paint) -> HxW float32 hole mask, 1 = paint.

    Accepts a PIL image (any mode), an HxW or HxWxC array of bools, uint8 (0-255)
    or floats in [0, 1]. Colour masks are averaged over channels; the threshold is
    half of the full value.
    """
    if isinstance(mask, Image.Image):
        arr = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    else:
        arr = np.asarray(mask)
        if arr.ndim == 3:
            arr = arr.mean(axis=2)
        if arr.ndim != 2:
            raise ValueError(f"mask must be HxW or HxWxC, got shape {np.asarray(mask).shape}")
        arr = arr.astype(np.float32) / (255.0 if np.asarray(mask).dtype == np.uint8 else 1.0)
    return (arr > 0.5).astype(np.float32)


def keep_from_hole(hole: np.ndarray | torch.Tensor):
    """Hole mask (1 = paint) -> the branch's conditioning mask (1 = known pixel)."""
    return 1 - hole


def user_mask_from_keep(keep: np.ndarray) -> np.ndarray:
    """The branch's conditioning mask (1 = known) -> a user mask image, HxW uint8, 255 = paint."""
    return ((1 - np.asarray(keep)) * 255).astype(np.uint8)


def mask_pictures(image: np.ndarray, user_mask: ImageLike) -> tuple[np.ndarray, np.ndarray]:
    """For grids: the image with the paint region blacked out, and the mask as RGB (white = paint)."""
    hole = hole_from_user_mask(user_mask) > 0
    masked = np.array(image, copy=True)
    masked[hole] = 0
    return masked, np.repeat((hole * 255).astype(np.uint8)[..., None], 3, axis=2)


def blend_with_blurred_mask(original: np.ndarray, generated: np.ndarray, hole: np.ndarray, kernel: int = 21) -> np.ndarray:
    """Paste the generated image into the original through a blurred hole mask.

    ``m = blur(hole)``, ``m = 1 - (1 - hole) * (1 - m)``,
    ``out = original * (1 - m) + generated * m``: pixels farther than
    ``kernel // 2`` from the hole are the original's, exactly.
    """
    blurred = cv2.GaussianBlur(hole.astype(np.float32), (kernel, kernel), 0)
    m = 1.0 - (1.0 - hole) * (1.0 - blurred)
    m = m[..., None]
    out = original.astype(np.float32) * (1.0 - m) + generated.astype(np.float32) * m
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _rgb_array(image: ImageLike) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"image must be a PIL image or an HxWx3 uint8 array, got {arr.dtype} {arr.shape}")
    return arr


def _as_list(value, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) not in (1, n):
            raise ValueError(f"{name}: got {len(value)} items for a batch of {n}")
        return list(value) * (n // len(value))
    return [value] * n


# -------------------------------------------------------------------- pipeline


class BrushNetInpaintPipeline:
    """Sampler over a :class:`~train.model.components.BaseModel` and a branch."""

    def __init__(self, base: BaseModel, brushnet: BrushNetModel, scheduler="unipc"):
        check_fits(brushnet.config, base.unet.config)  # an SDXL branch on an SD1.5 base, ...: BranchError
        self.base = base
        self.brushnet = brushnet
        self.scheduler = make_scheduler(scheduler, base.scheduler.config)
        self.vae_scale_factor = vae_scale_factor(base.vae)

    @classmethod
    def from_pretrained(
        cls,
        base: str | Path,
        brushnet: str | Path,
        scheduler="unipc",
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> "BrushNetInpaintPipeline":
        base_model = load_base(base, dtype=dtype).freeze()
        branch = BrushNetModel.from_pretrained(brushnet, torch_dtype=dtype).eval().requires_grad_(False)
        check_fits(branch.config, base_model.unet.config, branch=f"branch {brushnet}", base=f"base {base}")
        return cls(base_model, branch, scheduler).to(device)

    def to(self, device=None, dtype=None) -> "BrushNetInpaintPipeline":
        self.base.to(device, dtype)
        self.brushnet.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return self.base.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.base.unet.dtype

    # ---------------------------------------------------------------- helpers

    def _prompt_embeddings(self, prompts, negatives, cfg: bool):
        embeds, pooled = encode_prompts(self.base, prompts)
        if not cfg:
            return embeds, pooled
        if self.base.is_sdxl and all(n == "" for n in negatives):
            # SDXL's convention: an empty negative prompt is a zero embedding.
            neg, neg_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
        else:
            neg, neg_pooled = encode_prompts(self.base, negatives)
        pooled = None if pooled is None else torch.cat([neg_pooled, pooled])
        return torch.cat([neg, embeds]), pooled

    def _pixels(self, arrays: list[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
        """uint8 HxWx3 arrays -> (B, 3, h, w) floats in [0, 1] at the working size."""
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
        if batch.shape[-2:] != size:
            batch = F.interpolate(batch, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
        return batch.to(self.device)

    def _step_kwargs(self, generator, eta):
        params = inspect.signature(self.scheduler.step).parameters
        kwargs = {}
        if "generator" in params:
            kwargs["generator"] = generator
        if "eta" in params:
            kwargs["eta"] = eta
        return kwargs

    # ------------------------------------------------------------------ call

    @torch.no_grad()
    def __call__(
        self,
        image: ImageLike | Sequence[ImageLike],
        mask: ImageLike | Sequence[ImageLike],
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] = "",
        num_inference_steps: int = 50,
        guidance_scale: float | None = None,
        conditioning_scale: float = 1.0,
        generator: torch.Generator | None = None,
        blend: bool = True,
        blur_kernel: int = 21,
        eta: float = 0.0,
        output_type: str = "pil",
    ):
        """Inpaint; returns a list of PIL images or, with ``output_type="np"``, (B, H, W, 3) uint8.

        ``guidance_scale`` None: the reference pipelines' default (7.5 for SD1.5, 5.0 for SDXL).

        The images are worked on at the largest size below theirs that the VAE
        divides (multiples of 8 for SD), and the result is resized back to the
        input size before the paste-back. All images in a batch share one size.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        n = len(prompts)
        images = [_rgb_array(im) for im in _as_list(image, n, "image")]
        holes = [hole_from_user_mask(m) for m in _as_list(mask, n, "mask")]
        negatives = _as_list(negative_prompt, n, "negative_prompt")
        height, width = images[0].shape[:2]
        for i, (im, hole) in enumerate(zip(images, holes)):
            if im.shape[:2] != (height, width) or hole.shape != (height, width):
                raise ValueError(
                    f"item {i}: image {im.shape[:2]} and mask {hole.shape} must match the batch size {(height, width)}"
                )
        f = self.vae_scale_factor
        work = (height // f * f, width // f * f)
        if min(work) == 0:
            raise ValueError(f"image {height}x{width} is smaller than the VAE's factor {f}")

        if guidance_scale is None:
            guidance_scale = default_guidance(self.base)
        cfg = guidance_scale > 1.0
        embeds, pooled = self._prompt_embeddings(prompts, negatives, cfg)
        dtype, device = self.dtype, self.device

        # Conditioning: masked image (hole pixels black) through the VAE, plus the keep mask.
        pixels = self._pixels(images, work)
        hole = torch.from_numpy(np.stack(holes))[:, None].to(device)
        hole = F.interpolate(hole, size=work, mode="nearest") if hole.shape[-2:] != work else hole
        keep = keep_from_hole(hole)
        masked = (pixels * keep) * 2.0 - 1.0
        with self.base.vae_context():
            cond = make_conditioning(vae_encode(self.base.vae, masked, generator), keep).to(dtype)

        added = None
        if self.base.is_sdxl:
            time_ids = sdxl_time_ids(work, (0, 0), work).expand(n, 6).to(device, dtype=dtype)
            added = {"text_embeds": pooled.to(dtype), "time_ids": torch.cat([time_ids] * 2) if cfg else time_ids}

        from diffusers.utils.torch_utils import randn_tensor

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latent_shape = (n, self.base.unet.config.in_channels, work[0] // f, work[1] // f)
        latents = randn_tensor(latent_shape, generator=generator, device=device, dtype=dtype)
        latents = latents * self.scheduler.init_noise_sigma
        cond_in = torch.cat([cond] * 2) if cfg else cond
        step_kwargs = self._step_kwargs(generator, eta)
        for t in self.scheduler.timesteps:
            model_in = torch.cat([latents] * 2) if cfg else latents
            model_in = self.scheduler.scale_model_input(model_in, t)
            noise = brushnet_unet_forward(
                self.base.unet, self.brushnet, model_in, t, embeds.to(dtype), cond_in,
                conditioning_scale=conditioning_scale, added_cond_kwargs=added,
            )
            if cfg:
                uncond, text = noise.chunk(2)
                noise = uncond + guidance_scale * (text - uncond)
            latents = self.scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]

        vae = self.base.vae
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        with self.base.vae_context():
            decoded = vae.decode((latents / vae.config.scaling_factor + shift).to(vae.dtype), return_dict=False)[0]
        decoded = ((decoded.float() + 1) / 2).clamp(0, 1)
        if decoded.shape[-2:] != (height, width):
            decoded = F.interpolate(decoded, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)
        generated = (decoded.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)

        if blend:
            generated = np.stack([blend_with_blurred_mask(o, g, h, blur_kernel) for o, g, h in zip(images, generated, holes)])
        if output_type == "np":
            return generated
        if output_type != "pil":
            raise ValueError(f"output_type must be 'pil' or 'np', got {output_type!r}")
        return [Image.fromarray(g) for g in generated]
