"""Multiruns as a user runs them: a grid with its summary, an Optuna search and its resumption, submitit jobs."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import optuna
import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from tests.conftest import FEW_IMAGES, last_logged, read_metrics, run_entry
from wrncifar.sweeps.optuna_sampler import TrialSeededTPESampler
from wrncifar.sweeps.summary import JOB_RESULT, SUMMARY_CSV, SUMMARY_MD, SweepSummary, record_job_result
from wrncifar.sweeps.sweep_setup import pin_one_gpu_per_job

# One epoch of the tiny model on 2 training images per class: a job takes about 2 s after start-up.
TINY_JOB = [*FEW_IMAGES, "trainer.max_epochs=1", "callbacks=none"]


def read_summary(sweep_dir: Path) -> list[dict[str, str]]:
    with (sweep_dir / SUMMARY_CSV).open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_grid_runs_every_job_despite_failures_and_summarises_them_best_first(tmp_path: Path) -> None:
    # A 2×2 grid whose DDP jobs are refused (DDP would re-run the whole sweep command): they fail with the
    # message, the two single-process jobs still run.
    grid = ["trainer=ddp_cpu,cpu", "data.batch_size=16,32"]
    result = run_entry(
        "train.py", ["-m", *[a for a in TINY_JOB if a != "trainer=cpu"], *grid, f"hydra.sweep.dir={tmp_path}"]
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]  # the failures are not hidden…
    assert "2 of 4 jobs did not complete: 0 (failed), 1 (failed)" in output and "Traceback" not in output

    rows = read_summary(tmp_path)
    assert {row["job"] for row in rows} == {"0", "1", "2", "3"}  # …and every job ran, in its own folder
    assert [(r["job"], r["trainer"], r["status"]) for r in rows[2:]] == [
        ("0", "ddp_cpu", "failed"),
        ("1", "ddp_cpu", "failed"),
    ]
    assert all("hydra/launcher=slurm" in r["error"] and "hydra/launcher=local" in r["error"] for r in rows[2:])
    completed = rows[:2]
    assert [r["status"] for r in completed] == ["completed"] * 2 and {r["trainer"] for r in completed} == {"cpu"}
    assert {r["data.batch_size"] for r in completed} == {"16", "32"}
    # The value of each completed job is what it logged, and the best comes first.
    for row in completed:
        logged = last_logged(read_metrics(tmp_path / row["job"]), "val/acc_best")
        assert float(row["val/acc_best"]) == pytest.approx(logged, rel=1e-5)
    assert float(completed[0]["val/acc_best"]) >= float(completed[1]["val/acc_best"])
    markdown = (tmp_path / SUMMARY_MD).read_text()
    assert "| job | status | val/acc_best | data.batch_size | trainer | error |" in markdown
    assert markdown.count("| failed |") == 2 and "| job | status |" in result.stdout
    assert json.loads((tmp_path / "0" / JOB_RESULT).read_text())["status"] == "failed"
    assert not (tmp_path / "0" / "csv").exists()  # refused before training: nothing was logged


@pytest.mark.slow
def test_a_sweep_without_failures_summarises_and_exits_0(sweep_dir: Path) -> None:
    rows = read_summary(sweep_dir)
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert {r["model.optimizer.lr"] for r in rows} == {"0.05", "0.2"}
    # The jobs ran one after the other in one process: the second one's start-up counts from its own start.
    first, second = (
        re.search(r"First training step done ([\d.]+) s after the (\w+) started: ([\d.]+) s Python and Hydra", log)
        for log in ((sweep_dir / job / "train.log").read_text() for job in ("0", "1"))
    )
    assert first and first.group(2) == "process" and second and second.group(2) == "job"
    assert float(second.group(1)) < float(first.group(1))  # no second import of torch, nor the first job's time


def optuna_search(sweep_dir: Path, storage: str) -> list[str]:
    return [
        "hparams_search=wrn_cifar100_optuna",
        *TINY_JOB,
        "hydra.sweeper.n_trials=3",
        f"hydra.sweeper.storage={storage}",
        f"hydra.sweep.dir={sweep_dir}",
    ]


@pytest.mark.slow
def test_optuna_search_maximises_the_metric_and_resumes_its_stored_study(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'studies' / 'search.db'}"  # its folder does not exist yet
    first = run_entry("train.py", optuna_search(tmp_path / "first", storage))
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    second = run_entry("train.py", optuna_search(tmp_path / "second", storage))
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]

    study = optuna.load_study(study_name="wrn_cifar100", storage=storage)
    trials = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert [t.number for t in trials] == list(range(6))  # the second command continued the same study
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    for trial in trials:
        assert 0.01 <= trial.params["model.optimizer.lr"] <= 0.5
        assert 1e-4 <= trial.params["model.optimizer.weight_decay"] <= 2e-3
        assert 0.0 <= trial.params["model.label_smoothing"] <= 0.2
        assert trial.params["data.batch_size"] in (64, 128, 256)
    # The resumed trials are new points, not a replay of the first ones (what a plain seeded TPE would draw).
    first_lrs = {t.params["model.optimizer.lr"] for t in trials[:3]}
    assert not first_lrs & {t.params["model.optimizer.lr"] for t in trials[3:]}
    # Each invocation's jobs report to the study the value they logged; the best is the study's best.
    for sweep_dir, numbers in [(tmp_path / "first", range(3)), (tmp_path / "second", range(3, 6))]:
        rows = read_summary(sweep_dir)
        by_lr = {float(r["model.optimizer.lr"]): float(r["val/acc_best"]) for r in rows}
        assert by_lr == pytest.approx({trials[n].params["model.optimizer.lr"]: trials[n].value for n in numbers})
    best = OmegaConf.load(tmp_path / "second" / "optimization_results.yaml")
    assert best.best_value == pytest.approx(max(t.value for t in trials))

    # Other settings are refused before any trial runs: new trials would be modelled on the ones stored.
    other = run_entry("train.py", [*optuna_search(tmp_path / "third", storage), "trainer.max_epochs=2"])
    assert other.returncode == 1
    output = other.stdout + other.stderr
    assert "holds 6 trial(s) run with other settings (trainer.max_epochs: 1 then, 2 now)" in output
    assert "Traceback" not in output and not (tmp_path / "third").exists()
    assert len(optuna.load_study(study_name="wrn_cifar100", storage=storage).trials) == 6


def test_a_resumed_seeded_study_draws_what_an_uninterrupted_one_would() -> None:
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 1e-3, 1.0, log=True)
        return -((x - 0.1) ** 2) + trial.suggest_categorical("b", [1, 2]) * 1e-3

    def sampler() -> TrialSeededTPESampler:  # two random start-up trials, then TPE
        return TrialSeededTPESampler(seed=7, n_startup_trials=2)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    whole = optuna.create_study(sampler=sampler(), direction="maximize")
    whole.optimize(objective, n_trials=6)
    storage = optuna.storages.InMemoryStorage()
    interrupted = optuna.create_study(storage=storage, study_name="s", sampler=sampler(), direction="maximize")
    interrupted.optimize(objective, n_trials=3)
    resumed = optuna.create_study(
        storage=storage, study_name="s", sampler=sampler(), direction="maximize", load_if_exists=True
    )
    resumed.optimize(objective, n_trials=3)
    assert [t.params for t in resumed.trials] == [t.params for t in whole.trials]
    assert len({t.params["x"] for t in resumed.trials}) == 6


@pytest.mark.slow
def test_submitit_local_runs_jobs_in_their_own_processes(tmp_path: Path) -> None:
    args = ["-m", "hydra/launcher=local", *TINY_JOB, "model.optimizer.lr=0.05,0.1"]
    result = run_entry("train.py", [*args, f"hydra.sweep.dir={tmp_path}"])
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    rows = read_summary(tmp_path)
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert {r["model.optimizer.lr"] for r in rows} == {"0.05", "0.1"}
    # submitit ran each job as its own process, with its own log, next to the jobs' own folders.
    logs = sorted((tmp_path / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2 and all("Outputs:" in log.read_text() for log in logs)
    for job in ("0", "1"):
        assert (tmp_path / job / "csv" / "metrics.csv").is_file()


def test_submitit_local_gives_each_single_device_job_its_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    for job_num, gpu in [(0, "0"), (1, "1"), (2, "2"), (4, "1")]:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
        pin_one_gpu_per_job(OmegaConf.create({"trainer": {"devices": 1}, "hydra": {"job": {"num": job_num}}}))
        assert os.environ["CUDA_VISIBLE_DEVICES"] == gpu
    # A job that uses several devices (DDP) keeps them all.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    pin_one_gpu_per_job(OmegaConf.create({"trainer": {"devices": 2}, "hydra": {"job": {"num": 1}}}))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1,2"


def test_slurm_launcher_runs_one_task_per_gpu_and_asks_for_the_requeue_signal(make_config) -> None:
    # Composing sets HydraConfig, where the launcher's config lives.
    make_config(["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4", "hydra.launcher.partition=gpu"])
    launcher = HydraConfig.get().launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert launcher.tasks_per_node == 4  # Lightning's SLURM environment wants one task per device
    # SIGUSR1 before the time limit: the run saves last.ckpt and requeues; submitit's resubmission stays off.
    assert launcher.additional_parameters.signal == f"USR1@{launcher.signal_delay_s}" == "USR1@120"
    assert launcher.additional_parameters.requeue is True  # sbatch --requeue: not left to the cluster's default
    assert launcher.max_num_timeout == 0


@pytest.mark.slow
def test_a_diverging_trial_fails_and_the_search_goes_on_to_its_summary(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    diverging = ["model.optimizer.lr=1e6", "optimized_metric=val/loss", "hydra.sweeper.direction=minimize"]
    args = [*optuna_search(tmp_path / "sweep", storage), "hydra.sweeper.n_trials=2", *diverging]
    result = run_entry("train.py", args)
    assert result.returncode == 1  # every trial failed
    output = result.stdout + result.stderr
    assert "No trial of the study completed, so there is no best one" in output
    assert "Traceback" not in output and "Record does not exist" not in output
    assert "2 of 2 jobs did not complete" in output  # the sweep's own end: its summary and exit 1
    rows = read_summary(tmp_path / "sweep")
    assert [r["status"] for r in rows] == ["failed", "failed"], "both trials ran and are recorded"
    assert all(r["error"].startswith("NonFiniteMetricError: optimized_metric val/loss is nan") for r in rows)
    study = optuna.load_study(study_name="wrn_cifar100", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2


@pytest.mark.slow
def test_a_job_of_a_search_resumes_as_a_single_run_and_leaves_the_study_alone(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    with_checkpoints = [a for a in optuna_search(tmp_path / "sweep", storage) if a != "callbacks=none"]
    first = run_entry("train.py", [*with_checkpoints, "hydra.sweeper.n_trials=1", "test=false"])
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    job = tmp_path / "sweep" / "0"
    resumed = run_entry("train.py", [f"resume={job}", "trainer.max_epochs=2"])
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    last = torch.load(job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 1, "the job trained on in its own folder"
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["0"], "no new jobs"
    assert len(optuna.load_study(study_name="wrn_cifar100", storage=storage).trials) == 1


@pytest.mark.parametrize(("direction", "best_first"), [("minimize", "0.05"), ("maximize", "0.1"), (None, "0.1")])
def test_the_summary_ranks_the_jobs_in_the_sweepers_direction(
    tmp_path: Path, direction: str | None, best_first: str
) -> None:
    """An Optuna search minimising a loss lists its lowest loss first; without a direction, the callback's mode."""
    for job, (lr, value) in enumerate([("0.05", 4.2), ("0.1", 4.6)]):
        (tmp_path / str(job) / ".hydra").mkdir(parents=True)
        (tmp_path / str(job) / ".hydra" / "overrides.yaml").write_text(f"- model.optimizer.lr={lr}\n")
        record_job_result(tmp_path / str(job), value)
    sweeper = {"direction": direction} if direction else {}
    hydra = {"mode": RunMode.MULTIRUN, "sweep": {"dir": str(tmp_path)}, "sweeper": sweeper}
    SweepSummary(mode="max").on_multirun_end(OmegaConf.create({"hydra": hydra, "optimized_metric": "val/loss"}))
    rows = list(csv.reader((tmp_path / "sweep_summary.csv").open()))
    assert best_first in rows[1]


