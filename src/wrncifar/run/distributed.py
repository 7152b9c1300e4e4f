"""Distributed data-parallel runs: set-ups refused before they start, and log files written by rank 0 only.

(Evaluation that sees every image exactly once is the datamodule's: `wrncifar.data.cifar100.eval_sampler`.)
"""

from __future__ import annotations

import logging
import os

from lightning.pytorch import Trainer
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from lightning.pytorch.utilities import rank_zero_only

from wrncifar.run.config_validation import ConfigError


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
