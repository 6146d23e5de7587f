"""Run metrics as a Lightning callback: losses, throughput, data wait, MFU, memory, data counters.

Every ``every_n_steps`` optimizer steps, over the window since the last report:

* the module's metrics of the last optimizer step (``train/loss``: the mean over its
  micro-batches on rank 0; ``train/lr``, ``train/grad_norm``, ``train/skipped_steps``;
  fp16: ``train/loss_scale``, ``train/overflow_steps``) and ``train/loss_smoothed``
  (exponential smoothing of ``train/loss`` over every step),
* ``time/step_s``, ``time/data_wait_s``, ``time/compute_s``, ``time/other_s`` and
  ``time/data_wait_fraction``: the wall time per step split into waiting for the
  batch, the training step itself, and the rest (checkpoints, samples, eval:
  the callbacks after this one, timed by :meth:`TrainingMetrics.end_marker`),
* ``throughput/samples_per_s_per_gpu``, ``throughput/samples_per_s`` (all
  ranks), ``throughput/images_per_s(_per_gpu)`` (one training image per sample),
* ``perf/mfu`` = achieved FLOP/s per GPU / peak FLOP/s, with the FLOPs per
  sample of :mod:`train.model.flops`; the peak used is printed once and logged as
  ``perf/peak_tflops``,
* ``memory/max_allocated_gib``, ``memory/max_reserved_gib`` (CUDA),
* ``data/good``, ``data/bad``, ``data/bad/<reason>``, ``data/pad_batches`` (all ranks)
  and ``train/skipped_steps``.

Per-step times are per *optimizer* step: with gradient accumulation a step is
several micro-batches (``time/micro_batches_per_step``), all of whose samples
count. Pad batches (weight 0) count as batches but not as samples. The clock
is injectable so tests can drive it.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from lightning.pytorch.callbacks import Callback

__all__ = ["TrainingMetrics"]


class TrainingMetrics(Callback):
    def __init__(self, every_n_steps: int, flops_per_sample: float | None = None, peak_tflops: float | None = None,
                 peak_source: str = "", clock: Callable[[], float] = time.perf_counter, smoothing: float = 0.9,
                 peak_override: float | None = None):
        self.every = max(1, int(every_n_steps))
        self.flops_per_sample = flops_per_sample
        self.peak_tflops = peak_tflops
        self.peak_source = peak_source
        self.peak_override = peak_override
        self.clock = clock
        self.smoothing = smoothing
        self.loss_smoothed: float | None = None
        self.last: dict = {}
        self._reset_window()
        self._last_end: float | None = None  # the previous step, all callbacks included, ended
        self._step_end: float | None = None  # the training step itself ended
        self._batch_start: float | None = None
        self._last_reported_step = -1
        self._last_step: int | None = None

    # Saved in checkpoints (Lightning's callback state): the smoothed loss continues across a resume.
    def state_dict(self) -> dict:
        return {"loss_smoothed": self.loss_smoothed}

    def load_state_dict(self, state_dict: dict) -> None:
        value = state_dict.get("loss_smoothed")
        self.loss_smoothed = None if value is None else float(value)

    def _reset_window(self) -> None:
        self.window = {"data_wait": 0.0, "compute": 0.0, "other": 0.0, "samples": 0.0, "steps": 0, "batches": 0}

    def end_marker(self) -> Callback:
        """A callback to put last: it times what the callbacks between it and this one did."""
        metrics = self

        class _EndOfStep(Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                now = metrics.clock()
                if metrics._step_end is not None:
                    metrics.window["other"] += now - metrics._step_end
                metrics._last_end = now

        return _EndOfStep()

    # ------------------------------------------------------------- hooks

    def on_train_start(self, trainer, pl_module) -> None:
        self._last_end = self.clock()
        self._last_step = trainer.global_step
        if self.peak_tflops is None:
            from train.model.flops import peak_tflops

            self.peak_tflops, self.peak_source = peak_tflops(pl_module.device, self.peak_override)
        if trainer.is_global_zero and self.flops_per_sample:
            peak = f"{self.peak_tflops:g} TFLOP/s ({self.peak_source})" if self.peak_tflops else self.peak_source
            print(f"MFU model: {self.flops_per_sample / 1e12:.4g} TFLOP per training sample (docs/reference.md section 8 "
                  f"cost model, counted on this architecture); peak: {peak}", flush=True)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = self.clock()
        if self._last_end is not None:
            self.window["data_wait"] += now - self._last_end
        self._batch_start = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = self.clock()
        if self._batch_start is not None:
            self.window["compute"] += now - self._batch_start
        self._last_end = self._step_end = now
        self.window["samples"] += float(batch["weight"].sum()) if "weight" in batch else len(batch["key"])
        self.window["batches"] += 1
        step = trainer.global_step
        if self._last_step is None:
            self._last_step = step - 1
        stepped = step != self._last_step
        self.window["steps"] += step - self._last_step  # 0 for a micro-batch inside an accumulation window
        self._last_step = step
        step_metrics = getattr(pl_module, "step_metrics", None)
        if step_metrics is not None:  # the module's loss of the optimizer step just made
            value = step_metrics.get("train/loss") if stepped else None
        else:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            value = float(loss) if loss is not None and torch.is_tensor(loss) and torch.isfinite(loss) else None
        if value is not None:
            self.loss_smoothed = value if self.loss_smoothed is None else (
                self.smoothing * self.loss_smoothed + (1 - self.smoothing) * value)
        if step % self.every == 0 and step != self._last_reported_step and self.window["steps"]:
            self._last_reported_step = step
            self.report(trainer, pl_module)

    # ------------------------------------------------------------ report

    def compute(self, world_size: int, total_samples: float | None = None) -> dict:
        """Metrics of the current window (``total_samples``: all ranks' samples, default this rank's x world)."""
        w = self.window
        elapsed = w["data_wait"] + w["compute"] + w["other"]
        metrics = {
            "time/step_s": elapsed / w["steps"],
            "time/data_wait_s": w["data_wait"] / w["steps"],
            "time/compute_s": w["compute"] / w["steps"],
            "time/other_s": w["other"] / w["steps"],
            "time/data_wait_fraction": w["data_wait"] / elapsed if elapsed else 0.0,
            "time/micro_batches_per_step": w["batches"] / w["steps"],
        }
        if elapsed > 0:
            per_gpu = w["samples"] / elapsed
            total = (total_samples if total_samples is not None else w["samples"] * world_size) / elapsed
            metrics.update({
                "throughput/samples_per_s_per_gpu": per_gpu, "throughput/samples_per_s": total,
                "throughput/images_per_s_per_gpu": per_gpu, "throughput/images_per_s": total,
            })
            if self.flops_per_sample and self.peak_tflops:
                metrics["perf/mfu"] = per_gpu * self.flops_per_sample / (self.peak_tflops * 1e12)
                metrics["perf/peak_tflops"] = self.peak_tflops
            if self.flops_per_sample:
                metrics["perf/tflops_per_gpu"] = per_gpu * self.flops_per_sample / 1e12
        if self.loss_smoothed is not None:
            metrics["train/loss_smoothed"] = self.loss_smoothed
        return metrics

    def report(self, trainer, pl_module) -> dict:
        strategy = trainer.strategy
        device = pl_module.device
        samples = torch.tensor(self.window["samples"], device=device, dtype=torch.float64)
        total = float(strategy.reduce(samples, reduce_op="sum")) if trainer.world_size > 1 else None
        metrics = self.compute(trainer.world_size, total)
        if device.type == "cuda":
            metrics["memory/max_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            metrics["memory/max_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
            torch.cuda.reset_peak_memory_stats(device)
        metrics.update(self._data_counters(trainer, device))
        metrics.update(getattr(pl_module, "step_metrics", None) or {})
        metrics["train/skipped_steps"] = float(getattr(pl_module, "skipped_steps", 0))
        metrics.update(getattr(pl_module, "diagnostics", {}) or {})
        self.last = metrics
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        self._reset_window()
        return metrics

    def _data_counters(self, trainer, device) -> dict:
        from data.records import REASONS

        counters = getattr(trainer.datamodule, "counters", None) or {}
        keys = ["good", "pad_batches"] + [f"bad/{r}" for r in REASONS]  # same order and length on every rank
        values = torch.tensor([float(counters.get(k, 0)) for k in keys], device=device, dtype=torch.float64)
        if trainer.world_size > 1:
            values = trainer.strategy.reduce(values, reduce_op="sum")
        out = {f"data/{k}": float(v) for k, v in zip(keys, values.tolist()) if v or k in ("good", "pad_batches")}
        out["data/bad"] = sum(v for k, v in out.items() if k.startswith("data/bad/"))
        return out
