"""SIGTERM and SIGUSR1 (preemption) and Ctrl-C (SIGINT): finish the step, save `last.ckpt`, stop cleanly."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class CheckpointOnSignal(Callback):
    """On SIGTERM, SIGUSR1 or SIGINT (Ctrl-C), save `<dirpath>/last.ckpt` after the current step and stop (the
    entry point then exits with 128 + the signal number and prints the resume command).

    Lightning turns SIGTERM into a stop after the current step (`SIGTERMException`); this callback also routes
    SIGUSR1 there (outside SLURM, where Lightning leaves it to kill the process) and the first Ctrl-C, and writes
    the checkpoint on the way out. A second Ctrl-C interrupts at once, as Python's own handler does. Under SLURM
    with auto-requeue, Lightning's own SIGUSR1 handler saves and requeues the job.
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)
        self.signum: int | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        connector = trainer._signal_connector
        for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            previous = signal.getsignal(signum)
            if signum == signal.SIGUSR1 and previous not in (signal.SIG_DFL, signal.SIG_IGN, None):
                continue  # Lightning's SLURM requeue handler, or the user's own: leave it
            if signum == signal.SIGINT and previous is not signal.default_int_handler:
                continue  # Ctrl-C ignored (a background job) or handled by the user's own code

            def handler(num: int, frame: Any, previous: Any = previous) -> None:
                self.signum = num
                connector.received_sigterm = True  # Lightning stops after the current step
                if num == signal.SIGINT:
                    signal.signal(num, previous)  # the next Ctrl-C interrupts at once
                elif callable(previous) and num == signal.SIGTERM:
                    previous(num, frame)

            signal.signal(signum, handler)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        path = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(path, weights_only=False)  # the full state: a resume continues from it
        exception.signum = self.signum or signal.SIGTERM  # the entry point exits with 128 + signum
        log.warning("Stopped by a signal after step %d; saved %s", trainer.global_step, path)
