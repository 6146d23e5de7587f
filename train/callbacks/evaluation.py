"""Held-out masked-region denoising loss, at the start and end of a run (and every N steps).

The same fixed held-out batches, timesteps and noise every time, with the
branch and with the branch off (``conditioning_scale=0``, i.e. the frozen UNet
alone). A branch that learned predicts the noise better in the hole (and far
better in the known region, which it sees). Results go to the log, to stdout
(rank 0) and to ``<output_dir>/eval.json``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from common.files import write_text_atomic
from data.brushdata import BrushDataLoader, real_samples
from train.engine.compile import eager

__all__ = ["PeriodicEval", "DenoisingEval", "heldout_batches"]


def heldout_batches(data_cfg, shards: list[str], samples: int) -> list[dict]:
    """The first ``samples`` good held-out samples, deterministic (no shuffling, fixed seed)."""
    cfg = dataclasses.replace(
        data_cfg, shards=list(shards), num_workers=0, shuffle_shards=False, shuffle_buffer=1, caption_dropout=0.0,
        seed=0, max_bad_fraction=1.0, batch_size=min(int(data_cfg.batch_size), 8), pin_memory=False,
    )
    batches, seen = [], 0
    for batch in BrushDataLoader(cfg):
        batch = real_samples(batch)  # without the blank samples that fill a short last batch
        if not batch["key"]:
            continue  # a pad batch
        batches.append(batch)
        seen += len(batch["key"])
        if seen >= samples:
            break
    if not batches:
        raise ValueError(f"no held-out samples in {shards}")
    return batches


class PeriodicEval(Callback):
    """When a held-out evaluation runs: at the start and end (``at_start``/``at_end``) and every
    ``every_n_steps`` optimizer steps (once per step under gradient accumulation); never after a signal stopped
    the run. Subclasses implement ``evaluate(trainer, pl_module, label)``."""

    def __init__(self, eval_cfg, out_file: str | Path, preemption=None):
        self.cfg = eval_cfg
        self.out_file = Path(out_file)
        self.preemption = preemption  # asked, on every rank, before the end-of-run eval
        self.results: list[dict] = []
        self._last_step = -1  # with gradient accumulation a step ends one micro-batch, the next ones keep it

    def evaluate(self, trainer, pl_module, label: str):  # pragma: no cover - abstract
        raise NotImplementedError

    def append_record(self, record: dict) -> None:
        """Add ``record`` to the JSON history in ``out_file`` (rank 0), atomically."""
        history = json.loads(self.out_file.read_text()) if self.out_file.is_file() else []
        history.append(record)
        self.out_file.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.out_file, json.dumps(history, indent=2))

    def _stopped(self) -> bool:
        return self.preemption is not None and self.preemption.preempted

    def on_train_start(self, trainer, pl_module) -> None:
        if self.cfg.at_start and not self._stopped():
            self._last_step = trainer.global_step
            self.evaluate(trainer, pl_module, "start")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n, step = self.cfg.every_n_steps, trainer.global_step
        if n and step and step % n == 0 and step != self._last_step:
            self._last_step = step
            self.evaluate(trainer, pl_module, "during")

    def on_train_end(self, trainer, pl_module) -> None:
        if not self.cfg.at_end or self._stopped():
            return
        if self.preemption is None or not self.preemption.interrupts_end_phase(trainer, pl_module):
            self.evaluate(trainer, pl_module, "end")


class DenoisingEval(PeriodicEval):
    def __init__(self, eval_cfg, data_cfg, out_file: str | Path, preemption=None):
        super().__init__(eval_cfg, out_file, preemption)
        self.data_cfg = data_cfg
        self._batches: list[dict] | None = None

    def evaluate(self, trainer, pl_module, label: str) -> dict:
        if self._batches is None:
            self._batches = heldout_batches(self.data_cfg, list(self.cfg.shards), self.cfg.samples)
        timesteps = list(self.cfg.timesteps)
        with eager():  # model.compile: other shapes and eval mode, not worth a compile
            with_branch = pl_module.denoising_loss(self._batches, timesteps)
            branch_off = pl_module.denoising_loss(self._batches, timesteps, conditioning_scale=0.0)
        record = {"label": label, "step": trainer.global_step, "branch": with_branch, "branch_off": branch_off,
                  "samples": sum(len(b["key"]) for b in self._batches), "timesteps": timesteps}
        self.results.append(record)
        if trainer.is_global_zero:
            metrics = {f"eval/{k}": v for k, v in with_branch.items()}
            metrics.update({f"eval/{k}_branch_off": v for k, v in branch_off.items()})
            for logger in trainer.loggers:  # (self.log is not allowed in on_train_start/end)
                logger.log_metrics(metrics, step=trainer.global_step)
            print(
                f"held-out masked-region denoising loss at {label} (step {trainer.global_step}): "
                f"hole {with_branch['hole']:.4f}, known {with_branch['known']:.4f} "
                f"| branch off: hole {branch_off['hole']:.4f}, known {branch_off['known']:.4f}",
                flush=True,
            )
            self.append_record(record)
        return record
