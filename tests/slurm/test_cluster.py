"""The test cluster itself: a batch job runs on it, and the `sacct` stand-in answers as submitit expects."""

from __future__ import annotations

from pathlib import Path

import pytest
from submitit.slurm.slurm import SlurmInfoWatcher

from tests.slurm.cluster import Cluster
from tests.slurm.conftest import wait_for_job

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_a_batch_job_runs_and_sacct_reports_it_as_submitit_reads_it(slurm_cluster: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    job = slurm_cluster.run(
        "sbatch", "--parsable", f"--output={out}", "--array=0-1", "--wrap", "echo task $SLURM_ARRAY_TASK_ID"
    ).stdout.strip()
    for task in ("0", "1"):
        wait_for_job(slurm_cluster, f"{job}_{task}", ("COMPLETED",), timeout=60)
    table = slurm_cluster.run("sacct", "-o", "JobID,State,NodeList", "--parsable2", "-j", f"{job}_0", "-j", job)
    states = SlurmInfoWatcher().read_info(table.stdout)
    assert states[f"{job}_0"]["State"] == states[f"{job}_1"]["State"] == "COMPLETED", table.stdout
