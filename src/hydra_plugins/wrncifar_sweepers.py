"""The project's Optuna sweeper (`hparams_search=wrn_cifar100_optuna`): hydra-optuna-sweeper's, except that
- a stored study is continued only with the settings it was made with (`wrncifar.sweeps.study_settings`);
- every trial ends told to the study: a job that cannot be composed, fails or returns nothing is told FAIL and
  listed in the summary with why, and trials still out when the sweep stops are told FAIL on the way out, so a
  stored study keeps no trial RUNNING for good (`wrncifar.sweeps.optuna_trials`);
- a study none of whose trials completed ends like any sweep with failed jobs (the sweep summary printed, each trial
  with its error, exit 1) instead of Optuna's `Record does not exist` traceback from asking for a best trial there
  is not.

It lives here because Hydra instantiates sweepers only from its `hydra_plugins` package. Hydra imports this module
at every start: nothing heavy at the top.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as _OptunaSweeper
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# What Optuna raises for the best trial of a study without a completed one: its database and in-memory storages.
NO_COMPLETED_TRIAL = ("Record does not exist", "No trials are completed yet")


# What `hydra.sweeper.direction` may say (or a list of them, one per objective).
DIRECTIONS = ("maximize", "minimize")


class OptunaSweeper(_OptunaSweeper):
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from wrncifar.sweeps.optuna_trials import TrialJobs

        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.sweeper.launcher = TrialJobs(self.sweeper.launcher, hydra_context.config_loader, config)

    def sweep(self, arguments: Sequence[str]) -> Any:
        from wrncifar.sweeps.optuna_trials import fail_unfinished_trials, keep_asked_trials

        directions = self.sweeper._get_directions()
        if not directions or any(d not in DIRECTIONS for d in directions):
            log.error(
                "hydra.sweeper.direction=%s: give maximize or minimize (a list of them for several objectives)",
                self.sweeper.direction,
            )
            raise SystemExit(1)
        if self.sweeper.storage:  # None: an in-memory study, gone with the process
            from wrncifar.sweeps.study_settings import StudySettingsError, check_study_settings

            try:
                check_study_settings(
                    self.sweeper.storage, self.sweeper.study_name, directions, arguments, self.sweeper.config
                )
            except StudySettingsError as err:
                log.error("%s", err)
                raise SystemExit(1) from err
        # As Hydra's grid sweeper does: the command's config, with its overrides, where the jobs find which keys the
        # search varies, those of hydra.sweeper.params and those given on the command line (`choice(…)`,
        # `interval(…)`), to name their W&B runs by them (`wrncifar.run.tracking.sweep_group_and_name`).
        sweep_dir = Path(str(self.sweeper.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.sweeper.config, sweep_dir / "multirun.yaml")
        asked = keep_asked_trials(self.sweeper)
        try:
            return super().sweep(arguments)
        except ValueError as err:
            if not any(message in str(err) for message in NO_COMPLETED_TRIAL):
                raise
            # The sweep's end (the summary, exit 1 for the failed trials) follows, as for any sweep.
            log.error("No trial of the study completed, so there is no best one: every trial failed (see below)")
            return None
        finally:
            fail_unfinished_trials(asked)
