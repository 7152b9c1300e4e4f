"""A seeded Optuna sampler that a resumed study continues instead of replaying.

Optuna's TPE sampler (optuna 2, the version hydra-optuna-sweeper allows) draws from one random stream seeded
once per process. A seeded study resumed from its SQLite storage therefore replays the draws of its first trials
(the same learning rates again). Here each draw is seeded by (seed, trial number, parameter), so a resumed study
continues with the trials an uninterrupted one would have run.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
from optuna.samplers import TPESampler


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
