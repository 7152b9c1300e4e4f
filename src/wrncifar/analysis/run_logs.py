"""Read back what training runs logged: a run's metrics per epoch (its `csv/metrics.csv`), and the runs of a
multirun sweep with the overrides that tell them apart.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

METRICS_CSV = Path("csv") / "metrics.csv"


class MalformedLogError(ValueError):
    """A run's metrics file cannot be read as numbers."""


@dataclass(frozen=True)
class SweepRun:
    """One job of a multirun: its folder, its command-line overrides and the last value of each logged metric."""

    run_dir: Path
    overrides: dict[str, str]
    final: dict[str, float]


def epoch_metrics(run_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every metric the CSV logger wrote for `run_dir` with an epoch, as (epochs, values) in logging order.

    Rows without an epoch (the learning-rate monitor's, logged by step) are left out.
    """
    return _metric_series(run_dir, "epoch")


def step_metrics(run_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every metric the CSV logger wrote for `run_dir`, as (global steps, values) in logging order: the
    per-step ones (the learning-rate monitor's) included, and the per-epoch ones at the step they were logged."""
    return _metric_series(run_dir, "step")


def _metric_series(run_dir: Path, axis: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    path = Path(run_dir) / METRICS_CSV
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: was the run logged with logger=csv (the default)?")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    series: dict[str, tuple[list[int], list[float]]] = {}
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        if not row.get(axis):
            continue
        for key, value in row.items():
            if key in ("epoch", "step") or not value:
                continue
            positions, values = series.setdefault(key, ([], []))
            try:
                positions.append(int(row[axis]))
                values.append(float(value))
            except (TypeError, ValueError) as err:
                raise MalformedLogError(
                    f"{path}, line {line}: {key}={value!r} at {axis} {row[axis]!r} is not a number: the file is "
                    "damaged (a run killed while writing it?); fix or remove that line"
                ) from err
    return {key: (np.asarray(positions), np.asarray(values)) for key, (positions, values) in series.items()}


def sweep_runs(sweep_dir: Path) -> list[SweepRun]:
    """The jobs of a multirun folder (`logs/train/multiruns/<time>/`), in job order.

    A job that logged nothing (it failed, or ran with logger=null) is listed with no metrics.
    """
    jobs = [d for d in Path(sweep_dir).iterdir() if (d / ".hydra" / "overrides.yaml").is_file()]
    if not jobs:
        raise FileNotFoundError(f"{sweep_dir} holds no runs (<job>/.hydra/overrides.yaml): is it a multirun folder?")
    runs = []
    for job in sorted(jobs, key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, d.name)):
        pairs = (str(o).partition("=") for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or [])
        overrides = {key: value for key, _, value in pairs}
        final = {k: float(v[-1]) for k, (_, v) in epoch_metrics(job).items()} if (job / METRICS_CSV).is_file() else {}
        runs.append(SweepRun(job, overrides, final))
    return runs


def varying_overrides(runs: Sequence[SweepRun]) -> list[str]:
    """The override keys whose values differ between `runs`: what the sweep varied."""
    keys = sorted({k for run in runs for k in run.overrides})
    return [k for k in keys if len({run.overrides.get(k) for run in runs}) > 1]
