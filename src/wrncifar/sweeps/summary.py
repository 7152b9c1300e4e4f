"""The summary of a Hydra multirun: each job's overrides, status and optimized metric, best first.

Every job records its own result in `<job dir>/job_result.json` (written by `wrncifar.run.entry.run`, on rank 0),
whatever launcher ran it: in this process, in local subprocesses or on SLURM nodes. At the end of the sweep,
`SweepSummary` (a Hydra callback, in the process that launched the jobs) reads them back and writes
`sweep_summary.csv` and `sweep_summary.md` to the sweep folder, and prints the table; it also rewrites them
after each job, so they exist however the sweep ends. A job that left no record was killed (or is still
running) and is listed as such, one whose record cannot be read as failed (the error names the file); the submitit
launchers record a job that SLURM (or submitit's local executor) ended without a result
(`wrncifar.sweeps.submitit_jobs`), and the Optuna sweeper a trial's job that could not be composed or returned no
value (`wrncifar.sweeps.optuna_trials`), both with `record_job_outcome`. Records are written whole (a temporary
file renamed over the old one), and a summary that cannot be made ends the sweep with exit 1 like a failed job.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from wrncifar.analysis.output_files import spreadsheet_text, write_file
from wrncifar.analysis.run_logs import SweepRun, sweep_runs, varying_overrides
from wrncifar.sweeps.api_key import redacted

log = logging.getLogger(__name__)

JOB_RESULT = "job_result.json"
SUMMARY_CSV = "sweep_summary.csv"
SUMMARY_MD = "sweep_summary.md"
NO_RESULT = "no result"  # the job left no record: killed, out of memory, or still running


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (`-m`, or a config that sets hydra.mode)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def on_rank_zero() -> bool:
    """Whether this process is a job's rank 0 (the only one a job's record comes from). Lightning is imported
    here, not with this module: Hydra creates `SweepSummary` before every run, and a sweep's own process, which
    trains nothing, should not wait for it."""
    from lightning.pytorch.utilities import rank_zero_only

    return rank_zero_only.rank == 0


def record_job_result(
    job_dir: str | Path, value: Any, error: BaseException | None = None, status: str | None = None
) -> None:
    """Write the job's status ("completed" or "failed", or `status`: NO_RESULT where the launcher found the job
    ended without a result), its optimized metric and its error to JOB_RESULT (on rank 0 only)."""
    if not on_rank_zero():
        return
    _write_record(Path(job_dir), value, error, status)


def record_job_outcome(job_dir: Path, overrides: list[str], error: BaseException, status: str = "failed") -> None:
    """Record, from the sweep's own process, a job that ended without a result of its own: the launcher's or the
    sweeper's account of it (`error`), with the job's overrides where the job never wrote them (it did not start),
    so that the summary lists it."""
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        overrides_file.parent.mkdir(parents=True, exist_ok=True)
        write_file(overrides_file, lambda tmp: tmp.write_text(yaml.safe_dump(list(overrides))))
    _write_record(job_dir, None, error, status)


def read_job_record(job_dir: Path) -> dict[str, Any] | None:
    """The job's JOB_RESULT (status, value, error), or None when it wrote none. A record that cannot be read (cut
    short by a job killed while writing it with an earlier version, a full disk, edited by hand) reads as failed,
    its error naming the file."""
    path = job_dir / JOB_RESULT
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or not isinstance(record.get("status"), str):
            raise ValueError("no status")
        if not (record.get("value") is None or isinstance(record["value"], int | float)):
            raise ValueError(f"its value {record['value']!r} is not a number")
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        return {"status": "failed", "value": None, "error": f"its record {path} cannot be read ({reason})"}
    return record


def recorded_status(job_dir: Path) -> str | None:
    """The status in the job's JOB_RESULT ("failed" for one that cannot be read), or None when it wrote none."""
    record = read_job_record(job_dir)
    return record["status"] if record else None


def _write_record(job_dir: Path, value: Any, error: BaseException | None, status: str | None) -> None:
    record = {
        "status": status or ("failed" if error else "completed"),
        "value": float(value) if isinstance(value, int | float) else None,
        "error": redacted(" ".join(f"{type(error).__name__}: {error}".split())) if error else None,  # one line
    }
    job_dir.mkdir(parents=True, exist_ok=True)
    # Replaced whole: a job killed while writing it leaves its earlier record, or none, never half of one.
    write_file(job_dir / JOB_RESULT, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))


@dataclass(frozen=True)
class JobSummary:
    """One job of a sweep: its folder and overrides, and what it recorded."""

    run: SweepRun
    status: str
    value: float | None
    error: str | None

    @property
    def job(self) -> str:
        return self.run.run_dir.name


