"""`wrncifar-train`, `wrncifar-eval`, `wrncifar-predict` and `wrncifar-export` are the same commands as
`python src/<name>.py`: the installed scripts run, with the project's configs, from any folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FEW_IMAGES, HANG_TIMEOUT_S, best_checkpoint, read_metrics

BIN = Path(sys.executable).parent


def console(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline"}
    command = [str(BIN / f"wrncifar-{name}"), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)


@pytest.mark.slow
def test_wrncifar_train_then_wrncifar_eval_from_another_folder(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    trained = console("train", *FEW_IMAGES, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert [r["epoch"] for r in read_metrics(run_dir) if r.get("val/acc")] == ["0"]
    assert (run_dir / "train.log").is_file()  # the app is `train`, as with python src/train.py
    evaluated = console(
        "eval",
        f"ckpt_path={best_checkpoint(run_dir)}",
        "eval.report=false",
        f"hydra.run.dir={tmp_path / 'eval'}",
        cwd=tmp_path,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert (tmp_path / "eval" / "test_metrics.json").is_file()


@pytest.mark.parametrize("name", ["train", "eval", "predict", "export"])
def test_each_console_script_is_its_hydra_app(name: str, tmp_path: Path) -> None:
    done = console(name, "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith(f"{name} is powered by Hydra.")
