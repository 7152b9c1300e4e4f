"""Training curves from the CSV log, as a PNG: `python -m wrncifar.plot <run_dir | multirun_dir> [--out FILE]`.

A run's folder gives its loss, top-1 and top-5 accuracy (train, validation, test) and learning rate; a multirun's
folder gives one figure that compares its jobs, each labelled by the overrides that set it apart.
The PNG goes to `<folder>/curves.png` unless `--out` says otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from wrncifar.analysis.output_files import write_file
from wrncifar.analysis.report_plots import DPI
from wrncifar.analysis.run_logs import (
    METRICS_CSV,
    MalformedLogError,
    epoch_metrics,
    step_metrics,
    sweep_runs,
    varying_overrides,
)

Series = dict[str, tuple[np.ndarray, np.ndarray]]

# Panel title → the metrics drawn in it, per epoch.
RUN_PANELS = {
    "loss": ("train/loss", "val/loss", "test/loss"),
    "top-1 accuracy": ("train/acc", "val/acc", "test/acc"),
    "top-5 accuracy": ("val/acc_top5", "test/acc_top5"),
}
SWEEP_PANELS = {"loss": ("train/loss", "val/loss"), "top-1 accuracy": ("val/acc",), "top-5 accuracy": ("val/acc_top5",)}
LR_PREFIX = "lr-"  # LearningRateMonitor's keys: lr-SGD, lr-SGD/pg1, …
MARKERS_UP_TO = 20  # points: a series this short (a run of a few epochs) gets a marker at each one


def run_figure(run_dir: Path) -> Figure:
    """Loss, top-1 and top-5 accuracy per epoch (test values as a star at the last trained epoch) and the learning
    rate per step, of one run."""
    per_epoch, per_step = epoch_metrics(run_dir), step_metrics(run_dir)
    fig, axes = _figure(f"{Path(run_dir).name}: training curves")
    for ax, (title, keys) in zip(axes, RUN_PANELS.items(), strict=False):
        for key in keys:
            if key not in per_epoch:
                continue
            epochs, values = per_epoch[key]
            if key.startswith("test/"):
                # Lightning's epoch counter has moved past the last trained epoch when testing starts: the CSV
                # records the test at the number of epochs trained, one past the last epoch's index.
                ax.plot(np.maximum(epochs - 1, 0), values, "*", markersize=10, label=key)
            else:
                _plot_series(ax, epochs, values, label=key)
        _finish_panel(ax, title, "epoch")
    _plot_learning_rates(axes[3], per_step, label_prefix="")
    return fig


def sweep_figure(sweep_dir: Path) -> Figure:
    """The jobs of a multirun side by side: validation loss (training loss dashed), top-1 and top-5 accuracy per
    epoch and the learning rate per step, one colour per job."""
    runs = [run for run in sweep_runs(sweep_dir) if (run.run_dir / METRICS_CSV).is_file()]
    if not runs:
        raise FileNotFoundError(f"{sweep_dir}: no job has a {METRICS_CSV} (were they run with logger=csv?)")
    varied = varying_overrides(runs)
    fig, axes = _figure(f"{Path(sweep_dir).name}: {len(runs)} runs")
    for index, run in enumerate(runs):
        label = ",".join(f"{k}={run.overrides[k]}" for k in varied if k in run.overrides) or run.run_dir.name
        colour = f"C{index % 10}"
        per_epoch = epoch_metrics(run.run_dir)
        for ax, keys in zip(axes, SWEEP_PANELS.values(), strict=False):
            for key in keys:
                if key in per_epoch:
                    dashed = key.startswith("train/")
                    _plot_series(ax, *per_epoch[key], color=colour, linestyle="--" if dashed else "-",
                                 label=f"{label} ({key})" if dashed else label)  # fmt: skip
        _plot_learning_rates(axes[3], step_metrics(run.run_dir), label_prefix=f"{label} ", colour=colour)
    for ax, title in zip(axes, SWEEP_PANELS, strict=False):
        _finish_panel(ax, title, "epoch")
    return fig


def _figure(title: str) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(11, 8), layout="constrained")
    fig.suptitle(title)
    return fig, list(fig.subplots(2, 2).flat)


def _plot_learning_rates(ax: Axes, per_step: Series, label_prefix: str, colour: str | None = None) -> None:
    for key in sorted(k for k in per_step if k.startswith(LR_PREFIX)):
        _plot_series(ax, *per_step[key], label=f"{label_prefix}{key}", color=colour)
    _finish_panel(ax, "learning rate", "step")


def _plot_series(ax: Axes, x: np.ndarray, y: np.ndarray, **style) -> None:
    """A line, with a marker at each point when there are few: a line through one point draws nothing, and on a
    short run the points are what there is to read."""
    if len(x) <= MARKERS_UP_TO:
        style = {"marker": "o", "markersize": 4, **style}
    ax.plot(x, y, **style)


def _finish_panel(ax: Axes, title: str, xlabel: str) -> None:
    ax.set(title=title, xlabel=xlabel)
    # Epochs and steps are whole numbers; min_n_ticks=1 keeps that when a 1-epoch run spans a single one.
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")


def plot(folder: Path, out: Path | None = None) -> Path:
    """Render `folder` (a run's or a multirun's) to a PNG; returns its path (default `<folder>/curves.png`)."""
    folder = Path(folder)
    if (folder / METRICS_CSV).is_file():
        fig = run_figure(folder)
    elif folder.is_dir() and any((d / ".hydra" / "overrides.yaml").is_file() for d in folder.iterdir()):
        fig = sweep_figure(folder)
    else:
        raise FileNotFoundError(
            f"{folder} is neither a run folder (with {METRICS_CSV}) nor a multirun folder (with <job>/.hydra/): "
            "pass logs/train/runs/<time> or logs/train/multiruns/<time>"
        )
    out = Path(out) if out else folder / "curves.png"
    return write_file(out, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m wrncifar.plot", description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="a run's folder, or a multirun's")
    parser.add_argument("--out", type=Path, default=None, help="the PNG to write (default: <folder>/curves.png)")
    args = parser.parse_args(argv)
    try:
        out = plot(args.folder, args.out)
    except (FileNotFoundError, MalformedLogError) as err:
        print(f"Error: {err}", file=sys.stderr)
        raise SystemExit(1) from err
    print(out)


if __name__ == "__main__":
    main()
