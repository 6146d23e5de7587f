"""Process settings for a run: library chatter silenced, and the devices with a CPU thread policy."""

from __future__ import annotations

import os

__all__ = ["quiet_libraries", "devices"]


def quiet_libraries() -> None:
    """Keep the run's output to what matters: drop known-harmless library chatter."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")  # ours is, via the datamodule
    warnings.filterwarnings("ignore", message=".*IterableDataset. has .__len__. defined.*")  # exact by design
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda r: "litlogger" not in r.getMessage())
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed would warn that it fell back to the CPU
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()


def devices(cfg) -> tuple[str, object, int]:
    """(accelerator, devices, processes on this node); CPU processes get an equal share of the cores."""
    import torch

    accelerator = cfg.trainer.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    devices = cfg.trainer.devices
    n_local = (torch.cuda.device_count() if accelerator == "gpu" else 1) if devices == "auto" else int(devices)
    if accelerator == "cpu":
        # Oversubscribed OpenMP threads spin and crawl: at most an equal share of the cores per local
        # process (`fabric run` sets OMP_NUM_THREADS to all cores in every process), and no more than
        # OMP_NUM_THREADS when that is set (slurm/env.sh sets it to the task's CPUs).
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // max(1, n_local))
        if os.environ.get("OMP_NUM_THREADS", "").isdigit():
            threads = max(1, min(threads, int(os.environ["OMP_NUM_THREADS"])))
        torch.set_num_threads(threads)
    return accelerator, devices, n_local
