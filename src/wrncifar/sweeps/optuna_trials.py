"""Every trial of an Optuna search ends told to its study, and every job without a value says why in the summary.

hydra-optuna-sweeper asks the study for trials, launches their jobs, and tells the study each result when the jobs
return. A trial whose job never returns stayed RUNNING in the stored study for good, and a continued study carried
it along. The ways a trial's job ends without a value, and what happens here:

- its config cannot be composed (a search dimension, or an override, on a key the config does not have): Hydra's
  launchers compose each job just before running it and raise, which stopped the whole sweep with the trials
  untold. `TrialJobs` composes each job first; one that cannot be composed is not launched but recorded as failed
  with Hydra's message (its folder, for the summary) and returned as failed: the sweeper tells the study FAIL and
  the search goes on;
- the job raises: the run records it and returns None (`wrncifar.run.entry`); an error outside the run comes back
  from the launcher as a failed job, recorded here when the job did not record it;
- the job returns None (no `optimized_metric` to report): recorded here as failed, with the reason;
- the launcher loses the job (cancelled, killed, out of memory): `wrncifar.sweeps.submitit_jobs` records it as
  `no result` and returns None;
- the sweep stops while trials are out (the launcher raises, SLURM refuses the jobs, Ctrl-C, a signal):
  `fail_unfinished_trials` tells the study FAIL for them on the way out.

In each case but the last the sweeper itself tells the study FAIL (a value that is not a number), and the sweep
ends with its summary, every such job listed with its error, and exit 1. Once more trials of the sweep have failed
than `hydra.sweeper.max_failure_rate` × its trials so far, `TrialJobs` tells the study the last batch's results
and stops the search (`TooManyFailedTrialsError`); the sweep ends the same way. Each trial names its job's folder
in the study (the user attribute JOB_DIR_ATTR): a continued study's trials are in several commands' sweep folders.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from wrncifar.sweeps.summary import record_job_outcome, recorded_status

log = logging.getLogger(__name__)


# The trial's user attribute that names its job's folder: the best trial of a study continued over several
# commands may be in any of their sweep folders.
JOB_DIR_ATTR = "job_dir"


class NoValueError(RuntimeError):
    """A job of an Optuna search returned no value for its trial."""


class TooManyFailedTrialsError(RuntimeError):
    """More of the sweep's trials failed than `hydra.sweeper.max_failure_rate` allows."""


class TrialJobs:
    """The sweeper's launcher with each job's config composed before the launch (see the module docstring): a job
    whose config cannot be composed is recorded and returned as failed instead of stopping the sweep.

    It also names each trial's job folder in the study (JOB_DIR_ATTR), and stops the search once more of the
    sweep's trials have failed than `max_failure_rate` × the trials so far (hydra-optuna-sweeper's own check counts
    only jobs that raised, which the project's jobs never do: they record their error and return None).

    Attributes:
        trials: the sweep's trials as the sweeper asks for them (`keep_asked_trials`), the last ones those of the
            jobs being launched; the sweeper sets it when the search starts.
    """

    def __init__(self, launcher: Any, config_loader: Any, config: DictConfig, max_failure_rate: float = 1.0) -> None:
        self.launcher = launcher
        self.config_loader = config_loader
        self.config = config
        self.max_failure_rate = max_failure_rate
        self.trials: list[Any] = []
        self.launched = 0
        self.failed = 0

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
        """The jobs' returns, in the order of `job_overrides` (the sweeper's trials). The jobs that can be composed
        are launched together and numbered first; those that cannot take the numbers after them.

        Raises:
            TooManyFailedTrialsError: after telling the study these trials' results, when the failures are too many.
        """
        composed, uncomposable = {}, []
        for position, overrides in enumerate(job_overrides):
            try:
                composed[position] = self.config_loader.load_sweep_config(self.config, list(overrides))
            except (HydraException, OmegaConfBaseException) as err:
                uncomposable.append((position, err))
        runnable = list(composed)
        numbers = {p: idx for idx, p in enumerate([*runnable, *(p for p, _ in uncomposable)], start=initial_job_idx)}
        trials = self.trials[-len(job_overrides) :]
        for position, trial in enumerate(trials):
            job_dir = job_folder(composed.get(position, self.config), numbers[position])
            trial.set_user_attr(JOB_DIR_ATTR, str(job_dir.absolute()))
        returns: dict[int, JobReturn] = {}
        for position, err in uncomposable:
            returns[position] = uncomposable_job(self.config, list(job_overrides[position]), numbers[position], err)
        if runnable:
            launched = self.launcher.launch([job_overrides[p] for p in runnable], initial_job_idx=initial_job_idx)
            for position, job_return in zip(runnable, launched, strict=True):
                returns[position] = record_missing_value(job_return)
        in_order = [returns[position] for position in range(len(job_overrides))]
        self.launched += len(in_order)
        self.failed += sum(trial_value(job_return) is None for job_return in in_order)
        if self.failed > self.max_failure_rate * self.launched:
            tell_results(trials, in_order)  # as the sweeper would have, had the search gone on
            raise TooManyFailedTrialsError(
                f"{self.failed} of the {self.launched} trials so far failed, more than "
                f"hydra.sweeper.max_failure_rate={self.max_failure_rate} allows: the search stops here"
            )
        return in_order


