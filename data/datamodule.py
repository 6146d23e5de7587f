"""The Lightning face of the BrushData stream."""

from __future__ import annotations

import lightning as L

from data.brushdata import BrushDataLoader, DataConfig

__all__ = ["BrushDataModule"]


class BrushDataModule(L.LightningDataModule):
    """Training batches from BrushData shards, with the stream position in every checkpoint.

    Rank and world size come from the trainer. The position is saved with the
    trainer's count of finished batches in the epoch, so the batch Lightning
    fetched ahead is not counted as consumed, and is restored before the first
    batch of the resumed run.
    """

    def __init__(self, cfg: DataConfig):
        super().__init__()
        self.cfg = cfg
        self.loader: BrushDataLoader | None = None
        self._pending: dict | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.loader is None:
            trainer = self.trainer
            rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
            self.loader = BrushDataLoader(self.cfg, rank=rank, world_size=world)
        if self._pending is not None:
            self.loader.restore(self._pending)
            self._pending = None

    def train_dataloader(self) -> BrushDataLoader:
        if self.loader is None:
            self.setup("fit")
        return self.loader

    @property
    def counters(self) -> dict:
        """Good samples, bad ones by reason (``bad/<reason>``) and pad batches, on this rank."""
        return dict(self.loader.counters) if self.loader is not None else {}

    def _batches_done(self) -> int | None:
        trainer = self.trainer
        if trainer is None:
            return None
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def state_dict(self) -> dict:
        if self.loader is None:
            return {}
        return {"position": self.loader.position(batches_done=self._batches_done())}

    def load_state_dict(self, state: dict) -> None:
        if not state or "position" not in state:
            return
        if self.loader is not None:
            self.loader.restore(state["position"])
        else:
            self._pending = state["position"]
