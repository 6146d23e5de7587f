"""Preemption and time limits: save together, requeue, resume where the job stopped.

The signal handlers only set a flag (no saving inside a handler). After every
training step all ranks agree, with one small all-reduce, whether any of them
was signalled; if so every rank finishes that step, all ranks write a
checkpoint together (collective under DeepSpeed, atomic as always), and
training stops. On the requeue signal (SIGUSR1: SLURM's ``--signal=USR1@T``
warning before the time limit) rank 0 then runs ``scontrol requeue`` so the job
comes back and resumes (``resume=auto``) with the same data position and W&B
run. On SIGTERM (``scancel``, a preempting job) it saves and stops without
requeueing. A second signal while saving only sets the flag again; the
previous checkpoint is never touched until the new one is complete.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading

import torch
from lightning.pytorch.callbacks import Callback

__all__ = ["PreemptionHandler"]

_REQUEUE, _STOP = 2, 1


class PreemptionHandler(Callback):
    def __init__(self, checkpoint_callback, requeue_signal: int = signal.SIGUSR1, requeue: bool = True):
        self.checkpoint_callback = checkpoint_callback
        self.requeue_signal = requeue_signal
        self.requeue = requeue
        self.received = 0  # 0 none, 1 stop (SIGTERM), 2 requeue (SIGUSR1)
        self.preempted = False
        self._previous: dict = {}

    # ------------------------------------------------------------ signals

    def _handler(self, signum, frame) -> None:
        self.received = max(self.received, _REQUEUE if signum == self.requeue_signal else _STOP)

    def on_train_start(self, trainer, pl_module) -> None:
        # After Lightning registered its own handlers: ours replace them for the duration of training.
        if threading.current_thread() is threading.main_thread():
            for signum in (self.requeue_signal, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handler)

    def on_train_end(self, trainer, pl_module) -> None:
        for signum, handler in self._previous.items():
            if handler is not None:
                signal.signal(signum, handler)
        self._previous = {}

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
        requeue = decision == _REQUEUE and self.requeue
        if trainer.is_global_zero:
            what = "time-limit warning (requeue)" if decision == _REQUEUE else "termination"
            print(f"brushtrain: {what} signal received; saving a checkpoint at step {step} on every rank", flush=True)
        if self.checkpoint_callback.last_saved_step != step:
            self.checkpoint_callback.save(trainer, pl_module)
        self.preempted = True
        pl_module.preempted = True  # eval and export at the end are skipped
        trainer.should_stop = True
        if requeue and trainer.is_global_zero:
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
            print(f"brushtrain: requeued SLURM job {job}; it resumes from the checkpoint just written", flush=True)
        else:
            print(f"brushtrain: `scontrol requeue {job}` failed ({result.returncode}): {result.stderr.strip()}", flush=True)
