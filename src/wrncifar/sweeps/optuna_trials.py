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
ends with its summary, every such job listed with its error, and exit 1.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from wrncifar.sweeps.summary import record_job_outcome, recorded_status

log = logging.getLogger(__name__)


class NoValueError(RuntimeError):
    """A job of an Optuna search returned no value for its trial."""


class TrialJobs:
    """The sweeper's launcher with each job's config composed before the launch (see the module docstring): a job
    whose config cannot be composed is recorded and returned as failed instead of stopping the sweep."""

    def __init__(self, launcher: Any, config_loader: Any, config: DictConfig) -> None:
        self.launcher = launcher
        self.config_loader = config_loader
        self.config = config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
        """The jobs' returns, in the order of `job_overrides` (the sweeper's trials). The jobs that can be composed
        are launched together and numbered first; those that cannot take the numbers after them."""
        runnable, uncomposable = [], []
        for position, overrides in enumerate(job_overrides):
            try:
                self.config_loader.load_sweep_config(self.config, list(overrides))
                runnable.append(position)
            except (HydraException, OmegaConfBaseException) as err:
                uncomposable.append((position, err))
        returns: dict[int, JobReturn] = {}
        for idx, (position, err) in enumerate(uncomposable, start=initial_job_idx + len(runnable)):
            returns[position] = uncomposable_job(self.config, list(job_overrides[position]), idx, err)
        if runnable:
            launched = self.launcher.launch([job_overrides[p] for p in runnable], initial_job_idx=initial_job_idx)
            for position, job_return in zip(runnable, launched, strict=True):
                returns[position] = record_missing_value(job_return)
        return [returns[position] for position in range(len(job_overrides))]


def uncomposable_job(config: DictConfig, overrides: list[str], idx: int, err: Exception) -> JobReturn:
    """The failed JobReturn of job `idx`, whose config cannot be composed, after recording it in the folder the job
    would have had (`hydra.sweep.dir`/`hydra.sweep.subdir`)."""
    job_config = copy.deepcopy(config)
    with open_dict(job_config.hydra.job):
        job_config.hydra.job.num = idx
        job_config.hydra.job.id = idx
    try:
        subdir = str(job_config.hydra.sweep.subdir)
    except OmegaConfBaseException:  # a subdir made of the job's own (uncomposable) config
        subdir = str(idx)
    job_dir = Path(str(job_config.hydra.sweep.dir)) / subdir
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