def job_folder(config: DictConfig, idx: int) -> Path:
    """The folder of job `idx` (`hydra.sweep.dir`/`hydra.sweep.subdir`) of a sweep whose config (the job's own, or
    the command's) is `config`, as the job makes it."""
    job_config = copy.deepcopy(config)
    with open_dict(job_config.hydra.job):
        job_config.hydra.job.num = idx
        job_config.hydra.job.id = idx
    try:
        subdir = str(job_config.hydra.sweep.subdir)
    except OmegaConfBaseException:  # a subdir made of the job's own (uncomposable) config
        subdir = str(idx)
    return Path(str(job_config.hydra.sweep.dir)) / subdir


def trial_value(job_return: JobReturn) -> float | None:
    """The value a job reports for its trial, None when it has none (it failed, returned nothing, or NaN)."""
    if job_return.status != JobStatus.COMPLETED:
        return None
    try:
        value = float(job_return.return_value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def tell_results(trials: Sequence[Any], returns: Sequence[JobReturn]) -> None:
    """Tell the study each trial's result, as hydra-optuna-sweeper does: its job's value, or FAIL."""
    from optuna.trial import TrialState

    for trial, job_return in zip(trials, returns, strict=True):
        value = trial_value(job_return)
        if value is None:
            trial.study.tell(trial, state=TrialState.FAIL)
        else:
            trial.study.tell(trial, value)


def uncomposable_job(config: DictConfig, overrides: list[str], idx: int, err: Exception) -> JobReturn:
    """The failed JobReturn of job `idx`, whose config cannot be composed, after recording it in the folder the job
    would have had (`hydra.sweep.dir`/`hydra.sweep.subdir`)."""
    job_dir = job_folder(config, idx)
    message = " ".join(str(err).split())
    log.error("Job %d not launched: its config cannot be composed (%s)", idx, message)
    record_job_outcome(job_dir, overrides, err)
    return JobReturn(overrides=overrides, working_dir=str(job_dir), status=JobStatus.FAILED, _return_value=err)


def record_missing_value(job_return: JobReturn) -> JobReturn:
    """`job_return`, after recording in the job's folder why it has no value when the job did not: it returned
    None as if completed, or raised outside the run (a failed JobReturn, the job's folder without a record)."""
    if job_return.status == JobStatus.COMPLETED and job_return.return_value is not None:
        return job_return
    # The job's folder; `working_dir` is the folder it ran in, the launch folder unless hydra.job.chdir=true.
    hydra_cfg = job_return.hydra_cfg
    output_dir = OmegaConf.select(hydra_cfg, "hydra.runtime.output_dir", default=None) if hydra_cfg else None
    if not output_dir:  # returned by the project's launcher, which recorded the job itself
        return job_return
    job_dir = Path(output_dir)
    status = recorded_status(job_dir)
    overrides = list(job_return.overrides or [])
    if job_return.status == JobStatus.COMPLETED and status in (None, "completed"):
        error = NoValueError(f"the job returned no value for its Optuna trial ({_why_no_value(job_return.cfg)})")
        log.error("Job %s: %s", job_dir.name, error)
        record_job_outcome(job_dir, overrides, error)
    elif job_return.status == JobStatus.FAILED and status is None:
        record_job_outcome(job_dir, overrides, job_return._return_value)
    return job_return


def _why_no_value(config: DictConfig | None) -> str:
    metric = OmegaConf.select(config, "optimized_metric", default=None) if config is not None else None
    if config is not None and config.get("train") is False:
        return f"train=false: no training run reported optimized_metric={metric}"
    return f"optimized_metric={metric}" if metric else "optimized_metric=null names no metric to report"


def keep_asked_trials(sweeper: Any) -> list[Any]:
    """The list, filled as the search goes, of the trials hydra-optuna-sweeper's `sweeper` (its `OptunaSweeperImpl`,
    1.3) asks its study for: it hands every batch it asked for to `_configure_trials`."""
    asked: list[Any] = []
    configure = sweeper._configure_trials

    def configure_and_keep(trials: list[Any], *args: Any, **kwargs: Any) -> Any:
        asked.extend(trials)
        return configure(trials, *args, **kwargs)

    sweeper._configure_trials = configure_and_keep
    return asked


def fail_unfinished_trials(trials: Sequence[Any]) -> list[int]:
    """Tell the study FAIL for each of `trials` (this sweep's) still RUNNING, as when the sweep stops before their
    jobs returned; returns their numbers."""
    from optuna.trial import TrialState

    if not trials:
        return []
    study = trials[0].study
    try:
        running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        unfinished = [trial for trial in trials if trial.number in running]
        for trial in unfinished:
            study.tell(trial, state=TrialState.FAIL)
    except Exception as err:  # noqa: BLE001 - called on the way out of a sweep: its own error comes first
        log.warning(
            "Could not tell study %s that the trials the sweep left unfinished failed: %s", study.study_name, err
        )
        return []
    if unfinished:
        numbers = ", ".join(str(trial.number) for trial in unfinished)
        log.error("The sweep stopped before trial(s) %s of study %s returned: told FAIL", numbers, study.study_name)
    return [trial.number for trial in unfinished]
