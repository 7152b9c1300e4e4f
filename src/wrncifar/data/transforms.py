"""Per-image transforms on uint8 CHW tensors (torchvision.transforms.v2)."""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torchvision.transforms import v2

# Training-set channel statistics on the 0–1 scale: the mean and standard deviation of every pixel of the 50,000
# official training images, per channel (`images.float().div(255).mean/std(dim=(0, 2, 3))`).
# CIFAR-100: the usual constants; they match train.npz (tests/data/test_cifar100.py checks them on the real arrays).
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
# CIFAR-10: the widely published values of the same computation (0.49140, 0.48216, 0.44653 / 0.24703, 0.24349,
# 0.26159 as reproduced in kuangliu/pytorch-cifar#129 and libffcv/ffcv#322; fb.resnet.torch's 125.3, 123.0, 113.9 /
# 63.0, 62.1, 66.7 on the 0–255 scale), not measured here: tests/data/test_cifar10.py checks them where the real
# arrays are staged. Not (0.2023, 0.1994, 0.2010), the mean of per-image deviations that some code uses.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

# `none`: crop and flip only. `trivialaugment`: TrivialAugmentWide (Müller & Hutter 2021), one random operation
# at a random strength per image, nothing to tune. `autoaugment`: AutoAugment's learned CIFAR-10 policy (Cubuk et
# al. 2019), the one published CIFAR-100 results use.
Policy = Literal["none", "trivialaugment", "autoaugment"]
POLICIES: tuple[str, ...] = get_args(Policy)

IMAGE_SIZE = 32

# What the random crop's border is made of: `zeros` (torchvision's RandomCrop default, the Cutout and AutoAugment
# papers' code) or `reflect` (the image mirrored at its edge, without repeating it: the WRN paper's code). About 13%
# of an augmented image is border on average with 4-pixel padding, so the choice is visible to the network.
PaddingMode = Literal["zeros", "reflect"]
PADDING_MODES: tuple[str, ...] = get_args(PaddingMode)
# Where the Cutout square goes: `centre` drawn uniformly over the image and the square clipped at the border (the
# Cutout paper's code: 19.1% of a 32×32 image erased on average by a 16×16 square, all of it in 28.2% of images),
# or `inside`, placed uniformly where it fits whole (always 25%).
CutoutPlacement = Literal["centre", "inside"]
CUTOUT_PLACEMENTS: tuple[str, ...] = get_args(CutoutPlacement)


def eval_transform(mean: tuple[float, ...] = CIFAR100_MEAN, std: tuple[float, ...] = CIFAR100_STD) -> v2.Compose:
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def policy_transform(policy: Policy) -> v2.Transform | None:
    """The augmentation policy's transform on uint8 images, or None for `none`."""
    if policy == "trivialaugment":
        return v2.TrivialAugmentWide()
    if policy == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    return None


class Cutout(torch.nn.Module):
    """Cutout (DeVries & Taylor 2017) on a normalised C×H×W image: a `size`×`size` square set to 0, i.e. to the mean
    colour, placed as `placement` says (see `CutoutPlacement`); draws from torch's global generator."""

    def __init__(self, size: int, placement: CutoutPlacement = "centre") -> None:
        super().__init__()
        self.size, self.placement = size, placement

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        top, left = cutout_corner(self.size, self.placement, (2,)).tolist()
        image = image.clone()
        image[..., max(top, 0) : max(top + self.size, 0), max(left, 0) : max(left + self.size, 0)] = 0.0
        return image


def cutout_corner(
    size: int, placement: CutoutPlacement, shape: tuple[int, ...], generator: torch.Generator | None = None
) -> torch.Tensor:
    """Top-left coordinates of Cutout squares, `shape` of them; outside the image (negative, or beyond
    IMAGE_SIZE - size) where a `centre` square is clipped. The Cutout code's square spans centre ± size // 2."""
    device = generator.device if generator is not None else None
    if placement == "centre":
        return torch.randint(IMAGE_SIZE, shape, generator=generator, device=device) - size // 2
    return torch.randint(IMAGE_SIZE - size + 1, shape, generator=generator, device=device)


def train_transform(
    crop_padding: int = 4,
    flip: bool = True,
    mean: tuple[float, ...] = CIFAR100_MEAN,
    std: tuple[float, ...] = CIFAR100_STD,
    policy: Policy = "none",
    cutout: int = 0,
    crop_padding_mode: PaddingMode = "reflect",
    cutout_placement: CutoutPlacement = "centre",
) -> v2.Compose:
    """The `policy` on the uint8 image, then a random 32×32 crop of the image padded by `crop_padding` pixels
    (`crop_padding_mode`), a horizontal flip, normalisation and a `cutout`×`cutout` Cutout square (0: none).

    The order of the reference code: TrivialAugment's and AutoAugment's apply the policy before crop and flip, the
    Cutout paper's applies Cutout last, to the normalised tensor."""
    steps: list[torch.nn.Module] = []
    augmentation = policy_transform(policy)
    if augmentation is not None:
        steps.append(augmentation)
    if crop_padding > 0:
        fill = "reflect" if crop_padding_mode == "reflect" else "constant"
        steps.append(v2.RandomCrop(IMAGE_SIZE, padding=crop_padding, padding_mode=fill))
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    steps.append(eval_transform(mean, std))
    if cutout > 0:
        steps.append(Cutout(cutout, cutout_placement))
    return v2.Compose(steps)