def test_no_summary_cell_runs_as_a_spreadsheet_formula(tmp_path: Path) -> None:
    """A job folder's overrides are data: a value starting like a formula is kept as text, a number as it is."""
    for job, tag in enumerate(['=HYPERLINK("http://x")', "-0.5", "@SUM(1+1)"]):
        (tmp_path / str(job) / ".hydra").mkdir(parents=True)
        (tmp_path / str(job) / ".hydra" / "overrides.yaml").write_text(f"- '+tag={tag}'\n")
        record_job_result(tmp_path / str(job), 0.5 - job / 10)
    hydra = {"mode": RunMode.MULTIRUN, "sweep": {"dir": str(tmp_path)}, "sweeper": {}}
    SweepSummary(mode="max").on_multirun_end(OmegaConf.create({"hydra": hydra, "optimized_metric": "val/acc"}))
    rows = list(csv.reader((tmp_path / "sweep_summary.csv").open()))
    assert rows[0] == ["job", "status", "val/acc", "+tag", "error"]
    assert [row[3] for row in rows[1:]] == ['\'=HYPERLINK("http://x")', "-0.5", "'@SUM(1+1)"]


def test_a_failed_jobs_record_keeps_its_error_but_not_the_api_key_it_quotes(tmp_path: Path, monkeypatch) -> None:
    key = "0123456789abcdef" * 2
    monkeypatch.setenv("WANDB_API_KEY", key)
    record_job_result(tmp_path, None, ValueError(f"logger.wandb.notes='key {key}' is too long"))
    record = json.loads((tmp_path / JOB_RESULT).read_text())
    assert record["error"] == "ValueError: logger.wandb.notes='key <redacted>' is too long"


