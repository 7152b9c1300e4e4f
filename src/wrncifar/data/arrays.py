"""The in-memory form every image source is reduced to: uint8 HWC images and integer labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageArrays:
    """Train and test images (uint8, N×H×W×C) with their fine labels and class names."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]


def stratified_split(labels: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) with exactly `per_class` validation samples of every class, chosen by `seed`."""
    rng = np.random.default_rng(seed)
    val = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) <= per_class:
            raise ValueError(
                f"class {cls} has {len(members)} training samples, too few to hold out {per_class} for validation; "
                "lower val_per_class"
            )
        val.append(rng.choice(members, size=per_class, replace=False))
    val_idx = np.sort(np.concatenate(val)) if val else np.empty(0, dtype=np.int64)
    train_mask = np.ones(len(labels), dtype=bool)
    train_mask[val_idx] = False
    return np.flatnonzero(train_mask), val_idx
