"""FLOPs of a network per image, counted by torch's FLOP counter on a meta-device copy (no memory, no time), and
the peak FLOP/s of a device (the denominator of the model FLOPs utilisation, MFU)."""

from __future__ import annotations

import copy

import torch
from lightning.fabric.utilities.throughput import get_available_flops, measure_flops
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


# Dense (not 2:4-sparse) peaks of the H200 SXM (NVIDIA's datasheet: 1,979 TFLOP/s bf16 "with sparsity"), the
# same chip as the H100 SXM, which Lightning's table lists dense. Lightning finds no H200 whose name lacks
# "SXM1"/"NVL1" (torch reports "NVIDIA H200"), and lists its "h200 sxm1" with the sparse numbers.
H200_SXM_FLOPS: dict[torch.dtype | str, float] = {
    torch.bfloat16: 989.4e12,
    torch.float16: 989.4e12,
    "tfloat32": 494.7e12,
    torch.float32: 66.9e12,
}


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The device's dense peak FLOP/s for `dtype` (the MFU's denominator): Lightning's table, and the H200 SXM;
    None for a device neither knows (Lightning warns)."""
    name = torch.cuda.get_device_name(device).lower() if device.type == "cuda" else ""
    if "h200" in name and "nvl" not in name:
        tf32 = dtype is torch.float32 and torch.get_float32_matmul_precision() != "highest"
        return H200_SXM_FLOPS.get("tfloat32" if tf32 else dtype)
    return get_available_flops(device, dtype)
