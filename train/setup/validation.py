"""Every ``brushtrain fit`` setting checked before any work starts; all problems in one message.

:func:`validate` runs right after the config is composed (types are checked
there, by the schema) and before a model loads, a file is written or a logger
starts. It raises one :class:`~train.config.ConfigError` listing every problem,
which the command prints without a traceback (exit code 2).

Two kinds of checks:

* :data:`RULES`, one line per key: ``(key, check, expected)``. ``check`` takes
  the value and says whether it is acceptable; ``expected`` (text, or a function
  returning text) says what is. A key added to the schema gets one line here
  (a test fails until every key has one, or is listed in :data:`TYPE_ONLY`).
* :data:`CROSS_CHECKS`: the few rules that involve several keys or this
  machine (GPUs present, the base model's layout, files that must exist).

What 0 means for the ``every_n_steps`` keys: ``checkpoint.every_n_steps=0`` saves
only at the end (and on a signal), ``eval.every_n_steps=0`` evaluates only at the
start/end, ``samples.every_n_steps=0`` samples only at the start;
``trainer.log_every_n_steps`` and ``ema.every`` must be >= 1.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, NamedTuple

from omegaconf import OmegaConf

from train.config import ConfigError
from train.model.tiny import is_generated
from train.schema import DTYPE_NAMES

__all__ = ["Rule", "RULES", "TYPE_ONLY", "CROSS_CHECKS", "validate", "problems", "resolution_multiple"]

_ABSENT = object()


class Rule(NamedTuple):
    key: str
    check: Callable[[Any], bool]
    expected: str | Callable[[], str]


# ------------------------------------------------------------- value checks


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(ge: int | None = None, le: int | None = None) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and (ge is None or v >= ge) and (le is None or v <= le)


def number(gt: float | None = None, ge: float | None = None, le: float | None = None, lt: float | None = None):
    return lambda v: _is_number(v) and (gt is None or v > gt) and (ge is None or v >= ge) and (
        le is None or v <= le) and (lt is None or v < lt)


def _worker_starts():
    from data.brushdata import WORKER_STARTS

    return WORKER_STARTS


def one_of(choices) -> Callable[[Any], bool]:
    """``choices``: a collection, or a function returning one (evaluated when checked)."""
    return lambda v: v in (choices() if callable(choices) else choices)


def optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def text(v) -> bool:
    return isinstance(v, str) and v.strip() != ""


def flag(v) -> bool:
    return isinstance(v, bool)


def list_of(check: Callable[[Any], bool], length: int | None = None, nonempty: bool = False):
    return lambda v: isinstance(v, list) and all(check(x) for x in v) and (length is None or len(v) == length) and (
        not nonempty or len(v) > 0)


def shard_value(v) -> bool:
    v = OmegaConf.to_container(v) if OmegaConf.is_list(v) else v
    return v is None or text(v) or (isinstance(v, list) and all(text(x) for x in v))


probability = number(ge=0, le=1)
seed = integer(ge=0, le=2**32 - 1)  # numpy's seeded generators take 0 .. 2**32-1


# ----------------------------------------------- choices the libraries define


def precisions() -> tuple[str, ...]:
    """Lightning's precision names and their short aliases ("32", "16", "bf16", "64")."""
    from typing import get_args

    from lightning.fabric.connector import (
        _PRECISION_INPUT_STR,
        _PRECISION_INPUT_STR_ALIAS,
    )

    return get_args(_PRECISION_INPUT_STR) + get_args(_PRECISION_INPUT_STR_ALIAS)


