"""SIGTERM and SIGUSR1 (preemption) and Ctrl-C (SIGINT): finish the step, save `last.ckpt`, stop cleanly; under
SLURM, SIGUSR1 also requeues the job, which then resumes from that checkpoint (`wrncifar.run.resuming`)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.connectors.signal_connector import _HandlersCompose
from lightning.pytorch.trainer.states import RunningStage, TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from wrncifar.callbacks.early_signals import early_signal, forget_early_signal, is_early_signals_handler
from wrncifar.callbacks.torchrun import torchrun_launch

log = logging.getLogger(__name__)


def validating_in_fit(trainer: Trainer) -> bool:
    """Whether `trainer` is running a validation of `fit` (a stop there would save a checkpoint cut mid-validation,
    with the epoch's metrics and best checkpoint missing, and EMA's averaged weights in place of the raw ones)."""
    return trainer.state.fn == TrainerFn.FITTING and trainer.state.stage == RunningStage.VALIDATING


# The checkpoint key naming the SLURM job that saved it: a requeued job resumes only from its own checkpoints.
SLURM_JOB_KEY = "slurm_job"
# The checkpoint key naming the torchrun command that saved it (`torchrun_launch`): its restarted processes check
# that a finished run they find is their own.
TORCHRUN_LAUNCH_KEY = "torchrun_launch"


def slurm_job() -> str | None:
    """This process's SLURM job, as `scontrol requeue` names it (`<array job>_<task>` for a task of an array), with
    the cluster's name; None outside a SLURM job."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array_job}_{task}" if array_job and task else os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    return f"{os.environ.get('SLURM_CLUSTER_NAME', '')}:{job}"


def requeue_slurm_job() -> bool:
    """`scontrol requeue` this SLURM job (it starts again, with SLURM_RESTART_COUNT one higher); True if SLURM
    accepted. SLURM then stops the job's processes with SIGTERM."""
    job = (slurm_job() or ":").split(":", 1)[1]
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("Could not requeue SLURM job %s: %s", job, err)
        return False
    if result.returncode != 0:
        log.warning("Could not requeue SLURM job %s: %s", job, (result.stderr or result.stdout).strip())
        return False
    return True


class CheckpointOnSignal(Callback):
    """On SIGTERM, SIGUSR1 or SIGINT (Ctrl-C), save `<dirpath>/last.ckpt` after the current step and stop (the
    entry point then exits with 128 + the signal number and prints the resume command).

    Lightning turns SIGTERM into a stop after the current step (`SIGTERMException`); this callback also routes
    SIGUSR1 there and the first Ctrl-C, and writes the checkpoint on the way out. A second Ctrl-C interrupts at once,
    as Python's own handler does. In a SLURM batch job, SIGUSR1 (sent before the time limit, or on preemption)
    also requeues the job once the checkpoint is saved; this replaces Lightning's own SLURM handler, which saves
    `hpc_ckpt_<n>.ckpt` from inside the signal handler, in the middle of a step. Every checkpoint records the SLURM
    job that saved it, so that the requeued job resumes only from its own.

    A stop signal that arrived before training started (recorded by `wrncifar.callbacks.early_signals`) stops the run
    as soon as training starts, before the first step: nothing to save, and in SLURM the job is requeued for
    SIGUSR1 and starts again cleanly. One that arrives during a validation of `fit` stops the run when the
    validation has ended (its metrics logged, its epoch checkpoint saved); one during the test after `fit` stops
    the test and saves nothing: `last.ckpt` stays the end of training.
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)
        self.signum: int | None = None
        self.before_training = False  # stopped before the first step of this process: nothing new to save
        self.after_validation = False  # a signal arrived during a validation of fit: stop once it has ended

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        connector = trainer._signal_connector
        for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            previous = signal.getsignal(signum)
            ours = (signal.SIG_DFL, signal.SIG_IGN, None)
            if signum == signal.SIGUSR1 and not (
                previous in ours or is_early_signals_handler(previous) or isinstance(previous, _HandlersCompose)
            ):
                continue  # the user's own handler: leave it
            if signum == signal.SIGINT and previous is not signal.default_int_handler:
                continue  # Ctrl-C ignored (a background job) or handled by the user's own code

            def handler(num: int, frame: Any, previous: Any = previous) -> None:
                self.signum = self.signum or num  # the first signal says why the run stopped
                if num == signal.SIGINT:
                    signal.signal(num, previous)  # the next Ctrl-C interrupts at once
                elif callable(previous) and num == signal.SIGTERM:
                    previous(num, frame)  # Lightning's passes it on to the processes it started
                if validating_in_fit(trainer):
                    # The stop waits for the validation's end (`on_validation_end`); Lightning's handler would
                    # have stopped it after the current batch.
                    self.after_validation, connector.received_sigterm = True, False
                else:
                    connector.received_sigterm = True  # Lightning stops after the current step

            signal.signal(signum, handler)
        early = early_signal()
        if early is not None:
            forget_early_signal()
            self.signum, self.before_training = early, True
            name = signal.Signals(early).name
            log.warning("%s arrived before training started: stopping before the first step", name)
            raise SIGTERMException

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        job, launch = slurm_job(), torchrun_launch()
        if job:
            checkpoint[SLURM_JOB_KEY] = job
        if launch:
            checkpoint[TORCHRUN_LAUNCH_KEY] = launch

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.after_validation:  # the validation is whole: its metrics logged, its epoch checkpoint saved
            self.after_validation = False
            trainer._signal_connector.received_sigterm = True

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        signum = self.signum or signal.SIGTERM
        # The test after fit (or another stage) holds other weights than training's last (the best checkpoint's):
        # the checkpoints training saved are whole, and `last.ckpt` is left as training ended.
        fitting = trainer.state.fn == TrainerFn.FITTING
        # For the entry point's exit status (128 + signum) and message.
        exception.signum, exception.requeued = signum, False
        exception.saved, exception.after_training = fitting and not self.before_training, not fitting
        if exception.saved:
            path = self.dirpath / "last.ckpt"
            trainer.save_checkpoint(path, weights_only=False)  # the full state: a resume continues from it
            # On disk before the job is requeued (and killed) or the process exits: a checkpoint IO that writes in
            # the background says when it is done through `wait`.
            wait = getattr(trainer.strategy.checkpoint_io, "wait", None)
            if callable(wait):
                wait()
            log.warning("Stopped by a signal after step %d; saved %s", trainer.global_step, path)
        if signum == signal.SIGUSR1 and SLURMEnvironment.detect() and trainer.is_global_zero:
            exception.requeued = requeue_slurm_job()
