"""Hydra multiruns beyond the summary: a resumable seeded Optuna sampler, and the set-up before and in each job.

- `TrialSeededTPESampler`: Optuna's TPE sampler (optuna 2, the version hydra-optuna-sweeper allows) draws from
  one random stream seeded once per process. A seeded study resumed from its SQLite storage therefore replays
  the draws of its first trials (the same learning rates again). Here each draw is seeded by (seed, trial
  number, parameter), so a resumed study continues with the trials an uninterrupted one would have run.
- `SweepSetup`: creates the folder of an SQLite study before the sweeper opens it, and under
  `hydra/launcher=submitit_local` gives each single-device job one GPU of those the launcher makes visible.
"""

from __future__ import annotations

import logging
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from optuna.samplers import TPESampler

log = logging.getLogger(__name__)

SQLITE_PREFIX = "sqlite:///"


class TrialSeededTPESampler(TPESampler):
    """`optuna.samplers.TPESampler` (same arguments) whose random draws depend on (seed, trial, parameter) only."""

    def __init__(self, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(seed=seed, **kwargs)
        self._base_seed = seed

    def _reseed(self, trial_number: int, param_name: str) -> None:
        if self._base_seed is None:
            return
        key = [self._base_seed, trial_number, zlib.crc32(param_name.encode())]
        state = int(np.random.SeedSequence(key).generate_state(1)[0])
        # TPE draws from `_rng`, its start-up trials from its RandomSampler's `_rng` (optuna 2.x attributes).
        self._rng = np.random.RandomState(state)
        self._random_sampler._rng = np.random.RandomState(state)

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        self._reseed(trial.number, "")
        return super().sample_relative(study, trial, search_space)

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
        self._reseed(trial.number, param_name)
        return super().sample_independent(study, trial, param_name, param_distribution)


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
