"""The project's Optuna sweeper (`hparams_search=wrn_cifar100_optuna`): hydra-optuna-sweeper's, except that
- a stored study is continued only with the settings it was made with (`wrncifar.sweeps.study_settings`);
- every trial ends told to the study: a job that cannot be composed, fails or returns nothing is told FAIL and
  listed in the summary with why, and trials still out when the sweep stops are told FAIL on the way out, so a
  stored study keeps no trial RUNNING for good (`wrncifar.sweeps.optuna_trials`);
- a study none of whose trials completed ends like any sweep with failed jobs (the sweep summary printed, each trial
  with its error, exit 1) instead of Optuna's `Record does not exist` traceback from asking for a best trial there
  is not;
- `max_failure_rate` counts the jobs that failed (the plugin counts only those that raised, which the project's
  never do): once more of the sweep's trials failed than that share of its trials so far, the search stops and the
  sweep ends the same way;
- a direction other than maximize or minimize (a list: several objectives) and `n_trials` or `n_jobs` below 1 are
  refused before anything runs or is created;
- `optimization_results.yaml` also names the best trial's number and job folder (`best_trial`, `best_job_dir`): it
  is the best of the whole study, which a continued one may have run in an earlier command's sweep folder.

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


# What `hydra.sweeper.direction` may say: one of them, since the training returns one value (`optimized_metric`).
DIRECTIONS = ("maximize", "minimize")


class OptunaSweeper(_OptunaSweeper):
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from wrncifar.sweeps.optuna_trials import TrialJobs

        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        rate = self.sweeper.max_failure_rate
        self.sweeper.launcher = TrialJobs(self.sweeper.launcher, hydra_context.config_loader, config, rate)
        # TrialJobs stops the search at that rate over the sweep's trials so far. The plugin's own check, per batch,
        # stops only at a job that raised (the project's record their error and return None) and logs a misleading
        # line at every other failure: off.
        self.sweeper.max_failure_rate = 1.0

    def sweep(self, arguments: Sequence[str]) -> Any:
        from wrncifar.sweeps.optuna_trials import (
            TooManyFailedTrialsError,
            TrialJobs,
            fail_unfinished_trials,
            keep_asked_trials,
        )

        refusal = settings_refusal(self.sweeper.direction, self.sweeper.n_trials, self.sweeper.n_jobs)
        if refusal:
            log.error("%s", refusal)
            raise SystemExit(1)
        directions = self.sweeper._get_directions()
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
        if isinstance(self.sweeper.launcher, TrialJobs):
            self.sweeper.launcher.trials = asked
        try:
            returned = super().sweep(arguments)
        except TooManyFailedTrialsError as err:
            # The sweep's end (the summary, every failed trial listed, exit 1) follows, as for any sweep.
            log.error("%s (see below)", err)
            return None
        except ValueError as err:
            if not any(message in str(err) for message in NO_COMPLETED_TRIAL):
                raise
            # The sweep's end (the summary, exit 1 for the failed trials) follows, as for any sweep.
            log.error("No trial of the study completed, so there is no best one: every trial failed (see below)")
            return None
        finally:
            fail_unfinished_trials(asked)
        if asked:
            name_best_job(asked[0].study, sweep_dir / "optimization_results.yaml")
        return returned


def settings_refusal(direction: Any, n_trials: Any, n_jobs: Any) -> str | None:
    """Why the search cannot run with these `hydra.sweeper` settings, or None: refused before any trial, with
    nothing created, rather than failing every trial (a list of directions asks the training for several values)
    or ending with a misleading message (no trial asked for)."""
    name = getattr(direction, "name", direction)  # the plugin's Direction enum, or what the config says
    if not isinstance(name, str) or name not in DIRECTIONS:
        several = isinstance(direction, Sequence) and not isinstance(direction, str)  # a list, or Hydra's ListConfig
        shown = f"[{', '.join(str(getattr(d, 'name', d)) for d in direction)}]" if several else direction
        return (
            f"hydra.sweeper.direction={shown}: give maximize or minimize (one direction: the training returns one "
            "value, its optimized_metric)"
        )
    for key, value, what in (("n_trials", n_trials, "trials to run"), ("n_jobs", n_jobs, "trials run together")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return f"hydra.sweeper.{key}={value}: give the number of {what}, at least 1"
    return None


def name_best_job(study: Any, results_file: Path) -> None:
    """Add to the plugin's `results_file` (optimization_results.yaml: best_params, best_value) the best trial's
    number and job folder: the best of the whole study, which a continued study may have run in an earlier
    command's sweep folder."""
    from wrncifar.analysis.output_files import write_file
    from wrncifar.sweeps.optuna_trials import JOB_DIR_ATTR

    if not results_file.is_file():
        return
    best = study.best_trial
    results = OmegaConf.load(results_file)
    results.best_trial = best.number
    results.best_job_dir = best.user_attrs.get(JOB_DIR_ATTR)  # None for a trial run before trials named theirs
    write_file(results_file, lambda tmp: OmegaConf.save(results, tmp))