def summarize(sweep_dir: Path, mode: Literal["max", "min"] = "max") -> list[JobSummary]:
    """The jobs of `sweep_dir`, best first: completed jobs by their value, then the rest in job order."""
    jobs = []
    for run in sweep_runs(sweep_dir):
        record = read_job_record(run.run_dir) or {"status": NO_RESULT}
        jobs.append(JobSummary(run, record["status"], record.get("value"), record.get("error")))
    sign = -1 if mode == "max" else 1

    def rank(job: JobSummary) -> tuple[int, float]:
        ranked = job.status == "completed" and job.value is not None and not math.isnan(job.value)
        return (0, sign * job.value) if ranked else (1, 0.0)  # type: ignore[operator]

    return sorted(jobs, key=rank)  # stable: unranked jobs stay in job order


def summary_rows(jobs: list[JobSummary], metric: str) -> tuple[list[str], list[list[str]]]:
    """A header and one row per job: job, status, the metric, then the overrides the sweep varied (none for a
    sweep of one job: its overrides are in its folder's .hydra/overrides.yaml)."""
    keys = varying_overrides([job.run for job in jobs])
    header = ["job", "status", metric, *keys, "error"]
    rows = [
        [
            job.job,
            job.status,
            "" if job.value is None else f"{job.value:.6g}",
            *(job.run.overrides.get(k, "") for k in keys),
            job.error or "",
        ]
        for job in jobs
    ]
    return header, rows


def write_summary(
    sweep_dir: Path, metric: str, mode: Literal["max", "min"] = "max", quiet: bool = False
) -> list[JobSummary]:
    """Write SUMMARY_CSV and SUMMARY_MD to `sweep_dir` (each replaced whole, never half-written), print the table
    unless `quiet`, and return the jobs, best first."""
    jobs = summarize(sweep_dir, mode)
    header, rows = summary_rows(jobs, metric)
    table = [header, ["---"] * len(header), *rows]
    markdown = "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table)
    text = io.StringIO()
    # Override values and error texts may quote data (a file name): no cell may run as a spreadsheet formula.
    csv.writer(text).writerows([header, *([spreadsheet_text(cell) for cell in row] for row in rows)])
    # Replaced whole (a temporary file renamed over it): jobs running at once may each rewrite the summary.
    write_file(sweep_dir / SUMMARY_CSV, lambda tmp: tmp.write_text(text.getvalue()))
    write_file(sweep_dir / SUMMARY_MD, lambda tmp: tmp.write_text(f"# Sweep {sweep_dir}\n\n{markdown}\n"))
    if not quiet:
        log.info("Sweep summary (%s, best first), also in %s:\n%s", metric, sweep_dir / SUMMARY_MD, markdown)
    return jobs


SWEEPER_DIRECTIONS: dict[str, Literal["max", "min"]] = {"maximize": "max", "minimize": "min"}


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, write and print the sweep summary.

    The multirun then exits with status 1 when any job failed or left no result, after every job has run.

    Args:
        mode: "max" when a higher optimized metric is better (accuracy), "min" for a loss. A sweeper with a
            direction of its own (Optuna's `hydra.sweeper.direction`) decides instead: the summary ranks the jobs
            as the search does.
    """

    def __init__(self, mode: Literal["max", "min"] = "max") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.mode = mode

    def _mode(self, config: DictConfig) -> Literal["max", "min"]:
        direction = OmegaConf.select(config, "hydra.sweeper.direction", default=None)
        direction = getattr(direction, "name", direction)  # Optuna's sweeper may hold its Direction enum
        return SWEEPER_DIRECTIONS.get(direction, self.mode) if isinstance(direction, str) else self.mode

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        """Rewrite the summary after every job of a multirun (on its rank 0): it is there (with the jobs so far) even
        when the sweep ends without reaching `on_multirun_end`, as an Optuna search whose every trial failed does."""
        if config.hydra.mode != RunMode.MULTIRUN or not on_rank_zero():
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            write_summary(sweep_dir, str(config.get("optimized_metric") or "result"), self._mode(config), quiet=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write and print the summary; exit 1 when a job did not complete, or when the summary cannot be made
        (Hydra would turn the error into a warning, and the sweep would exit 0)."""
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        try:
            jobs = write_summary(sweep_dir, str(config.get("optimized_metric") or "result"), self._mode(config))
        except Exception as err:  # whatever it is, the sweep must not end as if it succeeded
            log.error("The sweep summary of %s could not be made: %s: %s", sweep_dir, type(err).__name__, err)
            raise SystemExit(1) from err
        failed = [job for job in jobs if job.status != "completed"]
        if failed:
            names = ", ".join(f"{job.job} ({job.status})" for job in failed)
            log.error("%d of %d jobs did not complete: %s. See %s", len(failed), len(jobs), names, sweep_dir)
            raise SystemExit(1)
