"""The datamodule inside a real Lightning fit: the position survives a checkpoint and resume."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from data.brushdata import DataConfig
from data.datamodule import BrushDataModule
from data.synth import write_synthetic_shards


class KeyRecorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.keys: list[str] = []

    def training_step(self, batch, batch_idx):
        self.keys += [k for k, wt in zip(batch["key"], batch["weight"]) if wt > 0]
        return (self.w * batch["image"].float().mean() * batch["weight"].mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(shards, root, max_steps, ckpt_path=None, every=None):
    cfg = DataConfig(shards=[str(shards)], resolution=32, batch_size=4, num_workers=2, shuffle_buffer=6)
    callbacks = [L.pytorch.callbacks.ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=every, save_top_k=-1)] if every else []
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=bool(every), callbacks=callbacks,
                        default_root_dir=root)
    model = KeyRecorder()
    trainer.fit(model, datamodule=BrushDataModule(cfg), ckpt_path=ckpt_path)
    return model.keys


@pytest.mark.parametrize("stop", [7, 12])  # mid-epoch, and exactly at the end of epoch 0 (12 batches)
def test_fit_resume_continues_the_data_stream(tmp_path, stop):
    write_synthetic_shards(tmp_path / "shards", 45, samples_per_shard=10, min_size=32, max_size=48)
    straight = _fit(tmp_path / "shards", tmp_path / "a", max_steps=16)  # crosses an epoch boundary
    first = _fit(tmp_path / "shards", tmp_path / "b", max_steps=stop, every=stop)
    (ckpt,) = (tmp_path / "b" / "ckpt").glob("*.ckpt")
    second = _fit(tmp_path / "shards", tmp_path / "c", max_steps=16, ckpt_path=str(ckpt))
    assert len(straight) == 45 + 4 * 4  # epoch 1: 12 batches (two workers end with partial ones), then 4 full
    assert first + second == straight
    assert sorted(straight[:45]) == sorted(set(straight[:45])) and straight[45:49] != straight[:4], "epoch 1 reshuffled"
