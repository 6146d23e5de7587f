"""Tiny SD1.5-like and SDXL-like models built from config, for tests and the CPU demo.

Same block layouts as the real models (SD1.5: 4 levels, cross-attention in the
first three down blocks, 12/1/15 residuals; SDXL: 3 levels, ``text_time``
embedding, two text encoders, 9/1/11 residuals) with a few channels each, so
everything runs on a CPU in seconds and nothing is downloaded. The tokenizer is
a CLIP BPE tokenizer over a small character vocabulary written here.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

from configs import ARCHITECTURES
from train.model.components import BaseModel

__all__ = ["is_generated", "generated_folder", "TINY_CONFIGS", "GENERATED", "tiny_tokenizer", "build_tiny_base", "build_random_base", "write_tiny_base",
           "write_generated_base", "random_unet_inputs"]


_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="epsilon", clip_sample=False, steps_offset=1,
)

_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4,
    block_out_channels=[8, 8, 16, 16], down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4, sample_size=64, scaling_factor=0.18215,
)


def _clip(hidden: int, max_len: int = 77) -> dict:
    return dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=max_len, projection_dim=hidden, hidden_act="quick_gelu")


TINY_CONFIGS: dict[str, dict] = {
    "sd15": dict(
        unet=dict(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=[8, 16, 24, 24],
            down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
            cross_attention_dim=32, attention_head_dim=2, norm_num_groups=4,
        ),
        vae=_VAE,
        text_encoder=_clip(32),
        scheduler=_SCHEDULER,
    ),
    "sdxl": dict(
        unet=dict(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=[8, 16, 16],
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            transformer_layers_per_block=[1, 1, 2], attention_head_dim=[1, 2, 2], use_linear_projection=True,
            cross_attention_dim=32, norm_num_groups=4, addition_embed_type="text_time",
            addition_time_embed_dim=8, projection_class_embeddings_input_dim=8 * 6 + 16,
        ),
        vae=dict(_VAE, scaling_factor=0.13025),
        text_encoder=_clip(16),
        text_encoder_2=_clip(16),
        scheduler=_SCHEDULER,
    ),
}


def tiny_tokenizer(max_length: int = 77):
    """A CLIP tokenizer over lowercase letters, digits and punctuation (no merges)."""
    from transformers import CLIPTokenizer

    symbols = string.ascii_lowercase + string.digits + string.punctuation
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab[s] = len(vocab)
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def build_tiny_base(kind: str = "sd15", seed: int = 0) -> BaseModel:
    """Random-weight tiny models of the ``kind`` layout, seeded per component."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if kind not in TINY_CONFIGS:
        raise ValueError(f"unknown tiny model kind {kind!r}; choose from {sorted(TINY_CONFIGS)}")
    cfg = TINY_CONFIGS[kind]
    tokenizer = tiny_tokenizer()
    special = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)

    def seeded(offset, make):
        torch.manual_seed(seed + offset)
        return make()

    text_cls = {"text_encoder": CLIPTextModel, "text_encoder_2": CLIPTextModelWithProjection}
    encoders = {
        name: seeded(3 + i, lambda name=name: text_cls[name](CLIPTextConfig(**cfg[name], **special)))
        for i, name in enumerate(n for n in ("text_encoder", "text_encoder_2") if n in cfg)
    }
    return BaseModel(
        unet=seeded(1, lambda: UNet2DConditionModel(**cfg["unet"])),
        vae=seeded(2, lambda: AutoencoderKL(**cfg["vae"])),
        tokenizer=tokenizer,
        scheduler=DDPMScheduler(**cfg["scheduler"]),
        tokenizer_2=tiny_tokenizer() if "text_encoder_2" in encoders else None,
        **encoders,
    ).freeze()


def build_random_base(kind: str = "sd15", seed: int = 0) -> BaseModel:
    """Full-size SD1.5 / SDXL architecture with random weights (configs/architectures; no downloads).

    For GPU throughput and memory runs without real weights. The tokenizer is the
    tiny character tokenizer (77 tokens), whose ids are valid for the real vocabulary.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    root = ARCHITECTURES / kind
    if not (root / "unet").is_dir():
        raise ValueError(f"unknown architecture {kind!r}; choose from {sorted(p.name for p in ARCHITECTURES.iterdir() if p.is_dir())}")
    torch.manual_seed(seed)
    sdxl = (root / "text_encoder_2").is_dir()
    return BaseModel(
        unet=UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet")),
        vae=AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae")),
        text_encoder=CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder")),
        tokenizer=tiny_tokenizer(),
        scheduler=DDPMScheduler.from_pretrained(root / "scheduler"),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(root / "text_encoder_2")) if sdxl else None,
        tokenizer_2=tiny_tokenizer() if sdxl else None,
    ).freeze()


GENERATED = {"tiny": build_tiny_base, "random": build_random_base}


def write_generated_base(path: str | Path, spec: str, seed: int = 0) -> Path:
    """Write the model folder for ``tiny:<kind>`` or ``random:<kind>`` unless one is already there."""
    source, _, kind = spec.partition(":")
    if source not in GENERATED:
        raise ValueError(f"{spec!r}: generated bases are {', '.join(f'{k}:<kind>' for k in GENERATED)}")
    return _write_base(Path(path), lambda: GENERATED[source](kind, seed))


def write_tiny_base(path: str | Path, kind: str = "sd15", seed: int = 0) -> Path:
    """Write a tiny model folder (diffusers layout) unless one is already there."""
    return _write_base(Path(path), lambda: build_tiny_base(kind, seed))


def _write_base(path: Path, build) -> Path:
    if (path / "model_index.json").exists():
        return path
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} exists and is not a model folder (no model_index.json)")
    from common.files import atomic_directory

    with atomic_directory(path) as tmp:  # a folder with model_index.json is always complete
        build().save_pretrained(tmp)
    return path


def random_unet_inputs(unet, batch: int = 2, size: int = 8, generator: torch.Generator | None = None,
                       device: torch.device | str | None = None) -> dict:
    """Random ``brushnet_unet_forward`` inputs matching a UNet config (SDXL: the text_time kwargs)."""
    cfg = unet.config

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    inputs = dict(
        sample=randn(batch, cfg.in_channels, size, size),
        timestep=torch.tensor(417, device=device),
        encoder_hidden_states=randn(batch, 7, cfg.cross_attention_dim),
        brushnet_cond=randn(batch, 5, size, size),
    )
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        inputs["added_cond_kwargs"] = {
            "text_embeds": randn(batch, pooled),
            "time_ids": torch.tensor([[float(size * 8), float(size * 8), 0.0, 0.0, float(size * 8), float(size * 8)]] * batch,
                                     device=device),
        }
    return inputs


def generated_folder(base: str, root: str | Path) -> Path:
    """Where a generated base is written under ``root``: ``<root>/base-<tiny|random>-<kind>``."""
    return Path(root) / f"base-{base.replace(':', '-')}"


def is_generated(base: str) -> bool:
    """A base written here (``tiny:<kind>``, ``random:<kind>``) rather than loaded from a folder or the hub."""
    return base.startswith(("tiny:", "random:"))