def accelerators() -> tuple[str, ...]:
    """``auto`` and the accelerators Lightning knows that this machine has (``gpu``: CUDA or MPS)."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    names = ["auto"] + sorted(n for n in AcceleratorRegistry.available_accelerators()
                              if AcceleratorRegistry[n]["accelerator"].is_available())
    if "cuda" in names or "mps" in names:
        names.append("gpu")
    return tuple(names)


def _schedulers() -> tuple[str, ...]:
    from train.model.pipeline import SCHEDULERS

    return tuple(SCHEDULERS)


def _scheduler_name(v) -> bool:
    if not text(v):
        return False
    if v.lower() in _schedulers():
        return True
    import diffusers

    return hasattr(diffusers, v) and v.endswith("Scheduler")


def _metric_names() -> tuple[str, ...]:
    from train.scoring.inpaint_metrics import METRICS

    return METRICS


def _devices(v) -> bool:
    return v == "auto" or integer(ge=1)(v)  # what train/commands/fit.py's process layout understands


def _betas(v) -> bool:
    return list_of(number(ge=0, lt=1), length=2)(v)


def _existing_file(v) -> bool:
    return text(v) and Path(v).expanduser().is_file()


LOGGERS = ("wandb", "csv", "tensorboard", "none")
STRATEGIES = ("auto", "ddp", "deepspeed")
DEEPSPEED_STAGES = (1, 2, 3)
SAMPLE_SOURCES = ("train", "shards", "folder")

RULES: list[Rule] = [
    Rule("output_dir", text, "a folder path"),
    Rule("resume", optional(text), "null, auto, or a checkpoint path"),
    Rule("model.base", text, "a diffusers folder, a hub id (org/name), or tiny:/random: + sd15|sdxl"),
    Rule("model.revision", optional(text), "null or a hub revision"),
    Rule("model.brushnet", optional(text), "null or a branch folder / hub id"),
    Rule("model.vae", optional(text), "null, a local VAE folder or a hub id"),
    Rule("model.tie_conv_in_bias", flag, "true or false"),
    Rule("model.compile.branch", flag, "true or false"),
    Rule("model.compile.unet", flag, "true or false"),
    Rule("model.compile.vae", flag, "true or false"),
    Rule("model.compile.backend", text, "a torch.compile backend (inductor, aot_eager, ...)"),
    Rule("model.compile.mode", optional(text), "null, default or max-autotune-no-cudagraphs"),
    Rule("model.compile.dynamic", optional(flag), "null (torch decides), true or false"),
    Rule("model.compile.fullgraph", flag, "true or false"),
    Rule("model.channels_last", flag, "true or false"),
    Rule("model.frozen_dtype", one_of(DTYPE_NAMES), " | ".join(DTYPE_NAMES)),
    Rule("model.gradient_checkpointing", flag, "true or false"),
    Rule("model.prediction_type", optional(one_of(("epsilon", "v_prediction"))), "null, epsilon or v_prediction"),
    Rule("model.min_snr_gamma", optional(number(gt=0)), "null (plain MSE) or a number > 0"),
    Rule("model.conditioning_scale", number(ge=0), "a number >= 0"),
    Rule("data.shards", shard_value, "a shard spec or a list of them"),
    Rule("data.sizes_file", optional(_existing_file), "null or an existing sizes.json"),
    Rule("data.resolution", integer(ge=8), "an integer >= 8 (see also the base's multiple)"),
    Rule("data.batch_size", integer(ge=1), "an integer >= 1"),
    Rule("data.num_workers", integer(ge=0), "an integer >= 0 (0: load in the training process)"),
    Rule("data.seed", seed, "an integer in 0 .. 2**32-1"),
    Rule("data.shuffle_shards", flag, "true or false"),
    Rule("data.shuffle_buffer", integer(ge=0), "an integer >= 0 (0 or 1: no shuffling)"),
    Rule("data.random_crop", flag, "true or false"),
    Rule("data.caption_dropout", probability, "a probability in [0, 1]"),
    Rule("data.mask.segmentation", number(ge=0), "a weight >= 0"),
    Rule("data.mask.brush", number(ge=0), "a weight >= 0"),
    Rule("data.mask.box", number(ge=0), "a weight >= 0"),
    Rule("data.mask.border", number(ge=0), "a weight >= 0"),
    Rule("data.mask.opening_p", probability, "a probability in [0, 1]"),
    Rule("data.mask.opening_kernel", integer(ge=1), "an integer >= 1 (pixels)"),
    Rule("data.mask.invert_p", probability, "a probability in [0, 1]"),
    Rule("data.mask.space", one_of(("original", "crop")), "original or crop"),
    Rule("data.mask.brush_min_strokes", integer(ge=0), "an integer >= 0"),
    Rule("data.mask.brush_max_strokes", integer(ge=0), "an integer >= 0"),
    Rule("data.mask.brush_max_segments", integer(ge=0), "an integer >= 0"),
    Rule("data.mask.brush_width", number(gt=0), "a number > 0 (pixels of data.mask.space)"),
    Rule("data.mask.brush_transposed_starts", flag, "true or false"),
    Rule("data.max_bad_fraction", probability, "a fraction in [0, 1]"),
    Rule("data.bad_check_after", integer(ge=0), "an integer >= 0 (records)"),
    Rule("data.prefetch_factor", integer(ge=1), "an integer >= 1"),
    Rule("data.worker_start", one_of(_worker_starts), lambda: ", ".join(_worker_starts())),
    Rule("data.pin_memory", flag, "true or false"),
    Rule("data.shard_retries", integer(ge=0), "an integer >= 0 (0: no retry)"),
    Rule("data.shard_retry_delay", number(ge=0), "seconds >= 0"),
    Rule("synth.enabled", flag, "true or false"),
    Rule("synth.train_dir", text, "a folder path"),
    Rule("synth.eval_dir", text, "a folder path"),
    Rule("synth.train_samples", integer(ge=1), "an integer >= 1"),
    Rule("synth.eval_samples", integer(ge=0), "an integer >= 0 (0: no held-out shards)"),
    Rule("synth.per_shard", integer(ge=1), "an integer >= 1"),
    Rule("synth.min_size", integer(ge=16), "an integer >= 16 (pixels)"),
    Rule("synth.max_size", integer(ge=16), "an integer >= 16 (pixels)"),
    Rule("synth.seed", seed, "an integer in 0 .. 2**32-1"),
    Rule("optim.lr", number(gt=0), "a learning rate > 0"),
    Rule("optim.weight_decay", number(ge=0), "a number >= 0"),
    Rule("optim.betas", _betas, "two numbers in [0, 1), e.g. [0.9, 0.999]"),
    Rule("optim.eps", number(gt=0), "a number > 0"),
    Rule("optim.schedule", one_of(("constant", "cosine")), "'constant' or 'cosine'"),
    Rule("optim.warmup_steps", integer(ge=0), "an integer >= 0"),
    Rule("optim.min_lr_ratio", probability, "a ratio in [0, 1]"),
    Rule("optim.grad_clip", number(ge=0), "a number >= 0 (0: no clipping)"),
    Rule("optim.max_nonfinite_in_a_row", integer(ge=1), "an integer >= 1"),
    Rule("optim.min_loss_scale", number(gt=0), "a number > 0"),
    Rule("ema.enabled", flag, "true or false"),
    Rule("ema.decay", probability, "a number in [0, 1]"),
    Rule("ema.every", integer(ge=1), "an integer >= 1 (optimizer steps)"),
    Rule("ema.on_cpu", flag, "true or false"),
    Rule("trainer.max_steps", integer(ge=1), "an integer >= 1"),
    Rule("trainer.accumulate_grad_batches", integer(ge=1), "an integer >= 1"),
    Rule("trainer.accelerator", one_of(accelerators), lambda: "one this machine has: " + ", ".join(accelerators())),
    Rule("trainer.devices", _devices, "auto (all GPUs; 1 process on CPU) or a count >= 1 (processes per node)"),
    Rule("trainer.num_nodes", integer(ge=1), "an integer >= 1"),
    Rule("trainer.strategy", one_of(STRATEGIES), "auto, ddp or deepspeed"),
    Rule("trainer.precision", one_of(precisions), lambda: "one of Lightning's: " + ", ".join(precisions())),
    Rule("trainer.seed", seed, "an integer in 0 .. 2**32-1"),
    Rule("trainer.log_every_n_steps", integer(ge=1), "an integer >= 1"),
    Rule("trainer.progress_bar", optional(flag), "null (automatic), true or false"),
    Rule("trainer.requeue_on_signal", flag, "true or false"),
    Rule("trainer.benchmark", flag, "true or false"),
    Rule("deepspeed.stage", one_of(DEEPSPEED_STAGES), "ZeRO stage 1, 2 or 3"),
    Rule("deepspeed.offload_optimizer", flag, "true or false"),
    Rule("deepspeed.offload_params", flag, "true or false"),
    Rule("deepspeed.overlap_comm", flag, "true or false"),
    Rule("deepspeed.bucket_size", integer(ge=1), "an integer >= 1 (elements)"),
    Rule("deepspeed.allow_cpu", flag, "true or false"),
    Rule("deepspeed.adam", one_of(("torch", "deepspeed")), "torch (fused torch.optim.AdamW) or deepspeed (FusedAdam)"),
    Rule("checkpoint.every_n_steps", integer(ge=0), "an integer >= 0 (0: only at the end and on a signal)"),
    Rule("checkpoint.keep_last", integer(ge=1), "an integer >= 1"),
    Rule("checkpoint.export_on_end", flag, "true or false"),
    Rule("checkpoint.save_on_end", flag, "true or false"),
    Rule("eval.shards", shard_value, "a shard spec or a list of them (empty: no evaluation)"),
    Rule("eval.samples", integer(ge=1), "an integer >= 1"),
    Rule("eval.timesteps", list_of(integer(ge=0, le=999), nonempty=True), "a non-empty list of timesteps in 0 .. 999"),
    Rule("eval.at_start", flag, "true or false"),
    Rule("eval.at_end", flag, "true or false"),
    Rule("eval.every_n_steps", integer(ge=0), "an integer >= 0 (0: only at the start and end)"),
    Rule("eval.metrics", lambda v: list_of(one_of(_metric_names))(v) and len(set(v)) == len(v),
         lambda: "a list of distinct metric names from " + ", ".join(_metric_names())),
    Rule("eval.metric_samples", integer(ge=1), "an integer >= 1"),
    Rule("eval.metric_steps", integer(ge=1), "an integer >= 1"),
    Rule("eval.metric_seed", seed, "an integer in 0 .. 2**32-1"),
    Rule("eval.metric_blend", flag, "true or false"),
    Rule("eval.metric_convention", one_of(("standard", "reference")), "standard or reference"),
    Rule("eval.metric_models.clip", optional(text), "null or a CLIP folder / hub id"),
    Rule("eval.metric_models.aesthetic_head", optional(text), "null or a path to sa_0_4_vit_l_14_linear.pth"),
    Rule("eval.metric_models.lpips_backbone", optional(text), "null (torch.hub's cache) or a squeezenet1_1 file"),
    Rule("eval.metric_models.lpips_heads", optional(text), "null (torchmetrics' heads) or a file"),
    Rule("eval.metric_models.hps", optional(text), "null, a path to HPS_v2.1_compressed.pt or a hub id"),
    Rule("eval.metric_models.hps_tokenizer", optional(text), "null or a CLIP tokenizer folder / hub id"),
    Rule("eval.metric_models.image_reward", optional(text), "null, ImageReward-v1.0, a path to ImageReward.pt or a hub id"),
    Rule("eval.metric_models.image_reward_tokenizer", optional(text), "null or a BERT tokenizer folder / hub id"),
    Rule("samples.enabled", flag, "true or false"),
    Rule("samples.every_n_steps", integer(ge=0), "an integer >= 0 (0: only at the start)"),
    Rule("samples.source", one_of(SAMPLE_SOURCES), "train, shards or folder"),
    Rule("samples.shards", shard_value, "a shard spec or a list of them"),
    Rule("samples.folder", optional(text), "null or a folder"),
    Rule("samples.count", integer(ge=1), "an integer >= 1"),
    Rule("samples.steps", integer(ge=1), "an integer >= 1"),
    Rule("samples.guidance_scale", optional(number(ge=0)), "null (7.5 for SD1.5, 5.0 for SDXL) or a number >= 0"),
    Rule("samples.scheduler", _scheduler_name, lambda: ", ".join(_schedulers()) + " or a diffusers scheduler class"),
    Rule("samples.seed", seed, "an integer in 0 .. 2**32-1"),
    Rule("metrics.peak_tflops", optional(number(gt=0)), "null (known GPUs) or a number > 0"),
    Rule("metrics.diagnostics", flag, "true or false"),
    Rule("logging.logger", one_of(LOGGERS), "wandb, csv, tensorboard or none"),
    Rule("logging.project", text, "a W&B project name"),
    Rule("logging.entity", optional(text), "null or a W&B entity"),
    Rule("logging.name", optional(text), "null or a run name"),
    Rule("logging.group", optional(text), "null or a group name"),
    Rule("logging.tags", list_of(text), "a list of tags"),
    Rule("logging.wandb_mode", optional(one_of(("online", "offline"))), "null (offline unless logged in), online or offline"),
    Rule("debug.record_keys", flag, "true or false"),
]

# Keys whose type (checked by the schema) is all there is to check. Empty today: every key has a rule.
TYPE_ONLY: frozenset[str] = frozenset()


# ------------------------------------------------------------- cross checks


def _local_or_hub_id(value: str) -> bool:
    """An existing local path, or something shaped like a hub id (org/name) to download."""
    from train.model.components import hub_id_like

    return Path(value).expanduser().exists() or hub_id_like(value)


def _base(cfg, launch) -> list[str]:
    base = cfg.model.base
    if not text(base):
        return []  # the rule reports it
    if is_generated(base):
        if base.split(":", 1)[1] not in ("sd15", "sdxl"):
            return [f"model.base {base!r}: generated bases are tiny:sd15, tiny:sdxl, random:sd15, random:sdxl"]
        return []
    path = Path(base).expanduser()
    if not _local_or_hub_id(base):
        return [f"model.base {base!r} does not exist (and is not a hub id like org/name)"]
    if path.exists() and not (path / "unet").is_dir():
        return [f"model.base {base!r} is not a diffusers model folder (no unet/ inside)"]
    if path.exists():
        unet = _json(path / "unet" / "config.json") or {}
        parts = ["unet/config.json", "scheduler", "text_encoder", "tokenizer"] + ([] if cfg.model.get("vae") else ["vae"])
        parts += ["text_encoder_2", "tokenizer_2"] if unet.get("addition_embed_type") == "text_time" else []
        missing = [p for p in parts if not (path / p).exists()]
        if missing:
            return [f"model.base {base!r} is not a complete diffusers model folder (no {', '.join(missing)})"]
    return []


def _brushnet(cfg, launch) -> list[str]:
    """A local branch folder holds a BrushNet config made for the base's UNet layout (an SDXL branch on SD1.5, ...)."""
    from train.model.brushnet import branch_folder_problem, misfit

    b = cfg.model.brushnet
    if not text(b):
        return []
    if not _local_or_hub_id(b):
        return [f"model.brushnet {b!r} does not exist (and is not a hub id like org/name)"]
    problem = branch_folder_problem(b)
    if problem:
        return [f"model.brushnet: {problem}"]
    config = _json(Path(b).expanduser() / "config.json")
    unet = _component_config(cfg, "unet") if text(cfg.model.base) and not _base(cfg, launch) else None
    if config is None or unet is None:
        return []
    problem = misfit(config, unet, f"model.brushnet {b!r}", f"model.base {cfg.model.base!r}")
    return [problem] if problem else []


