"""The BrushNet branch: a cross-attention-free copy of a Stable Diffusion UNet.

The branch reads ``concat(noisy_latents, masked_image_latents, keep_mask)``
(4 + 4 + 1 channels) and returns one residual per feature map it produces,
each passed through a zero-initialised 1x1 conv and multiplied by
``conditioning_scale``. :func:`train.model.injection.brushnet_unet_forward` adds those
residuals into a stock, frozen ``UNet2DConditionModel``.

Configuration keys and parameter names follow the reference implementation
(TencentARC/BrushNet), so folders written by ``save_pretrained`` load there and
released reference checkpoints load here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import DownBlock2D, UNetMidBlock2D, UpBlock2D
from diffusers.utils import BaseOutput
from torch import nn

from common.errors import UserError
from train.model.components import hub_id_like

__all__ = [
    "BrushNetModel",
    "BrushNetOutput",
    "BranchError",
    "fit_problems",
    "misfit",
    "check_fits",
    "layout_name",
    "branch_folder_problem",
    "residual_counts",
    "vae_encode",
    "make_conditioning",
]

# Block types the reference writes into a branch config. "MidBlock2D" is the
# reference fork's attention-free mid block; stock diffusers' UNetMidBlock2D
# with add_attention=False has the same parameters and computation.
_DOWN_BLOCK = "DownBlock2D"
_MID_BLOCK = "MidBlock2D"
_UP_BLOCK = "UpBlock2D"

# UNet config keys that from_unet carries over into the branch config.
_KEYS_FROM_UNET = (
    "in_channels",
    "flip_sin_to_cos",
    "freq_shift",
    "only_cross_attention",
    "block_out_channels",
    "layers_per_block",
    "downsample_padding",
    "mid_block_scale_factor",
    "act_fn",
    "norm_num_groups",
    "norm_eps",
    "cross_attention_dim",
    "transformer_layers_per_block",
    "encoder_hid_dim",
    "encoder_hid_dim_type",
    "attention_head_dim",
    "num_attention_heads",
    "use_linear_projection",
    "class_embed_type",
    "addition_embed_type",
    "addition_time_embed_dim",
    "num_class_embeds",
    "upcast_attention",
    "resnet_time_scale_shift",
    "projection_class_embeddings_input_dim",
    "addition_embed_type_num_heads",
)


class BranchError(UserError, ValueError):
    """A branch that cannot be used: no such folder, not a BrushNet branch, or made for another base's layout."""


# Branch config keys that must equal the UNet's: they shape the residuals and the time embedding's inputs.
_MUST_MATCH = ("in_channels", "block_out_channels", "layers_per_block", "addition_embed_type",
               "addition_time_embed_dim", "projection_class_embeddings_input_dim")


def layout_name(config: Mapping) -> str:
    """"SDXL" for a ``text_time`` config (UNet or branch), else "SD1.5"."""
    return "SDXL" if config.get("addition_embed_type") == "text_time" else "SD1.5"


def _comparable(config: Mapping, key: str):
    value = config.get(key)
    if key == "layers_per_block" and isinstance(value, int):  # an int means the same for every block
        value = [value] * len(config.get("block_out_channels") or [])
    return list(value) if isinstance(value, (list, tuple)) else value


def fit_problems(branch_config: Mapping, unet_config: Mapping) -> list[str]:
    """``"key branch-value vs unet-value"`` for each setting in which a branch's config differs from the UNet's
    it is to run with (empty: it fits)."""
    return [f"{key} {_comparable(branch_config, key)} vs {_comparable(unet_config, key)}" for key in _MUST_MATCH
            if _comparable(branch_config, key) != _comparable(unet_config, key)]


def misfit(branch_config: Mapping, unet_config: Mapping, branch: str = "the branch", base: str = "the base") -> str | None:
    """Why the branch cannot run with that UNet (it was made for another layout: an SDXL branch on SD1.5, ...),
    naming them ``branch`` and ``base``; None when it fits."""
    problems = fit_problems(branch_config, unet_config)
    if not problems:
        return None
    return (f"{branch} does not fit {base}: it was made for the {layout_name(branch_config)} layout, the base's UNet "
            f"has the {layout_name(unet_config)} layout ({'; '.join(problems)}; branch vs base)")


def check_fits(branch_config: Mapping, unet_config: Mapping, branch: str = "the branch", base: str = "the base") -> None:
    """Raise :class:`BranchError` with :func:`misfit`'s message when the branch does not fit the UNet."""
    problem = misfit(branch_config, unet_config, branch, base)
    if problem:
        raise BranchError(problem)


