"""`python -m wrncifar.plot`: training curves of a run, and of the jobs of a multirun, from the CSV log to PNG."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from tests.conftest import FEW_IMAGES, TRAINED_EPOCHS, read_metrics, run_entry
from wrncifar.analysis.plot import MARKERS_UP_TO, main, plot, run_figure, sweep_figure


def panels(fig) -> dict[str, list[str]]:
    """Panel title → the labels of its lines."""
    return {ax.get_title(): [line.get_label() for line in ax.lines] for ax in fig.axes}


def read_png(path: Path):
    assert path.is_file() and path.stat().st_size > 10_000
    return matplotlib.image.imread(path)


@pytest.mark.slow
def test_a_run_gives_loss_accuracy_and_learning_rate_curves(wandb_sweep, tmp_path: Path, capsys) -> None:
    job = wandb_sweep[0] / "0"
    assert panels(run_figure(job)) == {
        "loss": ["train/loss", "val/loss", "test/loss"],
        "top-1 accuracy": ["train/acc", "val/acc", "test/acc"],
        "top-5 accuracy": ["val/acc_top5", "test/acc_top5"],
        "learning rate": ["lr-SGD"],
    }
    lr_line = run_figure(job).axes[3].lines[0]
    assert len(lr_line.get_xdata()) == 4 and max(lr_line.get_ydata()) == pytest.approx(0.05)  # 2 epochs × 2 steps
    main([str(job), "--out", str(tmp_path / "run.png")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "run.png")
    height, width, _ = read_png(tmp_path / "run.png").shape
    assert (height, width) == (960, 1320)


@pytest.mark.slow
def test_a_multirun_gives_one_figure_comparing_its_jobs(wandb_sweep) -> None:
    sweep_dir = wandb_sweep[0]
    fig = sweep_figure(sweep_dir)
    lines = panels(fig)
    assert lines["top-1 accuracy"] == ["model.optimizer.lr=0.05", "model.optimizer.lr=0.2"]
    assert lines["loss"] == [
        "model.optimizer.lr=0.05 (train/loss)",
        "model.optimizer.lr=0.05",
        "model.optimizer.lr=0.2 (train/loss)",
        "model.optimizer.lr=0.2",
    ]
    assert [max(line.get_ydata()) for line in fig.axes[3].lines] == pytest.approx([0.05, 0.2])
    main([str(sweep_dir)])
    read_png(sweep_dir / "curves.png")


@pytest.fixture(scope="module")
def one_epoch_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python src/train.py -m … trainer.max_epochs=1 model.optimizer.lr=0.05,0.2` on the smallest synthetic set:
    two jobs of one epoch of two steps, each logging every 50 steps (the default)."""
    sweep_dir = tmp_path_factory.mktemp("one_epoch_sweep")
    args = ["-m", *FEW_IMAGES, "trainer.max_epochs=1", "model.optimizer.lr=0.05,0.2", f"hydra.sweep.dir={sweep_dir}"]
    result = run_entry("train.py", args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return sweep_dir


# A run of 1, 2 and 3 epochs, all shorter than the 50 steps of log_every_n_steps: 1 × 2, 2 × 2 and 3 × 16 steps.
SHORT_RUNS = {1: ("one_epoch_sweep", "0"), 2: ("sweep_dir", "0"), TRAINED_EPOCHS: ("trained_run", "")}


def logged(run_dir: Path, key: str) -> tuple[list[int], list[float]]:
    """(epochs or steps, values) of `key` as metrics.csv has them: epochs for epoch rows, steps for step rows."""
    rows = [r for r in read_metrics(run_dir) if r[key]]
    return [int(r["epoch"] or r["step"]) for r in rows], [float(r[key]) for r in rows]


def lines(ax: Axes) -> dict[str, Line2D]:
    return {line.get_label(): line for line in ax.lines}


def drawn(line: Line2D) -> tuple[list[float], list[float]]:
    return list(line.get_xdata()), list(line.get_ydata())


def assert_every_point_visible(ax: Axes) -> None:
    """Every line has a marker at each point inside the view, and the x ticks in view are whole numbers."""
    left, right = ax.get_xlim()
    for line in ax.lines:
        assert line.get_marker() not in ("None", "", None), f"{ax.get_title()}: {line.get_label()} has no marker"
        assert all(left < x < right for x in line.get_xdata()), f"{ax.get_title()}: {line.get_label()} out of view"
    ticks = [t for t in ax.get_xticks() if left <= t <= right]
    assert ticks and all(float(t).is_integer() for t in ticks), f"{ax.get_title()}: x ticks {ticks}"


@pytest.mark.slow
@pytest.mark.parametrize("epochs", SHORT_RUNS)
def test_a_short_runs_figure_draws_every_logged_point(epochs: int, request: pytest.FixtureRequest) -> None:
    fixture, job = SHORT_RUNS[epochs]
    run_dir = request.getfixturevalue(fixture) / job
    loss, top1, top5, learning_rate = run_figure(run_dir).axes
    # Training and validation at epochs 0 … epochs-1, as logged.
    for ax, key in [(loss, "train/loss"), (loss, "val/loss"), (top1, "train/acc"), (top1, "val/acc")]:
        assert drawn(lines(ax)[key]) == logged(run_dir, key)
        assert logged(run_dir, key)[0] == list(range(epochs))
    # The test result at the last trained epoch (metrics.csv has it at the next one: Lightning's counter moved on).
    for ax, key in [(loss, "test/loss"), (top1, "test/acc"), (top5, "test/acc_top5")]:
        assert logged(run_dir, key)[0] == [epochs]
        assert drawn(lines(ax)[key]) == ([epochs - 1], logged(run_dir, key)[1])
        assert lines(ax)[key].get_marker() == "*"
    # The learning rate at each epoch's first and last step, whatever log_every_n_steps.
    last_steps = [int(r["step"]) for r in read_metrics(run_dir) if r["train/loss"]]  # an epoch's row: its last step
    steps_per_epoch = last_steps[0] + 1
    edges = sorted({step for last in last_steps for step in (last + 1 - steps_per_epoch, last)})
    assert drawn(lines(learning_rate)["lr-SGD"]) == logged(run_dir, "lr-SGD")
    assert logged(run_dir, "lr-SGD")[0] == edges
    for ax in (loss, top1, top5, learning_rate):
        assert_every_point_visible(ax)


@pytest.mark.slow
def test_a_one_epoch_multiruns_figure_draws_every_job(one_epoch_sweep: Path) -> None:
    loss, top1, top5, learning_rate = sweep_figure(one_epoch_sweep).axes
    for job, lr in [("0", "0.05"), ("1", "0.2")]:
        label, run_dir = f"model.optimizer.lr={lr}", one_epoch_sweep / job
        assert drawn(lines(loss)[label]) == logged(run_dir, "val/loss")
        assert drawn(lines(loss)[f"{label} (train/loss)"]) == logged(run_dir, "train/loss")
        assert drawn(lines(top1)[label]) == logged(run_dir, "val/acc") and logged(run_dir, "val/acc")[0] == [0]
        assert drawn(lines(top5)[label]) == logged(run_dir, "val/acc_top5")
        # Two steps: the first and the last of the epoch, the warm-up's start and end.
        assert drawn(lines(learning_rate)[f"{label} lr-SGD"]) == logged(run_dir, "lr-SGD")
        assert logged(run_dir, "lr-SGD")[0] == [0, 1]
    for ax in (loss, top1, top5, learning_rate):
        assert_every_point_visible(ax)


def write_losses(run_dir: Path, epochs: int) -> Path:
    """A metrics.csv with `epochs` epochs of train/loss."""
    (run_dir / "csv").mkdir(parents=True)
    rows = [f"{epoch},{epoch},{1 / (epoch + 1)}" for epoch in range(epochs)]
    (run_dir / "csv" / "metrics.csv").write_text("\n".join(["epoch,step,train/loss", *rows, ""]))
    return run_dir


@pytest.mark.parametrize(("epochs", "marker"), [(1, "o"), (MARKERS_UP_TO, "o"), (MARKERS_UP_TO + 1, "None")])
def test_markers_are_drawn_on_short_series_only(tmp_path: Path, epochs: int, marker: str) -> None:
    line = lines(run_figure(write_losses(tmp_path, epochs)).axes[0])["train/loss"]
    assert len(line.get_xdata()) == epochs and line.get_marker() == marker


# The old spelling, the analysis module and the console script `pip install -e .` puts beside the interpreter.
COMMANDS = {
    "python -m wrncifar.plot": [sys.executable, "-m", "wrncifar.plot"],
    "python -m wrncifar.analysis.plot": [sys.executable, "-m", "wrncifar.analysis.plot"],
    "wrncifar-plot": [str(Path(sys.executable).parent / "wrncifar-plot")],
}


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_a_folder_that_is_neither_exits_1_with_a_message(tmp_path: Path, command: str) -> None:
    result = subprocess.run([*COMMANDS[command], str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {tmp_path} is neither a run folder (with csv/metrics.csv) nor a multirun folder (with <job>/.hydra/): "
        "pass logs/train/runs/<time> or logs/train/multiruns/<time>"
    ]


def test_a_planted_link_is_replaced_not_written_through(trained_run: Path, tmp_path: Path) -> None:
    run_dir, victim = tmp_path / "run", tmp_path / "someone_elses.txt"
    shutil.copytree(trained_run, run_dir)
    victim.write_text("keep me")
    (run_dir / "curves.png").symlink_to(victim)
    out = plot(run_dir)
    assert victim.read_text() == "keep me"
    assert not out.is_symlink() and out.read_bytes().startswith(b"\x89PNG")


def test_a_damaged_metrics_file_is_named_with_its_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text("epoch,step,val/acc\n0,9,0.5\n1,19,0.5\x00\x00\n")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 1
    assert "metrics.csv, line 3: val/acc='0.5\\x00\\x00' at epoch '1' is not a number" in capsys.readouterr().err
