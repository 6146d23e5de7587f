"""Files a run needs before it builds anything: synthetic shards (``synth.enabled``) and generated bases
(``model.base=tiny:sd15`` & co.). Rank 0 writes each one atomically; the other ranks wait until it exists."""

from __future__ import annotations

import json
import time
from pathlib import Path

from common.errors import UserError
from common.files import atomic_directory
from train.model.tiny import generated_folder, is_generated

__all__ = ["prepare_files", "base_path", "finished_step", "wait_for", "PrepareTimeout"]


class PrepareTimeout(UserError, TimeoutError):
    """Rank 0 did not write a file the other ranks wait for in time."""

    exit_code = 1


def base_path(cfg) -> str | Path:
    """What to load the base from: ``model.base``, or the folder a generated base is written to
    (``<output_dir>/base-<tiny|random>-<kind>``)."""
    base = cfg.model.base
    return generated_folder(base, cfg.output_dir) if is_generated(base) else base


def prepare_files(cfg, launch, wait_timeout: float = 1800) -> None:
    """Rank 0 writes synthetic shards / a generated base if asked and missing; the other ranks wait for them."""
    from data.synth import write_synthetic_shards
    from train.model.tiny import write_generated_base

    jobs = []
    if cfg.synth.enabled:
        s = cfg.synth
        for folder, n, seed in ((s.train_dir, s.train_samples, s.seed), (s.eval_dir, s.eval_samples, s.seed + 1)):
            if n > 0:
                jobs.append((Path(folder), lambda folder=folder, n=n, seed=seed: _synth_atomic(
                    write_synthetic_shards, Path(folder), n, s.per_shard, seed, s.min_size, s.max_size)))
    if is_generated(cfg.model.base):
        path = base_path(cfg)
        jobs.append((path / "model_index.json", lambda: write_generated_base(path, cfg.model.base, seed=cfg.trainer.seed)))
    for marker, job in jobs:
        if marker.exists():
            continue
        if launch.is_rank_zero:
            job()
        else:
            wait_for(marker, "prepared files", wait_timeout)


def wait_for(path: Path, what: str, timeout: float, poll: float = 1.0) -> None:
    """Wait (a rank other than 0) until ``path`` exists; rank 0 writes it atomically."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise PrepareTimeout(f"waited {timeout:.0f}s for rank 0 to write {what} ({path})")
        time.sleep(poll)


def _synth_atomic(write, folder: Path, n, per_shard, seed, min_size, max_size) -> None:
    if folder.exists() and any(folder.glob("*.tar")):
        return
    with atomic_directory(folder) as tmp:
        write(tmp, n, per_shard, seed, min_size, max_size)
    print(f"wrote {n} synthetic records to {folder}", flush=True)


def finished_step(checkpoint: Path | None) -> int | None:
    """The step a checkpoint of ours was taken at (from its meta.json), if known."""
    if checkpoint is None:
        return None
    meta = (checkpoint if checkpoint.is_dir() else checkpoint.parent) / "meta.json"
    return int(json.loads(meta.read_text())["step"]) if meta.is_file() else None