@dataclass
class BrushNetOutput(BaseOutput):
    """Scaled residuals, in the order the frozen UNet consumes them."""

    down_block_res_samples: tuple[torch.Tensor, ...]
    mid_block_res_sample: torch.Tensor
    up_block_res_samples: tuple[torch.Tensor, ...]


def _per_block(value: int | Sequence[int], n_blocks: int, name: str) -> list[int]:
    if isinstance(value, int):
        return [value] * n_blocks
    values = list(value)
    if len(values) != n_blocks:
        raise ValueError(f"{name} has {len(values)} entries but there are {n_blocks} blocks")
    return values


def residual_counts(config: Any) -> tuple[int, int, int]:
    """(down, mid, up) residual counts for a UNet or branch config.

    Down: the conv_in output, every resnet of every down block and every
    downsampler. Up: every resnet of every up block (layers_per_block + 1 each)
    and every upsampler. SD1.5's layout gives 12/1/15, SDXL's 9/1/11.
    """
    get = config.get if isinstance(config, dict) else lambda k: getattr(config, k)
    n_blocks = len(get("block_out_channels"))
    layers = _per_block(get("layers_per_block"), n_blocks, "layers_per_block")
    samplers = n_blocks - 1
    down = 1 + sum(layers) + samplers
    up = sum(n + 1 for n in reversed(layers)) + samplers
    return down, 1, up


