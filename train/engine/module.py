"""The Lightning module: a frozen Stable Diffusion model plus a trainable BrushNet branch.

Only the branch is a registered submodule, so only the branch is in
``state_dict``, seen by DDP / DeepSpeed (and partitioned by ZeRO-3) and saved
in checkpoints; the frozen UNet, VAE and text encoders are moved to the device
and cast to ``model.frozen_dtype`` here, kept in eval mode with no gradients,
and reloaded from ``model.base`` on resume.

Randomness per sample (VAE posterior samples, noise, timestep) comes from a
generator seeded by ``(seed, the sample's own seed)``; the data stream gives
every sample a seed from ``(data seed, epoch, shard, record)``. So a resumed run
draws exactly what an uninterrupted one would, and a sample gets the same noise
whatever batch, micro-batch or rank it lands in (4 micro-batches of 1 make the
same update as one batch of 4). The learning rate is a function of the
optimizer step for the same reason.

Gradient accumulation (``accumulate_grad_batches`` = N): each optimizer step
sums the gradients of N micro-batches (each loss divided by N; DeepSpeed does
that division itself); under DDP only the last micro-batch all-reduces. Only
whole optimizer steps count: ``global_step``, the LR, clipping (of the unscaled,
accumulated gradient, in :meth:`on_before_optimizer_step`), the non-finite
check, EMA, checkpoints and preemption (:attr:`at_step_boundary`).
"""

from __future__ import annotations

import contextlib
import math

import lightning as L
import numpy as np
import torch

from data.batch import model_inputs
from train.engine.compile import prepare_models, to_memory_format
from train.engine.diagnostics import ParamChange, grad_norms
from train.engine.ema import BranchEMA
from train.engine.losses import (
    min_snr_weights,
    per_sample_mse,
    region_mse,
    training_target,
)
from train.engine.optim import build_optimizer, lr_at, schedule_change, schedule_settings
from train.engine.strategy import is_deepspeed
from train.model.brushnet import BrushNetModel, make_conditioning, vae_encode
from train.model.components import DTYPES, BaseModel, encode_prompts, sdxl_time_ids
from train.model.injection import brushnet_unet_forward

__all__ = ["BrushNetModule", "NonFiniteError"]
_AUTOCAST = {"bf16-mixed": torch.bfloat16, "bf16": torch.bfloat16, "16-mixed": torch.float16, "16": torch.float16}


class NonFiniteError(RuntimeError):
    """Too many optimizer steps in a row were skipped for a non-finite loss or gradient."""


def _loss_scale(engine) -> float | None:
    """DeepSpeed's current fp16 loss scale (None when it does not scale: bf16, fp32)."""
    if not engine.fp16_enabled():
        return None
    scale = getattr(engine.optimizer, "cur_scale", None)
    if scale is None:
        scale = getattr(getattr(engine.optimizer, "loss_scaler", None), "cur_scale", None)
    return float(scale) if scale is not None else None


