"""The project's submitit launchers (`hydra/launcher=local|slurm|slurm_cpu`): hydra-submitit-launcher's launch, with
what a sweep on a cluster needs besides.

- A job that ends without a result (cancelled, out of memory, killed, preempted and not requeued) does not abort
  the sweep: submitit's `UncompletedJobError` is caught where the results are collected, the job is recorded as
  `no result` (`wrncifar.sweeps.summary`) and the sweep goes on to its summary and exits 1 at the end, as with a
  job that fails inside. A job whose run recorded that it completed keeps that record and its value, whatever
  ended the job after it (another rank failing at teardown).
- A sweep that stops while jobs are out (Ctrl-C, SIGTERM, an error) cancels them on the way out: on SLURM they
  would go on using the cluster, for a sweep that no longer collects them.
- Before anything is submitted to SLURM, each job's trainer shape (`trainer.devices` per node, `trainer.num_nodes`)
  must be the tasks and nodes the launcher asks for (Lightning runs one SLURM task per device); a sweep over
  several shapes is refused with one message.
- A request SLURM refuses (more CPUs or GPUs per node than the partition's nodes have, a time limit above the
  partition's) stops the sweep with one message that puts the request beside what the partition has, and says
  what to change.
- The local executor's jobs get the GPUs this process may use (CUDA_VISIBLE_DEVICES), where submitit would give
  them GPUs 0..N-1.

The launcher classes are in `hydra_plugins/wrncifar_launchers.py` (Hydra instantiates launchers only from its
`hydra_plugins` package); they call `launch` here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from wrncifar.sweeps.summary import JOB_RESULT, NO_RESULT, read_job_record, record_job_outcome

log = logging.getLogger(__name__)


class NoResultError(RuntimeError):
    """A job of the sweep ended without a result (cancelled, out of memory, killed), or raised outside the run."""


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """hydra-submitit-launcher's `BaseSubmititLauncher.launch` (1.2): submit the jobs as one array and return their
    results in order, with a job that left no result returned as None (and recorded) instead of raised; on any
    exception while they are out (Ctrl-C, SIGTERM), the jobs not finished are cancelled before it goes on."""
    if launcher._EXECUTOR == "slurm":
        check_trainer_shapes(launcher, job_overrides, initial_job_idx)
    executor = make_executor(launcher)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    log.info("Submitit '%s' sweep output dir : %s", launcher._EXECUTOR, sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    jobs_params = []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        jobs_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
    jobs: list[Any] = []
    try:
        with stop_signals_held():  # stopped half-way, the sweep would not know which jobs to cancel
            jobs = submit(launcher, executor, jobs_params)
        return [job_result(launcher, job, params[0], params[2]) for job, params in zip(jobs, jobs_params, strict=True)]
    except BaseException:
        cancel_unfinished(jobs)
        raise


def make_executor(launcher: Any) -> Any:
    """The submitit executor of `launcher`'s settings, as hydra-submitit-launcher makes it; the local one shows its
    jobs the GPUs of this process (`visible_gpus`)."""
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
    gpus = int(resources.get("gpus_per_node") or 0)
    if executor_name == "local" and gpus:
        # The local executor's own setting, which AutoExecutor does not pass on.
        executor._executor.update_parameters(visible_gpus=visible_gpus(gpus))
    return executor


def visible_gpus(gpus_per_node: int) -> tuple[int, ...]:
    """The GPUs CUDA_VISIBLE_DEVICES shows this process, for the local executor's jobs (empty when it is not set:
    every GPU, submitit's 0..N-1); one message and exit 1 when it shows fewer than `gpus_per_node`, or names them
    otherwise than by number (UUIDs, MIG devices), which submitit cannot pass on."""
    shown = os.environ.get("CUDA_VISIBLE_DEVICES")
    if shown is None:
        return ()
    ids = [gpu.strip() for gpu in shown.split(",") if gpu.strip()]
    if len(ids) < gpus_per_node or not all(gpu.isdigit() for gpu in ids):
        log.error(
            "hydra/launcher=local gives each job hydra.launcher.gpus_per_node=%d of the GPUs this command may use, "
            "CUDA_VISIBLE_DEVICES=%s: make at least that many visible, by number (0,1,…), or lower gpus_per_node",
            gpus_per_node,
            shown,
        )
        raise SystemExit(1)
    return tuple(int(gpu) for gpu in ids)


def submit(launcher: Any, executor: Any, jobs_params: list[tuple[Any, ...]]) -> list[Any]:
    """The submitit jobs of `jobs_params`, submitted as one array. A submission sbatch refuses stops the sweep with
    one message (`refused_request_message`), leaving none of the files submitit wrote for it."""
    import submitit

    submitit_root = submitit.core.utils.JobPaths.get_first_id_independent_folder(launcher.params["submitit_folder"])
    before = set(submitit_root.rglob("*")) if submitit_root.is_dir() else None
    try:
        return executor.map_array(launcher, *zip(*jobs_params, strict=True))
    except submitit.core.utils.FailedJobError as err:
        if launcher._EXECUTOR != "slurm":
            raise
        log.error("%s", refused_request_message(str(err), launcher.params))
        remove_unsubmitted_files(submitit_root, before)  # nothing was submitted: the sweep leaves no folder
        raise SystemExit(1) from err


@contextlib.contextmanager
def stop_signals_held() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) and SIGTERM until the end of the block, then deliver the first that came to the handler
    that was there; a second one stops at once (an `sbatch` that hangs). Blocking them instead would leave them
    blocked in the processes started meanwhile: the local executor's job controllers, which submitit stops with
    SIGINT. Only the main thread can set handlers; elsewhere nothing is held."""
    held: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        if held:
            raise KeyboardInterrupt
        held.append(signum)

    previous: dict[int, Any] = {}
    with contextlib.suppress(ValueError):  # not the main thread
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, hold)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if held:
            signal.raise_signal(held[0])


