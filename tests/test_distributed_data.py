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


def _bad_worker(rank: int, folder: str, init: str, out: str, ceiling: float) -> None:
    import torch

    from data.brushdata import BadDataError

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        cfg = DataConfig(shards=[folder], resolution=32, batch_size=2, num_workers=2, shuffle_shards=False,
                         shuffle_buffer=1, max_bad_fraction=ceiling, bad_check_after=10)
        loader = BrushDataLoader(cfg, rank=rank, world_size=2)
        n, error = 0, None
        try:
            for batch in loader:
                n += 1
                step = torch.ones(1)
                dist.all_reduce(step)  # the trainer's gradient all-reduce after every batch
        except BadDataError as exc:
            error = (str(exc), exc.rank_zero_only)
        with open(f"{out}.{rank}", "w") as f:
            json.dump({"batches": n, "len": len(loader), "error": error,
                       "counters": {k: v for k, v in loader.counters.items()}}, f)
    finally:
        dist.destroy_process_group()


def test_the_bad_record_ceiling_is_judged_over_all_ranks_and_stops_them_together(tmp_path):
    """Rank 1's range opens with a shard of bad records. Judged per rank, the ceiling stopped rank 1 alone (62 %
    of its first records bad, 20 % of all) while rank 0 waited for it in the next all-reduce; now every rank
    looks at all ranks' counts at the same batches: under the ceiling both finish (rank 1 with pad batches),
    over it both stop at the same batch, with one message."""
    from bad_shards import members, write_tar

    folder = tmp_path / "shards"
    folder.mkdir()
    write_tar(folder / "a.tar", [(f"a{i}", members(seed=i)) for i in range(60)])
    write_tar(folder / "b.tar", [(f"x{i}", {**members(seed=i), "width": b"57"}) for i in range(20)]
              + [(f"b{i}", members(seed=i)) for i in range(20)])
    for ceiling in (0.3, 0.1):
        out = tmp_path / f"result{ceiling}"
        mp.spawn(_bad_worker, args=(str(folder), f"file://{tmp_path / f'rendezvous{ceiling}'}", str(out), ceiling),
                 nprocs=2)
        results = [json.loads((tmp_path / f"result{ceiling}.{r}").read_text()) for r in range(2)]
        assert results[0]["batches"] == results[1]["batches"]
        if ceiling == 0.3:  # 20 of 100 records bad
            assert [r["error"] for r in results] == [None, None]
            assert results[0]["batches"] == results[0]["len"]
            assert results[1]["counters"]["bad/size_mismatch"] == 20 and results[1]["counters"]["pad_batches"] > 0
        else:
            assert results[0]["error"] == results[1]["error"]
            message, once = results[0]["error"]
            assert "on all 2 ranks were bad" in message and "size_mismatch" in message and once


def test_ranks_that_planned_epochs_of_different_lengths_stop_together_with_one_message(tmp_path):
    """Every rank must plan the same epoch (the same record counts); a remote shard that failed while one rank
    counted it is planned as one record there. Its joint checks would then pair up wrongly (one rank's last batch
    with another's 16th...) and hang; the first check compares the plans and stops every rank, saying why."""
    import threading

    from data.brushdata import BadDataError

    folder = tmp_path / "shards"
    write_uneven_shards(folder, [40, 40])  # writes sizes.json: 80 records
    wrong = tmp_path / "wrong-sizes.json"
    wrong.write_text(json.dumps({name: 1 for name in json.loads((folder / "sizes.json").read_text())}))
    barrier, slots, errors = threading.Barrier(2, timeout=60), [None, None], [None, None]

    def gather(rank):
        def exchange(obj):
            slots[rank] = obj
            barrier.wait()
            out = list(slots)
            barrier.wait()
            return out
        return exchange

    def run(rank):
        cfg = DataConfig(shards=[str(folder)], resolution=32, batch_size=2, num_workers=0, shuffle_buffer=4,
                         sizes_file=str(wrong) if rank else None)
        try:
            for _ in BrushDataLoader(cfg, rank=rank, world_size=2, gather=gather(rank)):
                pass
        except BadDataError as exc:
            errors[rank] = str(exc)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert errors[0] == errors[1] and errors[0] is not None
    assert "the ranks planned epochs of different lengths (rank 0: 20 batches, rank 1: 1 batches)" in errors[0]
