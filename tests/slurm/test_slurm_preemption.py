"""Preemption on the SLURM cluster, as a batch job (`sbatch` running `srun python src/train.py …`) lives it: stopped by
`scontrol requeue` (SIGTERM, what PreemptMode=REQUEUE does), by SIGUSR1 before its time limit, or by a signal that
arrives before training starts; each time the requeued job ends with the weights of an uninterrupted run, and one
metrics history."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import FEW_IMAGES, HANG_TIMEOUT_S, ROOT, read_metrics, run_entry
from tests.slurm.cluster import Cluster
from tests.slurm.conftest import job_record, wait_for_job

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# 200 training images in batches of 16 on the on-device path (whose position checkpoints keep): 2 epochs of 13
# steps, step.ckpt every 2 steps. The best-checkpoint callback watches the epoch number (lowest best), so that
# epoch_000.ckpt is the only epoch checkpoint in either run.
PREEMPTIBLE = [
    *FEW_IMAGES,
    "data.on_device=true",
    "data.batch_size=16",
    "trainer.max_epochs=2",
    "callbacks.step_checkpoint.every_n_train_steps=2",
    "test=false",
]
STEPS_PER_EPOCH = 13
TOTAL_STEPS = 2 * STEPS_PER_EPOCH


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run, uninterrupted, outside SLURM."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    result = run_entry("train.py", [*PREEMPTIBLE, f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def submit(cluster: Cluster, folder: Path) -> str:
    """`sbatch` a job that trains PREEMPTIBLE in `<folder>/runs/$SLURM_JOB_ID` (the README's recipe); its id."""
    command = shlex.join([sys.executable, str(ROOT / "src" / "train.py"), *PREEMPTIBLE])
    script = folder / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        f"#SBATCH --output={folder}/slurm-%j.out\n"
        "#SBATCH --open-mode=append\n"  # a requeued job appends to its log
        "#SBATCH --cpus-per-task=1\n"
        f"cd {ROOT}\n"
        f"srun {command} hydra.run.dir={folder}/runs/$SLURM_JOB_ID\n"
    )
    return cluster.run("sbatch", "--parsable", str(script)).stdout.strip()


def saved_step(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except (FileNotFoundError, RuntimeError, EOFError):  # not written yet
        return -1


def wait_until(condition, what: str, timeout: float = HANG_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
        time.sleep(0.1)


def wait_for_requeue(cluster: Cluster, job: str) -> None:
    """Wait until `job` is back in the queue, its first run ended."""
    wait_until(lambda: job_record(cluster, job).get("Restarts") == "1", f"requeue of job {job}", timeout=120)
    wait_for_job(cluster, job, ("PENDING",), timeout=120)


def restart_and_wait(cluster: Cluster, job: str) -> None:
    """Let the requeued `job` start at once (SLURM holds a requeued job for a while) and wait until it completes."""
    cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    wait_for_job(cluster, job, ("COMPLETED",), timeout=HANG_TIMEOUT_S)


def final_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def assert_same_training(run_dir: Path, reference: Path) -> None:
    """The same weights and the same one history of validation metrics as the uninterrupted run."""
    got, want = final_state(run_dir), final_state(reference)
    assert got["global_step"] == want["global_step"] == TOTAL_STEPS
    for key, value in want["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), f"{key} differs from the uninterrupted run"

    def history(run: Path) -> list[tuple[str, str]]:
        return [(r["epoch"], r["val/acc"]) for r in read_metrics(run) if r.get("val/acc")]

    assert history(run_dir) == history(reference), "each epoch's validation once, as in the uninterrupted run"


def test_a_job_requeued_by_preemption_resumes_from_its_checkpoint(slurm_cluster: Cluster, tmp_path, reference) -> None:
    job = submit(slurm_cluster, tmp_path)
    run_dir = tmp_path / "runs" / job
    # Preempted in the second epoch: the first epoch's metrics, logged before, must stay.
    wait_until(lambda: saved_step(run_dir / "checkpoints" / "step.ckpt") > STEPS_PER_EPOCH + 1, "checkpoint")
    slurm_cluster.run("scontrol", "requeue", job)  # SIGTERM to the job's processes, and back to the queue
    wait_for_requeue(slurm_cluster, job)
    stopped_at = final_state(run_dir)["global_step"]
    restart_and_wait(slurm_cluster, job)

    assert STEPS_PER_EPOCH < stopped_at < TOTAL_STEPS, "last.ckpt held the step the requeue stopped at"
    assert_same_training(run_dir, reference)
    log = (tmp_path / f"slurm-{job}.out").read_text()
    assert f"Stopped by SIGTERM; resume with resume={run_dir}" in log
    assert f"SLURM job {job} was requeued (restart 1): resuming {run_dir}" in log
    assert f"Resuming {run_dir} from {run_dir / 'checkpoints' / 'last.ckpt'}" in log


def test_sigusr1_before_the_time_limit_saves_requeues_and_resumes(slurm_cluster: Cluster, tmp_path, reference) -> None:
    job = submit(slurm_cluster, tmp_path)
    run_dir = tmp_path / "runs" / job
    wait_until(lambda: saved_step(run_dir / "checkpoints" / "step.ckpt") > 2, "checkpoint")
    slurm_cluster.run("scancel", "--signal=USR1", job)  # what SLURM sends `signal_delay_s` before the limit
    wait_for_requeue(slurm_cluster, job)
    assert 2 < final_state(run_dir)["global_step"] < TOTAL_STEPS, "last.ckpt held the step SIGUSR1 stopped at"
    restart_and_wait(slurm_cluster, job)

    assert_same_training(run_dir, reference)
    assert not list(run_dir.glob("hpc_ckpt_*.ckpt")), "one checkpoint mechanism: last.ckpt"
    log = (tmp_path / f"slurm-{job}.out").read_text()
    assert f"Stopped by SIGUSR1; the SLURM job is requeued and continues in {run_dir}" in log
    assert f"SLURM job {job} was requeued (restart 1): resuming {run_dir}" in log
    assert "Traceback" not in log


def test_a_signal_before_training_requeues_the_job_which_starts_cleanly(
    slurm_cluster: Cluster, tmp_path, reference
) -> None:
    job = submit(slurm_cluster, tmp_path)
    run_dir = tmp_path / "runs" / job
    # The run's folder and log exist as soon as Hydra has read the config: torch is not even imported yet.
    wait_until(lambda: (run_dir / "train.log").is_file(), "run folder")
    slurm_cluster.run("scancel", "--signal=USR1", job)
    wait_for_requeue(slurm_cluster, job)
    assert not (run_dir / "checkpoints").exists() or not list((run_dir / "checkpoints").iterdir()), "nothing saved"
    restart_and_wait(slurm_cluster, job)

    assert_same_training(run_dir, reference)
    log = (tmp_path / f"slurm-{job}.out").read_text()
    assert "SIGUSR1 arrived before training started: stopping before the first step" in log
    assert "Stopped by SIGUSR1; the SLURM job is requeued and continues in" in log
    assert f"SLURM job {job} was requeued (restart 1) before it saved a checkpoint in {run_dir}" in log
    assert "Traceback" not in log
