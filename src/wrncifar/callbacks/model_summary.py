"""The model summary at the start of training, with the network's FLOPs counted (Lightning's summary counts them
only for a model with an `example_input_array`, and prints "Total FLOPs: 0" otherwise)."""

from __future__ import annotations

import logging

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import RichModelSummary
from lightning.pytorch.utilities.model_summary import get_human_readable_count

from wrncifar.models.flops import flops_per_image

log = logging.getLogger(__name__)


class ModelSummary(RichModelSummary):
    """Rich's table of submodules and parameter counts; its FLOPs line is the network's forward FLOPs per
    32×32 image, counted on a meta-device copy (no memory, no forward pass of the real model), and a log line
    gives forward + backward FLOPs per training image, the figure the benchmark's MFU uses."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._max_depth:
            return
        summary = self._summary(trainer, pl_module)
        net = getattr(pl_module, "net", None)
        forward = flops_per_image(net, train=False) if net is not None else 0
        if not trainer.is_global_zero:
            return
        # Lightning's FLOPs column is all zeros without an example input: the network's row gets the count.
        columns = dict(summary._get_summary_data())
        columns["FLOPs"] = [
            get_human_readable_count(int(forward)) if name == "net" else flops
            for name, flops in zip(columns["Name"], columns["FLOPs"], strict=True)
        ]
        self.summarize(
            list(columns.items()),
            summary.total_parameters,
            summary.trainable_parameters,
            summary.model_size,
            summary.total_training_modes,
            total_flops=int(forward),
            **self._summarize_kwargs,
        )
        if net is not None:
            log.info(
                "The network: %.4g GFLOP per 32×32 image forward, %.4g GFLOP per training image (both passes)",
                forward / 1e9,
                flops_per_image(net, train=True) / 1e9,
            )
