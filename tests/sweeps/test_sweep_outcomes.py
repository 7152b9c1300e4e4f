"""How a sweep ends: the failure rate that stops an Optuna search, settings refused before anything runs, a summary
that cannot be made, and where the best trial of a continued study is."""

from __future__ import annotations

import copy
import csv
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, RunMode
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.wrncifar_sweepers import OptunaSweeper
from tests.conftest import FEW_IMAGES, run_entry
from tests.sweeps.test_study_settings import SEARCH, check, stored_study
from wrncifar.sweeps.optuna_trials import record_missing_value
from wrncifar.sweeps.study_settings import CONFIG_USER_ATTR, USER_ATTR, StudySettingsError
from wrncifar.sweeps.summary import JOB_RESULT, SUMMARY_CSV, SweepSummary, record_job_result

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # add_trial

COMPLETE, FAIL = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL


def read_summary(sweep_dir: Path) -> list[dict[str, str]]:
    with (sweep_dir / SUMMARY_CSV).open() as f:
        return list(csv.DictReader(f))


def sweep_config(sweep_dir: Path) -> DictConfig:
    """The part of a multirun's config the sweeper, its jobs' folders and the summary read."""
    hydra = {
        "mode": RunMode.MULTIRUN,
        "sweep": {"dir": str(sweep_dir), "subdir": "${hydra.job.num}"},
        "job": {"num": 0, "id": 0},
        "runtime": {"choices": {}},
        "sweeper": {"direction": "maximize"},
    }
    return OmegaConf.create({"hydra": hydra, "optimized_metric": "val/acc"})


class ConfigLoader:
    """Hydra's config loader, for jobs whose config is the command's."""

    def load_sweep_config(self, config: DictConfig, overrides: list[str]) -> DictConfig:
        return copy.deepcopy(config)


class ScriptedLauncher:
    """Runs each job as the project's run does, in the folder Hydra gives it: it records its value, or its error
    with None returned (a diverged run), in turn from `values`."""

    def __init__(self, sweep_dir: Path, values: list[float | None]) -> None:
        self.sweep_dir = sweep_dir
        self.values: Iterator[float | None] = iter(values)

    def launch(self, job_overrides: list[list[str]], initial_job_idx: int) -> list[JobReturn]:
        returns = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            job_dir = self.sweep_dir / str(idx)
            (job_dir / ".hydra").mkdir(parents=True)
            (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
            value = next(self.values)
            record_job_result(job_dir, value, None if value is not None else FloatingPointError("the loss diverged"))
            hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(job_dir)}}})
            returns.append(
                JobReturn(
                    overrides=list(overrides),
                    hydra_cfg=hydra_cfg,
                    working_dir=str(self.sweep_dir),
                    status=JobStatus.COMPLETED,
                    _return_value=value,
                )
            )
        return returns


def search(
    monkeypatch: pytest.MonkeyPatch,
    sweep_dir: Path,
    storage: str,
    values: list[float | None],
    direction: object = "maximize",
    **settings: object,
) -> OptunaSweeper:
    """The project's sweeper as Hydra sets it up for `-m hparams_search=…`, its jobs run by ScriptedLauncher."""
    settings = {"n_trials": len(values), "n_jobs": 1, "max_failure_rate": 1.0, **settings}
    sweeper = OptunaSweeper(
        sampler=optuna.samplers.RandomSampler(seed=0),
        direction=direction,
        storage=storage,
        study_name="search",
        search_space=None,
        custom_search_space=None,
        params=OmegaConf.create({"model.optimizer.lr": "interval(0.01,0.5)"}),
        **settings,
    )
    launcher = ScriptedLauncher(sweep_dir, values)
    monkeypatch.setattr(Plugins, "instantiate_launcher", lambda self, **kwargs: launcher)
    context = HydraContext(config_loader=ConfigLoader(), callbacks=None)
    sweeper.setup(hydra_context=context, task_function=lambda cfg: None, config=sweep_config(sweep_dir))
    return sweeper


