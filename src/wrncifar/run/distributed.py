"""Distributed data-parallel runs: set-ups refused before they start, and log files written by rank 0 only.

(Evaluation that sees every image exactly once is the datamodule's: `wrncifar.data.cifar100.eval_sampler`.)
"""

from __future__ import annotations

import logging
import os
import threading
import time

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from lightning.pytorch.utilities import rank_zero_only

from wrncifar.run.config_validation import ConfigError

log = logging.getLogger(__name__)


def check_launch(trainer: Trainer, multirun: bool, sync_batchnorm: bool, oversubscribe: bool = False) -> None:
    """Refuse, before any data is read, the distributed set-ups that would fail or misbehave later."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    processes = trainer.num_devices
    if isinstance(trainer.accelerator, CPUAccelerator) and processes > cores and not oversubscribe:
        raise ConfigError(
            f"trainer.devices={processes} starts {processes} CPU processes on a machine with {cores} cores, where "
            "they would crawl or wait for each other for minutes: give at most that many (trainer.devices="
            f"{cores}), or confirm with allow_oversubscription=true"
        )
    strategy = trainer.strategy
    launcher = strategy.launcher
    relaunches = (
        isinstance(launcher, _SubprocessScriptLauncher)
        and launcher.num_processes > 1
        and not strategy.cluster_environment.creates_processes_externally
    )
    if multirun and relaunches:
        raise ConfigError(
            "trainer.strategy=ddp starts its extra processes by running the command line again, which in a "
            "multirun (-m, hparams_search) would start the whole sweep again in each of them. Launch the "
            "sweep's jobs with the submitit launcher, hydra/launcher=slurm (one SLURM task per GPU: DDP inside "
            "each job), or give each job one device (trainer=gpu; hydra/launcher=local runs several at once)."
        )
    if sync_batchnorm and trainer.world_size > 1 and isinstance(trainer.accelerator, CPUAccelerator):
        raise ConfigError(
            "trainer.sync_batchnorm=true needs GPUs (PyTorch's SyncBatchNorm does not run on the CPU): "
            "set trainer.sync_batchnorm=false for CPU processes"
        )


def stop_if_group_does_not_form(trainer: Trainer, seconds: float) -> None:
    """Give up, with a message naming the setting, when the processes of a distributed run have not all joined
    the process group `seconds` after this call (a node that never started, a wrong MASTER_ADDR or MASTER_PORT).

    Without it, rank 0 waits at "Initializing distributed" for PyTorch's collective timeout (30 minutes or more).
    Only the start-up is bounded: once the group has formed the watch ends, and collectives keep their own
    timeout. Nothing is lost by stopping here: no step has run and no file of the run has been written.
    """
    if trainer.world_size <= 1:
        return
    rank, world_size = trainer.global_rank, trainer.world_size
    address = f"{os.environ.get('MASTER_ADDR', '127.0.0.1')}:{os.environ.get('MASTER_PORT', '?')}"

    def watch() -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                return
            time.sleep(0.2)
        log.error(
            "The %d processes of this run did not all join within %g s (distributed_start_timeout_s): this is rank "
            "%d, meeting the others at %s. Check that every node runs the same command with the same "
            "trainer.num_nodes and trainer.devices, that MASTER_ADDR and MASTER_PORT reach node 0, or raise "
            "distributed_start_timeout_s. Stopped before training: nothing was written.",
            world_size,
            seconds,
            rank,
            address,
        )
        logging.shutdown()
        os._exit(1)  # the main thread is blocked inside PyTorch's rendezvous, which no exception interrupts

    threading.Thread(target=watch, name="process-group-start-timeout", daemon=True).start()


def log_files_on_rank_zero_only() -> None:
    """Detach the log files (Hydra's `<task_name>.log`) from processes of rank > 0, which print to the console.

    Every DDP process logs through the same Hydra logging set-up, so they would all append to one file.
    """
    if rank_zero_only.rank == 0:
        return
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()
