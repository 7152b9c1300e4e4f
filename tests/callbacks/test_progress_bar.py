"""What a run prints as it goes, read from a real `python src/train.py` whose console is a file (as in a SLURM
job): plain progress lines, the start-up estimate, one line per epoch in the console and train.log, the model
summary's FLOPs, and none of the library messages a user cannot act on."""

from __future__ import annotations

import os
import re
import stat
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.model_summary import get_human_readable_count

import wrncifar.callbacks.progress_bar as progress_bar
from tests.callbacks.test_images_per_second import (
    BATCH,
    STEPS_BEFORE_THE_STOP,
    fit_resumed_mid_epoch,
    local_batch,
    rank_zero_of_two_processes,
    set_clock,
)
from tests.conftest import FEW_IMAGES, run_entry
from wrncifar.callbacks.progress_bar import PlainProgressBar, console_progress, format_duration
from wrncifar.callbacks.start_up import PHASES
from wrncifar.models.flops import flops_per_image
from wrncifar.models.wideresnet import WideResNet
from wrncifar.run.console import QUIET_INFO, QUIET_WARNINGS, quiet_console

EPOCHS = 2


@pytest.fixture(scope="module")
def batch_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 2-epoch run with its console in a pipe, a line due at every step, an estimate after 2 steps, the CPU
    warning's threshold at 0 hours, and an `srun` on the PATH (Lightning warns about it on SLURM machines)."""
    root = tmp_path_factory.mktemp("batch_job")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    run_dir = root / "run"
    args = [
        *FEW_IMAGES,
        f"trainer.max_epochs={EPOCHS}",
        "callbacks.rich_progress_bar.every_n_seconds=1e-9",
        "callbacks.epoch_summary.measure_steps=2",
        "callbacks.epoch_summary.cpu_warning_hours=0",
        f"hydra.run.dir={run_dir}",
    ]
    result = run_entry("train.py", args, env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir, result.stdout + result.stderr


def test_a_batch_job_prints_plain_progress_lines_for_every_stage(batch_job: tuple[Path, str]) -> None:
    _, output = batch_job
    steps = re.findall(
        r"Epoch (\d)/2 · step (\d+)/(\d+) \(\d+%\) · train/loss [\d.]+ · [\d,]+ images/s · "
        r"epoch ends in \d+:\d\d:\d\d · training ends in ~\d+:\d\d:\d\d",
        output,
    )
    per_epoch = int(steps[0][2])
    # Every step of both epochs has its line (a line is due at every step here).
    assert [(int(e), int(s)) for e, s, _ in steps] == [(e, s) for e in (1, 2) for s in range(1, per_epoch + 1)]
    assert re.search(r"Validation · batch \d+/\d+ \(\d+%\) · ends in", output)
    assert re.search(r"Test · batch \d+/\d+ \(\d+%\) · ends in", output)
    assert "it/s" not in output  # no bar frames (Rich shows "4.46it/s") in a file


def test_each_epoch_has_one_summary_line_in_the_console_and_the_log_file(batch_job: tuple[Path, str]) -> None:
    run_dir, output = batch_job
    pattern = (
        r"Epoch (\d)/2 done in \d+:\d\d:\d\d \(validation \d+:\d\d:\d\d\) · train/loss [\d.]+ · train/acc [\d.]+ · "
        r"val/loss [\d.e+]+ · val/acc [\d.]+ · val/acc_best [\d.]+ · lr [\d.e-]+ · [\d,]+ images/s"
    )
    log = (run_dir / "train.log").read_text()
    assert re.findall(pattern, output) == ["1", "2"]
    assert re.findall(pattern, log) == ["1", "2"]
    assert re.search(r"Epoch 1/2 done in .* · run ends in ~\d+:\d\d:\d\d", log)


def test_the_run_says_how_long_it_will_take_and_on_the_cpu_what_to_run_instead(batch_job: tuple[Path, str]) -> None:
    _, output = batch_job
    assert re.search(
        r"Measured [\d.e-]+ s per step \([\d,]+ images/s\): the \d+ steps left of this run should take about "
        r"\d+:\d\d:\d\d, validation not counted",
        output,
    )
    assert "This run trains on the CPU and would take about" in output and "make smoke" in output


def test_the_first_step_line_says_where_the_start_up_time_went(batch_job: tuple[Path, str]) -> None:
    run_dir, _ = batch_job
    match = re.search(
        r"First training step done ([\d.]+) s after the process started: (.*)\n", (run_dir / "train.log").read_text()
    )
    assert match, "no start-up line"
    phases = [re.fullmatch(r"([\d.]+) s (.+)", part) for part in match.group(2).split(", ")]
    assert all(phases), match.group(2)
    assert [p.group(2) for p in phases] == list(PHASES.values())  # every phase, in the order they ran
    seconds = [float(p.group(1)) for p in phases]
    assert sum(seconds) == pytest.approx(float(match.group(1)), abs=0.05 * len(seconds) + 0.06)  # to their rounding


def test_the_model_summary_counts_the_networks_flops(batch_job: tuple[Path, str]) -> None:
    _, output = batch_job
    tiny = WideResNet(num_classes=100, widths=[8, 16, 32, 64])
    forward = flops_per_image(tiny, train=False)
    assert f"Total FLOPs: {get_human_readable_count(int(forward))}" in output
    assert "Total FLOPs: 0 " not in output
    assert f"{forward / 1e9:.4g} GFLOP per 32×32 image forward" in output


def test_a_run_prints_no_library_message_the_user_cannot_act_on(batch_job: tuple[Path, str]) -> None:
    _, output = batch_job
    for pattern, _reason in QUIET_WARNINGS + QUIET_INFO:
        assert not re.search(pattern, output), pattern
    assert not re.findall(r"^.*\.py:\d+: .*$", output, re.M)  # no Python warning of any kind
    assert "weights_only" not in output


def test_each_of_lightnings_messages_shows_once_and_reaches_the_log_file(batch_job: tuple[Path, str]) -> None:
    """Lightning's own console handler and Hydra's both printed every Lightning message: once each now."""
    run_dir, output = batch_job
    for message in ("Seed set to 42", f"`Trainer.fit` stopped: `max_epochs={EPOCHS}` reached."):
        assert output.count(message) == 1, message
        assert (run_dir / "train.log").read_text().count(message) == 1, message


def training_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == progress_bar.__name__ and "· step " in r.getMessage()]