def _json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _component_config(cfg, name: str) -> dict | None:
    """The base's ``<name>/config.json`` without loading anything (generated bases: their own configs)."""
    base = cfg.model.base
    if base.startswith("tiny:"):
        from train.model.tiny import TINY_CONFIGS

        return TINY_CONFIGS.get(base[5:], {}).get(name)
    if base.startswith("random:"):
        from configs import ARCHITECTURES

        path = ARCHITECTURES / base[7:] / name / "config.json"
    else:
        path = Path(base).expanduser() / name / "config.json"
        if not path.is_file() and base.count("/") == 1:
            try:  # a hub id: only what is cached already, nothing is downloaded here
                from huggingface_hub import try_to_load_from_cache

                cached = try_to_load_from_cache(base, f"{name}/config.json", revision=cfg.model.revision)
                path = Path(cached) if isinstance(cached, str) else path
            except Exception:  # noqa: BLE001 - no cache, no check
                return None
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except ValueError:
        return None


def resolution_multiple(cfg) -> tuple[int, str] | None:
    """(multiple, why) the base's VAE and UNet need of ``data.resolution``, or None where the layout is unknown.

    The rule: the VAE's downsampling (2 per encoder level after the first: 8 for SD)
    times the UNet's (2 per down block after the first: 8 for SD1.5's 4 levels, 4
    for SDXL's 3), so every feature map halves exactly down the UNet and the
    branch, as the models were trained (SD1.5: 64, SDXL: 32).
    """
    unet, vae = _component_config(cfg, "unet"), _component_config(cfg, "vae")
    if not unet or not vae:
        return None
    vae_factor = 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)
    unet_factor = 2 ** (len(unet.get("down_block_types", [0] * 4)) - 1)
    return vae_factor * unet_factor, f"VAE downsampling {vae_factor} x UNet downsampling {unet_factor}"


