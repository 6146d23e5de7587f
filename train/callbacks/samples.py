"""Inpainting samples during training: a fixed validation set, fixed seeds, the branch on and off.

Every ``samples.every_n_steps`` (and when training starts, so the untrained
baseline is on record) the current branch inpaints the validation items
through :class:`train.model.pipeline.BrushNetInpaintPipeline`. Each row of the grid is
masked input | mask | result | original | result with the branch off
(``conditioning_scale=0``, same seed), captioned with the prompt. Rows go to
the loggers as images (W&B: one captioned image per item) and the grid to
``<output_dir>/samples/step-NNNNNNNN.png``.

Distributed: the branch is a plain module under DDP and ZeRO-2, so rank 0
samples alone and the other ranks carry on; under ZeRO-3 its weights are
partitioned, so every rank runs the same sampling calls (the gathers inside
are collective) and rank 0 keeps the pictures. Nobody waits on a collective
that another rank never enters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image

from train.engine.compile import eager

__all__ = ["ValItem", "SampleGrids", "items_from_batch", "items_from_folder", "grid_rows"]


@dataclass
class ValItem:
    image: np.ndarray  # HxWx3 uint8
    mask: np.ndarray  # HxW uint8, 255 = paint
    prompt: str


def items_from_batch(batch: dict, count: int, include_pads: bool = False) -> list[ValItem]:
    items = []
    for i in range(len(batch["key"])):
        if float(batch["weight"][i]) == 0 and not include_pads:
            continue
        from train.model.pipeline import user_mask_from_keep

        image = batch["image"][i].permute(1, 2, 0).cpu().numpy().astype(np.uint8)
        mask = user_mask_from_keep(batch["keep_mask"][i, 0].cpu().numpy())
        items.append(ValItem(np.ascontiguousarray(image), mask, batch["caption"][i] or ""))
        if len(items) == count:
            break
    return items


def items_from_folder(folder: str | Path, count: int, resolution: int) -> list[ValItem]:
    """``STEM.jpg|png`` images with ``STEM_mask.png`` masks (white = paint) and ``STEM.txt`` prompts."""
    from data.benchmarks import folder_images

    folder = Path(folder)
    items = []
    for path in folder_images(folder):
        mask_path = folder / f"{path.stem}_mask.png"
        if not mask_path.is_file():
            raise FileNotFoundError(f"validation image {path} has no mask {mask_path.name}")
        image = Image.open(path).convert("RGB").resize((resolution, resolution), Image.BICUBIC)
        mask = Image.open(mask_path).convert("L").resize((resolution, resolution), Image.NEAREST)
        prompt_path = folder / f"{path.stem}.txt"
        prompt = prompt_path.read_text().strip() if prompt_path.is_file() else ""
        items.append(ValItem(np.asarray(image), np.asarray(mask), prompt))
        if len(items) == count:
            break
    if not items:
        raise FileNotFoundError(f"no validation images in {folder}")
    return items


def grid_rows(items: list[ValItem], results: np.ndarray, branch_off: np.ndarray) -> list[np.ndarray]:
    """One row per item: masked input | mask | result | original | branch off, over its prompt."""
    from data.preview import caption_strip
    from train.model.pipeline import mask_pictures

    rows = []
    for item, result, off in zip(items, results, branch_off):
        masked, mask_rgb = mask_pictures(item.image, item.mask)
        panel = np.concatenate([masked, mask_rgb, result, item.image, off], axis=1)
        strip = caption_strip(item.prompt, panel.shape[1], height=22, scale=0.35, empty="(empty prompt)")
        rows.append(np.concatenate([panel, strip], axis=0))
    return rows


class SampleGrids(Callback):
    def __init__(self, cfg, out_dir: str | Path, items: list[ValItem] | None = None, data_cfg=None, preemption=None):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.items = items  # None: taken from the first training batch (or the shards, see setup)
        self.data_cfg = data_cfg
        self.preemption = preemption  # a signal during start-up: no grid at the start
        self.saved: list[Path] = []
        self._last_step = -1

    # ---------------------------------------------------------- the items

    def setup(self, trainer, pl_module, stage=None) -> None:
        if self.items is not None:
            return
        source = self.cfg.source
        if source == "folder":
            self.items = items_from_folder(self.cfg.folder, self.cfg.count, self.data_cfg.resolution)
        elif source == "shards":
            from train.callbacks.evaluation import heldout_batches

            batches = heldout_batches(self.data_cfg, list(self.cfg.shards), self.cfg.count)  # resolved by the run
            self.items = [it for b in batches for it in items_from_batch(b, self.cfg.count)][: self.cfg.count]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.items is None:  # source "train": the first batch this process sees
            # Under ZeRO-3 every rank samples the same number of items (pads included if need be).
            zero3 = self._zero3(trainer, pl_module)
            self.items = items_from_batch(batch, self.cfg.count, include_pads=zero3)
            self._maybe_sample(trainer, pl_module, force=True)

    def on_train_start(self, trainer, pl_module) -> None:
        if self.items is not None and not (self.preemption is not None and self.preemption.preempted):
            self._maybe_sample(trainer, pl_module, force=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._maybe_sample(trainer, pl_module)

    # ----------------------------------------------------------- sampling

    def _maybe_sample(self, trainer, pl_module, force: bool = False) -> None:
        step = trainer.global_step
        due = force or (self.cfg.every_n_steps and step % self.cfg.every_n_steps == 0)
        if not due or step == self._last_step or not self.items:
            return
        self._last_step = step
        if trainer.is_global_zero or self._zero3(trainer, pl_module):
            self.sample(trainer, pl_module, step, keep=trainer.is_global_zero)

    @staticmethod
    def _zero3(trainer, pl_module) -> bool:
        return bool(pl_module.uses_deepspeed and trainer.strategy.zero_stage_3)

    @torch.no_grad()
    def generate(self, pl_module, items: list[ValItem], scale: float) -> np.ndarray:
        from train.model.pipeline import BrushNetInpaintPipeline

        pipe = BrushNetInpaintPipeline(pl_module.base, pl_module.brushnet, scheduler=self.cfg.scheduler)
        out = []
        for i, item in enumerate(items):  # one seed per item, the same for every call
            generator = torch.Generator(device=pl_module.device).manual_seed(self.cfg.seed + i)
            with pl_module.autocast():
                out.append(pipe(item.image, item.mask, item.prompt, num_inference_steps=self.cfg.steps,
                                guidance_scale=self.cfg.guidance_scale, conditioning_scale=scale,
                                generator=generator, output_type="np")[0])
        return np.stack(out)

    def sample(self, trainer, pl_module, step: int, keep: bool = True) -> Path | None:
        was_training = pl_module.brushnet.training
        pl_module.brushnet.eval()
        try:
            with eager():  # model.compile: the pipeline's shapes and eval mode, not worth a compile
                results = self.generate(pl_module, self.items, pl_module.model_cfg.conditioning_scale)
                branch_off = self.generate(pl_module, self.items, 0.0)
        finally:
            pl_module.brushnet.train(was_training)
        if not keep:
            return None
        rows = grid_rows(self.items, results, branch_off)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"step-{step:08d}.png"
        Image.fromarray(np.concatenate(rows, axis=0)).save(path)
        self.saved.append(path)
        captions = [f"{item.prompt} | masked input, mask, result, original, branch off" for item in self.items]
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="samples", images=[Image.fromarray(r) for r in rows], caption=captions, step=step)
        print(f"step {step}: inpainting samples in {path}", flush=True)
        return path
