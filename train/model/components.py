"""The frozen Stable Diffusion parts (UNet, VAE, text encoders, tokenizers, scheduler).

One code path for SD1.5 and SDXL: SDXL is the same bundle with a second
tokenizer/text encoder and a ``text_time`` UNet, and :func:`encode_prompts`
returns the pooled embedding it needs (``None`` for SD1.5).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from common.errors import UserError
from train.schema import DTYPE_NAMES

__all__ = ["DTYPES", "hub_id_like", "ModelLoadError", "BaseModel", "load_base", "load_vae", "encode_prompts", "tokenize", "encode_tokens", "vae_scale_factor", "sdxl_time_ids"]

# The dtype names of every setting that takes one (model.frozen_dtype, `brushtrain sample --dtype`).
DTYPES = {name: getattr(torch, {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[name]) for name in DTYPE_NAMES}


def hub_id_like(spec: str) -> bool:
    """Shaped like a hub id (``org/name``), not like a local path: what a name that is no local file may be."""
    return spec.count("/") == 1 and not spec.startswith((".", "/", "~"))


class ModelLoadError(UserError, OSError):
    """A base model or VAE that cannot be loaded from what the user named (no such folder or hub id, missing parts)."""


def _load_error(src: str, what: str, exc: OSError) -> ModelLoadError:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if Path(src).expanduser().exists():
        return ModelLoadError(f"{what} {src} cannot be loaded: {first}")
    return ModelLoadError(f"{what} {src} is not a local folder and could not be loaded as a hub id: {first}")


@dataclass
class BaseModel:
    """A diffusers-layout Stable Diffusion model, split into its parts."""

    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: object
    scheduler: object
    text_encoder_2: nn.Module | None = None
    tokenizer_2: object | None = None

    @property
    def is_sdxl(self) -> bool:
        return self.unet.config.addition_embed_type == "text_time"

    @property
    def text_pairs(self) -> list[tuple[object, nn.Module]]:
        pairs = [(self.tokenizer, self.text_encoder)]
        if self.text_encoder_2 is not None:
            pairs.append((self.tokenizer_2, self.text_encoder_2))
        return pairs

    def modules(self) -> list[nn.Module]:
        return [m for m in (self.unet, self.vae, self.text_encoder, self.text_encoder_2) if m is not None]

    @property
    def vae_upcast(self) -> bool:
        """SDXL's VAE overflows in fp16: it stays in fp32 then (its config's ``force_upcast``, as diffusers'
        SDXL pipelines do; an fp16-safe VAE given as ``model.vae`` says ``force_upcast: false``). SD1.5's VAE
        runs in fp16 (the reference trains it so)."""
        return self.is_sdxl and bool(getattr(self.vae.config, "force_upcast", False))

    def to(self, device=None, dtype: torch.dtype | None = None) -> "BaseModel":
        for module in self.modules():
            vae_dtype = torch.float32 if module is self.vae and dtype == torch.float16 and self.vae_upcast else dtype
            module.to(device=device, dtype=vae_dtype)
        return self

    def vae_context(self):
        """Where the VAE runs: with autocast off when it was kept in fp32 (an fp16 autocast would undo that)."""
        if self.vae.dtype == torch.float32 and self.vae_upcast:
            return torch.autocast(self.vae.device.type, enabled=False)
        return contextlib.nullcontext()

    def freeze(self) -> "BaseModel":
        """Eval mode and no gradients for every part."""
        for module in self.modules():
            module.eval().requires_grad_(False)
        return self

    def save_pretrained(self, path: str | Path) -> None:
        """Write the diffusers folder layout (with a ``model_index.json``)."""
        path = Path(path)
        index = {"_class_name": "StableDiffusionXLPipeline" if self.is_sdxl else "StableDiffusionPipeline"}
        for f in fields(self):
            part = getattr(self, f.name)
            if part is None:
                continue
            part.save_pretrained(path / f.name)
            index[f.name] = [type(part).__module__.split(".")[0], type(part).__name__]
        (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def load_vae(path_or_id: str | Path, dtype: torch.dtype | None = None, **hub_kwargs):
    """An ``AutoencoderKL`` from a VAE folder (config.json + weights), a model folder with ``vae/``, or a hub id."""
    from diffusers import AutoencoderKL

    src = str(path_or_id)
    kw = dict(hub_kwargs, **({"torch_dtype": dtype} if dtype is not None else {}))
    if (Path(src) / "vae").is_dir():
        kw["subfolder"] = "vae"
    try:
        return AutoencoderKL.from_pretrained(src, **kw)
    except OSError as exc:
        raise _load_error(src, "VAE", exc) from None


def load_base(path_or_id: str | Path, dtype: torch.dtype | None = None, vae: str | Path | None = None,
              **hub_kwargs) -> BaseModel:
    """Load a diffusers-layout SD1.5 or SDXL model from a local folder or a hub id; ``vae`` replaces its VAE
    (e.g. an fp16-safe SDXL VAE)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    src = str(path_or_id)
    local = Path(src)
    if local.exists() and not (local / "unet").is_dir():
        raise FileNotFoundError(f"{src} is not a diffusers model folder: it has no unet/ subfolder")
    kw = dict(hub_kwargs)
    if dtype is not None:
        kw["torch_dtype"] = dtype
    try:
        unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet", **kw)
        sdxl = unet.config.addition_embed_type == "text_time"
        base = BaseModel(
            unet=unet,
            vae=load_vae(vae, dtype) if vae else AutoencoderKL.from_pretrained(src, subfolder="vae", **kw),
            text_encoder=CLIPTextModel.from_pretrained(src, subfolder="text_encoder", **_hf_kw(kw)),
            tokenizer=CLIPTokenizer.from_pretrained(src, subfolder="tokenizer", **hub_kwargs),
            scheduler=DDPMScheduler.from_pretrained(src, subfolder="scheduler", **hub_kwargs),
            text_encoder_2=CLIPTextModelWithProjection.from_pretrained(src, subfolder="text_encoder_2", **_hf_kw(kw))
            if sdxl
            else None,
            tokenizer_2=CLIPTokenizer.from_pretrained(src, subfolder="tokenizer_2", **hub_kwargs) if sdxl else None,
        )
    except OSError as exc:  # a missing part (no text_encoder/, no config.json), an unknown hub id, no network
        if isinstance(exc, UserError):
            raise
        raise _load_error(src, "base model", exc) from None
    return base.to(dtype=dtype) if dtype is not None else base  # (an fp16 SDXL VAE goes back to fp32)


