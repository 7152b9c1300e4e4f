"""Sweeps on the SLURM cluster through the submitit launchers, as a user runs them: jobs as SLURM array tasks with
their summary, the CPU preset, a cancelled job, a request the partition cannot fit."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import FEW_IMAGES, HANG_TIMEOUT_S, ROOT, run_entry
from tests.slurm.cluster import Cluster
from tests.slurm.conftest import wait_for_job
from wrncifar.sweeps.summary import SUMMARY_CSV

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# One epoch of the tiny model on 2 training images per class, on the preset for CPU nodes.
JOB = [*FEW_IMAGES, "trainer.max_epochs=1", "callbacks=none", "hydra/launcher=slurm_cpu"]


def read_summary(sweep_dir: Path) -> list[dict[str, str]]:
    with (sweep_dir / SUMMARY_CSV).open() as f:
        return list(csv.DictReader(f))


def test_a_two_job_sweep_runs_as_slurm_jobs_on_cpu_nodes_and_is_summarised(slurm_cluster: Cluster, tmp_path) -> None:
    args = ["-m", *JOB, "model.optimizer.lr=0.05,0.2", f"hydra.sweep.dir={tmp_path}"]
    result = run_entry("train.py", args, env=slurm_cluster.env())
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    rows = read_summary(tmp_path)
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert {r["model.optimizer.lr"] for r in rows} == {"0.05", "0.2"}
    # Each job was a task of one SLURM array, asking for one CPU and no GPU: no hand-tuning for CPU nodes.
    (script,) = (tmp_path / ".submitit").glob("*/*_submission.sh")
    text = script.read_text()
    assert "#SBATCH --array=0-1" in text and "#SBATCH --cpus-per-task=1" in text and "gpu" not in text.lower()
    assert "#SBATCH --signal=USR1@120" in text and "#SBATCH --requeue" in text
    logs = sorted((tmp_path / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2 and all("Outputs:" in log.read_text() for log in logs)


def test_a_one_job_sweep_lists_no_override_as_varied(slurm_cluster: Cluster, tmp_path) -> None:
    result = run_entry("train.py", ["-m", *JOB, f"hydra.sweep.dir={tmp_path}"], env=slurm_cluster.env())
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    with (tmp_path / SUMMARY_CSV).open() as f:
        header = next(csv.reader(f))
    assert header == ["job", "status", "val/acc_best", "error"]


def test_a_cancelled_job_is_listed_without_result_and_the_others_finish(slurm_cluster: Cluster, tmp_path) -> None:
    # Job 1 trains for 200 epochs: it is still running when it is cancelled.
    args = ["-m", *JOB, "trainer.max_epochs=1,200", f"hydra.sweep.dir={tmp_path}"]
    env = {**os.environ, **slurm_cluster.env(), "HYDRA_FULL_ERROR": "0"}
    sweep = subprocess.Popen(
        [sys.executable, str(ROOT / "src" / "train.py"), *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    start = time.monotonic()
    try:
        while not (tmp_path / "1" / "train.log").is_file():  # job 1 has started its run
            assert sweep.poll() is None and time.monotonic() - start < HANG_TIMEOUT_S, "job 1 never started"
            time.sleep(0.5)
        (array,) = {p.name.split("_")[0] for p in (tmp_path / ".submitit").iterdir() if p.name[0].isdigit()}
        slurm_cluster.run("scancel", f"{array}_1")
        cancelled = time.monotonic()
        wait_for_job(slurm_cluster, f"{array}_1", ("CANCELLED",), timeout=120)
        output, _ = sweep.communicate(timeout=HANG_TIMEOUT_S)
    finally:
        sweep.kill()
    print(f"sweep ended {time.monotonic() - cancelled:.0f} s after the cancel")
    assert sweep.returncode == 1, output[-3000:]
    assert "1 of 2 jobs did not complete: 1 (no result)" in output and "Traceback" not in output
    rows = read_summary(tmp_path)
    assert [(r["job"], r["status"], r["trainer.max_epochs"]) for r in rows] == [
        ("0", "completed", "1"),
        ("1", "no result", "200"),
    ]
    assert rows[1]["error"].startswith(f"NoResultError: SLURM job {array}_1 ended CANCELLED without a result")


def test_a_request_the_partition_cannot_fit_stops_with_one_message_and_leaves_no_folder(
    slurm_cluster: Cluster, tmp_path
) -> None:
    # The GPU preset (1 GPU, 8 CPUs per task) on this cluster's CPU nodes.
    args = ["-m", *JOB, "hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 'new' / 'sweep'}"]
    result = run_entry("train.py", args, env=slurm_cluster.env())
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    cpus = os.cpu_count()
    assert "SLURM refused the sweep's jobs (sbatch: error: " in output  # SLURM's reason, then the request
    assert (
        "Each job asks for 1 node(s), each with 1 task(s) × 8 CPU(s) and 1 GPU(s); partition cpu has 2 node(s) "
        f"with {cpus} CPUs"
    ) in output
    assert "and no GPUs. On CPU nodes use hydra/launcher=slurm_cpu" in output and "Traceback" not in output
    print(next(line for line in output.splitlines() if "SLURM refused" in line))
    assert not (tmp_path / "new").exists(), "submitit's pickles and sbatch script were removed, then the folder"

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("the user's\n")
    args = ["-m", *JOB, "hydra/launcher=slurm", f"hydra.sweep.dir={existing}"]
    again = run_entry("train.py", args, env=slurm_cluster.env())
    assert again.returncode == 1
    assert sorted(p.name for p in existing.rglob("*")) == ["multirun.yaml", "notes.txt"]