def _resolution(cfg, launch) -> list[str]:
    r = cfg.data.resolution
    if not integer(ge=8)(r) or not text(cfg.model.base) or _base(cfg, launch):
        return []
    rule = resolution_multiple(cfg)
    multiple, why = rule if rule else (8, "the VAE's downsampling (the base's UNet layout is not known before download)")
    if r % multiple:
        lower, upper = r // multiple * multiple, (r // multiple + 1) * multiple
        near = f"{lower} or {upper}" if lower else f"{upper}"
        return [f"data.resolution={r} must be a multiple of {multiple} for this base ({why}); try {near}"]
    return []


def _brush_strokes(cfg, launch) -> list[str]:
    """0 <= data.mask.brush_min_strokes <= brush_max_strokes (when the schema has the minimum)."""
    low, high = cfg.data.mask.get("brush_min_strokes"), cfg.data.mask.get("brush_max_strokes")
    if integer(ge=0)(low) and integer(ge=0)(high) and low > high:
        return [f"data.mask.brush_min_strokes={low} is larger than data.mask.brush_max_strokes={high}"]
    return []


def _vae(cfg, launch) -> list[str]:
    """model.vae (when the schema has it): a local folder or a hub id."""
    vae = cfg.model.get("vae")
    if text(vae) and not _local_or_hub_id(vae):
        return [f"model.vae {vae!r} does not exist (and is not a hub id like org/name)"]
    path = Path(vae).expanduser() if text(vae) else None
    if path is None or not path.exists():
        return []  # none, or a hub id (checked when loaded)
    config_file = path / "vae" / "config.json" if (path / "vae").is_dir() else path / "config.json"
    config = _json(config_file)
    if config is None:
        return [f"model.vae {vae!r} is not a VAE folder (no readable config.json, nor vae/config.json)"]
    if config.get("_class_name") not in (None, "AutoencoderKL"):
        return [f"model.vae {vae!r} holds a {config['_class_name']}, not a VAE (AutoencoderKL)"]
    unet = _component_config(cfg, "unet") if text(cfg.model.base) and not _base(cfg, launch) else None
    if unet and config.get("latent_channels", 4) != unet.get("in_channels", 4):
        return [f"model.vae {vae!r} makes {config.get('latent_channels', 4)}-channel latents, the base's UNet takes "
                f"{unet.get('in_channels', 4)}"]
    return []