def cancel_unfinished(jobs: Sequence[Any]) -> None:
    """Cancel each of `jobs` not finished yet (SLURM's `scancel`; the local executor stops the job's processes), and
    say which."""
    unfinished = []
    for job in jobs:
        with contextlib.suppress(Exception):  # a state SLURM cannot tell: cancelled all the same
            if job.done():
                continue
        with contextlib.suppress(OSError):  # no scancel here: reported below all the same
            job.cancel(check=False)
        unfinished.append(_job_name(job))
    if unfinished:
        log.warning("The sweep stopped with jobs still out: cancelled %s", ", ".join(unfinished))


def check_trainer_shapes(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> None:
    """Stop the sweep, before anything is submitted, with one message when a job's trainer would not run one SLURM
    task per device: `trainer.devices` (a number of them) other than the launcher's `tasks_per_node`, or
    `trainer.num_nodes` other than its `nodes`. Lightning's SLURM environment refuses such a job once it starts, and
    the launcher's settings are the sweep's: `slurm_cpu` takes its tasks from the command's `trainer.devices`."""
    tasks, nodes = int(launcher.params.get("tasks_per_node") or 1), int(launcher.params.get("nodes") or 1)
    shared = set.intersection(*(set(overrides) for overrides in job_overrides)) if job_overrides else set()
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        try:
            trainer = job_config(launcher, list(overrides), idx).get("trainer") or {}
        except (HydraException, OmegaConfBaseException):  # the job itself reports what cannot be composed
            continue
        devices, num_nodes = _device_count(trainer.get("devices")), int(trainer.get("num_nodes") or 1)
        if (devices is None or devices == tasks) and num_nodes == nodes:
            continue
        log.error(
            "Job #%d (%s) trains on %d node(s) × %s device(s) (trainer.num_nodes × trainer.devices), but this sweep's "
            "launcher runs every job as %d node(s) × %d task(s) (hydra.launcher.nodes × tasks_per_node), and Lightning "
            "needs one SLURM task per device. Nothing was submitted: run one sweep per trainer shape, the trainer "
            "given on the command line rather than swept (hydra/launcher=slurm_cpu takes its tasks from it, "
            "hydra/launcher=slurm from gpus_per_node)",
            idx,
            " ".join(o for o in filter_overrides(overrides) if o not in shared) or "this command's trainer",
            num_nodes,
            trainer.get("devices"),
            nodes,
            tasks,
        )
        raise SystemExit(1)


def _device_count(devices: Any) -> int | None:
    """How many devices Lightning's `devices` asks for; None when it takes what the job is given (-1, "auto")."""
    if isinstance(devices, list | tuple | ListConfig):
        return len(devices)
    try:
        count = int(devices)
    except (TypeError, ValueError):
        return None
    return count if count > 0 else None


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
    recording that in the job's folder for the sweep summary, or, when its run recorded that it completed, one with
    the recorded value."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    try:
        wait_for(job)
        return job.results()[0]
    except FailedJobError as err:  # before UncompletedJobError, its parent class
        status, error = "failed", f"{_job_name(job)} raised outside the run: {_last_trace_line(str(err))}"
    except UncompletedJobError:
        status, error = NO_RESULT, f"{_job_name(job)} ended {job.state} without a result"
    error = f"{error}; its log: {job.paths.stderr}"
    job_dir = job_folder(launcher, overrides, idx)
    record = read_job_record(job_dir)
    if record is not None and record["status"] == "completed":  # the run finished on rank 0; what failed came after
        value = record["value"]
        log.warning("Job %d completed (its %s is kept), though afterwards: %s", idx, JOB_RESULT, error)
        return JobReturn(overrides=overrides, working_dir=str(job_dir), status=JobStatus.COMPLETED, _return_value=value)
    log.error("Job %d: %s", idx, error)
    record_job_outcome(job_dir, overrides, NoResultError(error), status=status)
    return JobReturn(overrides=overrides, working_dir=str(job_dir), status=JobStatus.COMPLETED, _return_value=None)


def _last_trace_line(failed_job_error: str) -> str:
    """The exception line of the job's traceback in submitit's FailedJobError text (the traceback between dashed
    lines, then where the logs are)."""
    trace = failed_job_error.split("You can check full logs")[0]
    lines = [line.strip() for line in trace.splitlines() if line.strip() and not set(line.strip()) <= {"-"}]
    return lines[-1] if lines else failed_job_error


# SLURM states of a job that is not over, which submitit (1.5) counts as finished ("done"): a job suspended by a
# preemption, held for a requeue, or waiting for its nodes to boot would be listed as without a result (and its
# Optuna trial told FAIL) while it still runs.
STILL_OUT = frozenset(
    {"CONFIGURING", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "SUSPENDED"}
)


def wait_for(job: Any, state_check_s: float = 15, poll_s: float = 1) -> None:
    """Wait until `job` has ended. submitit looks for the result file every second but asks SLURM for the job's
    state ever more rarely (at most every 10 minutes, and half the job's age), so a job that ends without a result
    would go unnoticed for that long: here SLURM is asked at least every `state_check_s` seconds (one `sacct` call
    for all the sweep's jobs). A job in a state of STILL_OUT is waited for, whatever submitit says."""
    checked = time.monotonic()
    while not ended(job):
        if time.monotonic() - checked > state_check_s:
            checked = time.monotonic()
            if ended(job, force_check=True):
                return
        time.sleep(poll_s)


def ended(job: Any, force_check: bool = False) -> bool:
    """Whether `job` is over: its result is there, or submitit says it is done and SLURM's state is not one of
    STILL_OUT (`CANCELLED by 1234`: the first word)."""
    if not job.done(force_check=force_check):
        return False
    if job.paths.result_pickle.exists():
        return True
    state = str(job.state).split()
    return not state or state[0].upper() not in STILL_OUT


def _job_name(job: Any) -> str:
    return f"SLURM job {job.job_id}" if type(job).__name__ == "SlurmJob" else f"Job {job.job_id}"


def job_folder(launcher: Any, overrides: list[str], idx: int) -> Path:
    """The folder of job `idx` of the sweep (`hydra.sweep.dir`/`hydra.sweep.subdir`), as the job itself makes it."""
    config = job_config(launcher, overrides, idx)
    return Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)