def test_a_mistyped_or_changed_search_direction_is_one_message_before_any_trial(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'studies' / 'search.db'}"
    typo = run_entry("train.py", [*optuna_search(tmp_path / "typo", storage), "hydra.sweeper.direction=maximise"])
    assert typo.returncode == 1
    output = typo.stdout + typo.stderr
    assert "hydra.sweeper.direction=maximise: give maximize or minimize" in output and "Traceback" not in output
    assert not (tmp_path / "studies").exists() and not (tmp_path / "typo").exists(), "the refusal leaves no folder"

    (tmp_path / "studies").mkdir()
    optuna.create_study(storage=storage, study_name="wrn_cifar100", direction="minimize")
    changed = run_entry("train.py", optuna_search(tmp_path / "changed", storage))
    assert changed.returncode == 1
    output = changed.stdout + changed.stderr
    assert "Optuna study 'wrn_cifar100' in " in output and "was made to minimize" in output
    assert "give hydra.sweeper.direction=minimize to continue it" in output and "Traceback" not in output
    assert not optuna.load_study(study_name="wrn_cifar100", storage=storage).trials
    assert not (tmp_path / "changed").exists() and (tmp_path / "studies" / "search.db").is_file()


def test_optuna_trials_that_end_without_a_value_are_told_fail_and_summarised_with_why(tmp_path: Path) -> None:
    """Two trials launched together, neither of which reports a value: one whose config cannot be composed (a
    search over a trainer option that does not exist, as over a misspelt key), one that returns None (it neither
    trains nor tests). Both are FAIL in the study, none left RUNNING, and the summary says why; nothing trains."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    search = [a for a in optuna_search(tmp_path / "sweep", storage) if a != "trainer=cpu"]
    nothing_to_report = ["trainer=choice(cpu,cpux)", "train=false", "test=false"]
    result = run_entry("train.py", [*search, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", *nothing_to_report])
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "2 of 2 jobs did not complete: 0 (failed), 1 (failed)" in output and "Traceback" not in output
    errors = {row["trainer"]: (row["status"], row["error"]) for row in read_summary(tmp_path / "sweep")}
    assert errors["cpux"][0] == "failed" and "Could not find 'trainer/cpux'" in errors["cpux"][1]
    assert errors["cpu"] == (
        "failed",
        "NoValueError: the job returned no value for its Optuna trial (train=false: no training run reported "
        "optimized_metric=val/acc_best)",
    )
    study = optuna.load_study(study_name="wrn_cifar100", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
    # The command's record, from which jobs name their W&B runs by the keys searched, the command line's too.
    assert "trainer=choice(cpu,cpux)" in OmegaConf.load(tmp_path / "sweep" / "multirun.yaml").hydra.overrides.task


def test_a_grid_refused_before_any_job_leaves_no_folder(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "new" / "sweep"  # neither folder exists yet
    result = run_entry("train.py", ["-m", "model.nonexistent=1,2", f"hydra.sweep.dir={sweep_dir}"])
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Could not override 'model.nonexistent'" in output
    assert not (tmp_path / "new").exists(), "Hydra's multirun.yaml alone was written there: the folder goes"
