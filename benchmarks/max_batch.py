"""The largest batch our training step fits on one GPU (benchmarks/gpu_check.sh).

Runs BrushNetModule's own step (``compute_loss``: one batched VAE encode, prompt encoding, noise, the injected
forward, the loss; then backward and a fused AdamW step) on synthetic uint8 batches, frozen parts in
``--frozen-dtype`` under autocast of that dtype, gradient checkpointing on the branch and the UNet unless
``--no-checkpointing``. Batches double from ``--start`` until one runs out of memory, then bisect (multiples of
8) while ``--time-limit`` allows. One process, no Trainer and no DeepSpeed (on one GPU ZeRO partitions
nothing; DeepSpeed's bf16 copies add about 2 bytes per branch parameter, 1.2 GB for SD1.5).

  python benchmarks/max_batch.py --base runs/base-sd15 --resolution 512

Last line: JSON with largest_batch, its peak memory and step time, the first batch that did not fit and where
it ran out (``vae_encode`` or ``train_step``); an error other than out-of-memory above a batch that ran ends the
search there (``error_batch``, ``error``) and the JSON still comes out.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def synthetic_batch(batch: int, resolution: int, step: int) -> dict:
    g = torch.Generator().manual_seed(step)
    return {"image": torch.randint(0, 256, (batch, 3, resolution, resolution), generator=g, dtype=torch.uint8),
            "keep_mask": (torch.rand(batch, 1, resolution, resolution, generator=g) > 0.3).to(torch.uint8),
            "caption": ["a photo of a thing"] * batch, "weight": torch.ones(batch),
            "sample_seed": torch.arange(batch, dtype=torch.int64) + step * batch,
            "original_size": torch.tensor([[resolution, resolution]] * batch),
            "crop_top_left": torch.zeros(batch, 2, dtype=torch.long)}


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--start", type=int, default=32)
    ap.add_argument("--max", type=int, default=2048, help="stop doubling here (a CPU dry run sets it low)")
    ap.add_argument("--frozen-dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--time-limit", type=float, default=60.0, help="seconds from start (model loading included)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    from omegaconf import OmegaConf

    from train.engine.module import BrushNetModule
    from train.engine.optim import build_optimizer
    from train.model.brushnet import BrushNetModel
    from train.model.components import load_base
    from train.schema import EMAConfig, ModelConfig, OptimConfig

    started = time.monotonic()
    device = torch.device(args.device)
    base = load_base(args.base)
    branch = BrushNetModel.from_unet(base.unet)
    model_cfg = OmegaConf.structured(ModelConfig(base=args.base, frozen_dtype=args.frozen_dtype,
                                                 gradient_checkpointing=not args.no_checkpointing))
    optim_cfg = OptimConfig()
    module = BrushNetModule(base, branch, model_cfg, optim_cfg, EMAConfig(), max_steps=1000).to(device)
    module.base.to(device, dtype=module.frozen_dtype).freeze()
    opt = build_optimizer(module.brushnet.parameters(), optim_cfg, on_cuda=device.type == "cuda")
    cuda = device.type == "cuda"

    def attempt(batch: int, step: int) -> dict:
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        loss = module.compute_loss(synthetic_batch(batch, args.resolution, step))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize(device)
        return {"batch": batch, "step_s": round(time.perf_counter() - start, 3), "loss": float(loss.detach()),
                "peak_allocated_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if cuda else None}

    tried, best, first_oom, oom_in, error = [], None, None, None, None

    def run(batch: int) -> bool:
        nonlocal best, first_oom, oom_in, error
        where = None
        try:
            result = attempt(batch, len(tried))
        except Exception as exc:  # noqa: BLE001 - out-of-memory is the answer we look for
            if not is_oom(exc):
                if best is None:
                    raise  # the smallest batch fails: a bug, not a limit
                # Another error at a size above one that ran (a kernel's size limit past 2^31 elements, a cuDNN
                # status): the search stops there, and says so, with what it found so far. A CUDA error may
                # leave the context unusable, so nothing else runs on the device.
                first_line = (str(exc).strip() or "-").splitlines()[0][:300]
                error = {"batch": batch, "error": f"{type(exc).__name__}: {first_line}"}
                tried.append(dict(error))
                return False
            where = "vae_encode" if "vae_encode" in "".join(traceback.format_tb(exc.__traceback__)) else "train_step"
        if where is not None:  # outside the except block: the traceback's tensors are free now
            tried.append({"batch": batch, "oom": where})
            if first_oom is None or batch < first_oom:
                first_oom, oom_in = batch, where
            opt.zero_grad(set_to_none=True)
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
            return False
        tried.append(result)
        if best is None or batch > best["batch"]:
            best = result
        return True

    def time_left() -> bool:
        return error is None and time.monotonic() - started < args.time_limit

    batch = args.start
    while batch <= args.max and time_left() and run(batch):
        batch *= 2
    if best is not None and first_oom is not None:
        lo, hi = best["batch"], first_oom
        while hi - lo > 8 and time_left():
            mid = (lo + hi) // 2 // 8 * 8
            if mid <= lo:
                break
            lo, hi = (mid, hi) if run(mid) else (lo, mid)
    result = {
        "case": "max_batch", "resolution": args.resolution, "gradient_checkpointing": not args.no_checkpointing,
        "largest_batch": best["batch"] if best else None,
        "peak_allocated_gib": best["peak_allocated_gib"] if best else None,
        "step_s": best["step_s"] if best else None,
        "samples_per_s": round(best["batch"] / best["step_s"], 2) if best else None,
        "first_oom_batch": first_oom, "oom_in": oom_in, "capped": first_oom is None and error is None,
        "error_batch": error and error["batch"], "error": error and error["error"],
        "tried": tried, "search_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