def _mask_weights(cfg, launch) -> list[str]:
    from data.masks import MASK_SOURCES

    weights = [cfg.data.mask.get(name, 0) for name in MASK_SOURCES]
    if all(_is_number(w) and w >= 0 for w in weights) and sum(weights) <= 0:
        return [f"data.mask weights ({', '.join(MASK_SOURCES)}) must have a positive sum, got {weights}"]
    return []


def _synth(cfg, launch) -> list[str]:
    s = cfg.synth
    if s.enabled and integer()(s.min_size) and integer()(s.max_size) and s.min_size > s.max_size:
        return [f"synth.min_size={s.min_size} is larger than synth.max_size={s.max_size}"]
    return []


def _shards(cfg, launch) -> list[str]:
    from data.shards import ShardSpecError, expand_shards, shard_specs

    out = []
    if shard_value(cfg.data.shards) and not shard_specs(cfg.data.shards) and not cfg.synth.enabled:
        out.append("data.shards is empty (set it, or synth.enabled=true for synthetic data)")
    keys = [("data.shards", cfg.data.shards), ("eval.shards", cfg.eval.shards)]
    if cfg.samples.enabled and cfg.samples.source == "shards":
        keys.append(("samples.shards", cfg.samples.shards))
        if shard_value(cfg.samples.shards) and not shard_specs(cfg.samples.shards):
            out.append("samples.source=shards needs samples.shards (held-out shards to sample from)")
    for key, value in keys:
        if not shard_value(value):
            continue
        try:
            if shard_specs(value):
                expand_shards(value)
        except ShardSpecError as exc:
            out.append(f"{key}: {exc}")
    return out