class BrushNetModule(L.LightningModule):
    def __init__(self, base: BaseModel, branch: BrushNetModel, model_cfg, optim_cfg, ema_cfg, max_steps: int,
                 seed: int = 0, deepspeed_cfg=None, accumulate_grad_batches: int = 1, freeze_conv_in_bias: bool = False,
                 diagnostics_every: int = 0, record_keys_to: str | None = None):
        """``freeze_conv_in_bias``: the branch's ``conv_in_condition.bias`` does not train (the reference ties it
        to the frozen UNet's ``conv_in.bias``: right for a branch made by ``from_unet``). ``diagnostics_every``
        > 0: gradient norms and weight change per block group every N steps. ``record_keys_to``: a folder for
        the keys of every trained sample (debugging data coverage)."""
        super().__init__()
        self.automatic_optimization = False
        self.brushnet = branch
        if freeze_conv_in_bias:
            self.brushnet.conv_in_condition.bias.requires_grad_(False)
        object.__setattr__(self, "base", base.freeze())  # not a submodule: frozen, not checkpointed
        self.model_cfg, self.optim_cfg, self.ema_cfg, self.deepspeed_cfg = model_cfg, optim_cfg, ema_cfg, deepspeed_cfg
        self.max_steps = max_steps
        self.seed = seed
        if accumulate_grad_batches < 1:
            raise ValueError(f"accumulate_grad_batches must be >= 1, got {accumulate_grad_batches}")
        self.accumulate_grad_batches = int(accumulate_grad_batches)
        self.frozen_dtype = DTYPES[model_cfg.frozen_dtype]
        from diffusers import DDPMScheduler

        self.noise_scheduler = DDPMScheduler.from_config(base.scheduler.config)
        self.prediction_type = model_cfg.prediction_type or self.noise_scheduler.config.prediction_type
        if model_cfg.gradient_checkpointing:
            self.brushnet.enable_gradient_checkpointing()
            self.base.unet.enable_gradient_checkpointing()
        self.compiled = prepare_models(model_cfg, self.base, self.brushnet)  # model.compile / model.channels_last
        self.brushnet.train()
        self.ema: BranchEMA | None = None
        self._ema_state: dict | None = None
        self.diagnostics_every = diagnostics_every
        self.param_change: ParamChange | None = None
        self.diagnostics: dict = {}
        self.skipped_steps = 0
        self.nonfinite_in_a_row = 0
        self.overflow_steps = 0  # fp16: steps the loss scaler skipped while finding its scale
        self.record_keys_to = record_keys_to
        # The accumulation window: micro-batches done in it, their losses, whether one was non-finite.
        self._micro = 0
        self._window_losses: list[torch.Tensor] = []
        self._window_bad_loss = False
        self._report_diagnostics = False
        self._grad_norm = float("nan")
        self._grad_nonfinite = False
        self.step_metrics: dict = {}  # train/loss (mean over the window's micro-batches), lr, grad norm, ...

    # ------------------------------------------------------------ set-up

    @property
    def uses_deepspeed(self) -> bool:
        return self._trainer is not None and is_deepspeed(self.trainer.strategy)

    @property
    def at_step_boundary(self) -> bool:
        """No accumulation window is open: the last micro-batch finished an optimizer step (or none ran yet).
        Checkpoints and preemption act only here."""
        return self._micro == 0

    def _scaler(self):
        """Lightning's fp16 GradScaler (trainer.precision=16-mixed without DeepSpeed), else None."""
        if self._trainer is None:
            return None
        return getattr(self.trainer.precision_plugin, "scaler", None)

    def on_fit_start(self) -> None:
        self.base.to(self.device, dtype=self.frozen_dtype).freeze()
        if self.ema_cfg.enabled and self.ema is None:
            self.ema = BranchEMA(self.brushnet, self.ema_cfg.decay, device="cpu" if self.ema_cfg.on_cpu else None)
        if self.ema is not None and self._ema_state is not None:
            self.ema.load_state_dict(self._ema_state)
            self._ema_state = None
        if self.diagnostics_every and self.param_change is None:
            # Change is measured from where this run starts (after a resume: from the checkpoint).
            self.param_change = ParamChange(keep=self.global_rank == 0)
            self.param_change.snapshot(self.brushnet, deepspeed=self.uses_deepspeed)

    def configure_optimizers(self):
        return build_optimizer(self.brushnet.parameters(), self.optim_cfg, self.deepspeed_cfg,
                               use_deepspeed=self.uses_deepspeed, on_cuda=self.device.type == "cuda")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["brushtrain"] = {
            "brushnet_config": self.brushnet.plain_config(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "skipped_steps": self.skipped_steps,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "overflow_steps": self.overflow_steps,
            "schedule": schedule_settings(self.optim_cfg, self.max_steps),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("brushtrain") or {}
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.nonfinite_in_a_row = int(state.get("nonfinite_in_a_row", 0))
        self.overflow_steps = int(state.get("overflow_steps", 0))
        change = schedule_change(state.get("schedule"), self.optim_cfg, self.max_steps, int(checkpoint.get("global_step", 0)))
        if change and self.global_rank == 0:
            print(f"brushtrain fit: {change}", flush=True)
        if state.get("ema") is not None:
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"])
            else:
                self._ema_state = state["ema"]

    # ------------------------------------------------------------- helpers

    def _generator(self, *key: int) -> torch.Generator:
        seed = int(np.random.SeedSequence([self.seed, *key]).generate_state(1, dtype=np.uint64)[0] >> 1)
        return torch.Generator(device=self.device).manual_seed(seed)

    def _sample_generators(self, batch: dict) -> list[torch.Generator]:
        """One generator per sample, from the sample's own seed (see the module docstring)."""
        return [self._generator(0x5A3, int(s)) for s in batch["sample_seed"].tolist()]

    def autocast(self):
        """Mixed precision for the frozen + branch forward: Lightning's (if it set one), the trainer's
        precision, else the frozen parts' dtype when that is half (fp32 branch, bf16 UNet)."""
        if torch.is_autocast_enabled(self.device.type):
            return contextlib.nullcontext()
        dtype = _AUTOCAST.get(str(self.trainer.precision)) if self._trainer is not None else None
        if dtype is None and self.frozen_dtype != torch.float32:
            dtype = self.frozen_dtype
        return contextlib.nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)

    @torch.no_grad()
    def _encode(self, batch: dict, generator: torch.Generator | list[torch.Generator]):
        """Batch -> (latents, brushnet_cond, prompt embeddings, added_cond_kwargs or None).

        ``generator``: one for the batch, or one per sample (each draws its image's posterior sample, then
        its masked image's)."""
        x = model_inputs(batch, self.device, self.frozen_dtype)
        if isinstance(generator, list):
            generator = generator + generator
        pixels = self._layout(torch.cat([x["pixels"], x["masked_pixels"]]))
        with self.base.vae_context():
            both = vae_encode(self.base.vae, pixels, generator)
        latents, masked_latents = both.float().chunk(2)
        cond = make_conditioning(masked_latents, x["keep_mask"])
        embeds, pooled = encode_prompts(self.base, batch["caption"])
        added = None
        if self.base.is_sdxl:
            res = batch["image"].shape[-1]
            time_ids = sdxl_time_ids(batch["original_size"], batch["crop_top_left"], (res, res))
            added = {"text_embeds": pooled, "time_ids": time_ids.to(self.device, dtype=embeds.dtype)}
        return latents, cond, embeds, added

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return to_memory_format(x, self.model_cfg.channels_last)

    def _predict(self, noisy, timesteps, embeds, cond, added, scale):
        noisy, cond = self._layout(noisy), self._layout(cond)
        with self.autocast():
            return brushnet_unet_forward(self.base.unet, self.brushnet, noisy, timesteps, embeds, cond,
                                         conditioning_scale=scale, added_cond_kwargs=added)

    # ------------------------------------------------------------- training

    def compute_loss(self, batch: dict) -> torch.Tensor:
        gens = self._sample_generators(batch)
        latents, cond, embeds, added = self._encode(batch, gens)
        noise = torch.stack([torch.randn(latents.shape[1:], generator=g, device=self.device) for g in gens])
        n_train = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.cat([torch.randint(0, n_train, (1,), generator=g, device=self.device) for g in gens])
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        target = training_target(self.noise_scheduler, latents, noise, timesteps, self.prediction_type)
        pred = self._predict(noisy, timesteps, embeds, cond, added, self.model_cfg.conditioning_scale)
        per_sample = per_sample_mse(pred, target)
        if self.model_cfg.min_snr_gamma:
            per_sample = per_sample * min_snr_weights(self.noise_scheduler, timesteps, self.model_cfg.min_snr_gamma,
                                                      self.prediction_type)
        weight = batch["weight"].to(self.device, torch.float32)  # 0 for pad batches
        return (per_sample * weight).sum() / weight.sum().clamp(min=1.0)

    def _skip(self, why: str) -> None:
        self.skipped_steps += 1
        self.nonfinite_in_a_row += 1
        if self.global_rank == 0:
            print(f"step {self.global_step}: skipped ({why}); {self.nonfinite_in_a_row} in a row", flush=True)
        if self.nonfinite_in_a_row >= self.optim_cfg.max_nonfinite_in_a_row:
            raise NonFiniteError(
                f"{self.nonfinite_in_a_row} optimizer steps in a row were skipped for a non-finite loss or gradient "
                f"(last: {why}) at step {self.global_step}. The run stops: lower optim.lr, check the data with "
                f"`brushtrain data validate`, or train with more precision (trainer.precision=32-true)."
            )

    def on_before_optimizer_step(self, optimizer) -> None:
        """Lightning calls this inside ``opt.step()``, after unscaling fp16 gradients and before the update:
        the one place where the accumulated gradient is what the optimizer will apply. Clip it here; a
        non-finite norm empties the gradients, so the optimizer changes nothing (the fp16 scaler, which
        found the same infs, skips the step and lowers its scale). DeepSpeed clips and checks itself."""
        if self.uses_deepspeed:
            return
        scaler = self._scaler()
        if scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
            scaler.unscale_(optimizer)  # fused AdamW unscales inside its step, after us: unscale here instead
        params = [p for p in self.brushnet.parameters() if p.grad is not None]
        if self._report_diagnostics:
            self.diagnostics = grad_norms(self.brushnet)
        norm = torch.nn.utils.clip_grad_norm_(params, self.optim_cfg.grad_clip or float("inf"))
        self._grad_norm = float(norm)
        self._grad_nonfinite = not math.isfinite(self._grad_norm)
        if self._grad_nonfinite:  # DDP grads are all-reduced: every rank decides the same
            for p in params:
                p.grad = None

    def _optimizer_step(self, opt) -> tuple[str, float]:
        """One optimizer step at the end of a window: ("applied" | "skipped" | "overflow", gradient norm).

        "overflow": fp16 loss scaling skipped the step while the scale was above ``optim.min_loss_scale``
        (the scaler finding its scale, not a non-finite step)."""
        self._grad_norm, self._grad_nonfinite = float("nan"), False
        if self._window_bad_loss and not self.uses_deepspeed:
            opt.zero_grad(set_to_none=True)  # nothing to apply; the step still counts, as a skipped one
        if self.uses_deepspeed:
            engine = self.trainer.strategy.deepspeed_engine
            scale = _loss_scale(engine)
            opt.step()  # DeepSpeed clips, and skips steps with non-finite gradients itself
            norm = engine.get_global_grad_norm()
            norm = float(norm) if norm is not None else float("nan")
            if engine.was_step_applied():
                return "applied", norm
            return ("overflow" if scale is not None and scale > self.optim_cfg.min_loss_scale else "skipped"), norm
        scaler = self._scaler()
        scale = scaler.get_scale() if scaler is not None else None
        opt.step()
        opt.zero_grad(set_to_none=True)
        if scaler is not None and scaler.get_scale() < scale:  # the scaler found infs and skipped the step
            if scaler.get_scale() < self.optim_cfg.min_loss_scale:
                scaler.update(new_scale=float(self.optim_cfg.min_loss_scale))  # the floor
            if scale > self.optim_cfg.min_loss_scale and not self._window_bad_loss:
                return "overflow", self._grad_norm
            return "skipped", self._grad_norm
        if self._window_bad_loss or self._grad_nonfinite:
            return "skipped", self._grad_norm
        return "applied", self._grad_norm

    def training_step(self, batch: dict, batch_idx: int):
        opt = self.optimizers()
        step = self.global_step
        lr = lr_at(step, self.optim_cfg, self.max_steps)
        for group in opt.param_groups:
            group["lr"] = lr
        n = self.accumulate_grad_batches
        boundary = self._micro + 1 == n
        deepspeed = self.uses_deepspeed
        # DDP: gradients are all-reduced only in the window's last backward (Lightning's toggle_model).
        sync = contextlib.nullcontext() if deepspeed or n == 1 else opt.toggle_model(sync_grad=boundary)
        with sync:
            loss = self.compute_loss(batch)
            if deepspeed:  # NaN gradients reach DeepSpeed, which skips the step at the boundary
                finite = bool(torch.isfinite(loss))
            else:
                finite = self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True)
            if finite or deepspeed:
                if self.record_keys_to and finite:
                    self._record_keys(batch, step)
                self.manual_backward(loss if deepspeed or n == 1 else loss / n)
        self._window_bad_loss |= not finite
        self._window_losses.append(loss.detach())
        if not boundary:
            self._micro += 1
            if deepspeed:
                self.trainer.strategy.deepspeed_engine.step()  # counts the micro-step; applies nothing yet
            return loss.detach()

        self._report_diagnostics = bool(self.diagnostics_every) and (step + 1) % self.diagnostics_every == 0
        if self._report_diagnostics and deepspeed:
            self.diagnostics = grad_norms(self.brushnet, deepspeed=True)
        outcome, grad_norm = self._optimizer_step(opt)
        if self._report_diagnostics and self.param_change is not None:
            self.diagnostics.update(self.param_change.measure(self.brushnet, deepspeed=deepspeed))
        window_loss = torch.stack(self._window_losses).mean()
        bad_loss = self._window_bad_loss
        self._micro, self._window_losses, self._window_bad_loss = 0, [], False
        if outcome == "applied":
            self.nonfinite_in_a_row = 0
            if self.ema is not None and (self.global_step % self.ema_cfg.every == 0):
                self.ema.update(self.brushnet)
        elif outcome == "overflow":
            self.overflow_steps += 1
        else:
            self._skip("non-finite loss" if bad_loss else "non-finite gradient")
        # Logged by the metrics callback at the optimizer step (Lightning's self.log would count micro-batches).
        metrics = {"train/lr": lr, "train/skipped_steps": float(self.skipped_steps)}
        if torch.isfinite(window_loss):
            metrics["train/loss"] = float(window_loss)
        if math.isfinite(grad_norm):
            metrics["train/grad_norm"] = grad_norm
        scaler = self._scaler()
        if scaler is not None:
            metrics.update({"train/loss_scale": float(scaler.get_scale()), "train/overflow_steps": float(self.overflow_steps)})
        self.step_metrics = metrics
        return window_loss

    def _record_keys(self, batch: dict, step: int) -> None:
        import os

        os.makedirs(self.record_keys_to, exist_ok=True)
        with open(os.path.join(self.record_keys_to, f"rank{self.global_rank}.txt"), "a") as f:
            for key, weight in zip(batch["key"], batch["weight"]):
                if float(weight) > 0:
                    f.write(f"{step} {key}\n")

    # ----------------------------------------------------------- evaluation

    @torch.no_grad()
    def denoising_loss(self, batches: list[dict], timesteps: list[int], conditioning_scale: float | None = None) -> dict:
        """Held-out MSE of the noise prediction in the hole, the known region, and overall.

        Fixed noise and VAE samples per batch, the same ``timesteps`` for every
        sample: two calls on the same weights give the same numbers.
        """
        scale = self.model_cfg.conditioning_scale if conditioning_scale is None else conditioning_scale
        was_training = self.brushnet.training
        self.brushnet.eval()
        sums = {"hole": [0.0, 0.0], "known": [0.0, 0.0]}
        for i, batch in enumerate(batches):
            g = self._generator(0x5EED, i)
            latents, cond, embeds, added = self._encode(batch, g)
            keep = cond[:, -1:]
            for t in timesteps:
                timestep = torch.full((latents.shape[0],), int(t), device=self.device, dtype=torch.long)
                noise = torch.randn(latents.shape, generator=g, device=self.device)
                noisy = self.noise_scheduler.add_noise(latents, noise, timestep)
                target = training_target(self.noise_scheduler, latents, noise, timestep, self.prediction_type)
                pred = self._predict(noisy, timestep, embeds, cond, added, scale)
                for name, region in (("hole", 1 - keep), ("known", keep)):
                    err, count = region_mse(pred, target, region)
                    sums[name][0] += float(err)
                    sums[name][1] += float(count)
        self.brushnet.train(was_training)
        out = {name: (s / n if n else float("nan")) for name, (s, n) in sums.items()}
        total = sums["hole"][1] + sums["known"][1]
        out["all"] = (sums["hole"][0] + sums["known"][0]) / total if total else float("nan")
        return out
