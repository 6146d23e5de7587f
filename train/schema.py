"""The ``brushtrain fit`` config: every key, its default and meaning.

YAML files in ``configs/`` override these defaults, ``key=value`` arguments
override the files (``brushtrain fit -c configs/sd15_segmentation.yaml
trainer.devices=8 data.batch_size=4``). Unknown keys and wrong types are
rejected when the config is composed; ranges, choices and the rules between
keys (one line per key in ``train/setup/validation.py``) before any work starts.
The ``data.*`` keys, including ``data.shard_retries`` / ``data.shard_retry_delay``
for remote shards, are ``data.brushdata.DataConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from data.brushdata import DataConfig

__all__ = [
    "CompileConfig", "ModelConfig", "OptimConfig", "EMAConfig", "DeepSpeedConfig", "TrainerConfig", "CheckpointConfig",
    "EvalConfig", "MetricModelsConfig", "SynthConfig", "MetricsConfig", "SamplesConfig", "LoggingConfig", "DebugConfig", "FitConfig",
]


DTYPE_NAMES = ("bf16", "fp16", "fp32")  # every setting that names a dtype (train.model.components.DTYPES)

@dataclass
class CompileConfig:
    """``torch.compile`` of the parts of a training step (train/engine/compile.py), each in place (names unchanged)."""

    branch: bool = False  # the trainable branch (not with deepspeed.stage=3)
    unet: bool = False  # the frozen UNet, with the residual-injection hooks inside the graph
    vae: bool = False  # the frozen VAE encoder
    backend: str = "inductor"  # any torch.compile backend ("aot_eager": no code generation, for debugging)
    mode: Optional[str] = None  # None/default | max-autotune-no-cudagraphs (CUDA-graph modes are refused)
    dynamic: Optional[bool] = False  # False: static shapes (training batches all have one shape); None: torch decides
    fullgraph: bool = False  # True: a graph break is an error instead of a split graph


@dataclass
class ModelConfig:
    # A diffusers model folder or hub id (SD1.5 or SDXL layout), or a generated one written to
    # <output_dir>/base-<spec>: "tiny:sd15" / "tiny:sdxl" (tiny random models: tests, the CPU job) or
    # "random:sd15" / "random:sdxl" (full-size architectures, random weights: GPU throughput runs).
    base: str = "???"
    revision: Optional[str] = None  # hub revision of `base`
    brushnet: Optional[str] = None  # start from this branch folder (ours or a reference release); else from_unet
    vae: Optional[str] = None  # replace the base's VAE (a VAE folder or hub id), e.g. an fp16-safe SDXL VAE
    # A branch made from the UNet keeps conv_in_condition.bias equal to the UNet's conv_in.bias and never trains
    # it, as the reference does (it ties the two); a branch loaded from model.brushnet trains it.
    tie_conv_in_bias: bool = True
    # dtype of the frozen UNet, VAE and text encoders: bf16 | fp16 | fp32. With fp16, SDXL's VAE stays in fp32
    # (it overflows in fp16; its config says force_upcast) unless model.vae is an fp16-safe one.
    frozen_dtype: str = "bf16"  # one of DTYPE_NAMES
    gradient_checkpointing: bool = False  # on the branch and the frozen UNet
    prediction_type: Optional[str] = None  # epsilon | v_prediction; default: the base's scheduler config
    min_snr_gamma: Optional[float] = None  # min-SNR loss weighting (e.g. 5.0); None = plain MSE
    conditioning_scale: float = 1.0
    compile: CompileConfig = field(default_factory=CompileConfig)
    channels_last: bool = False  # channels-last layout for the branch (not under DeepSpeed), UNet and VAE weights and their inputs


@dataclass
class OptimConfig:
    lr: float = 1e-5
    weight_decay: float = 1e-2
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    schedule: str = "constant"  # constant | cosine (after warmup; cosine decays to min_lr_ratio * lr at max_steps)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0  # max gradient norm (of the unscaled, accumulated gradient); 0 = off
    max_nonfinite_in_a_row: int = 10  # stop after this many skipped steps in a row
    # trainer.precision=16-mixed: steps skipped for overflow while the loss scale is above this floor are the
    # scaler finding its scale (counted as train/overflow_steps, not as non-finite); at the floor they count.
    min_loss_scale: float = 1.0


@dataclass
class EMAConfig:
    enabled: bool = False
    decay: float = 0.9999
    every: int = 1  # update every N optimizer steps (>= 1)
    on_cpu: bool = False  # keep the EMA weights in CPU memory


@dataclass
class DeepSpeedConfig:
    stage: int = 2  # 1 (optimizer states partitioned), 2 (+ gradients) or 3 (+ parameters)
    offload_optimizer: bool = False  # optimizer states (and step) on the CPU: DeepSpeedCPUAdam
    offload_params: bool = False  # ZeRO-3 only: parameters on the CPU
    overlap_comm: bool = True
    bucket_size: int = 200_000_000  # reduce / allgather bucket (elements)
    # AdamW on GPUs without offload_optimizer: torch (torch.optim.AdamW(fused=True), no CUDA compiler needed) |
    # deepspeed (DeepSpeed's FusedAdam, built with nvcc at the first step)
    adam: str = "torch"
    allow_cpu: bool = False  # TEST ONLY: run ZeRO on CPU processes over gloo (no GPU)


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    accelerator: str = "auto"  # auto | gpu | cpu
    devices: Any = "auto"  # processes per node: an int, or auto (all GPUs, 1 on CPU)
    num_nodes: int = 1
    strategy: str = "auto"  # auto (DDP when >1 process) | ddp | deepspeed (see the deepspeed section)
    precision: str = "bf16-mixed"  # any of Lightning's names: bf16-mixed | 16-mixed | 32-true | bf16-true | ...
    # Micro-batches per optimizer step (Lightning's name). Under DDP only the last one all-reduces; under
    # DeepSpeed it is its gradient_accumulation_steps. Steps, LR, EMA, checkpoints and clipping count
    # optimizer steps; data.batch_size stays the per-process micro-batch.
    accumulate_grad_batches: int = 1
    seed: int = 0
    log_every_n_steps: int = 10  # >= 1
    progress_bar: Optional[bool] = None  # None: a bar on a terminal, log lines otherwise
    requeue_on_signal: bool = True  # SIGUSR1 (SLURM's time-limit warning): save, then `scontrol requeue`
    # cuDNN times its convolution algorithms for each new shape and keeps the fastest (Lightning's `benchmark`):
    # training batches have one shape (short batches are filled up), so it pays once
    benchmark: bool = True


@dataclass
class CheckpointConfig:
    every_n_steps: int = 1000  # 0: only at the end of training (and when a signal stops it)
    keep_last: int = 3
    save_on_end: bool = True  # also save when training ends (false: only every_n_steps and on signals; benchmarks)
    export_on_end: bool = True  # write <output_dir>/brushnet (and brushnet-ema) at the end, from the latest checkpoint


@dataclass
class MetricModelsConfig:
    """Where ``eval.metrics`` (and ``brushtrain evaluate --metric-models``) find their models; see
    train/scoring/inpaint_metrics.py. A metric whose model is missing is logged as skipped, never as 0."""

    clip: Optional[str] = "openai/clip-vit-large-patch14"  # clip_similarity and aesthetic
    aesthetic_head: Optional[str] = None  # LAION's sa_0_4_vit_l_14_linear.pth
    lpips_backbone: Optional[str] = None  # torchvision's squeezenet1_1-b8a52dc0.pth; null: torch.hub's cache
    lpips_heads: Optional[str] = None  # null: the heads torchmetrics ships
    hps: Optional[str] = None  # HPS_v2.1_compressed.pt, a folder holding it, or the hub id xswu/HPSv2
    hps_tokenizer: Optional[str] = "openai/clip-vit-large-patch14"  # the OpenAI CLIP BPE (open_clip's vocabulary)
    image_reward: Optional[str] = None  # ImageReward.pt, a folder holding it, THUDM/ImageReward or ImageReward-v1.0
    image_reward_tokenizer: Optional[str] = "bert-base-uncased"  # BLIP's ([DEC] and [ENC] are added)


@dataclass
class EvalConfig:
    """Held-out masked-region denoising loss (fixed samples, timesteps and noise), and optionally the
    inpainting metrics of ``brushtrain evaluate`` on images generated from the held-out set."""

    shards: Any = field(default_factory=list)  # one spec or a list; empty: no evaluation
    samples: int = 32
    timesteps: List[int] = field(default_factory=lambda: [100, 300, 500, 700, 900])
    at_start: bool = True
    at_end: bool = True
    every_n_steps: int = 0  # 0: only at the start and end
    # Inpainting metrics (psnr, mse, lpips, ssim, clip_similarity, aesthetic, image_reward, hps_v21) of images
    # generated from the first metric_samples held-out samples, logged as eval/<metric>; empty: none.
    metrics: List[str] = field(default_factory=list)
    metric_samples: int = 8
    metric_steps: int = 20
    metric_seed: int = 1234  # the generator is re-seeded with it for every image
    metric_blend: bool = False  # paste back through the blurred mask (makes the preserved region near-exact)
    metric_convention: str = "standard"  # standard | reference (see train/scoring/inpaint_metrics.py)
    metric_models: MetricModelsConfig = field(default_factory=MetricModelsConfig)


@dataclass
class SynthConfig:
    """Synthetic shards written before training when the data folders are empty (demo, tests)."""

    enabled: bool = False
    train_dir: str = "${output_dir}/data/train"
    eval_dir: str = "${output_dir}/data/heldout"
    train_samples: int = 512
    eval_samples: int = 64
    per_shard: int = 64
    min_size: int = 64
    max_size: int = 96
    seed: int = 1234


@dataclass
class MetricsConfig:
    peak_tflops: Optional[float] = None  # device peak for MFU; default: known GPUs (H100/H200 989 dense bf16)
    diagnostics: bool = True  # gradient norm and weight change per block group at each log step
    # (weight change keeps a CPU copy of the branch on rank 0: 2.5 GB for SD1.5)


@dataclass
class SamplesConfig:
    """Inpainting samples logged during training (see train/callbacks/samples.py)."""

    enabled: bool = True
    every_n_steps: int = 1000  # and at the start of every run; 0: only at the start
    source: str = "train"  # train (first training batch) | shards | folder
    shards: Any = field(default_factory=list)  # source=shards: held-out shards
    folder: Optional[str] = None  # source=folder: STEM.jpg + STEM_mask.png (white = paint) + STEM.txt
    count: int = 4
    steps: int = 25
    guidance_scale: Optional[float] = None  # None: the pipeline's default, 7.5 for SD1.5 and 5.0 for SDXL
    scheduler: str = "unipc"
    seed: int = 0


@dataclass
class LoggingConfig:
    logger: str = "wandb"  # wandb (offline unless logged in) | csv | tensorboard | none
    project: str = "brushtrain"
    entity: Optional[str] = None
    name: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    wandb_mode: Optional[str] = None  # online | offline; default: offline unless logged in


@dataclass
class DebugConfig:
    record_keys: bool = False  # append "step key" of every trained sample to <output_dir>/consumed/rank<R>.txt


@dataclass
class FitConfig:
    output_dir: str = "runs/brushnet"
    resume: Optional[str] = None  # a checkpoint (step folder, .ckpt, DeepSpeed folder) or "auto" (latest in output_dir)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
