"""Lightning's ThroughputMonitor with the network's measured FLOPs: images/s, TFLOP/s and MFU."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ThroughputMonitor

from wrncifar.callbacks.images_per_second import images_in_batch
from wrncifar.models.flops import flops_per_image, peak_flops


class ImageThroughputMonitor(ThroughputMonitor):
    """Lightning's ThroughputMonitor for image batches: logs images/s, batches/s, TFLOP/s and MFU.

    The FLOPs come from `flops_per_image` of `pl_module.net` (forward + backward in training, forward in
    evaluation). It synchronises the device at every step, so it costs a little speed: for measuring.
    `window_size` (steps averaged) and `separator` pass through to Lightning's `Throughput`.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(batch_size_fn=images_in_batch, **kwargs)
        self.train_flops_per_image: float | None = None
        self.eval_flops_per_image: float | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.available_flops is None:  # a device Lightning's table lacks: the MFU needs its peak
            dtype = compute_dtype(str(trainer.precision))
            self.available_flops = peak_flops(trainer.strategy.root_device, dtype)
            for throughput in self._throughputs.values():
                throughput.available_flops = self.available_flops
        if self.train_flops_per_image is None:  # counted before the network is compiled (configure_model)
            net = pl_module.net
            self.train_flops_per_image = flops_per_image(net, train=True)
            self.eval_flops_per_image = flops_per_image(net, train=False)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        pl_module.flops_per_batch = self.train_flops_per_image * images_in_batch(batch)

    def on_validation_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, *args: Any) -> None:
        pl_module.flops_per_batch = self.eval_flops_per_image * images_in_batch(batch)

    on_test_batch_start = on_validation_batch_start


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype the matrix products of a Lightning `precision` setting run in."""
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float64 if precision.startswith("64") else torch.float32
