"""Framework overhead on CPU: a bare PyTorch loop doing exactly our training step vs `brushtrain fit`'s machinery.

Both sides train the same generated tiny models (``tiny:sd15``) on the same batches, decoded once from the same
synthetic shards and kept in memory, so neither pays for data loading:

* **bare**: the step written out with torch and the model functions alone (no Lightning, no BrushNetModule):
  one batched VAE encode of image and masked image, prompt encoding, each sample's VAE samples, noise and timestep
  from a generator seeded by (seed, the sample's seed), the injected forward (branch + frozen UNet), the loss, backward, gradient clipping,
  AdamW with the learning-rate schedule, EMA.
* **brushtrain**: ``train.commands.fit.train`` with the default job's config (``configs/tiny_cpu.yaml``): Trainer,
  BrushNetModule, the default callbacks (metrics and diagnostics, progress lines, CSV logger); checkpoints,
  export, held-out evaluation and sample grids off (they are not per-step work).

The stopwatch is the batch source, the same object on both sides: the wall time between the requests for
batch ``warmup`` and batch ``warmup + steps`` (a whole number of log intervals, so the work done every
``trainer.log_every_n_steps`` counts). The two sides alternate, ``--repeats`` times; medians are reported with
the spread. As a check that the bare loop is exactly our step, its losses are compared with the losses
brushtrain logged at the same steps.

  .venv/bin/python benchmarks/overhead.py                      # both sizes
  .venv/bin/python benchmarks/overhead.py --sizes default --repeats 5

Sizes: ``default`` = the default job (64 px, batch 8); ``compute`` = the same models at 256 px, batch 8,
where the step's arithmetic dominates. One JSON line per size; the last line is the default job's:
``{"bare_step_s": x, "brushtrain_step_s": y, "ratio": y / x, ...}``.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {"default": {"resolution": 64, "batch_size": 8}, "compute": {"resolution": 256, "batch_size": 8}}


class TimedBatches:
    """The same batches, cycled ``total`` times; records when each one was asked for (the stopwatch)."""

    def __init__(self, batches: list[dict], total: int):
        self.batches, self.total = batches, total
        self.times: list[float] = []

    def __len__(self) -> int:
        return self.total

    def __iter__(self):
        self.times = []
        for i in range(self.total):
            self.times.append(time.perf_counter())
            yield self.batches[i % len(self.batches)]

    def per_step(self, warmup: int, steps: int) -> float:
        return (self.times[warmup + steps] - self.times[warmup]) / steps


def config(out: Path, size: dict, max_steps: int):
    from train.commands.fit import load_fit_config

    overrides = [f"output_dir={out}", f"data.resolution={size['resolution']}", f"data.batch_size={size['batch_size']}",
                 f"trainer.max_steps={max_steps}", "resume=null", "logging.logger=csv", "samples.enabled=false",
                 "eval.at_start=false", "eval.at_end=false", "synth.enabled=false", f"data.shards={out / 'shards'}",
                 "checkpoint.every_n_steps=0", "checkpoint.export_on_end=false", "trainer.progress_bar=false"]
    cfg, launch = load_fit_config([], overrides)  # configs/tiny_cpu.yaml, the default job
    return cfg, launch


def make_batches(cfg, count: int) -> list[dict]:
    from data.brushdata import BrushDataLoader
    from train.setup.build import data_config, resolve_shards

    data_cfg = data_config(cfg, resolve_shards(cfg))
    data_cfg.num_workers = 0
    batches = []
    for batch in BrushDataLoader(data_cfg):
        batches.append(batch)
        if len(batches) == count:
            return batches
    raise RuntimeError(f"only {len(batches)} batches in {cfg.data.shards}")


def _generator(seed: int, *key: int) -> torch.Generator:
    value = int(np.random.SeedSequence([seed, *key]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(value)


def bare(cfg, base_path: Path, source: TimedBatches) -> list[float]:
    """Our training step in plain PyTorch (single process, the config's precision: fp32 for the default job)."""
    from diffusers import DDPMScheduler

    from data.batch import model_inputs
    from train.engine.ema import BranchEMA
    from train.engine.losses import per_sample_mse, training_target
    from train.engine.optim import lr_at
    from train.model.brushnet import BrushNetModel, make_conditioning, vae_encode
    from train.model.components import encode_prompts, load_base
    from train.model.injection import brushnet_unet_forward

    assert cfg.trainer.precision == "32-true" and cfg.model.frozen_dtype == "fp32", "the bare loop is the fp32 step"
    base = load_base(base_path).freeze()
    branch = BrushNetModel.from_unet(base.unet).train()
    if cfg.model.tie_conv_in_bias:
        branch.conv_in_condition.bias.requires_grad_(False)  # as brushtrain does for a branch made from the UNet
    scheduler = DDPMScheduler.from_config(base.scheduler.config)
    prediction = cfg.model.prediction_type or scheduler.config.prediction_type
    o = cfg.optim
    params = [p for p in branch.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay, fused=True)
    ema = BranchEMA(branch, cfg.ema.decay) if cfg.ema.enabled else None
    losses = []
    for step, batch in enumerate(source):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, o, cfg.trainer.max_steps)
        gens = [_generator(cfg.trainer.seed, 0x5A3, int(s)) for s in batch["sample_seed"].tolist()]
        with torch.no_grad():
            x = model_inputs(batch, "cpu")
            both = vae_encode(base.vae, torch.cat([x["pixels"], x["masked_pixels"]]), gens + gens)
            latents, masked = both.float().chunk(2)
            cond = make_conditioning(masked, x["keep_mask"])
            embeds, _ = encode_prompts(base, batch["caption"])
        noise = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in gens])
        n_train = scheduler.config.num_train_timesteps
        t = torch.cat([torch.randint(0, n_train, (1,), generator=g) for g in gens])
        noisy = scheduler.add_noise(latents, noise, t)
        target = training_target(scheduler, latents, noise, t, prediction)
        pred = brushnet_unet_forward(base.unet, branch, noisy, t, embeds, cond,
                                     conditioning_scale=cfg.model.conditioning_scale)
        weight = batch["weight"].float()
        loss = (per_sample_mse(pred, target) * weight).sum() / weight.sum().clamp(min=1.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, o.grad_clip or float("inf"))
        opt.step()
        opt.zero_grad(set_to_none=True)
        if ema is not None and (step + 1) % cfg.ema.every == 0:
            ema.update(branch)
        losses.append(loss.item())
    return losses


