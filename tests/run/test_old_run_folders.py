"""Run folders and checkpoints written by earlier versions of the project keep working: `resume=` continues them
and `eval.py` evaluates their checkpoints (tests/fixtures/run_0_1_0, written before the package's layout changed;
its saved config names modules that have moved since)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, read_metrics, run_entry

OLD_RUN = ROOT / "tests" / "fixtures" / "run_0_1_0"


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(OLD_RUN, run_dir)
    return run_dir


def test_the_fixture_names_modules_that_have_moved() -> None:
    saved = (OLD_RUN / ".hydra" / "config.yaml").read_text()
    assert "wrncifar.checkpointing.AtomicCheckpointIO" in saved and "wrncifar.callbacks.preemption" in saved


@pytest.mark.slow
def test_an_old_run_resumes_in_its_folder_and_trains_only_the_new_epoch(old_run: Path) -> None:
    result = run_entry("train.py", [f"resume={old_run}", "trainer.max_epochs=2"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"Resuming {old_run} from {old_run / 'checkpoints' / 'last.ckpt'}" in result.stdout + result.stderr
    last = torch.load(old_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 1 and last["global_step"] == 2  # 60 training images at batch 128: a step per epoch
    epochs = {int(row["epoch"]) for row in read_metrics(old_run) if row.get("val/acc")}
    assert 1 in epochs


@pytest.mark.slow
def test_an_old_checkpoint_is_evaluated_with_its_run_config(old_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    ckpt = old_run / "checkpoints" / "last.ckpt"
    result = run_entry("eval.py", [f"ckpt_path={ckpt}", "logger=null", "eval.report=false", f"hydra.run.dir={out}"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["ckpt_path"] == str(ckpt.resolve())
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert "Using the model config of the training run" in result.stdout + result.stderr