def test_the_search_stops_once_more_trials_failed_than_max_failure_rate_allows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Two trials at a time, at most 30% of them failed: one of 4 goes on, 2 of 6 stop the search (not 8)."""
    storage, sweep_dir = f"sqlite:///{tmp_path / 'study.db'}", tmp_path / "sweep"
    values = [0.5, 0.6, None, 0.7, None, 0.8, 0.9, 0.9]
    sweeper = search(monkeypatch, sweep_dir, storage, values, n_jobs=2, max_failure_rate=0.3)
    with caplog.at_level(logging.INFO):
        assert sweeper.sweep([]) is None
    assert "2 of the 6 trials so far failed, more than hydra.sweeper.max_failure_rate=0.3 allows" in caplog.text
    assert "Failed [" not in caplog.text  # the plugin's own check, which counted only jobs that raised
    trials = optuna.load_study(study_name="search", storage=storage).trials
    assert [t.state for t in trials] == [COMPLETE, COMPLETE, FAIL, COMPLETE, FAIL, COMPLETE], "the last batch is told"
    assert trials[5].value == 0.8

    # The sweep then ends as any sweep with failed jobs: its summary lists every trial, and exits 1.
    with pytest.raises(SystemExit) as ended:
        SweepSummary().on_multirun_end(sweep_config(sweep_dir))
    assert ended.value.code == 1
    rows = {row["job"]: row for row in read_summary(sweep_dir)}
    assert sorted(rows) == ["0", "1", "2", "3", "4", "5"]
    assert [rows[job]["status"] for job in ("2", "4")] == ["failed", "failed"]
    assert rows["2"]["error"] == "FloatingPointError: the loss diverged"


def search_command(tmp_path: Path, *overrides: str) -> tuple[str, list[str]]:
    """The study's storage in `tmp_path`, and the arguments of a one-epoch Optuna search with `overrides`, its sweep
    folder `tmp_path/sweep`."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    search = ["hparams_search=wrn_cifar100_optuna", *overrides, "trainer.max_epochs=1"]
    return storage, [*search, f"hydra.sweeper.storage={storage}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]


@pytest.mark.slow
def test_max_failure_rate_0_stops_a_search_at_its_first_failed_trial(tmp_path: Path) -> None:
    """The reviewer's command: every trial would fail (DDP is refused in a multirun); the first one stops it."""
    training = [*(a for a in FEW_IMAGES if a != "trainer=cpu"), "trainer=ddp_cpu", "callbacks=none"]
    storage, args = search_command(
        tmp_path, *training, "hydra.sweeper.n_trials=3", "hydra.sweeper.max_failure_rate=0.0"
    )
    result = run_entry("train.py", args)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "1 of the 1 trials so far failed, more than hydra.sweeper.max_failure_rate=0.0 allows" in output
    assert "1 of 1 jobs did not complete: 0 (failed)" in output and "Traceback" not in output
    assert [row["status"] for row in read_summary(tmp_path / "sweep")] == ["failed"]
    assert [t.state for t in optuna.load_study(study_name="wrn_cifar100", storage=storage).trials] == [FAIL]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"direction": OmegaConf.create(["maximize", "minimize"])}, "hydra.sweeper.direction=[maximize, minimize]: "),
        ({"direction": "maximise"}, "hydra.sweeper.direction=maximise: "),
        ({"n_trials": 0}, "hydra.sweeper.n_trials=0: give the number of trials to run, at least 1"),
        ({"n_jobs": 0}, "hydra.sweeper.n_jobs=0: give the number of trials run together, at least 1"),
    ],
)
def test_a_search_the_training_cannot_serve_is_refused_before_anything_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, setting: dict, message: str
) -> None:
    """The training returns one value: a list of directions would fail every trial and exit 0. No trial asked for
    would end with "every trial failed"."""
    storage, sweep_dir = f"sqlite:///{tmp_path / 'study.db'}", tmp_path / "sweep"
    sweeper = search(monkeypatch, sweep_dir, storage, [0.5, 0.6], **setting)
    with pytest.raises(SystemExit) as refused:
        sweeper.sweep([])
    assert refused.value.code == 1
    assert message in caplog.text
    if "direction" in setting:
        assert "give maximize or minimize (one direction: the training returns one value" in caplog.text
    assert not (tmp_path / "study.db").exists() and not sweep_dir.exists(), "nothing is made"


@pytest.mark.slow
def test_a_list_of_directions_on_the_command_line_is_one_message(tmp_path: Path) -> None:
    _, args = search_command(tmp_path, *FEW_IMAGES, "hydra.sweeper.direction=[maximize,minimize]")
    result = run_entry("train.py", args)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "hydra.sweeper.direction=[maximize, minimize]: give maximize or minimize" in output
    assert "Traceback" not in output and not any(tmp_path.iterdir()), "neither the study nor the sweep folder is made"