def vae_encode(vae: nn.Module, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Scaled VAE latents of images in [-1, 1] (a sample of the posterior, as in training)."""
    latents = vae.encode(pixels.to(dtype=vae.dtype)).latent_dist.sample(generator)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def make_conditioning(masked_latents: torch.Tensor, keep_mask: torch.Tensor) -> torch.Tensor:
    """The branch's ``brushnet_cond``: masked-image latents + keep mask at latent size.

    ``keep_mask`` is (B, 1, H, W) at pixel size, 1 = known pixel, 0 = hole; it is
    resized with nearest-neighbour interpolation (the reference's default).
    """
    if keep_mask.ndim != 4 or keep_mask.shape[1] != 1:
        raise ValueError(f"keep_mask must be (B, 1, H, W), got {tuple(keep_mask.shape)}")
    mask = F.interpolate(keep_mask.to(masked_latents.dtype), size=masked_latents.shape[-2:], mode="nearest")
    return torch.cat([masked_latents, mask], dim=1)


def _zero_conv(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class BrushNetModel(ModelMixin, ConfigMixin):
    """Trainable inpainting branch (reference config keys and parameter names)."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        conditioning_channels: int = 5,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: Sequence[str] = (_DOWN_BLOCK,) * 4,
        mid_block_type: str | None = _MID_BLOCK,
        up_block_types: Sequence[str] = (_UP_BLOCK,) * 4,
        only_cross_attention: bool | Sequence[bool] = False,
        block_out_channels: Sequence[int] = (320, 640, 1280, 1280),
        layers_per_block: int | Sequence[int] = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1280,
        transformer_layers_per_block: int | Sequence[int] = 1,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim: int | Sequence[int] = 8,
        num_attention_heads: int | Sequence[int] | None = None,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        projection_class_embeddings_input_dim: int | None = None,
        brushnet_conditioning_channel_order: str = "rgb",
        conditioning_embedding_out_channels: Sequence[int] | None = (16, 32, 96, 256),
        global_pool_conditions: bool = False,
        addition_embed_type_num_heads: int = 64,
    ):
        super().__init__()
        # The attention-related keys (cross_attention_dim, heads, transformer
        # layers, projections) are kept for config compatibility only: the
        # branch has no attention. conditioning_embedding_out_channels is a
        # reference config key with no module behind it.
        n_blocks = len(block_out_channels)
        self._check_config(
            n_blocks, down_block_types, mid_block_type, up_block_types, class_embed_type,
            encoder_hid_dim_type, addition_embed_type, brushnet_conditioning_channel_order,
        )
        layers = _per_block(layers_per_block, n_blocks, "layers_per_block")

        # Time embedding, as in the UNet.
        time_embed_dim = block_out_channels[0] * 4
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim, act_fn=act_fn)
        if addition_embed_type == "text_time":
            if addition_time_embed_dim is None or projection_class_embeddings_input_dim is None:
                raise ValueError(
                    "addition_embed_type='text_time' needs addition_time_embed_dim and "
                    "projection_class_embeddings_input_dim"
                )
            self.add_time_proj = Timesteps(addition_time_embed_dim, flip_sin_to_cos, freq_shift)
            self.add_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, time_embed_dim)

        # Input: concat(noisy latents, conditioning) -> first feature width.
        self.conv_in_condition = nn.Conv2d(
            in_channels + conditioning_channels, block_out_channels[0], kernel_size=3, padding=1
        )

        resnet_kwargs = dict(
            temb_channels=time_embed_dim,
            resnet_eps=norm_eps,
            resnet_act_fn=act_fn,
            resnet_groups=norm_num_groups,
            resnet_time_scale_shift=resnet_time_scale_shift,
        )

        # Down path: a zero conv after conv_in, after each resnet, after each downsampler.
        self.down_blocks = nn.ModuleList()
        self.brushnet_down_blocks = nn.ModuleList([_zero_conv(block_out_channels[0])])
        out_ch = block_out_channels[0]
        for i, n_layers in enumerate(layers):
            in_ch, out_ch = out_ch, block_out_channels[i]
            is_final = i == n_blocks - 1
            self.down_blocks.append(
                DownBlock2D(
                    in_channels=in_ch, out_channels=out_ch, num_layers=n_layers,
                    add_downsample=not is_final, downsample_padding=downsample_padding,
                    **resnet_kwargs,
                )
            )
            for _ in range(n_layers + (0 if is_final else 1)):
                self.brushnet_down_blocks.append(_zero_conv(out_ch))

        # Mid: two resnets, no attention, then one zero conv.
        mid_ch = block_out_channels[-1]
        self.mid_block = UNetMidBlock2D(
            in_channels=mid_ch, output_scale_factor=mid_block_scale_factor, add_attention=False,
            **resnet_kwargs,
        )
        self.brushnet_mid_block = _zero_conv(mid_ch)

        # Up path: a zero conv after each resnet and each upsampler.
        self.up_blocks = nn.ModuleList()
        self.brushnet_up_blocks = nn.ModuleList()
        reversed_ch = list(reversed(block_out_channels))
        reversed_layers = list(reversed(layers))
        out_ch = reversed_ch[0]
        for i, n_layers in enumerate(reversed_layers):
            prev_ch, out_ch = out_ch, reversed_ch[i]
            in_ch = reversed_ch[min(i + 1, n_blocks - 1)]
            is_final = i == n_blocks - 1
            self.up_blocks.append(
                UpBlock2D(
                    in_channels=in_ch, prev_output_channel=prev_ch, out_channels=out_ch,
                    num_layers=n_layers + 1, add_upsample=not is_final, resolution_idx=i,
                    **resnet_kwargs,
                )
            )
            for _ in range(n_layers + 1 + (0 if is_final else 1)):
                self.brushnet_up_blocks.append(_zero_conv(out_ch))

    @staticmethod
    def _check_config(
        n_blocks, down_block_types, mid_block_type, up_block_types, class_embed_type,
        encoder_hid_dim_type, addition_embed_type, channel_order,
    ) -> None:
        problems = []
        if len(down_block_types) != n_blocks or any(t != _DOWN_BLOCK for t in down_block_types):
            problems.append(f"down_block_types must be {n_blocks} x {_DOWN_BLOCK!r}, got {list(down_block_types)}")
        if len(up_block_types) != n_blocks or any(t != _UP_BLOCK for t in up_block_types):
            problems.append(f"up_block_types must be {n_blocks} x {_UP_BLOCK!r}, got {list(up_block_types)}")
        if mid_block_type != _MID_BLOCK:
            problems.append(f"mid_block_type must be {_MID_BLOCK!r}, got {mid_block_type!r}")
        if class_embed_type is not None:
            problems.append(f"class_embed_type {class_embed_type!r} is not supported (SD1.5/SDXL use none)")
        if encoder_hid_dim_type is not None:
            problems.append(f"encoder_hid_dim_type {encoder_hid_dim_type!r} is not supported")
        if addition_embed_type not in (None, "text_time"):
            problems.append(f"addition_embed_type must be None or 'text_time', got {addition_embed_type!r}")
        if channel_order not in ("rgb", "bgr"):
            problems.append(f"brushnet_conditioning_channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
        if problems:
            raise ValueError("unsupported BrushNet config: " + "; ".join(problems))

    # ------------------------------------------------------------------ init

    @classmethod
    def from_unet(
        cls,
        unet: nn.Module,
        conditioning_channels: int = 5,
        load_weights_from_unet: bool = True,
    ) -> "BrushNetModel":
        """Build a branch shaped like ``unet`` and initialise it from its weights.

        Shared modules (time embedding, the text_time embedding for SDXL, every
        down/mid/up resnet and sampler) are copied. ``conv_in_condition`` gets the
        UNet's ``conv_in`` weight on the noisy-latent channels (0-3) and again on
        the masked-image-latent channels (4-7); the mask channel starts at zero and
        the bias is a copy of ``conv_in.bias`` (not tied to it). Zero convs stay zero.
        """
        ucfg = unet.config
        n_blocks = len(ucfg.block_out_channels)
        kwargs = {k: ucfg[k] for k in _KEYS_FROM_UNET if k in ucfg}
        branch = cls(
            conditioning_channels=conditioning_channels,
            down_block_types=[_DOWN_BLOCK] * n_blocks,
            mid_block_type=_MID_BLOCK,
            up_block_types=[_UP_BLOCK] * n_blocks,
            **kwargs,
        )
        if load_weights_from_unet:
            branch._copy_from_unet(unet)
        return branch

    @torch.no_grad()
    def _copy_from_unet(self, unet: nn.Module) -> None:
        ref = unet.conv_in.weight
        latent_ch = ref.shape[1]
        weight = torch.zeros_like(self.conv_in_condition.weight)
        weight[:, :latent_ch] = ref
        weight[:, latent_ch : 2 * latent_ch] = ref
        self.conv_in_condition.weight.copy_(weight)
        self.conv_in_condition.bias.copy_(unet.conv_in.bias)

        shared = ["time_embedding", "down_blocks", "mid_block", "up_blocks"]
        if hasattr(self, "add_embedding"):
            shared.append("add_embedding")
        for name in shared:
            source = getattr(unet, name).state_dict()
            target = getattr(self, name)
            missing = [k for k in target.state_dict() if k not in source]
            if missing:
                raise ValueError(f"UNet {name} lacks parameters the branch needs: {missing[:5]}")
            target.load_state_dict({k: source[k] for k in target.state_dict()})

    # --------------------------------------------------------------- forward

    def plain_config(self) -> dict:
        """The config as plain JSON-able data (tuples as lists), e.g. to store beside a checkpoint."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(self.config).items()}

    @property
    def residual_counts(self) -> tuple[int, int, int]:
        return len(self.brushnet_down_blocks), 1, len(self.brushnet_up_blocks)

    def _embed_time(self, sample, timestep, added_cond_kwargs):
        if not torch.is_tensor(timestep):
            dtype = torch.float64 if isinstance(timestep, float) else torch.int64
            if sample.device.type == "mps":
                dtype = torch.float32 if isinstance(timestep, float) else torch.int32
            timestep = torch.tensor([timestep], dtype=dtype, device=sample.device)
        elif timestep.ndim == 0:
            timestep = timestep[None].to(sample.device)
        timestep = timestep.expand(sample.shape[0])
        # Timesteps returns float32; cast to the embedding's dtype (fp16/bf16 weights).
        emb = self.time_embedding(self.time_proj(timestep).to(dtype=sample.dtype))

        if self.config.addition_embed_type == "text_time":
            if not added_cond_kwargs or "text_embeds" not in added_cond_kwargs or "time_ids" not in added_cond_kwargs:
                raise ValueError(
                    "this branch has addition_embed_type='text_time' (SDXL): pass "
                    "added_cond_kwargs={'text_embeds': ..., 'time_ids': ...}"
                )
            text_embeds = added_cond_kwargs["text_embeds"]
            time_ids = added_cond_kwargs["time_ids"]
            time_embeds = self.add_time_proj(time_ids.flatten()).reshape(text_embeds.shape[0], -1)
            add_embeds = torch.cat([text_embeds, time_embeds], dim=-1).to(emb.dtype)
            emb = emb + self.add_embedding(add_embeds)
        return emb

    def _run_up_block(self, block: UpBlock2D, hidden, skips, emb, upsample_size):
        """Stock UpBlock2D computation that also returns every intermediate map."""
        outputs = []
        checkpoint = torch.is_grad_enabled() and block.gradient_checkpointing
        for resnet in block.resnets:
            hidden = torch.cat([hidden, skips[-1]], dim=1)
            skips = skips[:-1]
            hidden = block._gradient_checkpointing_func(resnet, hidden, emb) if checkpoint else resnet(hidden, emb)
            outputs.append(hidden)
        if block.upsamplers is not None:
            for upsampler in block.upsamplers:
                hidden = upsampler(hidden, upsample_size)
            outputs.append(hidden)
        return hidden, outputs

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor | None,
        brushnet_cond: torch.Tensor,
        conditioning_scale: float = 1.0,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        guess_mode: bool = False,
        return_dict: bool = True,
    ) -> BrushNetOutput | tuple:
        """Residuals for the frozen UNet.

        ``sample``: noisy latents (B, 4, h, w). ``brushnet_cond``: the masked-image
        latents and the keep mask (1 = known pixel) concatenated, (B, 5, h, w).
        ``encoder_hidden_states`` is accepted for signature parity with the UNet;
        the branch has no cross-attention and does not read it. With
        ``guess_mode`` the residual scales ramp log-uniformly from 0.1 to 1 (as
        the reference does), times ``conditioning_scale``.
        """
        del encoder_hidden_states  # no cross-attention in the branch
        if self.config.brushnet_conditioning_channel_order == "bgr":
            brushnet_cond = torch.flip(brushnet_cond, dims=[1])
        emb = self._embed_time(sample, timestep, added_cond_kwargs)

        hidden = self.conv_in_condition(torch.cat([sample, brushnet_cond], dim=1))
        down_features: tuple[torch.Tensor, ...] = (hidden,)
        for block in self.down_blocks:
            hidden, block_features = block(hidden_states=hidden, temb=emb)
            down_features += block_features

        hidden = self.mid_block(hidden, emb)
        mid_feature = hidden

        # Non-power-of-two latents: pass the skip's size to each upsampler, as the UNet does.
        n_up = len(self.up_blocks) - 1
        forward_upsample_size = any(s % (2**n_up) != 0 for s in sample.shape[-2:])
        skips = down_features
        up_features: list[torch.Tensor] = []
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            block_skips, skips = skips[-n:], skips[:-n]
            upsample_size = skips[-1].shape[2:] if (forward_upsample_size and i < n_up) else None
            hidden, block_features = self._run_up_block(block, hidden, block_skips, emb, upsample_size)
            up_features += block_features

        down = [conv(f) for conv, f in zip(self.brushnet_down_blocks, down_features)]
        mid = self.brushnet_mid_block(mid_feature)
        up = [conv(f) for conv, f in zip(self.brushnet_up_blocks, up_features)]

        if guess_mode and not self.config.global_pool_conditions:
            scales = torch.logspace(-1, 0, len(down) + 1 + len(up), device=sample.device) * conditioning_scale
            down = [r * s for r, s in zip(down, scales[: len(down)])]
            mid = mid * scales[len(down)]
            up = [r * s for r, s in zip(up, scales[len(down) + 1 :])]
        else:
            down = [r * conditioning_scale for r in down]
            mid = mid * conditioning_scale
            up = [r * conditioning_scale for r in up]

        if self.config.global_pool_conditions:
            down = [r.mean(dim=(2, 3), keepdim=True) for r in down]
            mid = mid.mean(dim=(2, 3), keepdim=True)
            up = [r.mean(dim=(2, 3), keepdim=True) for r in up]

        if not return_dict:
            return tuple(down), mid, tuple(up)
        return BrushNetOutput(down_block_res_samples=tuple(down), mid_block_res_sample=mid, up_block_res_samples=tuple(up))

    # ------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, strict: bool = True, **kwargs):
        """diffusers ``from_pretrained`` that, by default, refuses partial loads.

        A branch folder whose parameter names or shapes do not match the config
        would otherwise load with silently random weights.
        """
        source = str(pretrained_model_name_or_path)
        local = Path(source).expanduser()
        problem = None if kwargs.get("subfolder") else branch_folder_problem(source)
        if problem:
            raise BranchError(problem)
        want_info = kwargs.pop("output_loading_info", False)
        try:
            model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        except OSError as exc:
            if local.exists():
                raise
            raise BranchError(f"branch {source} is not a local folder and could not be loaded as a hub id: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
        if strict and bad:
            details = "; ".join(f"{k}: {list(v)[:8]}" for k, v in bad.items())
            raise BranchError(f"{pretrained_model_name_or_path} does not match the BrushNet config: {details}")
        return (model, info) if want_info else model


def branch_folder_problem(source: str | Path) -> str | None:
    """Why ``source`` is no branch: a local folder must hold a BrushNetModel ``config.json``; a path that does not
    exist must at least look like a hub id (org/name). None when it may be one."""
    source = str(source)
    local = Path(source).expanduser()
    if local.is_dir():
        config = local / "config.json"
        if not config.is_file():
            return f"{source} is not a branch folder: it has no config.json"
        try:
            class_name = json.loads(config.read_text()).get("_class_name")
        except (ValueError, AttributeError) as exc:
            return f"{config} is not a JSON object ({exc})"
        if class_name not in (None, BrushNetModel.__name__):
            return f"{source} holds a {class_name}, not a BrushNet branch (BrushNetModel)"
    elif local.exists():
        return f"{source} is a file: give the branch folder (config.json + diffusion_pytorch_model.safetensors)"
    elif not hub_id_like(source):
        return f"branch {source} does not exist (and is not a hub id like org/name)"
    return None
