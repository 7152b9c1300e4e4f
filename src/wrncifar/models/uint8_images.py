"""A classifier for raw images: uint8 pixels in, logits out, the normalisation inside the module.

What `predict.py` runs and `export.py` writes (`input=uint8`), so a deployed model needs no preprocessing code of its
own and cannot be fed images normalised with the wrong statistics.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Uint8ImageClassifier(nn.Module):
    """`net` applied to uint8 images N×C×H×W (0–255, NCHW as torchvision's tensors), normalised first as the data
    module's eval transform does: scaled to 0–1, then `(x - mean) / std` per channel, in that order and in float32.
    The logits are those of the CPU loaders' evaluation pipeline (`data.on_device=false`) to the last bit; the
    on-device batches (`data.on_device=true`, the default for `data.policy=none`) normalise as one multiply-add,
    `x · scale + shift`, which agrees up to float rounding (inputs within ~1e-6).

    With `normalize=False` it takes float images already normalised and is `net` itself, under the same input name.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float], normalize: bool = True) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean and std need one value per channel, got {len(mean)} and {len(std)}")
        self.net = net
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            # torchvision's ToDtype(scale=True) multiplies by 1/255, then Normalize subtracts and divides.
            images = images.to(torch.float32).mul(1.0 / 255.0).sub(self.mean).div(self.std)
        return self.net(images)
