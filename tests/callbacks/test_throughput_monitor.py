from __future__ import annotations

import csv

import pytest
from lightning.pytorch.loggers import CSVLogger

from tests.callbacks.test_images_per_second import fit
from wrncifar.callbacks.throughput_monitor import ImageThroughputMonitor
from wrncifar.models.flops import flops_per_image
from wrncifar.models.wideresnet import WideResNet


def test_throughput_monitor_logs_the_measured_flops_of_each_image(tmp_path) -> None:
    monitor = ImageThroughputMonitor(window_size=2)
    fit(monitor, tmp_path, logger=CSVLogger(tmp_path), log_every_n_steps=1)
    net = WideResNet(num_classes=10, widths=[4, 8, 8, 8], blocks_per_stage=1)
    assert monitor.train_flops_per_image == flops_per_image(net, train=True)
    assert monitor.eval_flops_per_image == flops_per_image(net, train=False)

    rows = list(csv.DictReader((tmp_path / "lightning_logs" / "version_0" / "metrics.csv").open()))
    for stage, per_image in [("train", monitor.train_flops_per_image), ("validate", monitor.eval_flops_per_image)]:
        logged = [r for r in rows if r.get(f"{stage}/device/flops_per_sec")]
        assert logged, f"no {stage} FLOP rate logged"
        for r in logged:
            flops = float(r[f"{stage}/device/flops_per_sec"])
            assert flops / float(r[f"{stage}/device/samples_per_sec"]) == pytest.approx(per_image, rel=1e-6)


def test_the_mfu_is_logged_on_a_device_lightnings_table_lacks(tmp_path, monkeypatch) -> None:
    """As on an H200 named "NVIDIA H200" (no "SXM1"): the peak comes from `peak_flops`, here a stand-in's."""
    monkeypatch.setattr("wrncifar.callbacks.throughput_monitor.peak_flops", lambda device, dtype: 2e9)
    monitor = ImageThroughputMonitor(window_size=2)
    fit(monitor, tmp_path, logger=CSVLogger(tmp_path), log_every_n_steps=1)
    rows = list(csv.DictReader((tmp_path / "lightning_logs" / "version_0" / "metrics.csv").open()))
    logged = [r for r in rows if r.get("train/device/mfu")]
    assert logged, "no MFU logged"
    for r in logged:
        assert float(r["train/device/mfu"]) == pytest.approx(float(r["train/device/flops_per_sec"]) / 2e9, rel=1e-6)
