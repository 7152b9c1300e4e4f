"""Per-image transforms on uint8 CHW tensors (torchvision.transforms.v2)."""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torchvision.transforms import v2

# CIFAR-100 training-set channel statistics on the 0–1 scale (the usual constants; they match train.npz).
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

# `none`: crop and flip only. `trivialaugment`: TrivialAugmentWide (Müller & Hutter 2021), one random operation
# at a random strength per image, nothing to tune. `autoaugment`: AutoAugment's learned CIFAR-10 policy (Cubuk et
# al. 2019), the one published CIFAR-100 results use.
Policy = Literal["none", "trivialaugment", "autoaugment"]
POLICIES: tuple[str, ...] = get_args(Policy)

IMAGE_SIZE = 32


def eval_transform(mean: tuple[float, ...] = CIFAR100_MEAN, std: tuple[float, ...] = CIFAR100_STD) -> v2.Compose:
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def policy_transform(policy: Policy) -> v2.Transform | None:
    """The augmentation policy's transform on uint8 images, or None for `none`."""
    if policy == "trivialaugment":
        return v2.TrivialAugmentWide()
    if policy == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    return None


def cutout_transform(size: int) -> v2.RandomErasing:
    """Cutout (DeVries & Taylor 2017) on a normalised image: a `size`×`size` square, placed uniformly where it fits
    inside the image, set to 0, i.e. to the mean colour. RandomErasing with one fixed scale and aspect ratio 1."""
    area = size * size / IMAGE_SIZE**2
    return v2.RandomErasing(p=1.0, scale=(area, area), ratio=(1.0, 1.0), value=0.0)


def train_transform(
    crop_padding: int = 4,
    flip: bool = True,
    mean: tuple[float, ...] = CIFAR100_MEAN,
    std: tuple[float, ...] = CIFAR100_STD,
    policy: Policy = "none",
    cutout: int = 0,
) -> v2.Compose:
    """Random 32×32 crop of the zero-padded image, a horizontal flip and the `policy`, then normalisation and a
    `cutout`×`cutout` Cutout square (0: none); the order of the published recipes (policy on uint8, Cutout last)."""
    steps: list[v2.Transform] = []
    if crop_padding > 0:
        steps.append(v2.RandomCrop(IMAGE_SIZE, padding=crop_padding))
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    augmentation = policy_transform(policy)
    if augmentation is not None:
        steps.append(augmentation)
    steps.append(eval_transform(mean, std))
    if cutout > 0:
        steps.append(cutout_transform(cutout))
    return v2.Compose(steps)
