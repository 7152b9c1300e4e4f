"""The SLURM cluster the tests in this folder run against (`tests/slurm/cluster.py`): two nodes on this machine,
started once per session and stopped at its end. Without the packages, or the root needed to install them and to
run slurmd, the tests are skipped with the reason (pytest's -ra prints it), never silently."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.slurm import cluster as slurm


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[slurm.Cluster]:
    reason = slurm.start_reason()
    if reason:
        pytest.skip(f"no SLURM cluster: {reason}")
    # A short path: munge's socket lives in it, and a socket path must fit in 108 bytes.
    folder = Path(tempfile.mkdtemp(prefix="wrncifar-slurm-"))
    start = time.monotonic()
    cluster = slurm.start(folder)
    print(f"SLURM cluster up in {time.monotonic() - start:.1f} s: {folder}")
    yield cluster
    slurm.stop(folder)
    shutil.rmtree(folder, ignore_errors=True)


def job_record(cluster: slurm.Cluster, job: str) -> dict[str, str]:
    """`scontrol show job <job>` as a dict (JobState, Restarts, NodeList, …)."""
    out = cluster.run("scontrol", "show", "job", "-o", job).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def wait_for_job(cluster: slurm.Cluster, job: str, states: tuple[str, ...], timeout: float) -> dict[str, str]:
    """Wait until `job` is in one of `states`; its record. AssertionError with the record after `timeout` s."""
    deadline = time.monotonic() + timeout
    record: dict[str, str] = {}
    while time.monotonic() < deadline:
        record = job_record(cluster, job)
        if record.get("JobState") in states:
            return record
        time.sleep(0.5)
    raise AssertionError(f"SLURM job {job} not in {states} after {timeout:.0f} s: {record}")
