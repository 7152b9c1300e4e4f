"""The project's submitit launchers (`hydra/launcher=local|slurm|slurm_cpu`): hydra-submitit-launcher's launch, with
what a sweep on a cluster needs besides.

- A job that ends without a result (cancelled, out of memory, killed, preempted and not requeued) does not abort
  the sweep: submitit's `UncompletedJobError` is caught where the results are collected, the job is recorded as
  `no result` (`wrncifar.sweeps.summary`) and the sweep goes on to its summary and exits 1 at the end, as with a
  job that fails inside.
- A request SLURM refuses (more CPUs or GPUs per node than the partition's nodes have) stops the sweep with one
  message that puts the request beside what the partition has, and names the CPU preset.

The launcher classes are in `hydra_plugins/wrncifar_launchers.py` (Hydra instantiates launchers only from its
`hydra_plugins` package); they call `launch` here.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf, open_dict

from wrncifar.sweeps.summary import NO_RESULT, record_job_outcome

log = logging.getLogger(__name__)


class NoResultError(RuntimeError):
    """A job of the sweep ended without a result (cancelled, out of memory, killed), or raised outside the run."""


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """hydra-submitit-launcher's `BaseSubmititLauncher.launch` (1.2): submit the jobs as one array and return their
    results in order, with a job that left no result returned as None (and recorded) instead of raised."""
    import submitit  # imported here, as the plugin does: Hydra scans launchers at every start
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    executor_name = launcher._EXECUTOR
    init_keys = {"max_num_timeout"}
    init = {f"{executor_name}_{k}": v for k, v in launcher.params.items() if k in init_keys}
    executor = submitit.AutoExecutor(cluster=executor_name, folder=launcher.params["submitit_folder"], **init)
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    resources = {
        k if k in shared else f"{executor_name}_{k}": v
        for k, v in launcher.params.items()
        if k not in init_keys | {"submitit_folder"}
    }
    executor.update_parameters(**resources)

    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    log.info("Submitit '%s' sweep output dir : %s", executor_name, sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    jobs_params = []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        jobs_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
    submitit_root = submitit.core.utils.JobPaths.get_first_id_independent_folder(launcher.params["submitit_folder"])
    before = set(submitit_root.rglob("*")) if submitit_root.is_dir() else None
    try:
        jobs = executor.map_array(launcher, *zip(*jobs_params, strict=True))
    except submitit.core.utils.FailedJobError as err:
        if executor_name != "slurm":
            raise
        log.error("%s", refused_request_message(str(err), launcher.params))
        remove_unsubmitted_files(submitit_root, before)  # nothing was submitted: the sweep leaves no folder
        raise SystemExit(1) from err
    return [job_result(launcher, job, params[0], params[2]) for job, params in zip(jobs, jobs_params, strict=True)]


def remove_unsubmitted_files(submitit_root: Path, before: set[Path] | None) -> None:
    """Remove what submitit wrote under `submitit_root` for a submission sbatch refused (the jobs' pickles, the
    sbatch script): the paths not in `before` (None: the folder was not there), folders only when left empty."""
    if not submitit_root.is_dir():
        return
    made = [p for p in submitit_root.rglob("*") if before is None or p not in before]
    for path in sorted(made, key=lambda p: len(p.parts), reverse=True):  # files and subfolders before their folder
        if path.is_dir() and not path.is_symlink():
            with contextlib.suppress(OSError):
                path.rmdir()
        else:
            path.unlink(missing_ok=True)
    if before is None:
        with contextlib.suppress(OSError):
            submitit_root.rmdir()


def job_result(launcher: Any, job: Any, overrides: list[str], idx: int) -> JobReturn:
    """The job's JobReturn; for a job that left no result or raised outside the task, one with no value, after
    recording that in the job's folder for the sweep summary."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    try:
        wait_for(job)
        return job.results()[0]
    except UncompletedJobError:
        status, error = NO_RESULT, f"{_job_name(job)} ended {job.state} without a result; its log: {job.paths.stderr}"
    except FailedJobError as err:
        lines = [line for line in str(err).splitlines() if line.strip() and not set(line) <= {"-"}]
        status, error = "failed", f"{_job_name(job)} raised outside the run: {lines[-3] if len(lines) > 2 else err}"
    job_dir = job_folder(launcher, overrides, idx)
    log.error("Job %d: %s", idx, error)
    record_job_outcome(job_dir, overrides, NoResultError(error), status=status)
    return JobReturn(overrides=overrides, working_dir=str(job_dir), status=JobStatus.COMPLETED, _return_value=None)


def wait_for(job: Any, state_check_s: float = 15) -> None:
    """Wait until `job` has ended. submitit looks for the result file every second but asks SLURM for the job's
    state ever more rarely (at most every 10 minutes, and half the job's age), so a job that ends without a result
    would go unnoticed for that long: here SLURM is asked at least every `state_check_s` seconds (one `sacct` call
    for all the sweep's jobs)."""
    checked = time.monotonic()
    while not job.done():
        if time.monotonic() - checked > state_check_s:
            checked = time.monotonic()
            if job.done(force_check=True):
                return
        time.sleep(1)


def _job_name(job: Any) -> str:
    return f"SLURM job {job.job_id}" if type(job).__name__ == "SlurmJob" else f"Job {job.job_id}"


def job_folder(launcher: Any, overrides: list[str], idx: int) -> Path:
    """The folder of job `idx` of the sweep (`hydra.sweep.dir`/`hydra.sweep.subdir`), as the job itself makes it."""
    config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, overrides)
    with open_dict(config.hydra.job):
        config.hydra.job.num = idx
    return Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)


def refused_request_message(sbatch_error: str, params: dict[str, Any]) -> str:
    """One message for a submission sbatch refused: its reason, what each job asks for, what the partition's nodes
    have (from `sinfo`), and what to change."""
    reason = [line for line in sbatch_error.splitlines() if line.strip()][-1:] or ["sbatch failed"]
    gpus = params.get("gpus_per_node") or 0
    asked = (
        f"{params.get('nodes', 1)} node(s), each with {params.get('tasks_per_node', 1)} task(s) × "
        f"{params.get('cpus_per_task') or 1} CPU(s) and {gpus or 'no'} GPU(s)"
    )
    partition = params.get("partition")
    sinfo = ["sinfo", "-h", "-o", "%P|%D|%c|%m|%G", *(["-p", str(partition)] if partition else [])]
    try:
        rows = [r.split("|") for r in subprocess.run(sinfo, capture_output=True, text=True, timeout=30).stdout.split()]
    except (OSError, subprocess.TimeoutExpired):
        rows = []
    rows = [r for r in rows if len(r) == 5 and (partition or r[0].endswith("*"))]
    has = ""
    if rows:
        name, nodes, cpus, memory, gres = rows[0]
        gpu_text = "no GPUs" if gres in ("(null)", "") else f"GRES {gres}"
        has = f"; partition {name.rstrip('*')} has {nodes} node(s) with {cpus} CPUs, {memory} MB and {gpu_text}"
    return (
        f"SLURM refused the sweep's jobs ({reason[0].strip()}). Each job asks for {asked}{has}. On CPU nodes use "
        "hydra/launcher=slurm_cpu; otherwise lower hydra.launcher.cpus_per_task, tasks_per_node or gpus_per_node, "
        "or choose another hydra.launcher.partition"
    )
