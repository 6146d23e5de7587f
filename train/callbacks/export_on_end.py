"""The export at the end of a run: the final checkpoint in the reference layout."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import Callback

from train.engine.checkpointing import find_latest
from train.engine.export import export_final

__all__ = ["ExportOnEnd"]


class ExportOnEnd(Callback):
    """At the end of training, rank 0 exports the final checkpoint to ``<output_dir>/brushnet`` (and ``-ema``).

    Skipped when a signal stopped training, or arrives before the export (``preemption``
    decides, on every rank together): the next run, or ``brushtrain export``, exports it.
    """

    def __init__(self, checkpoint_callback, output_dir: str | Path, ema: bool = False, preemption=None):
        self.checkpoint_callback = checkpoint_callback
        self.output_dir = Path(output_dir)
        self.ema = ema
        self.preemption = preemption
        self.exported: list[Path] = []

    def on_train_end(self, trainer, pl_module) -> None:
        # Runs after StepCheckpoint.on_train_end (callback order), so the final checkpoint exists.
        if self.preemption is not None and self.preemption.preempted:
            return  # the requeued job exports when it finishes
        if self.preemption is not None and self.preemption.interrupts_end_phase(trainer, pl_module):
            return
        try:
            if trainer.is_global_zero:
                final = self.checkpoint_callback.last_saved or find_latest(self.checkpoint_callback.dirpath)
                if final is None:  # checkpoint.save_on_end=false and no checkpoint written
                    print("nothing exported: no checkpoint was written", flush=True)
                else:
                    self.exported += export_final(final, self.output_dir, self.ema)
        finally:  # a failed export (the checkpoint is intact) must not leave the other ranks waiting here
            trainer.strategy.barrier("brushtrain-export")
