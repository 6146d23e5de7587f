"""Progress: a bar with step rate and ETA on a terminal, plain log lines otherwise (SLURM, files)."""

from __future__ import annotations

import sys
import time

from lightning.pytorch.callbacks import Callback

__all__ = ["StepProgress", "format_eta"]


def format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s"


class StepProgress(Callback):
    def __init__(self, max_steps: int, every_n_steps: int, bar: bool | None = None, metrics=None, clock=time.monotonic,
                 stream=None):
        self.max_steps = max_steps
        self.every = max(1, every_n_steps)
        self.stream = stream or sys.stdout
        self.bar = sys.stderr.isatty() if bar is None else bar
        self.metrics = metrics
        self.clock = clock
        self._tqdm = None
        self._start: tuple[float, int] | None = None
        self._last_line_step = -1

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = (self.clock(), trainer.global_step)
        if self.bar and trainer.is_global_zero:
            from tqdm.auto import tqdm

            self._tqdm = tqdm(total=self.max_steps, initial=trainer.global_step, unit="step", dynamic_ncols=True,
                              desc="train")

    def _loss(self, trainer, pl_module=None) -> float | None:
        """The last optimizer step's loss (the module's), else what Lightning has logged."""
        value = (getattr(pl_module, "step_metrics", None) or {}).get("train/loss")
        if value is None:
            value = trainer.callback_metrics.get("train/loss")
        return float(value) if value is not None else None

    def line(self, step: int, now: float, loss: float | None, last: dict) -> str:
        t0, s0 = self._start
        rate = (step - s0) / (now - t0) if now > t0 and step > s0 else 0.0
        eta = format_eta((self.max_steps - step) / rate) if rate else "?"
        parts = [f"step {step}/{self.max_steps} ({100 * step / self.max_steps:.1f}%)"]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if last.get("train/loss_smoothed") is not None:
            parts.append(f"(smoothed {last['train/loss_smoothed']:.4f})")
        if "throughput/samples_per_s" in last:
            parts.append(f"{last['throughput/samples_per_s']:.1f} samples/s")
        if "time/data_wait_fraction" in last:
            parts.append(f"data wait {100 * last['time/data_wait_fraction']:.0f}%")
        if "perf/mfu" in last:
            parts.append(f"MFU {100 * last['perf/mfu']:.1f}%")
        parts.append(f"{rate:.2f} steps/s, eta {eta}")
        return " ".join(parts)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.is_global_zero:
            return
        step = trainer.global_step
        last = self.metrics.last if self.metrics is not None else {}
        if self._tqdm is not None:
            self._tqdm.update(step - self._tqdm.n)
            loss = self._loss(trainer, pl_module)
            if loss is not None:
                self._tqdm.set_postfix(loss=f"{loss:.4f}", refresh=False)
        elif step % self.every == 0 and step != self._last_line_step:  # once per step, not per micro-batch
            self._last_line_step = step
            print(self.line(step, self.clock(), self._loss(trainer, pl_module), last), file=self.stream, flush=True)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
