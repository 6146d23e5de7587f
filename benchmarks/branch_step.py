"""Training-step cost of a full-size BrushNet branch in a frozen UNet (random weights).

Builds the SD1.5 or SDXL UNet from ``configs/architectures`` (no downloads),
a branch with ``from_unet``, and times forward + backward + AdamW step of the
branch with the UNet frozen in bf16 and the branch in fp32 under bf16 autocast
(the trainer's precision), with and without gradient checkpointing, side by
side. Prints one table and a JSON line per configuration.

  python benchmarks/branch_step.py --arch sd15 --device cuda --batch 2 --resolution 512
  python benchmarks/branch_step.py --arch sd15 --device cpu --batch 1 --resolution 256 --steps 2 --warmup 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def build(arch: str, device: torch.device):
    from diffusers import UNet2DConditionModel

    from train.model.brushnet import BrushNetModel

    with device:
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(ROOT / "configs/architectures" / arch / "unet"))
    unet.to(dtype=torch.bfloat16).eval().requires_grad_(False)
    branch = BrushNetModel.from_unet(unet).to(device=device, dtype=torch.float32).train()
    return unet, branch


def inputs(unet, batch: int, resolution: int, device: torch.device):
    from train.model.tiny import random_unet_inputs

    x = random_unet_inputs(unet, batch, resolution // 8, device=device)
    x["timestep"] = torch.randint(0, 1000, (batch,), device=device)
    return x


def measure(unet, branch, x, device, steps: int, warmup: int, checkpointing: bool) -> dict:
    from train.model.injection import brushnet_unet_forward

    for model in (unet, branch):
        (model.enable_gradient_checkpointing if checkpointing else model.disable_gradient_checkpointing)()
    opt = torch.optim.AdamW(branch.parameters(), lr=1e-5, fused=device.type == "cuda")
    target = torch.randn_like(x["sample"])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        sync()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            pred = brushnet_unet_forward(unet, branch, **x)
        loss = torch.nn.functional.mse_loss(pred.float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    step = sorted(times)[len(times) // 2]
    batch = x["sample"].shape[0]
    return {
        "gradient_checkpointing": checkpointing,
        "step_s": round(step, 4),
        "samples_per_s": round(batch / step, 2),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
        "loss_finite": bool(torch.isfinite(loss).item()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=["sd15", "sdxl"], default="sd15")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    unet, branch = build(args.arch, device)
    x = inputs(unet, args.batch, args.resolution, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{args.arch}: UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.1f} M (frozen, bf16), "
          f"branch {sum(p.numel() for p in branch.parameters()) / 1e6:.1f} M (fp32, bf16 autocast), "
          f"batch {args.batch} at {args.resolution} px on {name}")
    rows = [measure(unet, branch, x, device, args.steps, args.warmup, ckpt) for ckpt in (False, True)]
    print(f"{'grad ckpt':>10} {'step s':>8} {'samples/s':>10} {'peak GiB':>9}")
    for r in rows:
        print(f"{str(r['gradient_checkpointing']):>10} {r['step_s']:>8} {r['samples_per_s']:>10} {str(r['peak_mem_gib']):>9}")
    for r in rows:
        print(json.dumps({"arch": args.arch, "device": name, "batch": args.batch, "resolution": args.resolution, **r}))


if __name__ == "__main__":
    main()
