"""``eval.metrics`` during training: ``brushtrain evaluate``'s metrics on images generated from the held-out set.

At the start and end of a run and every ``eval.every_n_steps`` optimizer steps
(once per step: with gradient accumulation a step ends on one micro-batch and
the next ones keep its number), the current branch inpaints the first
``eval.metric_samples`` held-out samples (``eval.metric_steps`` UniPC steps,
the pipeline's default guidance, the generator re-seeded with
``eval.metric_seed`` for every image) and :class:`~train.scoring.inpaint_metrics.MetricSuite`
scores them against the originals, exactly as the command does. The means are
logged as ``eval/<metric>`` beside the denoising loss and appended to
``<output_dir>/eval_metrics.json``; a metric whose model is missing is printed
as skipped (with the reason) and not logged.

Distributed, as the sample grids (train/samples.py): under DDP and ZeRO-1/2
rank 0 generates and scores alone; under ZeRO-3 the branch's weights are
partitioned, so every rank runs the same generation calls (the gathers inside
are collective) and only rank 0 loads the metric models and scores. No rank
waits on a collective another never enters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from train.callbacks.evaluation import PeriodicEval
from train.engine.compile import eager

__all__ = ["InpaintMetricsEval"]


class InpaintMetricsEval(PeriodicEval):
    def __init__(self, eval_cfg, data_cfg, shards: list[str], out_file: str | Path, preemption=None):
        from train.scoring.inpaint_metrics import check_metric_names

        super().__init__(eval_cfg, out_file, preemption)
        self.names = check_metric_names(list(eval_cfg.metrics))
        self.data_cfg = data_cfg
        self.shards = shards
        self.items = None
        self.suite = None

    def _items(self):
        if self.items is None:
            from train.callbacks.evaluation import heldout_batches
            from train.callbacks.samples import items_from_batch

            n = int(self.cfg.metric_samples)
            batches = heldout_batches(self.data_cfg, self.shards, n)
            self.items = [it for b in batches for it in items_from_batch(b, n)][:n]
        return self.items

    def _suite(self, device):
        if self.suite is None:
            from train.scoring.inpaint_metrics import MetricModels, MetricSuite

            models = MetricModels.from_config(self.cfg.metric_models)
            self.suite = MetricSuite(self.names, models, self.cfg.metric_convention, device=device)
        return self.suite

    @staticmethod
    def _zero3(trainer, pl_module) -> bool:
        return bool(pl_module.uses_deepspeed and trainer.strategy.zero_stage_3)

    @torch.no_grad()
    def _generate(self, pl_module, items) -> list[np.ndarray]:
        from train.model.pipeline import BrushNetInpaintPipeline

        pipe = BrushNetInpaintPipeline(pl_module.base, pl_module.brushnet, scheduler="unipc")
        out = []
        for item in items:
            masked = item.image * (item.mask < 128)[..., None]  # the reference's input: the hole blacked out
            generator = torch.Generator(device=pl_module.device).manual_seed(int(self.cfg.metric_seed))
            with pl_module.autocast():
                result = pipe(masked, item.mask, item.prompt, num_inference_steps=int(self.cfg.metric_steps),
                              conditioning_scale=pl_module.model_cfg.conditioning_scale, generator=generator,
                              blend=False, output_type="np")[0]
            if self.cfg.metric_blend:
                from train.model.pipeline import blend_with_blurred_mask

                result = blend_with_blurred_mask(item.image, result, (item.mask >= 128).astype(np.float32))
            out.append(result)
        return out

    def evaluate(self, trainer, pl_module, label: str) -> dict | None:
        zero3 = self._zero3(trainer, pl_module)
        if not (trainer.is_global_zero or zero3):
            return None
        items = self._items()
        was_training = pl_module.brushnet.training
        pl_module.brushnet.eval()
        try:
            with eager():
                results = self._generate(pl_module, items)
        finally:
            pl_module.brushnet.train(was_training)
        if not trainer.is_global_zero:
            return None
        suite = self._suite(pl_module.device)
        scores = [suite.score(r, it.image, (it.mask >= 128).astype(np.float32), it.prompt)
                  for r, it in zip(results, items)]
        means = {}
        for name in self.names:
            vals = [s[name] for s in scores if name in s and np.isfinite(s[name])]
            if vals:
                means[name] = float(np.mean(vals))
        metrics = {f"eval/{k}": v for k, v in means.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        shown = ", ".join([f"{k} {v:.4f}" for k, v in means.items()] +
                          [f"{k} skipped ({why})" for k, why in suite.skipped.items()])
        print(f"inpainting metrics at {label} (step {trainer.global_step}, {len(items)} held-out images): {shown}",
              flush=True)
        record = {"label": label, "step": trainer.global_step, "images": len(items), "metrics": means,
                  "skipped": dict(suite.skipped), "convention": self.cfg.metric_convention}
        self.results.append(record)
        self.append_record(record)
        return record
