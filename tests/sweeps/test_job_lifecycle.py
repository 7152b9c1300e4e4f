"""The jobs of a sweep under the submitit launchers (`hydra/launcher=local|slurm|slurm_cpu`), from submission to
their end: what stops the sweep and cancels them, which GPUs local jobs get, how a job that ends badly is recorded,
and what is refused before SLURM sees anything."""

from __future__ import annotations

import contextlib
import json
import operator
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import psutil
import pytest
import submitit

from tests.conftest import FEW_IMAGES, HANG_TIMEOUT_S, ROOT, run_entry
from wrncifar.sweeps import submitit_jobs
from wrncifar.sweeps.summary import JOB_RESULT, record_job_result, recorded_status

# One epoch of the tiny model on 2 training images per class.
TINY_JOB = [*FEW_IMAGES, "trainer.max_epochs=1", "callbacks=none"]
# How long a process may take to end once told to: generous, it only catches one that never does.
ENDS_WITHIN_S = 300


def start_sweep(args: list[str], log: Path) -> subprocess.Popen:
    """`python src/train.py args…` in the background, in a process group of its own (its jobs' too, for the clean-up)
    and with Ctrl-C deliverable, its output to `log`."""

    def as_in_a_terminal() -> None:  # a background process inherits SIGINT ignored: Python would not catch it
        os.setpgrp()
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "src" / "train.py"), *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=as_in_a_terminal,
        )


