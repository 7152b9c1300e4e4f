"""A stop signal that arrives while the run starts up (torch loading, data being read) is recorded from the start
of the process and stops the run cleanly once training starts, instead of killing it unsaved."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import FEW_IMAGES, HANG_TIMEOUT_S, ROOT


@pytest.mark.slow
def test_sigterm_during_start_up_stops_the_run_before_its_first_step(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    command = [sys.executable, str(ROOT / "src" / "train.py"), *FEW_IMAGES, f"hydra.run.dir={run_dir}"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + HANG_TIMEOUT_S
    while not (run_dir / "train.log").is_file():  # Hydra has read the config; torch is still loading
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-3000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=HANG_TIMEOUT_S)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    log = (run_dir / "train.log").read_text()
    assert "SIGTERM arrived before training started: stopping before the first step" in log
    assert "Stopped by SIGTERM before training started: nothing was saved; run the same command again" in log
    assert "Traceback" not in stderr
    assert not list(run_dir.glob("checkpoints/*.ckpt"))
