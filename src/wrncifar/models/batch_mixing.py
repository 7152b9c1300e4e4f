"""MixUp and CutMix: batch transforms that blend pairs of training images and their labels (torchvision.transforms.v2).

They act on whole batches on the training device (after either loader path), so they live with the training
step rather than in the per-image transforms. Their randomness (the mixing weight, the CutMix box, which of the
two a batch gets) comes from torch's global generator, which `RNGStateCheckpoint` saves and restores: a resumed
run mixes as the uninterrupted one would. The images paired are neighbours in the batch, which the training
loaders shuffle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.transforms import v2


@dataclass(frozen=True)
class MixingSettings:
    """Batch mixing. An `alpha` of 0 switches that method off; with both on, each batch gets one of them.

    `mixup_alpha`: MixUp (Zhang et al. 2018), λ ~ Beta(α, α); 0.2 is the usual CIFAR value.
    `cutmix_alpha`: CutMix (Yun et al. 2019), a box of area 1 − λ pasted from the neighbour; 1.0 as in the paper.
    `prob`: share of the training batches that are mixed at all.
    """

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0

    def __post_init__(self) -> None:
        for name in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"mixing.{name} must be >= 0 (0 switches it off), got {getattr(self, name)}")
        if not 0 <= self.prob <= 1:
            raise ValueError(f"mixing.prob must be in [0, 1], got {self.prob}")

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


def build_batch_mixing(settings: MixingSettings, num_classes: int) -> nn.Module | None:
    """The transform mapping (images, integer labels) to (mixed images, label distributions); None when off.

    Unmixed batches still come out with one-hot labels, so the loss sees one kind of target.
    """
    if not settings.enabled:
        return None
    methods: list[nn.Module] = []
    if settings.mixup_alpha > 0:
        methods.append(v2.MixUp(alpha=settings.mixup_alpha, num_classes=num_classes))
    if settings.cutmix_alpha > 0:
        methods.append(v2.CutMix(alpha=settings.cutmix_alpha, num_classes=num_classes))
    mix = methods[0] if len(methods) == 1 else v2.RandomChoice(methods)
    if settings.prob == 1:
        return mix
    return v2.RandomChoice([mix, OneHot(num_classes)], p=[settings.prob, 1 - settings.prob])


class OneHot(nn.Module):
    """(images, labels) → (images, one-hot float labels): the unmixed batch, in the mixed batches' target format."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return images, nn.functional.one_hot(labels, self.num_classes).to(images.dtype)
