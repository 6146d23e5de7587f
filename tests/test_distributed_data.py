"""Two real processes (torch.distributed over gloo), two DataLoader workers each."""

from __future__ import annotations

import collections
import json

import torch.distributed as dist
import torch.multiprocessing as mp
from bad_shards import write_uneven_shards

from data.brushdata import BrushDataLoader, DataConfig

SIZES = [11, 3, 26, 7, 19]


def _worker(rank: int, folder: str, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        cfg = DataConfig(shards=[folder], resolution=32, batch_size=3, num_workers=2, shuffle_buffer=5)
        loader = BrushDataLoader(cfg, rank=rank, world_size=2)
        keys, n = [], 0
        for batch in loader:
            keys += [k for k, w in zip(batch["key"], batch["weight"]) if w > 0]
            n += 1
            if n == 4:
                break
        state = loader.position()  # collective: both ranks call it
        resumed = BrushDataLoader(cfg, rank=rank, world_size=2)
        resumed.restore(state)
        for batch in resumed:
            keys += [k for k, w in zip(batch["key"], batch["weight"]) if w > 0]
            n += 1
        with open(f"{out}.{rank}", "w") as f:
            json.dump({"keys": keys, "batches": n, "len": len(loader), "ranks_in_state": sorted(state["ranks"])}, f)
    finally:
        dist.destroy_process_group()


def test_two_processes_cover_every_sample_once_through_a_resume(tmp_path):
    write_uneven_shards(tmp_path / "shards", SIZES, seed=1, prefix="d")
    out = tmp_path / "result"
    mp.spawn(_worker, args=(str(tmp_path / "shards"), f"file://{tmp_path / 'rendezvous'}", str(out)), nprocs=2)
    results = [json.loads((tmp_path / f"result.{r}").read_text()) for r in range(2)]
    assert results[0]["batches"] == results[1]["batches"] == results[0]["len"]
    assert results[0]["ranks_in_state"] == [0, 1]
    counts = collections.Counter(k for r in results for k in r["keys"])
    assert len(counts) == sum(SIZES) and max(counts.values()) == 1
