"""Run by tests/test_steps.py: 2 DDP processes on CPU train our module with gradient accumulation and count
DDP's gradient all-reduces (a communication hook that counts, then all-reduces as usual).

  python tests/ddp_sync_script.py OUT_DIR ACCUMULATE STEPS
writes OUT_DIR/rank<R>.json: {"allreduce_calls": n, "global_step": s, "buckets": b}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.brushdata import DataConfig, MaskConfig  # noqa: E402
from data.datamodule import BrushDataModule  # noqa: E402
from data.synth import write_synthetic_shards  # noqa: E402
from train.engine.module import BrushNetModule  # noqa: E402
from train.model.brushnet import BrushNetModel  # noqa: E402
from train.model.tiny import build_tiny_base  # noqa: E402
from train.schema import EMAConfig, ModelConfig, OptimConfig  # noqa: E402

CALLS = {"n": 0, "buckets": 0}


def counting_allreduce(state, bucket):
    CALLS["n"] += 1
    CALLS["buckets"] = max(CALLS["buckets"], bucket.index() + 1)
    tensor = bucket.buffer().div_(dist.get_world_size())
    return dist.all_reduce(tensor, async_op=True).get_future().then(lambda fut: fut.value()[0])


def main() -> None:
    out, accumulate, steps = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    shards = out / "shards"
    if not shards.exists():
        write_synthetic_shards(shards, 32, samples_per_shard=16, min_size=64, max_size=72)
    base = build_tiny_base("sd15", seed=0)
    module = BrushNetModule(base, BrushNetModel.from_unet(base.unet), ModelConfig(base="tiny:sd15", frozen_dtype="fp32"),
                            OptimConfig(lr=1e-3), EMAConfig(), max_steps=steps, accumulate_grad_batches=accumulate,
                            freeze_conv_in_bias=True)
    data = BrushDataModule(DataConfig(shards=[str(shards)], resolution=64, batch_size=1, num_workers=0,
                                      mask=MaskConfig(segmentation=1.0)))
    class CountAllReduces(L.Callback):  # (Lightning registers DDP comm hooks on CUDA only)
        def on_train_start(self, trainer, pl_module):
            trainer.strategy.model.register_comm_hook(None, counting_allreduce)

    strategy = DDPStrategy(process_group_backend="gloo")
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=2, strategy=strategy, logger=False,
                        callbacks=[CountAllReduces()],
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                        default_root_dir=out, precision="32-true")
    trainer.fit(module, datamodule=data)
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(
        {"allreduce_calls": CALLS["n"], "global_step": trainer.global_step, "buckets": CALLS["buckets"]}))


if __name__ == "__main__":
    main()