def brushtrain(cfg, launch, source: TimedBatches) -> dict[int, float]:
    """`brushtrain fit`'s training (train.commands.fit.train) on these batches; returns the logged losses by step."""
    import lightning as L

    from train.commands.fit import train

    class Batches(L.LightningDataModule):
        def train_dataloader(self):
            return source

    train(cfg, launch, datamodule=Batches())
    losses = {}
    for path in glob.glob(str(Path(cfg.output_dir) / "logs" / "version_*" / "metrics.csv")):
        with open(path) as f:
            losses.update({int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")})
    return losses


def measure(name: str, size: dict, warmup: int, steps: int, repeats: int, work: Path) -> dict:
    import shutil

    from data.synth import write_synthetic_shards
    from train.model.tiny import write_generated_base
    from train.setup.prepare import base_path as generated_base_path
    from train.setup.runtime import devices

    total = warmup + steps + 1
    cfg, launch = config(work / name, size, total)
    write_synthetic_shards(work / name / "shards", 128, 64, seed=1234, min_size=size["resolution"],
                           max_size=size["resolution"] * 3 // 2)
    base_path = generated_base_path(cfg)
    write_generated_base(base_path, cfg.model.base, seed=cfg.trainer.seed)
    devices(cfg)  # the thread count brushtrain uses, for both sides
    batches = make_batches(cfg, 16)
    times = {"bare": [], "brushtrain": []}
    check = None
    for r in range(repeats):
        source = TimedBatches(batches, total)
        bare_losses = bare(cfg, base_path, source)
        times["bare"].append(source.per_step(warmup, steps))
        shutil.rmtree(work / name / "logs", ignore_errors=True)
        source = TimedBatches(batches, total)
        logged = brushtrain(cfg, launch, source)
        times["brushtrain"].append(source.per_step(warmup, steps))
        common = [s for s in logged if 1 <= s <= len(bare_losses)]  # logged at the step the update ended on
        check = max(abs(logged[s] - bare_losses[s - 1]) / abs(bare_losses[s - 1]) for s in common) if common else None
        print(f"{name} repeat {r + 1}/{repeats}: bare {times['bare'][-1] * 1e3:.1f} ms/step, brushtrain "
              f"{times['brushtrain'][-1] * 1e3:.1f} ms/step", flush=True)
    b, t = statistics.median(times["bare"]), statistics.median(times["brushtrain"])
    return {"size": name, **size, "threads": torch.get_num_threads(), "steps_timed": steps, "repeats": repeats,
            "bare_step_s": round(b, 5), "brushtrain_step_s": round(t, 5), "ratio": round(t / b, 4),
            "bare_spread_s": [round(min(times["bare"]), 5), round(max(times["bare"]), 5)],
            "brushtrain_spread_s": [round(min(times["brushtrain"]), 5), round(max(times["brushtrain"]), 5)],
            "loss_max_rel_diff": None if check is None else float(f"{check:.2e}"), "load_avg": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="compute,default", help="comma-separated: compute, default (last one printed last)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default: 60 at the default size, 20 at compute)")
    ap.add_argument("--work", default=None, help="folder for models, shards and logs (default: a temporary one)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from train.setup.runtime import quiet_libraries

    quiet_libraries()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        for name in args.sizes.split(","):
            steps = args.steps or (60 if name == "default" else 20)
            rows.append(measure(name, SIZES[name], args.warmup, steps, args.repeats, work))
    print(f"{'size':<9}{'px':>5}{'batch':>6}{'bare ms':>10}{'brushtrain ms':>15}{'ratio':>8}  spread (bare | brushtrain, ms)")
    for r in rows:
        spread = "{:.1f}-{:.1f} | {:.1f}-{:.1f}".format(*(1e3 * v for v in r["bare_spread_s"] + r["brushtrain_spread_s"]))
        print(f"{r['size']:<9}{r['resolution']:>5}{r['batch_size']:>6}{r['bare_step_s'] * 1e3:>10.1f}"
              f"{r['brushtrain_step_s'] * 1e3:>15.1f}{r['ratio']:>8.3f}  {spread}")
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
