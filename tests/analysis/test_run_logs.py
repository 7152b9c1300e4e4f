"""Reading back logged runs: one run's metrics per epoch, and the jobs of a multirun sweep."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TRAINED_EPOCHS, last_logged, read_metrics
from wrncifar.analysis.run_logs import epoch_metrics, sweep_runs, varying_overrides


@pytest.mark.slow
def test_epoch_metrics_are_the_logged_values_by_epoch(trained_run: Path) -> None:
    metrics = epoch_metrics(trained_run)
    epochs, values = metrics["val/acc"]
    assert epochs.tolist() == list(range(TRAINED_EPOCHS))
    assert values.tolist() == [float(r["val/acc"]) for r in read_metrics(trained_run) if r["val/acc"]]
    assert {"train/loss", "val/loss", "val/acc_best", "test/acc"} <= set(metrics)


def test_rows_logged_by_step_without_an_epoch_are_left_out(tmp_path: Path) -> None:
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text(
        "epoch,lr-SGD,step,train/loss,val/acc\n,0.01,49,,\n0,,99,2.5,\n0,,99,,0.25\n,0.02,149,,\n1,,199,2.0,0.5\n"
    )
    metrics = epoch_metrics(tmp_path)
    assert set(metrics) == {"train/loss", "val/acc"}
    assert [arr.tolist() for arr in metrics["val/acc"]] == [[0, 1], [0.25, 0.5]]


def test_a_run_without_a_csv_log_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="logger=csv"):
        epoch_metrics(tmp_path)


@pytest.mark.slow
def test_sweep_jobs_come_in_order_with_what_they_varied_and_their_final_metrics(sweep_dir: Path) -> None:
    runs = sweep_runs(sweep_dir)
    assert [run.run_dir.name for run in runs] == ["0", "1"]
    assert varying_overrides(runs) == ["model.optimizer.lr"]
    assert [run.overrides["model.optimizer.lr"] for run in runs] == ["0.05", "0.2"]
    for run in runs:
        assert run.final["val/acc_best"] == last_logged(read_metrics(run.run_dir), "val/acc_best")


def test_a_folder_without_jobs_is_not_a_sweep(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is it a multirun folder"):
        sweep_runs(tmp_path)
