"""`python -m wrncifar.plot`: training curves of a run, and of the jobs of a multirun, from the CSV log to PNG."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from wrncifar.analysis.plot import main, plot, run_figure, sweep_figure


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
