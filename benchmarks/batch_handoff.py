"""What a loader worker pays to hand a batch to the trainer's process: private memory vs shared memory.

A DataLoader worker sends its batches through a queue; a tensor in private memory is first copied into shared
memory there, one built in shared memory (``data.brushdata._batch_memory``, what the stream uses in a worker)
moves no bytes. Here one worker (forkserver, as the stream starts them) builds uint8 image batches of the
stream's shape and fills them (a stand-in for the decode writing into the batch), and the main process takes
them: batches/s of each side, alternating, best of ``--repeats``. Nothing else differs between the sides.

  .venv/bin/python benchmarks/batch_handoff.py            # --batches 8,32 --resolution 512 --count 60

Last line: JSON with the per-batch milliseconds of both sides at each batch size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.brushdata import _batch_memory  # noqa: E402


class Batches(IterableDataset):
    def __init__(self, shape: tuple[int, ...], count: int, shared: bool):
        self.shape, self.count, self.shared = shape, count, shared

    def __iter__(self):
        for i in range(self.count):
            images = _batch_memory(self.shape) if self.shared else torch.empty(self.shape, dtype=torch.uint8)
            images.numpy().fill(i % 251)
            yield images


def per_batch_ms(shape: tuple[int, ...], count: int, shared: bool) -> float:
    loader = DataLoader(Batches(shape, count, shared), batch_size=None, num_workers=1,
                        multiprocessing_context="forkserver", prefetch_factor=2)
    it = iter(loader)
    first = next(it)  # the worker's start-up is not counted
    assert first.is_shared()
    start = time.perf_counter()
    n = sum(1 for _ in it)
    return (time.perf_counter() - start) / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="8,32")
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--count", type=int, default=60, help="batches per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = {}
    print("| batch | MB | private ms/batch | shared ms/batch | saved |")
    print("| --- | --- | --- | --- | --- |")
    for b in (int(x) for x in args.batches.split(",")):
        shape = (b, args.resolution, args.resolution, 3)
        best = {False: float("inf"), True: float("inf")}
        for _ in range(args.repeats):
            for shared in (False, True):
                best[shared] = min(best[shared], per_batch_ms(shape, args.count, shared))
        results[b] = {"private_ms": round(best[False], 2), "shared_ms": round(best[True], 2)}
        print(f"| {b} | {torch.Size(shape).numel() / 1e6:.1f} | {best[False]:.2f} | {best[True]:.2f} | "
              f"{1 - best[True] / best[False]:.0%} |")
    print(json.dumps({"resolution": args.resolution, "per_batch": results}))


if __name__ == "__main__":
    main()
