"""``trainer.strategy`` -> a Lightning strategy: DDP or DeepSpeed ZeRO-1/2/3 (DeepSpeed itself is imported lazily,
where a call needs it: ``deepspeed.initialize`` here, ``zero_to_fp32`` in export, its fused Adam in the optimizer).

``CPUDeepSpeedStrategy`` is for tests only (``deepspeed.allow_cpu=true``):
Lightning's DeepSpeed strategy refuses anything but CUDA, while DeepSpeed itself
runs ZeRO-1/2/3 on CPU processes over gloo, which lets CI train, checkpoint,
resume and export through the ZeRO code paths.
"""

from __future__ import annotations

import argparse
from datetime import timedelta

from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

from train.config import ConfigError

__all__ = ["is_deepspeed", "build_strategy", "deepspeed_config", "deepspeed_problem", "BrushDeepSpeedStrategy", "CPUDeepSpeedStrategy"]


def is_deepspeed(strategy) -> bool:
    """Whether a Lightning strategy runs DeepSpeed (ours or Lightning's)."""
    return isinstance(strategy, DeepSpeedStrategy)


class BrushDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeed strategy with DeepSpeed's own gradient accumulation.

    Lightning takes ``gradient_accumulation_steps`` from ``Trainer(accumulate_grad_batches=...)``, which
    manual optimization (ours) may not use; this strategy takes it from ``trainer.accumulate_grad_batches``
    instead, and the module calls the engine once per micro-batch as DeepSpeed expects.
    """

    def __init__(self, *args, accumulate_grad_batches: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.accumulate_grad_batches = int(accumulate_grad_batches)

    def _format_batch_size_and_grad_accum_config(self) -> None:
        self.config.pop("gradient_accumulation_steps", None)
        super()._format_batch_size_and_grad_accum_config()  # sets 1: the trainer's own accumulation is off
        self.config["gradient_accumulation_steps"] = self.accumulate_grad_batches

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        _plain_layout(model)
        return self._initialize_engine(model, optimizer, lr_scheduler)

    def _initialize_engine(self, model, optimizer, lr_scheduler):
        return DeepSpeedStrategy._setup_model_and_optimizer(self, model, optimizer, lr_scheduler)


def _plain_layout(model) -> None:
    """The trained parameters (the branch's; the frozen parts are not submodules) back in the plain layout before
    DeepSpeed starts: its start-up broadcast views every parameter as bytes, which a channels-last weight
    (``model.channels_last``) cannot be ("stride(-1) must be 1 to view Float as Byte"), and ZeRO then keeps them
    in flat buffers anyway. The frozen UNet and VAE and the activations stay channels-last."""
    import torch

    model.to(memory_format=torch.contiguous_format)


class CPUDeepSpeedStrategy(BrushDeepSpeedStrategy):
    """TEST ONLY. DeepSpeed on CPU processes: no CUDA check, no device-index validation, gloo."""

    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)  # skip DeepSpeedStrategy's "CUDA only" check

    def setup_distributed(self) -> None:
        from lightning.fabric.utilities.seed import reset_seed

        reset_seed()
        self.set_world_ranks()
        _gloo_all_reduce_only()
        self._init_deepspeed_distributed()

    def _get_process_group_backend(self) -> str:
        return "gloo"

    def _initialize_engine(self, model, optimizer, lr_scheduler):
        import deepspeed

        engine, ds_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self.local_rank),  # CPU devices have no index
            config=self.config, model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
            optimizer=optimizer, lr_scheduler=lr_scheduler, dist_init_required=False,
        )
        return engine, ds_optimizer


def _gloo_all_reduce_only() -> None:
    """Keep DeepSpeed on CPU from building its shared-memory all-reduce: its process group would compile that
    C++ op with g++ the first time it starts on a machine (48 s on 2 cores, once per clean CI machine, every
    rank waiting), and its bf16/fp16 kernels need AVX-512 (without it the op faults and the peers hang on its
    flags). Gloo's all-reduce does the same sums for these CPU runs. DeepSpeed reads the op's compatibility from
    one module-level dict at process-group start; a ``False`` there makes it fall back to torch.distributed."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")  # as deepspeed.comm looks it up
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


def deepspeed_config(ds, batch_size: int, grad_clip: float) -> dict:
    """The DeepSpeed JSON config for ``deepspeed.*`` keys."""
    problem = _stage_problem(ds)
    if problem:
        raise ConfigError(problem)
    zero: dict = {
        "stage": ds.stage,
        "overlap_comm": ds.overlap_comm,
        "contiguous_gradients": True,
        "reduce_bucket_size": ds.bucket_size,
    }
    if ds.stage in (1, 2):
        zero["allgather_bucket_size"] = ds.bucket_size
    else:
        zero.update({"stage3_prefetch_bucket_size": ds.bucket_size, "stage3_param_persistence_threshold": 100_000})
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "zero_optimization": zero,
        "gradient_clipping": grad_clip or 0.0,
        "train_micro_batch_size_per_gpu": batch_size,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "wall_clock_breakdown": False,
    }


def _stage_problem(ds) -> str | None:
    from train.engine.optim import ADAM_IMPLS

    if ds.stage not in (1, 2, 3):
        return f"deepspeed.stage must be 1, 2 or 3, got {ds.stage}"
    if ds.offload_params and ds.stage != 3:
        return "deepspeed.offload_params needs deepspeed.stage=3"
    if ds.adam not in ADAM_IMPLS:
        return f"deepspeed.adam must be one of {', '.join(ADAM_IMPLS)}, got {ds.adam!r}"
    return None


def deepspeed_problem(cfg, on_cpu: bool) -> str | None:
    """Why ``trainer.strategy=deepspeed`` cannot run here (or as configured), or None."""
    if cfg.trainer.strategy != "deepspeed":
        return None
    if on_cpu and not cfg.deepspeed.allow_cpu:
        return "trainer.strategy=deepspeed needs CUDA GPUs (deepspeed.allow_cpu=true is for tests only)"
    return _stage_problem(cfg.deepspeed)


def build_strategy(cfg, accelerator: str, n_processes: int):
    """Strategy for ``cfg.trainer.strategy`` ('auto', 'ddp', 'deepspeed')."""
    name = cfg.trainer.strategy
    timeout = timedelta(minutes=30)
    if name == "deepspeed":
        ds_cfg = deepspeed_config(cfg.deepspeed, cfg.data.batch_size, cfg.optim.grad_clip)
        problem = deepspeed_problem(cfg, on_cpu=accelerator == "cpu")
        if problem:
            raise ConfigError(problem)
        # The module's only frozen parameter is the tied conv_in_condition bias: it is saved with the rest.
        kwargs = dict(config=ds_cfg, timeout=timeout, exclude_frozen_parameters=False,
                      accumulate_grad_batches=cfg.trainer.accumulate_grad_batches,
                      min_loss_scale=cfg.optim.min_loss_scale)
        return (CPUDeepSpeedStrategy if accelerator == "cpu" else BrushDeepSpeedStrategy)(**kwargs)
    if name == "ddp" or (name == "auto" and n_processes > 1):
        return DDPStrategy(find_unused_parameters=False, gradient_as_bucket_view=True, timeout=timeout)
    if name == "auto":
        return "auto"
    raise ConfigError(f"trainer.strategy must be auto, ddp or deepspeed, got {name!r}")
