"""The set-up of a Hydra multirun and of each of its jobs (a Hydra callback).

Before the sweep: the folder of an SQLite Optuna study, which SQLite does not create. In each job, under
`hydra/launcher=local` (submitit's local executor): one GPU of those the launcher makes visible per one-device job.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

SQLITE_PREFIX = "sqlite:///"


class SweepSetup(Callback):
    """Hydra callback: prepares a multirun and its jobs (see the module docstring)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        storage = config.hydra.sweeper.get("storage")
        if isinstance(storage, str) and storage.startswith(SQLITE_PREFIX):
            # SQLite creates the database file but not its folder; logs/ may not exist yet.
            Path(storage[len(SQLITE_PREFIX) :]).expanduser().parent.mkdir(parents=True, exist_ok=True)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        pin_one_gpu_per_job(config)


def pin_one_gpu_per_job(config: DictConfig) -> None:
    """Under submitit's local executor, make only GPU `job number mod visible GPUs` visible to a one-device job.

    submitit shows every job the same `gpus_per_node` GPUs; jobs launched together (a batch of
    `hydra.sweeper.max_batch_size`, or Optuna's `n_jobs`, equal to the number of GPUs) have consecutive numbers,
    so each gets its own GPU. Runs before the job touches CUDA.
    """
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    trainer = config.get("trainer") or {}
    if os.environ.get("SUBMITIT_EXECUTOR") != "local" or len(visible) < 2 or trainer.get("devices") != 1:
        return
    gpu = visible[int(config.hydra.job.num) % len(visible)]
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    log.info("Job %s runs on GPU %s (of %s)", config.hydra.job.num, gpu, ",".join(visible))
