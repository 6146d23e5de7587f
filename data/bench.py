"""Throughput of the training stream (decode, masks, augmentation, batching)."""

from __future__ import annotations

import time

from .brushdata import BadDataError, BrushDataLoader, DataConfig

__all__ = ["measure_throughput"]


def measure_throughput(cfg: DataConfig, samples: int = 500, warmup: int = 20) -> dict:
    """Samples/s over ``samples`` good samples after ``warmup`` (epochs repeat if the data is smaller)."""
    loader = BrushDataLoader(cfg)
    seen, start = 0, None
    while True:
        epoch_good = 0
        for batch in loader:
            n = int(batch["weight"].sum())
            seen += n
            epoch_good += n
            if start is None and seen >= warmup:
                start, seen = time.perf_counter(), 0
            if start is not None and seen >= samples:
                elapsed = time.perf_counter() - start
                return {
                    "samples_per_s": round(seen / elapsed, 1),
                    "samples": seen,
                    "seconds": round(elapsed, 3),
                    "workers": cfg.num_workers,
                    "resolution": cfg.resolution,
                    "bad": {k[4:]: v for k, v in loader.counters.items() if k.startswith("bad/")},
                }
        if epoch_good == 0:
            raise BadDataError(f"no good samples in {cfg.shards}: {loader.counters}")
