"""Step checkpoints: written by all ranks together, atomically, the last K kept; finding one to resume.

Layout under ``<output_dir>/checkpoints``::

    step-00001000/            one complete checkpoint (renamed into place when every rank is done)
        model.ckpt            DDP / single process: Lightning's checkpoint file
        checkpoint/, latest   DeepSpeed: its own (possibly sharded) layout
        brushnet_config.json  the branch config, for export
        ema.safetensors       the EMA weights, when EMA is on
        meta.json             step, strategy, time
    step-00002000.tmp-.../    a checkpoint being written (ignored by resume, removed later)
    latest                    the name of the newest complete checkpoint

A checkpoint directory appears only once every rank has written its part
(``trainer.save_checkpoint`` is collective under DeepSpeed; no rank-0-only
saves), so a crash or a second signal while saving leaves the previous one
intact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

__all__ = ["StepCheckpoint", "ExportOnEnd", "find_latest", "resolve_resume", "checkpoint_file", "DDP_FILE", "EMA_FILE"]

DDP_FILE = "model.ckpt"
EMA_FILE = "ema.safetensors"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def _is_deepspeed(trainer: L.Trainer) -> bool:
    return type(trainer.strategy).__name__.endswith("DeepSpeedStrategy")


def find_latest(checkpoint_dir: str | Path) -> Path | None:
    """The newest complete ``step-N`` checkpoint, or None."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return None
    steps = [(int(m.group(1)), p) for p in checkpoint_dir.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    complete = [(s, p) for s, p in steps if (p / "meta.json").is_file()]
    return max(complete)[1] if complete else None


def checkpoint_file(path: str | Path) -> Path:
    """What Lightning's ``ckpt_path`` wants for one of our checkpoints (or a plain one)."""
    path = Path(path)
    if path.is_dir() and (path / DDP_FILE).is_file():
        return path / DDP_FILE
    return path


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """``None``, ``"auto"`` (latest in output_dir, or nothing on a fresh start) or a path -> checkpoint path."""
    if not resume:
        return None
    if resume == "auto":
        latest = find_latest(Path(output_dir) / "checkpoints")
        return checkpoint_file(latest) if latest else None
    path = Path(resume)
    if not path.exists():
        raise FileNotFoundError(f"resume checkpoint {path} does not exist")
    if path.is_dir() and _STEP_DIR.match(path.name) is None and (path / "checkpoints").is_dir():
        latest = find_latest(path / "checkpoints")  # an output_dir was given
        if latest is None:
            raise FileNotFoundError(f"{path} has no complete checkpoint under checkpoints/")
        path = latest
    return checkpoint_file(path)


class StepCheckpoint(Callback):
    """Save every ``every_n_steps`` optimizer steps and at the end of training (unless ``save_on_end`` is off);
    keep the last ``keep_last``."""

    def __init__(self, dirpath: str | Path, every_n_steps: int, keep_last: int = 3, branch_config: dict | None = None,
                 save_on_end: bool = True):
        self.dirpath = Path(dirpath)
        self.save_on_end = save_on_end
        self.every_n_steps = every_n_steps
        self.keep_last = keep_last
        self.branch_config = branch_config or {}
        self.last_saved_step: int | None = None
        self.saved: list[Path] = []

    # Lightning callback state: nothing to restore beyond what the trainer has.
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self.last_saved_step:
            self.save(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.save_on_end and trainer.global_step != self.last_saved_step:
            self.save(trainer, pl_module)

    def save(self, trainer: L.Trainer, pl_module: L.LightningModule | None = None) -> Path:
        """Collective: every rank must call it at the same step."""
        step = trainer.global_step
        final = self.dirpath / f"step-{step:08d}"
        tmp = self.dirpath / f"{final.name}.tmp-{int(time.time())}"
        tmp = Path(trainer.strategy.broadcast(str(tmp)))  # one name for every rank
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            for stale in self.dirpath.glob("*.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir(parents=True)
        trainer.strategy.barrier("brushtrain-ckpt-start")
        target = tmp if _is_deepspeed(trainer) else tmp / DDP_FILE
        trainer.save_checkpoint(target, weights_only=False)  # full state; DeepSpeed: every rank writes its shards
        trainer.strategy.barrier("brushtrain-ckpt-written")
        if trainer.is_global_zero:
            (tmp / "brushnet_config.json").write_text(json.dumps(self.branch_config, indent=2))
            ema = getattr(pl_module, "ema", None)
            if ema is not None:  # identical on every rank; a plain file for export
                from safetensors.torch import save_file

                save_file({k: v.contiguous() for k, v in ema.state_dict()["shadow"].items()}, str(tmp / EMA_FILE))
            meta = {"step": step, "epoch": trainer.current_epoch, "strategy": type(trainer.strategy).__name__,
                    "world_size": trainer.world_size, "time": time.time()}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
            _fsync_tree(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _write_atomic(self.dirpath / "latest", final.name + "\n")
            self._prune()
        trainer.strategy.barrier("brushtrain-ckpt-done")
        self.last_saved_step = step
        return final

    def _prune(self) -> None:
        steps = sorted((int(m.group(1)), p) for p in self.dirpath.iterdir() if (m := _STEP_DIR.match(p.name)))
        for _, path in steps[: max(0, len(steps) - self.keep_last)]:
            shutil.rmtree(path, ignore_errors=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


class ExportOnEnd(Callback):
    """At the end of training, rank 0 exports the final checkpoint to ``<output_dir>/brushnet`` (and ``-ema``)."""

    def __init__(self, checkpoint_callback, output_dir: str | Path, ema: bool = False):
        self.checkpoint_callback = checkpoint_callback
        self.output_dir = Path(output_dir)
        self.ema = ema
        self.exported: list[Path] = []

    def on_train_end(self, trainer, pl_module) -> None:
        # Runs after StepCheckpoint.on_train_end (callback order), so the final checkpoint exists.
        from .export import export_branch

        if getattr(pl_module, "preempted", False):
            return  # the requeued job exports when it finishes
        if trainer.is_global_zero:
            latest = find_latest(self.checkpoint_callback.dirpath)
            targets = [(self.output_dir / "brushnet", False)] + ([(self.output_dir / "brushnet-ema", True)] if self.ema else [])
            if latest is None:  # checkpoint.save_on_end=false and no checkpoint written
                print("nothing exported: no checkpoint was written", flush=True)
                targets = []
            for out, ema in targets:
                self.exported.append(export_branch(latest, out, ema=ema))
                print(f"exported {'EMA ' if ema else ''}branch (reference layout) of {latest.name} to {out}", flush=True)
        trainer.strategy.barrier("brushtrain-export")