def ended(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # ended, not yet reaped
    except psutil.NoSuchProcess:
        return True


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_stop_signal_to_the_sweep_stops_it_and_cancels_the_job_still_running(tmp_path: Path, signum: int) -> None:
    # An Optuna search of 3 trials, one at a time, whose trial 0 trains until stopped.
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    sweep_dir = tmp_path / "sweep"
    args = [
        "hparams_search=wrn_cifar100_optuna",
        *FEW_IMAGES,
        "callbacks=none",
        "trainer.max_epochs=1000000",
        "hydra/launcher=local",
        "hydra.sweeper.n_trials=3",
        f"hydra.sweeper.storage={storage}",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    sweep = start_sweep(args, tmp_path / "sweep.log")
    try:
        start = time.monotonic()
        while not (sweep_dir / "0" / "train.log").is_file():  # job 0 has started its run
            assert sweep.poll() is None, (tmp_path / "sweep.log").read_text()[-3000:]
            assert time.monotonic() - start < HANG_TIMEOUT_S, "job 0 never started"
            time.sleep(0.5)
        (controller,) = (int(p.name) for p in (sweep_dir / ".submitit").iterdir() if p.name.isdigit())
        sweep.send_signal(signum)
        sweep.wait(timeout=ENDS_WITHIN_S)
        stopped = time.monotonic()
        while not ended(controller) and time.monotonic() - stopped < ENDS_WITHIN_S:
            time.sleep(0.5)
        job_ended = ended(controller)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sweep.pid, signal.SIGKILL)  # whatever is left of the sweep and its job
    output = (tmp_path / "sweep.log").read_text()
    assert sweep.returncode not in (0, 1), output[-3000:]  # stopped, not ended with its summary
    assert "#1 :" not in output, "no trial launched after the signal"
    assert f"The sweep stopped with jobs still out: cancelled Job {controller}" in output
    assert job_ended, "job 0 (the local executor's process) went on after the sweep stopped"
    trials = optuna.load_study(study_name="wrn_cifar100", storage=storage).trials
    assert [(t.number, t.state.name) for t in trials] == [(0, "FAIL")]
    assert recorded_status(sweep_dir / "0") != "completed"
    if signum == signal.SIGTERM:  # one line, the exit status of a process ended by SIGTERM
        assert sweep.returncode == 128 + signal.SIGTERM
        assert "SIGTERM: the sweep stopped, its unfinished jobs cancelled" in output
        # No traceback of the sweep's (submitit's job controller prints the KeyboardInterrupt it is cancelled by).
        assert "SweepStopped" not in output and 'train.py", line' not in output


@pytest.mark.slow
def test_local_jobs_get_the_gpus_the_command_may_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two one-device jobs at once on the 2 GPUs of CUDA_VISIBLE_DEVICES=2,3: one each, neither on GPU 0 or 1. The
    # jobs train on the CPU: what they are given is what they log, no GPU needed.
    args = ["-m", *TINY_JOB, "hydra/launcher=local", "hydra.launcher.gpus_per_node=2"]
    args += ["hydra.sweeper.max_batch_size=2", "model.optimizer.lr=0.05,0.1", f"hydra.sweep.dir={tmp_path}"]
    result = run_entry("train.py", args, env={"CUDA_VISIBLE_DEVICES": "2,3"})
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    for job, gpu in [("0", "2"), ("1", "3")]:
        assert f"Job {job} runs on GPU {gpu} (of 2,3)" in (tmp_path / job / "train.log").read_text()
    # Fewer GPUs visible than each job asks for, or GPUs by UUID: one message before any job starts.
    for visible in ["2", "GPU-5f0c4a1e,GPU-9b2d7c33"]:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        with pytest.raises(SystemExit):
            submitit_jobs.visible_gpus(2)


@pytest.fixture(scope="module")
def failed_job(tmp_path_factory: pytest.TempPathFactory) -> submitit.Job:
    """A job of submitit's local executor that raised (outside any run: the function itself raised), ended."""
    executor = submitit.AutoExecutor(cluster="local", folder=tmp_path_factory.mktemp("submitit"))
    executor.update_parameters(timeout_min=5)
    job = executor.submit(operator.truediv, 1, 0)
    job.wait()
    return job


def test_a_job_that_raised_outside_the_run_is_recorded_with_its_error(
    failed_job: submitit.Job, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(submitit_jobs, "job_folder", lambda launcher, overrides, idx: tmp_path / "0")
    returned = submitit_jobs.job_result(None, failed_job, ["model.optimizer.lr=0.1"], 0)
    assert returned.return_value is None
    record = json.loads((tmp_path / "0" / JOB_RESULT).read_text())
    assert record["status"] == "failed"  # not `no result`: submitit's FailedJobError is an UncompletedJobError
    assert (
        f"Job {failed_job.job_id} raised outside the run: ZeroDivisionError: division by zero; its log: "
        in (record["error"])
    )


def test_a_job_whose_run_completed_keeps_its_record_whatever_ended_the_job_after(
    failed_job: submitit.Job, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rank 0 recorded the run completed; another rank failed after it (a crash at teardown): the job's result is an
    # error, but the run's record and value stand.
    job_dir = tmp_path / "0"
    record_job_result(job_dir, 0.71)
    recorded = (job_dir / JOB_RESULT).read_text()
    monkeypatch.setattr(submitit_jobs, "job_folder", lambda launcher, overrides, idx: job_dir)
    returned = submitit_jobs.job_result(None, failed_job, ["model.optimizer.lr=0.1"], 0)
    assert returned.return_value == pytest.approx(0.71)
    assert (job_dir / JOB_RESULT).read_text() == recorded


def test_a_slurm_sweep_over_trainer_shapes_is_refused_before_anything_is_submitted(tmp_path: Path) -> None:
    # slurm_cpu asks for the tasks of the command's trainer (1 device): trainer=ddp_cpu's job would get 1 task of 2.
    args = ["-m", *TINY_JOB, "hydra/launcher=slurm_cpu", "trainer=cpu,ddp_cpu", f"hydra.sweep.dir={tmp_path / 's'}"]
    result = run_entry("train.py", args)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "Job #1 (trainer=ddp_cpu) trains on 1 node(s) × 2 device(s)" in output
    assert "runs every job as 1 node(s) × 1 task(s)" in output and "run one sweep per trainer shape" in output
    assert "SLURM refused" not in output and "Traceback" not in output
    assert not (tmp_path / "s").exists(), "nothing submitted, no folder left"


def test_a_time_limit_slurm_refuses_is_named_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    sinfo = "cpu*|2|16|64000|(null)|1-00:00:00\n"  # partition, nodes, CPUs, memory, GRES, time limit
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: SimpleNamespace(stdout=sinfo))
    sbatch = (
        "sbatch: error: Batch job submission failed: Requested time limit is invalid (missing or exceeds some limit)"
    )
    params = {"timeout_min": 4320, "nodes": 1, "tasks_per_node": 1, "cpus_per_task": 1, "gpus_per_node": None}
    message = submitit_jobs.refused_request_message(sbatch, params)
    assert "(sbatch: error: Batch job submission failed: Requested time limit is invalid" in message
    assert "a time limit of 4320 minute(s); partition cpu allows 1-00:00:00" in message
    assert "Lower hydra.launcher.timeout_min" in message and "slurm_cpu" not in message and "GPU" not in message


class SlurmJobStates:
    """A SLURM job as submitit's Job shows it: `done()` as submitit (1.5) decides it (any state but READY,
    PENDING, RUNNING, UNKNOWN, REQUEUED, COMPLETING, PREEMPTED is done), `state` SLURM's, one per look."""

    def __init__(self, states: list[str], folder: Path) -> None:
        self.states = states
        self.looks = 0
        self.paths = SimpleNamespace(result_pickle=folder / "result.pkl")

    @property
    def state(self) -> str:
        return self.states[min(self.looks, len(self.states) - 1)]

    def done(self, force_check: bool = False) -> bool:
        self.looks += 1
        incomplete = {"READY", "PENDING", "RUNNING", "UNKNOWN", "REQUEUED", "COMPLETING", "PREEMPTED"}
        return self.state.split()[0] not in incomplete


def test_a_job_suspended_or_held_for_a_requeue_is_waited_for_not_taken_as_ended(tmp_path: Path) -> None:
    """submitit counts SUSPENDED, REQUEUE_HOLD, CONFIGURING… as done: such a job would be listed as without a
    result (its trial told FAIL) while it still runs."""
    job = SlurmJobStates(["RUNNING", "SUSPENDED", "REQUEUE_HOLD", "CONFIGURING", "RUNNING", "COMPLETED"], tmp_path)
    submitit_jobs.wait_for(job, state_check_s=0, poll_s=0)
    assert job.state == "COMPLETED"
    cancelled = SlurmJobStates(["RUNNING", "CANCELLED by 1234"], tmp_path)
    submitit_jobs.wait_for(cancelled, state_check_s=0, poll_s=0)
    assert cancelled.state == "CANCELLED by 1234"
