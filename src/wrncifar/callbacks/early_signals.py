"""Stop signals that arrive before training has started: recorded from the start of the process, acted on once it
has (by `wrncifar.callbacks.checkpoint_on_signal.CheckpointOnSignal`).

SLURM may send its warning signal (SIGUSR1) or preempt a job (SIGTERM) while the process is still importing torch
or reading data. Python's default action for SIGUSR1 ends the process at once: nothing saved, and a job that only
SIGUSR1's handler would requeue is not requeued. No torch or Lightning here: `src/train.py` installs this first.

A sweep's own process under the submitit launchers (`hydra/launcher=local|slurm`) trains nothing, so nothing would
act on a recorded signal: there SIGTERM stops the sweep as Ctrl-C does (`stop_sweep_on_sigterm`), and the launcher
cancels the jobs still out on the way out (`wrncifar.sweeps.submitit_jobs`).
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class EarlySignals:
    """A signal handler that records the first stop signal, and passes it on to a handler that was there before
    (submitit logs SIGTERM in its jobs)."""

    def __init__(self, previous: dict[int, Any]) -> None:
        self.previous = previous
        self.received: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
        previous = self.previous.get(signum)
        if callable(previous):
            previous(signum, frame)


_recorder: EarlySignals | None = None


def record_early_signals() -> None:
    """Record SIGTERM and SIGUSR1 from now on instead of dying of them (once per process; a signal ignored on
    purpose stays ignored). Only the main thread can set handlers; elsewhere this does nothing."""
    global _recorder
    if _recorder is not None:
        return
    try:
        previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
        _recorder = EarlySignals(previous)
        for signum in STOP_SIGNALS:
            if previous[signum] is not signal.SIG_IGN:
                signal.signal(signum, _recorder)
    except ValueError:  # not the main thread
        _recorder = None


class SweepStopped(KeyboardInterrupt):
    """A stop signal to a sweep's own process: the sweep stops as on Ctrl-C (a KeyboardInterrupt to every handler of
    one), `signum` telling which."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"{signal.Signals(signum).name}: the sweep stopped, its unfinished jobs cancelled")
        self.signum = signum


def _stop_sweep(signum: int, frame: FrameType | None) -> None:
    raise SweepStopped(signum)


def stop_sweep_on_sigterm() -> None:
    """In a sweep's own process, whose jobs run in processes of their own: SIGTERM from now on raises `SweepStopped`,
    at once if one was recorded since the process started (a signal ignored on purpose stays ignored). Only the main
    thread can set handlers; elsewhere this does nothing."""
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
            return
        signal.signal(signal.SIGTERM, _stop_sweep)
    except ValueError:  # not the main thread
        return
    if early_signal() == signal.SIGTERM:
        forget_early_signal()
        raise SweepStopped(signal.SIGTERM)


def is_early_signals_handler(handler: Any) -> bool:
    """Whether `handler` is the recorder (which a training-time handler replaces)."""
    return isinstance(handler, EarlySignals)


def early_signal() -> int | None:
    """The first stop signal received since `record_early_signals`, if any."""
    return _recorder.received if _recorder is not None else None


def forget_early_signal() -> None:
    """Mark the recorded signal as handled."""
    if _recorder is not None:
        _recorder.received = None