def job_config(launcher: Any, overrides: list[str], idx: int) -> DictConfig:
    """The config job `idx` of the sweep composes, as the job itself composes it."""
    config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, overrides)
    with open_dict(config.hydra.job):
        config.hydra.job.num = idx
    return config


def refused_request_message(sbatch_error: str, params: dict[str, Any]) -> str:
    """One message for a submission sbatch refused: its reason, what each job asks for, what the partition's nodes
    have (from `sinfo`), and what to change."""
    reason = ([line.strip() for line in sbatch_error.splitlines() if line.strip()][-1:] or ["sbatch failed"])[0]
    partition = params.get("partition")
    sinfo = ["sinfo", "-h", "-o", "%P|%D|%c|%m|%G|%l", *(["-p", str(partition)] if partition else [])]
    try:
        rows = [r.split("|") for r in subprocess.run(sinfo, capture_output=True, text=True, timeout=30).stdout.split()]
    except (OSError, subprocess.TimeoutExpired):
        rows = []
    rows = [r for r in rows if len(r) == 6 and (partition or r[0].endswith("*"))]
    if "time limit" in reason.lower():  # "Requested time limit is invalid (missing or exceeds some limit)"
        allows = f"; partition {rows[0][0].rstrip('*')} allows {rows[0][5]}" if rows else ""
        return (
            f"SLURM refused the sweep's jobs ({reason}). Each job asks for a time limit of "
            f"{params.get('timeout_min')} minute(s){allows}. Lower hydra.launcher.timeout_min, or choose another "
            "hydra.launcher.partition"
        )
    gpus = params.get("gpus_per_node") or 0
    asked = (
        f"{params.get('nodes', 1)} node(s), each with {params.get('tasks_per_node', 1)} task(s) × "
        f"{params.get('cpus_per_task') or 1} CPU(s) and {gpus or 'no'} GPU(s)"
    )
    has = ""
    if rows:
        name, nodes, cpus, memory, gres, _ = rows[0]
        gpu_text = "no GPUs" if gres in ("(null)", "") else f"GRES {gres}"
        has = f"; partition {name.rstrip('*')} has {nodes} node(s) with {cpus} CPUs, {memory} MB and {gpu_text}"
    return (
        f"SLURM refused the sweep's jobs ({reason}). Each job asks for {asked}{has}. On CPU nodes use "
        "hydra/launcher=slurm_cpu; otherwise lower hydra.launcher.cpus_per_task, tasks_per_node or gpus_per_node, "
        "or choose another hydra.launcher.partition"
    )
