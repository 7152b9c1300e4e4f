"""A classifier's class probabilities on every test image, plain and with horizontal-flip test-time augmentation.

Flip TTA averages the softmax probabilities of each image and of its mirror image, the same flip the training
augmentation applies; a TTA prediction differs from the plain one only through what the network makes of the
mirrored image.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from wrncifar.callbacks.progress_bar import format_duration

log = logging.getLogger(__name__)

TTA = Literal["none", "flip"]


@dataclass(frozen=True)
class Predictions:
    """Log-probabilities (N×C, float32, CPU) of the images of a loader, in its order, and their labels (N)."""

    log_probs: torch.Tensor
    labels: torch.Tensor


def predict(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    tta: TTA = "none",
    forward_context: Callable[[], AbstractContextManager] = nullcontext,
    every_n_seconds: float = 30.0,
) -> dict[str, Predictions]:
    """`{"plain": …}` for every (images, labels) batch, and `"flip"` beside it when `tta="flip"`.

    Runs `model` in eval mode on the device of its parameters; `forward_context` wraps each forward pass
    (a trainer's autocast, for instance). Images are N×C×H×W, so a horizontal flip reverses the last axis.
    A pass longer than `every_n_seconds` logs a progress line every `every_n_seconds`.
    """
    device = next(model.parameters()).device
    plain: list[torch.Tensor] = []
    flipped: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    total = len(batches) if hasattr(batches, "__len__") else None
    start = last_line = time.perf_counter()
    try:
        with torch.inference_mode():
            for done, (images, targets) in enumerate(batches, start=1):
                images = images.to(device, non_blocking=True)
                with forward_context():
                    plain.append(model(images).float().log_softmax(dim=1).cpu())
                    if tta == "flip":
                        flipped.append(model(images.flip(-1)).float().log_softmax(dim=1).cpu())
                labels.append(targets.cpu())
                now = time.perf_counter()
                if now - last_line >= every_n_seconds:
                    last_line = now
                    left = f" · ends in {format_duration((total - done) * (now - start) / done)}" if total else ""
                    log.info("Predicting · batch %d%s%s", done, f"/{total}" if total else "", left)
    finally:
        model.train(was_training)
    all_labels = torch.cat(labels)
    results = {"plain": Predictions(torch.cat(plain), all_labels)}
    if tta == "flip":
        # log of the mean of the two distributions, without leaving log space (no exp underflow to 0).
        both = torch.stack([results["plain"].log_probs, torch.cat(flipped)])
        results["flip"] = Predictions(both.logsumexp(dim=0) - math.log(2), all_labels)
    return results
