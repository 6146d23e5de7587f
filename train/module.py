"""The Lightning module: a frozen Stable Diffusion model plus a trainable BrushNet branch.

Only the branch is a registered submodule, so only the branch is in
``state_dict``, seen by DDP / DeepSpeed (and partitioned by ZeRO-3) and saved
in checkpoints; the frozen UNet, VAE and text encoders are moved to the device
and cast to ``model.frozen_dtype`` here, kept in eval mode with no gradients,
and reloaded from ``model.base`` on resume.

Randomness per step (VAE posterior sample, noise, timesteps) comes from a
generator seeded by ``(seed, rank, step)``, so a resumed run draws exactly what
an uninterrupted one would. The learning rate is a function of the step for the
same reason.
"""

from __future__ import annotations

import contextlib
import math

import lightning as L
import numpy as np
import torch

from data.batch import model_inputs

from .brushnet import BrushNetModel, make_conditioning, vae_encode
from .compile import prepare_models, to_memory_format
from .components import BaseModel, encode_prompts
from .diagnostics import ParamChange, grad_norms
from .ema import BranchEMA
from .injection import brushnet_unet_forward
from .losses import min_snr_weights, per_sample_mse, region_mse, training_target
from .optim import build_optimizer, lr_at

__all__ = ["BrushNetModule", "NonFiniteError", "DTYPES"]

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_AUTOCAST = {"bf16-mixed": torch.bfloat16, "bf16": torch.bfloat16, "16-mixed": torch.float16, "16": torch.float16}


class NonFiniteError(RuntimeError):
    """Too many optimizer steps in a row were skipped for a non-finite loss or gradient."""