def _eval_metrics(cfg, launch) -> list[str]:
    from data.shards import shard_specs

    if cfg.eval.get("metrics") and shard_value(cfg.eval.shards) and not shard_specs(cfg.eval.shards) \
            and not cfg.synth.enabled:
        return ["eval.metrics needs held-out images: set eval.shards (or synth.enabled=true)"]
    return []


def _samples_folder(cfg, launch) -> list[str]:
    """samples.source=folder: an existing folder with STEM.jpg|png images, each with its STEM_mask.png."""
    s = cfg.samples
    if not (s.enabled and s.source == "folder"):
        return []
    if not (text(s.folder) and Path(s.folder).expanduser().is_dir()):
        return [f"samples.source=folder needs samples.folder to be an existing folder, got {s.folder!r}"]
    from data.benchmarks import folder_images

    folder = Path(s.folder).expanduser()
    images = folder_images(folder)
    if not images:
        return [f"samples.folder {s.folder!r} holds no STEM.jpg / STEM.png images (with STEM_mask.png masks)"]
    unmasked = [p.name for p in images if not (folder / f"{p.stem}_mask.png").is_file()]
    if unmasked:
        return [f"samples.folder {s.folder!r}: {', '.join(unmasked[:3])} {'has' if len(unmasked) == 1 else 'have'} "
                f"no STEM_mask.png beside {'it' if len(unmasked) == 1 else 'them'}"]
    return []


