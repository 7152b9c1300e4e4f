"""FLOPs of a network per image, counted by torch's FLOP counter on a meta-device copy (no memory, no time)."""

from __future__ import annotations

import copy

import torch
from lightning.fabric.utilities.throughput import measure_flops
from torch import nn

# Counted on a batch of this many images, then divided: BatchNorm in training mode needs more than one.
COUNT_BATCH = 2


def flops_per_image(net: nn.Module, image_shape: tuple[int, ...] = (3, 32, 32), train: bool = True) -> float:
    """FLOPs per image of `net`: forward and backward when `train`, else forward only.

    Matrix products and convolutions are counted (2 per multiply-add); element-wise work is not.
    """
    meta = copy.deepcopy(net).to("meta").train(train)
    images = torch.empty(COUNT_BATCH, *image_shape, device="meta")
    loss_fn = torch.Tensor.sum if train else None
    # net.forward, not net(...): the count must not go through a compiled call.
    return measure_flops(meta, lambda: meta.forward(images), loss_fn) / COUNT_BATCH