class BrushNetModule(L.LightningModule):
    def __init__(self, base: BaseModel, branch: BrushNetModel, model_cfg, optim_cfg, ema_cfg, max_steps: int,
                 seed: int = 0, deepspeed_cfg=None):
        super().__init__()
        self.automatic_optimization = False
        self.brushnet = branch
        object.__setattr__(self, "base", base.freeze())  # not a submodule: frozen, not checkpointed
        self.model_cfg, self.optim_cfg, self.ema_cfg, self.deepspeed_cfg = model_cfg, optim_cfg, ema_cfg, deepspeed_cfg
        self.max_steps = max_steps
        self.seed = seed
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
        self.diagnostics_every = 0  # > 0: gradient norms / weight change per block group every N steps
        self.param_change: ParamChange | None = None
        self.diagnostics: dict = {}
        self.skipped_steps = 0
        self.nonfinite_in_a_row = 0
        self.preempted = False  # set by the preemption handler: no eval/export at the end
        self.record_keys_to: str | None = None  # debug: a folder for the keys of every trained sample

    # ------------------------------------------------------------ set-up

    @property
    def uses_deepspeed(self) -> bool:
        return self._trainer is not None and type(self.trainer.strategy).__name__.endswith("DeepSpeedStrategy")

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
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("brushtrain") or {}
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.nonfinite_in_a_row = int(state.get("nonfinite_in_a_row", 0))
        if state.get("ema") is not None:
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"])
            else:
                self._ema_state = state["ema"]

    # ------------------------------------------------------------- helpers

    def _generator(self, *key: int) -> torch.Generator:
        seed = int(np.random.SeedSequence([self.seed, *key]).generate_state(1, dtype=np.uint64)[0] >> 1)
        return torch.Generator(device=self.device).manual_seed(seed)

    def _autocast(self):
        """Mixed precision for the frozen + branch forward: Lightning's (if it set one), the trainer's
        precision, else the frozen parts' dtype when that is half (fp32 branch, bf16 UNet)."""
        if torch.is_autocast_enabled(self.device.type):
            return contextlib.nullcontext()
        dtype = _AUTOCAST.get(str(self.trainer.precision)) if self._trainer is not None else None
        if dtype is None and self.frozen_dtype != torch.float32:
            dtype = self.frozen_dtype
        return contextlib.nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)

    @torch.no_grad()
    def _encode(self, batch: dict, generator: torch.Generator):
        """Batch -> (latents, brushnet_cond, prompt embeddings, added_cond_kwargs or None)."""
        x = model_inputs(batch, self.device, self.frozen_dtype)
        pixels = self._layout(torch.cat([x["pixels"], x["masked_pixels"]]))
        both = vae_encode(self.base.vae, pixels, generator)
        latents, masked_latents = both.float().chunk(2)
        cond = make_conditioning(masked_latents, x["keep_mask"])
        embeds, pooled = encode_prompts(self.base, batch["caption"])
        added = None
        if self.base.is_sdxl:
            res = batch["image"].shape[-1]
            target = torch.tensor([[res, res]] * latents.shape[0])
            time_ids = torch.cat([batch["original_size"], batch["crop_top_left"], target], dim=1)
            added = {"text_embeds": pooled, "time_ids": time_ids.to(self.device, dtype=embeds.dtype)}
        return latents, cond, embeds, added

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return to_memory_format(x, self.model_cfg.channels_last)

    def _predict(self, noisy, timesteps, embeds, cond, added, scale):
        noisy, cond = self._layout(noisy), self._layout(cond)
        with self._autocast():
            return brushnet_unet_forward(self.base.unet, self.brushnet, noisy, timesteps, embeds, cond,
                                         conditioning_scale=scale, added_cond_kwargs=added)

    # ------------------------------------------------------------- training

    def compute_loss(self, batch: dict, step: int) -> torch.Tensor:
        g = self._generator(self.global_rank, step)
        latents, cond, embeds, added = self._encode(batch, g)
        noise = torch.randn(latents.shape, generator=g, device=self.device)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  generator=g, device=self.device)
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

    def _step_optimizer(self, opt) -> tuple[bool, float]:
        """(applied, gradient norm). DeepSpeed clips and skips non-finite steps itself."""
        if self.uses_deepspeed:
            opt.step()
            engine = self.trainer.strategy.deepspeed_engine
            norm = engine.get_global_grad_norm()
            return bool(engine.was_step_applied()), float(norm) if norm is not None else float("nan")
        clip = self.optim_cfg.grad_clip or float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.brushnet.parameters(), clip)
        if not torch.isfinite(norm):  # DDP grads are already all-reduced: every rank decides the same
            opt.zero_grad(set_to_none=True)
            return False, float(norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return True, float(norm)

    def training_step(self, batch: dict, batch_idx: int):
        opt = self.optimizers()
        step = self.global_step
        lr = lr_at(step, self.optim_cfg, self.max_steps)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = self.compute_loss(batch, step)
        finite = self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True)
        if not finite:
            opt.zero_grad(set_to_none=True)
            self._skip("non-finite loss")
            return None
        if self.record_keys_to:
            self._record_keys(batch, step)
        self.manual_backward(loss)
        report = self.diagnostics_every and (step + 1) % self.diagnostics_every == 0
        if report:
            self.diagnostics = grad_norms(self.brushnet, deepspeed=self.uses_deepspeed)
        applied, grad_norm = self._step_optimizer(opt)
        if report and self.param_change is not None:
            self.diagnostics.update(self.param_change.measure(self.brushnet, deepspeed=self.uses_deepspeed))
        if not applied:
            self._skip("non-finite gradient")
        else:
            self.nonfinite_in_a_row = 0
            if self.ema is not None and (self.global_step % self.ema_cfg.every == 0):
                self.ema.update(self.brushnet)
        self.log("train/loss", loss.detach(), prog_bar=True)
        self.log("train/lr", lr)
        if math.isfinite(grad_norm):
            self.log("train/grad_norm", grad_norm)
        self.log("train/skipped_steps", float(self.skipped_steps))
        return loss.detach()

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