def _sizes_file(cfg, launch) -> list[str]:
    """data.sizes_file: a JSON object of shard name -> record count (what `brushtrain data index` writes)."""
    f = cfg.data.sizes_file
    if not (text(f) and Path(f).expanduser().is_file()):
        return []  # none, or the rule reports it
    table = _json(Path(f).expanduser())
    if table is None or not all(isinstance(v, int) and not isinstance(v, bool) for v in table.values()):
        return [f"data.sizes_file {f!r} is not a JSON object of shard name -> record count "
                "(as `brushtrain data index` writes)"]
    return []


def _output_dir(cfg, launch) -> list[str]:
    if not text(cfg.output_dir):
        return []
    path = Path(cfg.output_dir).expanduser().absolute()
    if path.exists() and not path.is_dir():
        return [f"output_dir {str(path)!r} exists and is not a folder"]
    existing = next((p for p in [path, *path.parents] if p.exists()), None)
    if existing is not None and not existing.is_dir():
        return [f"output_dir {str(path)!r}: {existing} is a file, not a folder"]
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        return [f"output_dir {str(path)!r}: {existing} is not writable"]
    if OmegaConf.select(cfg, "checkpoint.export_on_end") is True:  # found now, not after the whole run
        from train.engine.export import target_problem

        exports = ["brushnet"] + (["brushnet-ema"] if OmegaConf.select(cfg, "ema.enabled") is True else [])
        return [f"checkpoint.export_on_end: {problem}" for problem in map(target_problem, (path / e for e in exports))
                if problem]
    return []


def _resume(cfg, launch) -> list[str]:
    if cfg.resume not in (None, "auto") and text(cfg.resume) and not Path(cfg.resume).expanduser().exists():
        meant_auto = str(cfg.resume).strip().lower() in ("true", "yes", "on", "latest", "last", "newest")
        return [f"resume {cfg.resume!r} does not exist (a checkpoint path or 'auto')"
                + ("; to continue from the newest intact checkpoint in output_dir, use resume=auto" if meant_auto else "")]
    return []


def _wants_gpu(cfg) -> bool:
    import torch

    return cfg.trainer.accelerator in ("gpu", "cuda") or (cfg.trainer.accelerator == "auto" and torch.cuda.is_available())


def _devices_here(cfg, launch) -> list[str]:
    import torch

    t = cfg.trainer
    if not _devices(t.devices) or t.accelerator not in accelerators():
        return []
    out = []
    if _wants_gpu(cfg) and (launch is None or launch.launcher == "none") and torch.cuda.is_available():
        have = torch.cuda.device_count()
        if t.devices != "auto" and t.devices > have:
            out.append(f"trainer.devices={t.devices}: this machine has {have} CUDA GPU(s)")
    if integer(ge=2)(t.num_nodes) and (launch is None or launch.launcher == "none") and "NODE_RANK" not in os.environ:
        out.append(f"trainer.num_nodes={t.num_nodes} needs a launcher on every node (srun, torchrun; or NODE_RANK, "
                   "MASTER_ADDR and MASTER_PORT set on each node)")
    return out


