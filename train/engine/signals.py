"""The process's memory of the requeue and stop signals, from its first second.

``brushtrain fit`` (and ``launch/fit.py``) call :func:`install` before anything
heavy is imported, so a SIGUSR1 (SLURM's ``--signal=USR1@T`` warning, the
requeue signal) or a SIGTERM (``scancel``, a preempting job) that arrives while
Python imports, models load or data is counted no longer kills the process: the
handler only records it in :data:`SIGNALS`. The training callback
(:class:`train.engine.preemption.PreemptionHandler`, handed this object) acts on it at
the first safe point, on every rank together. This module imports nothing
heavy; keep it that way.
"""

from __future__ import annotations

import signal
import threading
import time

__all__ = ["SignalState", "SIGNALS", "install", "NONE", "STOP", "REQUEUE"]

NONE, STOP, REQUEUE = 0, 1, 2  # ordered: a requeue request outranks a plain stop


class SignalState:
    """What signals asked this process to do; the handler sets a flag and nothing else."""

    def __init__(self, requeue_signal: int = signal.SIGUSR1, stop_signal: int = signal.SIGTERM):
        self.requeue_signal = requeue_signal
        self.stop_signal = stop_signal
        self.received = NONE
        self.first_at: float | None = None  # time.monotonic() of the first signal

    def handler(self, signum, frame) -> None:
        self.received = max(self.received, REQUEUE if signum == self.requeue_signal else STOP)
        if self.first_at is None:
            self.first_at = time.monotonic()

    def install(self) -> bool:
        """Make :meth:`handler` the handler of both signals (main thread only); True if it was installed."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for signum in (self.requeue_signal, self.stop_signal):
            signal.signal(signum, self.handler)
        return True

    def installed(self) -> bool:
        return all(signal.getsignal(s) == self.handler for s in (self.requeue_signal, self.stop_signal))

    def clear(self) -> None:
        self.received, self.first_at = NONE, None


SIGNALS = SignalState()


def install() -> SignalState:
    """Install the flag handlers for this process (idempotent) and return the shared state."""
    SIGNALS.install()
    return SIGNALS
