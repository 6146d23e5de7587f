"""Who started this process, and what that means for the trainer: the one place for rank/launcher logic.

Launchers recognised, in this order:

* ``srun`` under SLURM (``SLURM_PROCID`` with ``SLURM_NTASKS``, inside a job step):
  one process per task, Lightning's ``SLURMEnvironment`` takes it from there;
  devices per node and nodes come from the allocation;
* ``torchrun`` / ``fabric run`` / ``lightning run`` (``RANK``, ``LOCAL_WORLD_SIZE``;
  ``fabric run`` adds ``LT_*`` variables that ``Trainer`` does not read, so they
  are read here: accelerator, strategy, precision);
* nothing: a plain ``python`` / ``brushtrain`` process; Lightning launches the
  other local processes itself when ``trainer.devices > 1``.

In every case the trainer's ``devices`` and ``num_nodes`` are made to match the
processes that exist, so no second set of processes is ever spawned.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

__all__ = ["LaunchInfo", "detect_launch"]


@dataclass(frozen=True)
class LaunchInfo:
    launcher: str  # "slurm" | "torchrun" | "fabric" | "none"
    rank: int = 0  # global rank (for processes Lightning will start itself: 0 exactly on global rank 0)
    local_rank: int = 0
    world_size: int = 1
    trainer_overrides: dict = field(default_factory=dict)  # trainer.* keys forced by the launcher

    @property
    def is_rank_zero(self) -> bool:
        return self.rank == 0


def _int(env: Mapping[str, str], *names: str, default: int | None = None) -> int | None:
    for name in names:
        value = env.get(name)
        if value not in (None, ""):
            try:
                return int(str(value).split("(")[0].split(",")[0])
            except ValueError:
                continue
    return default


def detect_launch(env: Mapping[str, str] | None = None) -> LaunchInfo:
    env = os.environ if env is None else env
    # SLURM job step started by srun: one task per process.
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        ntasks = _int(env, "SLURM_NTASKS", default=1)
        nnodes = _int(env, "SLURM_NNODES", "SLURM_JOB_NUM_NODES", default=1)
        per_node = _int(env, "SLURM_NTASKS_PER_NODE", default=max(1, ntasks // max(1, nnodes)))
        return LaunchInfo(
            "slurm", rank=_int(env, "SLURM_PROCID", default=0), local_rank=_int(env, "SLURM_LOCALID", default=0),
            world_size=ntasks, trainer_overrides={"devices": per_node, "num_nodes": nnodes},
        )
    # torchrun (also what `fabric run` uses underneath).
    if "RANK" in env and "LOCAL_WORLD_SIZE" in env:
        world = _int(env, "WORLD_SIZE", default=1)
        local_world = _int(env, "LOCAL_WORLD_SIZE", default=1)
        overrides: dict = {"devices": local_world, "num_nodes": max(1, world // max(1, local_world))}
        launcher = "torchrun"
        if env.get("LT_CLI_USED") == "1":
            launcher = "fabric"
            for key in ("accelerator", "strategy", "precision"):
                value = env.get(f"LT_{key.upper()}")
                if value not in (None, "", "None", "auto"):
                    overrides[key] = value
        return LaunchInfo(launcher, rank=_int(env, "RANK", default=0), local_rank=_int(env, "LOCAL_RANK", default=0),
                          world_size=world, trainer_overrides=overrides)
    # Plain process, or a child that Lightning's own launcher started (LOCAL_RANK/NODE_RANK set):
    # its global rank is not known yet, but it is 0 only for local rank 0 on node 0.
    local = _int(env, "LOCAL_RANK", default=0)
    node = _int(env, "NODE_RANK", "GROUP_RANK", default=0)
    return LaunchInfo("none", rank=local + node, local_rank=local)