def two_jobs(sweep_dir: Path) -> None:
    """A sweep folder whose job 0 left its record cut short, and whose job 1 completed."""
    for job in ("0", "1"):
        (sweep_dir / job / ".hydra").mkdir(parents=True)
        (sweep_dir / job / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n")
    (sweep_dir / "0" / JOB_RESULT).write_text('{"status": "comp')
    record_job_result(sweep_dir / "1", 0.5)


def test_a_record_that_cannot_be_read_is_a_failed_job_naming_its_file(tmp_path: Path) -> None:
    two_jobs(tmp_path)
    with pytest.raises(SystemExit) as ended:
        SweepSummary().on_multirun_end(sweep_config(tmp_path))
    assert ended.value.code == 1
    rows = {row["job"]: row for row in read_summary(tmp_path)}
    assert rows["1"]["status"] == "completed"
    assert rows["0"]["status"] == "failed"
    assert rows["0"]["error"].startswith(f"its record {tmp_path / '0' / JOB_RESULT} cannot be read (JSONDecodeError")
    # The Optuna sweeper, looking for a job's reason to have no value, reads it the same way.
    job_return = JobReturn(
        overrides=["seed=0"],
        hydra_cfg=OmegaConf.create({"hydra": {"runtime": {"output_dir": str(tmp_path / "0")}}}),
        status=JobStatus.COMPLETED,
        _return_value=None,
    )
    assert record_missing_value(job_return) is job_return


def test_a_record_is_written_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that stops half-way (a full disk, a job killed while writing) leaves the record there was."""
    record_job_result(tmp_path, None, RuntimeError("first attempt"))
    write_text = Path.write_text

    def full_disk(path: Path, text: str, *args: object, **kwargs: object) -> int:
        write_text(path, text[: len(text) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError, match="No space left"):
        record_job_result(tmp_path, 0.5)
    monkeypatch.undo()
    assert json.loads((tmp_path / JOB_RESULT).read_text())["error"] == "RuntimeError: first attempt"
    assert [p.name for p in tmp_path.iterdir()] == [JOB_RESULT], "no temporary file is left"


def test_a_summary_that_cannot_be_made_ends_the_sweep_with_exit_1(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Hydra turns a callback's error into a warning, and the sweep would exit 0."""
    with pytest.raises(SystemExit) as ended:
        SweepSummary().on_multirun_end(sweep_config(tmp_path))  # a sweep folder without jobs
    assert ended.value.code == 1
    assert f"The sweep summary of {tmp_path} could not be made: FileNotFoundError: " in caplog.text


def test_the_best_trial_of_a_continued_study_names_its_job_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two commands on one study, each with its own sweep folder (numbered from 0): the best is the first's job 0."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first, second = tmp_path / "first", tmp_path / "second"
    assert search(monkeypatch, first, storage, [0.9, 0.1]).sweep([]) is None
    assert search(monkeypatch, second, storage, [0.2, 0.3]).sweep([]) is None

    trials = optuna.load_study(study_name="search", storage=storage).trials
    folders = [first / "0", first / "1", second / "0", second / "1"]
    assert [t.user_attrs.get("job_dir") for t in trials] == [str(folder) for folder in folders]
    results = OmegaConf.load(second / "optimization_results.yaml")
    assert results.best_value == 0.9 and results.best_params == trials[0].params
    assert results.best_trial == 0 and results.best_job_dir == str(first / "0")


def test_a_study_whose_every_trial_failed_takes_the_new_settings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Samplers model new trials on no failed one: other settings are no reason to refuse such a study."""
    storage, name = stored_study(tmp_path)
    check(storage, name, SEARCH)  # trainer.max_epochs=30
    study = optuna.load_study(study_name=name, storage=storage)
    for _ in range(3):
        study.add_trial(optuna.trial.create_trial(state=FAIL))
    changed = [*SEARCH[:-1], "trainer.max_epochs=50"]
    with caplog.at_level(logging.INFO):
        check(storage, name, changed)
    assert "holds no completed trial (3 failed): continued with this command's settings" in caplog.text
    attrs = optuna.load_study(study_name=name, storage=storage).user_attrs
    assert attrs[USER_ATTR]["trainer.max_epochs"] == "50"
    assert attrs[CONFIG_USER_ATTR]["config"]["trainer"]["max_epochs"] == 50

    # Once a trial completed with them, they are the study's: the earlier ones are refused.
    study.add_trial(optuna.trial.create_trial(value=0.5))
    with pytest.raises(StudySettingsError, match=r"trainer.max_epochs: 50 then, 30 now"):
        check(storage, name, SEARCH)
