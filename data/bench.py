"""Throughput of the training stream (decode, masks, augmentation, batching), and its mask statistics."""

from __future__ import annotations

import time

from data.brushdata import BadDataError, BrushDataLoader, DataConfig
from data.masks import hole_fraction_stats
from data.records import jpeg_decoder

__all__ = ["measure_throughput"]


def measure_throughput(cfg: DataConfig, samples: int = 500, warmup: int = 20, mask_stats: bool = False) -> dict:
    """Samples/s over ``samples`` good samples after ``warmup`` (epochs repeat if the data is smaller).

    ``mask_stats``: also the hole statistics (:func:`data.masks.hole_fraction_stats`) of the keep masks
    of every good sample the stream yielded, warm-up included, under ``"masks"``.
    """
    loader = BrushDataLoader(cfg)
    seen, start = 0, None
    fractions: list = []
    while True:
        epoch_good = 0
        for batch in loader:
            n = int(batch["weight"].sum())
            seen += n
            epoch_good += n
            if mask_stats:
                real = batch["weight"] > 0
                fractions += (1 - batch["keep_mask"][real].float().mean(dim=(1, 2, 3))).tolist()
            if start is None and seen >= warmup:
                start, seen = time.perf_counter(), 0
            if start is not None and seen >= samples:
                elapsed = time.perf_counter() - start
                extra = {"masks": hole_fraction_stats(fractions)} if mask_stats else {}
                return {
                    "samples_per_s": round(seen / elapsed, 1),
                    "samples": seen,
                    "seconds": round(elapsed, 3),
                    "workers": cfg.num_workers,
                    "resolution": cfg.resolution,
                    "jpeg_decoder": jpeg_decoder(),
                    "bad": {k[4:]: v for k, v in loader.counters.items() if k.startswith("bad/")},
                    **extra,
                }
        if epoch_good == 0:
            raise BadDataError(f"no good samples in {cfg.shards}: {loader.counters}")