def _hf_kw(kw: dict) -> dict:
    """transformers names the dtype argument ``dtype`` (``torch_dtype`` is deprecated)."""
    out = dict(kw)
    if "torch_dtype" in out:
        out["dtype"] = out.pop("torch_dtype")
    return out


def vae_scale_factor(vae: nn.Module) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def tokenize(base: BaseModel, prompts: Sequence[str]) -> list[torch.Tensor]:
    """Token ids for each tokenizer (padded/truncated to its max length)."""
    return [
        tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        for tok, _ in base.text_pairs
    ]


def encode_tokens(base: BaseModel, token_ids: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(prompt embeddings, pooled embeddings or None) from :func:`tokenize` output.

    SD1.5: the text encoder's last hidden state. SDXL: the penultimate hidden
    states of both encoders concatenated, and the second encoder's projected
    pooled output.
    """
    if not base.is_sdxl:
        enc = base.text_encoder
        return enc(token_ids[0].to(enc.device))[0], None
    hidden, pooled = [], None
    for ids, (_, enc) in zip(token_ids, base.text_pairs):
        out = enc(ids.to(enc.device), output_hidden_states=True)
        if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds first
            pooled = out[0]
        hidden.append(out.hidden_states[-2])
    if pooled is None:
        raise ValueError("SDXL needs a CLIPTextModelWithProjection as text_encoder_2 for pooled embeddings")
    return torch.cat(hidden, dim=-1), pooled


def encode_prompts(base: BaseModel, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    return encode_tokens(base, tokenize(base, prompts))


def sdxl_time_ids(original_size, crop_top_left, target_size) -> torch.Tensor:
    """SDXL micro-conditioning, one row per image: (orig_h, orig_w, crop_top, crop_left, target_h, target_w).

    Each argument is an (h, w)-like pair for all images or an (N, 2) tensor of one pair per image; the
    result is (N, 6) (N = 1 when every argument is a pair), on the device of the tensor arguments (a training
    batch's sizes are on the GPU, the target size is a plain pair)."""
    values = (original_size, crop_top_left, target_size)
    device = next((v.device for v in values if torch.is_tensor(v)), None)
    parts = [torch.as_tensor(v, dtype=torch.long, device=device).reshape(-1, 2) for v in values]
    n = max(p.shape[0] for p in parts)
    return torch.cat([p.expand(n, 2) for p in parts], dim=1)
