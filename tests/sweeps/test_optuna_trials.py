"""Every trial of an Optuna search ends told to its study; a job without a value says why in its record."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from hydra_plugins.wrncifar_sweepers import OptunaSweeper
from wrncifar.sweeps.optuna_trials import record_missing_value
from wrncifar.sweeps.summary import JOB_RESULT, record_job_result


class RefusingLauncher:
    """A launcher that stops the sweep as `wrncifar.sweeps.submitit_jobs.launch` does when SLURM refuses the jobs."""

    def launch(self, job_overrides: list[list[str]], initial_job_idx: int) -> list[JobReturn]:
        raise SystemExit(1)


def test_trials_out_when_the_sweep_stops_are_told_fail(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    sweeper = OptunaSweeper(
        sampler=optuna.samplers.RandomSampler(seed=0),
        direction="maximize",
        storage=storage,
        study_name="search",
        n_trials=4,
        n_jobs=2,  # two trials asked, then launched together
        max_failure_rate=1.0,
        search_space=None,
        custom_search_space=None,
        params=OmegaConf.create({"model.optimizer.lr": "interval(0.01,0.5)"}),
    )
    # What `setup` gives the plugin's sweeper, with the launcher standing in for one that refuses the jobs.
    sweeper.sweeper.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}, "runtime": {"choices": {}}}})
    sweeper.sweeper.hydra_context = object()
    sweeper.sweeper.launcher = RefusingLauncher()
    with pytest.raises(SystemExit):
        sweeper.sweep([])
    trials = optuna.load_study(study_name="search", storage=storage).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL] * 2, "no trial is left RUNNING"


def job_record(job_dir: Path) -> dict:
    return json.loads((job_dir / JOB_RESULT).read_text())


def job_return(job_dir: Path, status: JobStatus, value: object = None, **fields: object) -> JobReturn:
    """What Hydra's `run_job` returns for a job run in `job_dir`, launched from `job_dir`'s parent folder."""
    hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(job_dir)}}})
    return JobReturn(hydra_cfg=hydra_cfg, working_dir=str(job_dir.parent), status=status, _return_value=value, **fields)


def test_a_job_that_returned_no_value_is_recorded_as_failed_with_why(tmp_path: Path) -> None:
    job_dir = tmp_path / "0"
    record_job_result(job_dir, None)  # the run ended normally, with no metric to return
    config = OmegaConf.create({"optimized_metric": None, "train": True})
    returned = job_return(job_dir, JobStatus.COMPLETED, overrides=["optimized_metric=null"], cfg=config)
    assert record_missing_value(returned) is returned
    record = job_record(job_dir)
    assert record["status"] == "failed"
    assert record["error"] == (
        "NoValueError: the job returned no value for its Optuna trial (optimized_metric=null names no metric to report)"
    )


def test_a_job_that_failed_outside_the_run_is_recorded_and_one_that_recorded_itself_is_left(tmp_path: Path) -> None:
    outside = job_return(tmp_path / "0", JobStatus.FAILED, OSError("disk"), overrides=["seed=1"])
    record_missing_value(outside)
    assert job_record(tmp_path / "0") == {"status": "failed", "value": None, "error": "OSError: disk"}
    assert (tmp_path / "0" / ".hydra" / "overrides.yaml").read_text() == "- seed=1\n"  # the summary lists it

    record_job_result(tmp_path / "1", None, ValueError("nan"))  # the run recorded its own failure
    inside = job_return(tmp_path / "1", JobStatus.COMPLETED, overrides=["seed=2"])
    record_missing_value(inside)
    assert job_record(tmp_path / "1")["error"] == "ValueError: nan"
    completed = job_return(tmp_path / "2", JobStatus.COMPLETED, 0.5)
    record_missing_value(completed)
    assert not (tmp_path / "2").exists() and not (tmp_path / JOB_RESULT).exists()
