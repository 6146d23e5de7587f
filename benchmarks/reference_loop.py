"""A reference-style training loop, for the ratio to BrushTrain in the same run (benchmarks/gpu_check.sh).

What the reference ``train_brushnet.py`` does with its defaults, written with our model code (the branch and the
injection are numerically the reference's): every sample goes through the reference's per-sample preprocessing
(``reference_steps.reference_sample``: full JPEG decode, RLE loop, float masking, three bicubic resizes, CPU
normalisation) in the training process itself (0 loader workers); the frozen UNet, VAE and text encoder in fp16,
the branch in fp32 under fp16 autocast with a gradient scaler; two VAE encodes (image, masked image); the loss,
backward, unscale, clip to 1.0, ``torch.optim.AdamW`` (the reference's default optimizer), step.

  python benchmarks/reference_loop.py --base runs/base-sd15 --shards runs/shards-512 --batch 2 --steps 30

Last line: JSON with samples_per_s, data_wait_fraction (preprocessing / wall time), peak memory, MFU.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def records(shards: list[str]):
    from data.records import RawRecord, read_shard

    for shard in itertools.cycle(shards):
        for record in read_shard(shard):
            if isinstance(record, RawRecord):
                yield record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="diffusers model folder (SD1.5 layout)")
    ap.add_argument("--shards", required=True)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30, help="timed steps")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--peak-tflops", type=float, default=None, help="for MFU (default: known GPUs)")
    args = ap.parse_args()

    import random

    from diffusers import DDPMScheduler
    from reference_steps import reference_sample

    from data.shards import expand_shards
    from train.model.brushnet import BrushNetModel, make_conditioning, vae_encode
    from train.model.components import encode_prompts, load_base
    from train.model.flops import peak_tflops, training_flops_per_sample
    from train.model.injection import brushnet_unet_forward

    device = torch.device(args.device)
    torch.manual_seed(0)
    random.seed(0)
    rng = np.random.default_rng(0)  # the reference's mask randomness (np.random), seeded
    base = load_base(args.base).freeze()
    branch = BrushNetModel.from_unet(base.unet).to(device).train()
    flops = training_flops_per_sample(base, branch, args.resolution)["total"]
    base.to(device, dtype=torch.float16)  # weight_dtype = fp16 for every frozen part
    scheduler = DDPMScheduler.from_config(base.scheduler.config)
    params = [p for p in branch.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    scaler = torch.amp.GradScaler(device.type)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    source = records(expand_shards(args.shards))
    data_s = total_s = 0.0
    losses = []
    for step in range(args.warmup + args.steps):
        sync()
        start = time.perf_counter()
        samples = [reference_sample(next(source).members, args.resolution, random_mask=False, rng=rng) for _ in range(args.batch)]
        pixels = torch.stack([s["pixels"] for s in samples]).to(device, torch.float16)
        masked = torch.stack([s["masked_pixels"] for s in samples]).to(device, torch.float16)
        mask = torch.stack([s["mask"] for s in samples]).to(device, torch.float16)
        loaded = time.perf_counter()
        with torch.no_grad():
            latents = vae_encode(base.vae, pixels).float()
            cond = make_conditioning(vae_encode(base.vae, masked).float(), mask)
            embeds, _ = encode_prompts(base, [s["caption"] for s in samples])
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=device)
        noisy = scheduler.add_noise(latents, noise, t)
        with torch.autocast(device.type, dtype=torch.float16):
            pred = brushnet_unet_forward(base.unet, branch, noisy, t, embeds, cond)
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())  # the reference logs the loss every step
        sync()
        if step >= args.warmup:
            data_s += loaded - start
            total_s += time.perf_counter() - start
    peak, source_name = peak_tflops(device, args.peak_tflops)
    per_s = args.batch * args.steps / total_s
    result = {
        "case": "reference_loop", "batch": args.batch, "resolution": args.resolution, "steps_timed": args.steps,
        "samples_per_s": round(per_s, 3), "step_s": round(total_s / args.steps, 4),
        "data_wait_fraction": round(data_s / total_s, 4),
        "mfu": round(per_s * flops / (peak * 1e12), 4) if peak else None, "peak_tflops": peak, "peak_source": source_name,
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        "loss_finite": all(map(lambda v: v == v and abs(v) != float("inf"), losses)),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
