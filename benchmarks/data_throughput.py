"""Data pipeline throughput per core: BrushTrain's stream vs the reference's per-sample steps.

Both read the same shards through the same tar reader, on one core (the
process is pinned to one CPU, one thread each for torch and OpenCV), at the
same resolution, for segmentation masks and for random brush masks, for each
source image size, timed in CPU seconds of the process. BrushTrain is timed through its real training stream
(``BrushDataLoader``, in process); the reference through
``reference_steps.reference_sample`` plus batching.

  .venv/bin/python benchmarks/data_throughput.py        # 600x800 and 1024x1366 JPEGs, shards under runs/bench-shards
  .venv/bin/python benchmarks/data_throughput.py --sizes 600x800,1024x1366,3000x4000 --samples 400 --repeats 5

Prints a table (the best of ``--repeats`` alternating runs of each side), then one JSON line per
(size, mask mode).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference_steps import reference_sample  # noqa: E402

from data.brushdata import BrushDataLoader, DataConfig, MaskConfig  # noqa: E402
from data.records import RawRecord, read_shard  # noqa: E402
from data.shards import expand_shards  # noqa: E402


def _clock() -> float:
    """CPU seconds of this process: it is pinned to one core and single-threaded, so this is the work done,
    whatever else the machine runs (wall time on a shared machine would charge other processes' time)."""
    return time.process_time()


def time_reference(shards: list[str], resolution: int, random_mask: bool, samples: int, batch_size: int) -> float:
    rng = np.random.default_rng(0)
    done, batch, start = 0, [], _clock()
    while done < samples:
        for shard in shards:
            for record in read_shard(shard):
                if not isinstance(record, RawRecord):
                    continue
                batch.append(reference_sample(record.members, resolution, random_mask, rng))
                if len(batch) == batch_size:
                    torch.stack([b["pixels"] for b in batch]), torch.stack([b["masked_pixels"] for b in batch])
                    torch.stack([b["mask"] for b in batch])
                    done += len(batch)
                    batch = []
                if done >= samples:
                    return done / (_clock() - start)
    return done / (_clock() - start)


def time_ours(shards: list[str], resolution: int, random_mask: bool, samples: int, batch_size: int) -> float:
    mask = MaskConfig(segmentation=0.0 if random_mask else 1.0, brush=1.0 if random_mask else 0.0)
    cfg = DataConfig(shards=shards, resolution=resolution, batch_size=batch_size, num_workers=0,
                     shuffle_buffer=100, mask=mask)
    loader = BrushDataLoader(cfg)
    done, start = 0, _clock()
    while done < samples:
        for batch in loader:
            done += int(batch["weight"].sum())
            if done >= samples:
                break
    return done / (_clock() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", default=str(ROOT / "runs" / "bench-shards"), help="folder for one shard set per size")
    ap.add_argument("--sizes", default="600x800,1024x1366", help="source image sizes, height x width, comma-separated")
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="alternate the two sides this many times; report the best")
    args = ap.parse_args()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    from data.synth import write_synthetic_shards

    rows = []
    for size in args.sizes.split(","):
        h, w = (int(v) for v in size.lower().split("x"))
        folder = Path(args.shards) / f"{h}x{w}"
        if not folder.exists():
            write_synthetic_shards(folder, 200, samples_per_shard=100, seed=0, prefix="bench", size=(h, w))
        shards = expand_shards(str(folder))
        for mode in ("segmentation", "brush"):
            random_mask = mode == "brush"
            ref = ours = 0.0
            for _ in range(args.repeats):  # alternating, so both sides see the same machine
                ref = max(ref, time_reference(shards, args.resolution, random_mask, args.samples, args.batch_size))
                ours = max(ours, time_ours(shards, args.resolution, random_mask, args.samples, args.batch_size))
            rows.append({"size": f"{h}x{w}", "mask": mode, "reference_samples_per_s": round(ref, 1),
                         "brushtrain_samples_per_s": round(ours, 1), "speedup": round(ours / ref, 2),
                         "resolution": args.resolution, "cores": 1})
    print(f"{args.resolution} px crops, one core, batch {args.batch_size}")
    print(f"{'source':<11}{'mask':<14}{'reference/s':>12}{'brushtrain/s':>14}{'speedup':>9}")
    for r in rows:
        print(f"{r['size']:<11}{r['mask']:<14}{r['reference_samples_per_s']:>12}{r['brushtrain_samples_per_s']:>14}"
              f"{r['speedup']:>8}x")
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
