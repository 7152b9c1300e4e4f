"""GPU memory per training epoch: logged on a GPU, nothing on the CPU."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tests.conftest import TINY_SYNTHETIC, read_metrics
from wrncifar.callbacks.gpu_memory import GpuMemory
from wrncifar.run.fit_and_test import train

MEMORY_KEYS = {"gpu/memory_allocated_gib", "gpu/memory_reserved_gib", "gpu/max_memory_allocated_gib"}


@pytest.mark.slow
def test_cpu_runs_log_no_gpu_memory(wandb_sweep) -> None:
    logged = {k for row in read_metrics(wandb_sweep[0] / "0") for k, v in row.items() if v}
    assert "train/loss" in logged and not logged & MEMORY_KEYS


def test_the_peak_of_an_epoch_resumed_midway_starts_with_training_not_with_the_set_up(monkeypatch) -> None:
    """Lightning skips `on_train_epoch_start` for the epoch a run resumes in: the peak is reset at the start of
    training (after the data's copy, compilation and sanity validation), as at every epoch's start."""
    resets = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", resets.append)
    module = SimpleNamespace(device=torch.device("cuda", 0))
    GpuMemory().on_train_start(SimpleNamespace(), module)
    assert resets == [torch.device("cuda", 0)]
    GpuMemory().on_train_start(SimpleNamespace(), SimpleNamespace(device=torch.device("cpu")))
    assert len(resets) == 1, "nothing on other devices"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_runs_log_memory_each_epoch(make_config, tmp_path) -> None:
    metrics = train(make_config([*TINY_SYNTHETIC, "trainer=gpu", "trainer.max_epochs=2", "test=false"]))
    assert 0 < metrics["gpu/memory_allocated_gib"] <= metrics["gpu/max_memory_allocated_gib"]
    assert metrics["gpu/max_memory_allocated_gib"] <= metrics["gpu/memory_reserved_gib"]
    rows = [r for r in read_metrics(tmp_path) if r.get("gpu/max_memory_allocated_gib")]
    assert len(rows) == 2, "one value per training epoch"
