"""Per-image transforms on uint8 CHW tensors (torchvision.transforms.v2)."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

# CIFAR-100 training-set channel statistics on the 0–1 scale (the usual constants; they match train.npz).
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def eval_transform(mean: tuple[float, ...] = CIFAR100_MEAN, std: tuple[float, ...] = CIFAR100_STD) -> v2.Compose:
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def train_transform(
    crop_padding: int = 4,
    flip: bool = True,
    mean: tuple[float, ...] = CIFAR100_MEAN,
    std: tuple[float, ...] = CIFAR100_STD,
) -> v2.Compose:
    """Random 32×32 crop of the zero-padded image and a horizontal flip, then normalisation."""
    steps: list[v2.Transform] = []
    if crop_padding > 0:
        steps.append(v2.RandomCrop(32, padding=crop_padding))
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose([*steps, eval_transform(mean, std)])
