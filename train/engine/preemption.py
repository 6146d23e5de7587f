"""Preemption and time limits: save together, requeue, resume where the job stopped.

The signal handlers (:mod:`train.engine.signals`, installed when ``brushtrain fit``
starts) only set a flag in the :class:`~train.engine.signals.SignalState` this
callback is handed; nothing is saved inside a handler. The flag is acted on at
the first safe point, by all ranks together (one small all-reduce decides):

* **during start-up** (imports, model loading, data counting): when training
  starts, before the first step, with nothing new to save: the newest
  checkpoint (if any) stays the resume point;
* **during training**: after the step in flight, all ranks write a checkpoint
  together (collective under DeepSpeed, atomic as always), and training stops;
  a signal during a checkpoint acts once that checkpoint is complete;
* **during the end phase** (held-out eval and export after the final
  checkpoint): the remaining end-phase work is skipped; the final checkpoint is
  complete, and the next run (or ``brushtrain export``) exports it.

On the requeue signal (SIGUSR1: SLURM's ``--signal=USR1@T`` warning before the
time limit) rank 0 then runs ``scontrol requeue`` so the job comes back and
resumes (``resume=auto``) with the same data position and W&B run. On SIGTERM
(``scancel``, a preempting job) it stops without requeueing. A second signal
while saving only sets the flag again; the previous checkpoint is never touched
until the new one is complete.
"""

from __future__ import annotations

import os
import re
import subprocess

import torch
from lightning.pytorch.callbacks import Callback

from train.engine.signals import REQUEUE, SignalState

__all__ = ["PreemptionHandler"]

_REQUEUE = REQUEUE


class PreemptionHandler(Callback):
    def __init__(self, checkpoint_callback, signals: SignalState | None = None, requeue: bool = True):
        self.checkpoint_callback = checkpoint_callback
        self.signals = signals if signals is not None else SignalState()
        self.requeue = requeue
        self.preempted = False  # the run stopped on a signal (training, or the end phase, cut short)

    @property
    def received(self) -> int:
        """This process's own flag: 0 none, 1 stop (SIGTERM), 2 requeue (SIGUSR1)."""
        return self.signals.received

    # ------------------------------------------------------------ signals

    def on_train_start(self, trainer, pl_module) -> None:
        # Lightning registered its own SIGTERM handler for fit (it would stop the loop with an
        # exception); ours take over again. Lightning restores the handlers it found at teardown.
        self.signals.install()
        decision = self._agreed(trainer, pl_module)
        if decision:  # a signal during start-up: nothing new to save
            self._stop(trainer, pl_module, decision, f"before the first step (at step {trainer.global_step}); "
                       "nothing new to save, the newest checkpoint stays the resume point")

    def interrupts_end_phase(self, trainer, pl_module) -> bool:
        """Collective (every rank, same place): True if a signal asks to cut the end phase short.

        Called by the end-of-training eval and export before their work; the final
        checkpoint is complete by then.
        """
        if self.preempted:
            return True
        decision = self._agreed(trainer, pl_module)
        if decision:
            self._stop(trainer, pl_module, decision, f"after the final checkpoint (step {trainer.global_step}); "
                       "skipping the rest of the end phase (eval, export): the next run or `brushtrain export` "
                       "exports that checkpoint")
        return bool(decision)

    # ------------------------------------------------------------- steps

    def _agreed(self, trainer, pl_module) -> int:
        if trainer.world_size == 1:
            return self.received
        flag = torch.tensor([self.received], device=pl_module.device, dtype=torch.int32)
        return int(trainer.strategy.reduce(flag, reduce_op="max").item())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not getattr(pl_module, "at_step_boundary", True):
            return  # inside a gradient-accumulation window (the same on every rank): wait for its end
        decision = self._agreed(trainer, pl_module)
        if not decision:
            return
        step = trainer.global_step
        if trainer.is_global_zero:
            what = "time-limit warning (requeue)" if decision == _REQUEUE else "termination"
            print(f"brushtrain: {what} signal received; saving a checkpoint at step {step} on every rank", flush=True)
        if self.checkpoint_callback.last_saved_step != step:
            self.checkpoint_callback.save(trainer, pl_module)
        self._stop(trainer, pl_module, decision)

    def _stop(self, trainer, pl_module, decision: int, when: str | None = None) -> None:
        if when and trainer.is_global_zero:
            what = "time-limit warning (requeue)" if decision == _REQUEUE else "termination"
            print(f"brushtrain: {what} signal received; stopping {when}", flush=True)
        self.preempted = True  # asked by the eval, samples and export at the end (they are handed this handler)
        trainer.should_stop = True
        if decision == _REQUEUE and self.requeue and trainer.is_global_zero:
            self._requeue()

    @staticmethod
    def _requeue() -> None:
        job = os.environ.get("SLURM_JOB_ID")
        if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
            job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        if not job or not re.fullmatch(r"[0-9_]+", job):
            print("brushtrain: not a SLURM job, nothing to requeue; resume with resume=auto", flush=True)
            return
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        if result.returncode == 0:
            print(f"brushtrain: requeued SLURM job {job}; it resumes from the newest checkpoint", flush=True)
        else:
            print(f"brushtrain: `scontrol requeue {job}` failed ({result.returncode}): {result.stderr.strip()}", flush=True)