def test_after_a_resume_in_the_middle_of_an_epoch_the_lines_time_the_resumed_steps(tmp_path, caplog) -> None:
    caplog.set_level("INFO", logger=progress_bar.__name__)
    elapsed = fit_resumed_mid_epoch([PlainProgressBar(every_n_seconds=1e-9)], tmp_path)
    resumed = [line for line in training_lines(caplog) if line.startswith("Epoch 1/2")]
    first = STEPS_BEFORE_THE_STOP + 1
    assert resumed and resumed[0].split(" · ")[1] == f"step {first}/12 ({100 * first / 12:.0f}%)"
    for line in resumed:
        match = re.search(r"step (\d+)/12 .* · ([\d,]+) images/s · epoch ends in (\d+):(\d\d):(\d\d)", line)
        assert match, line
        done, speed = int(match.group(1)), int(match.group(2).replace(",", ""))
        ends_in = 3600 * int(match.group(3)) + 60 * int(match.group(4)) + int(match.group(5))
        # The steps left at the pace of those trained since the resume, each within the test's own time.
        assert ends_in <= (12 - done) / (done - STEPS_BEFORE_THE_STOP) * elapsed + 0.5, line
        assert speed > 0, line


def test_under_ddp_the_lines_count_every_process_images(monkeypatch, caplog) -> None:
    caplog.set_level("INFO", logger=progress_bar.__name__)
    clock = set_clock(monkeypatch, progress_bar)
    trainer = rank_zero_of_two_processes(batches=4)
    pl_module = SimpleNamespace(device=torch.device("cpu"))
    bar = PlainProgressBar(every_n_seconds=1)
    bar.setup(trainer, pl_module, "fit")
    bar.on_train_start(trainer, pl_module)
    bar.on_train_epoch_start(trainer, pl_module)
    for batch_idx in range(2):  # one second a step: a line after each
        bar.on_train_batch_start(trainer, pl_module, local_batch(), batch_idx)
        clock.now += 1.0
        bar.on_train_batch_end(trainer, pl_module, {"loss": torch.tensor(1.0)}, local_batch(), batch_idx)
    # Each step trains BATCH images in each of the 2 processes: the run's rate, not rank 0's.
    assert [line.split(" · ")[3:5] for line in training_lines(caplog)] == [
        [f"{2 * BATCH} images/s", "epoch ends in 0:00:03"],
        [f"{2 * BATCH} images/s", "epoch ends in 0:00:02"],
    ]


def test_the_evaluation_only_silence_keeps_every_other_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_console(evaluation=True)
        rank_zero_warn("Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be")
        rank_zero_warn("something else")
    assert [str(w.message) for w in caught] == ["something else"]


def test_a_terminal_keeps_the_rich_bar_and_a_file_gets_plain_lines() -> None:
    assert isinstance(console_progress(terminal=True), RichProgressBar)
    plain = console_progress(every_n_seconds=5, terminal=False)
    assert isinstance(plain, PlainProgressBar) and plain.every_n_seconds == 5
    with pytest.raises(ValueError, match="every_n_seconds must be > 0"):
        PlainProgressBar(0)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0:00:00"),
        (80.4, "0:01:20"),
        (3 * 3600 + 4 * 60 + 5, "3:04:05"),
        (86400 + 1, "1 day 0:00:01"),
        (17 * 86400, "17 days 0:00:00"),
        (float("inf"), "?"),
    ],
)
def test_durations_read_as_days_and_a_clock(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