def _precision_here(cfg, launch) -> list[str]:
    import torch

    p = cfg.trainer.precision
    if p not in precisions() or cfg.trainer.accelerator not in accelerators():
        return []
    out = []
    gpu = _wants_gpu(cfg)
    if not gpu and p in ("16-mixed", "16"):
        out.append(f"trainer.precision={p} is not supported on the CPU (Lightning would switch to bf16-mixed); "
                   "use bf16-mixed or 32-true")
    if gpu and torch.cuda.is_available() and p.startswith("bf16") and not torch.cuda.is_bf16_supported():
        out.append(f"trainer.precision={p}: this GPU has no bfloat16; use 16-mixed or 32-true")
    frozen = cfg.model.frozen_dtype
    true_dtype = {"16-true": "fp16", "bf16-true": "bf16"}.get(p)
    if true_dtype and frozen in DTYPE_NAMES and frozen != true_dtype:
        out.append(f"trainer.precision={p} casts the branch to {true_dtype} with no autocast, so the frozen parts must "
                   f"be {true_dtype} too: set model.frozen_dtype={true_dtype} (got {frozen}), or use a -mixed precision")
    if p in ("64-true", "64"):
        out.append(f"trainer.precision={p}: the frozen parts run in model.frozen_dtype (fp32 at most); use 32-true")
    if not gpu and frozen == "fp16" and p in ("bf16-mixed", "bf16"):
        out.append(f"trainer.precision={p} with model.frozen_dtype=fp16 does not run on the CPU (bf16 autocast cannot "
                   "take fp16 weights there); use model.frozen_dtype=bf16 or fp32")
    if p.startswith("transformer-engine"):
        import importlib.util

        if importlib.util.find_spec("transformer_engine") is None:
            out.append(f"trainer.precision={p} needs NVIDIA's transformer_engine package, which is not installed")
    if cfg.trainer.strategy == "deepspeed":
        from typing import get_args

        from lightning.fabric.connector import _PRECISION_INPUT_STR_ALIAS_CONVERSION
        from lightning.fabric.plugins.precision.deepspeed import _PRECISION_INPUT

        full = _PRECISION_INPUT_STR_ALIAS_CONVERSION.get(p, p)
        if full not in get_args(_PRECISION_INPUT):
            out.append(f"trainer.precision={p} is not available with DeepSpeed; use one of {', '.join(get_args(_PRECISION_INPUT))}")
    return out


def _deepspeed(cfg, launch) -> list[str]:
    import torch

    from train.engine.strategy import deepspeed_problem

    if cfg.trainer.strategy != "deepspeed":
        return []
    out = []
    problem = deepspeed_problem(cfg, on_cpu=cfg.trainer.accelerator == "cpu" or not torch.cuda.is_available())
    if problem:
        out.append(problem)
    if cfg.deepspeed.offload_params and cfg.deepspeed.stage in DEEPSPEED_STAGES and cfg.deepspeed.stage != 3:
        out.append(f"deepspeed.offload_params=true needs deepspeed.stage=3 (got {cfg.deepspeed.stage})")
    return out


def _logger(cfg, launch) -> list[str]:
    if cfg.logging.logger == "tensorboard":
        import importlib.util

        if not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
            return ["logging.logger=tensorboard needs the tensorboard package (pip install tensorboard)"]
    return []


def _compile(cfg, launch) -> list[str]:
    """model.compile.*: the torch version, the mode, not the branch under ZeRO-3 (train/engine/compile.py)."""
    from train.engine.compile import compile_problem

    problem = compile_problem(cfg.model, cfg.deepspeed.stage if cfg.trainer.strategy == "deepspeed" else None)
    return [problem] if problem else []


CROSS_CHECKS: list[Callable] = [
    _output_dir, _resume, _base, _brushnet, _vae, _resolution, _mask_weights, _brush_strokes, _synth, _shards,
    _samples_folder, _sizes_file, _eval_metrics,
    _devices_here, _precision_here, _deepspeed, _compile, _logger,
]


# ------------------------------------------------------------------- entry


def _value(cfg, key: str):
    value = OmegaConf.select(cfg, key, default=_ABSENT)
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    return value


def problems(cfg, launch=None) -> list[str]:
    """Every problem with a composed config on this machine (empty: it can run)."""
    out = []
    for rule in RULES:
        value = _value(cfg, rule.key)
        if value is _ABSENT:
            continue  # a rule may land before its key (parallel branches); the coverage test pairs them
        try:
            good = rule.check(value)
        except Exception:  # noqa: BLE001 - a value of a shape the check does not expect
            good = False
        if not good:
            expected = rule.expected() if callable(rule.expected) else rule.expected
            out.append(f"{rule.key} must be {expected}, got {value!r}")
    for check in CROSS_CHECKS:
        out += check(cfg, launch)
    return out


def validate(cfg, launch=None) -> None:
    """Raise one :class:`ConfigError` listing every problem; return quietly when there is none."""
    found = problems(cfg, launch)
    if found:
        more = f"{len(found)} problems: " if len(found) > 1 else ""
        raise ConfigError(more + "; ".join(found))
