"""The in-memory form every image source is reduced to: uint8 HWC images, integer labels, class names."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageArrays:
    """Train and test images (uint8, N×H×W×C) with their fine labels and class names.

    Sources with a class hierarchy (CIFAR-100's 20 coarse classes) also give the superclass names and the
    superclass of each fine class; both are empty for sources without one.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]
    superclasses: tuple[str, ...] = ()
    fine_to_coarse: tuple[int, ...] = ()


def superclass_of_each_class(fine_labels: np.ndarray, coarse_labels: np.ndarray, num_classes: int) -> tuple[int, ...]:
    """The coarse label of every fine class, read off per-image label pairs.

    Raises ValueError when a fine class has images under two coarse labels, or none at all.
    """
    fine, coarse = np.unique(np.stack([fine_labels, coarse_labels]).astype(np.int64), axis=1)  # sorted pairs
    repeated = np.unique(fine[1:][np.diff(fine) == 0])
    if len(repeated):
        raise ValueError(f"fine classes {repeated[:5].tolist()} have images under more than one coarse label")
    if len(fine) != num_classes:
        missing = sorted(set(range(num_classes)) - set(fine.tolist()))
        raise ValueError(f"fine classes {missing[:5]} have no images to read their coarse label from")
    return tuple(coarse.tolist())


class DataSettingsError(ValueError):
    """The data settings do not fit the dataset found (found only once it is read, inside Lightning's setup)."""


def stratified_split(labels: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) with exactly `per_class` validation samples of every class, chosen by `seed`."""
    rng = np.random.default_rng(seed)
    val = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) <= per_class:
            raise DataSettingsError(
                f"class {cls} has {len(members)} training images, too few to hold out {per_class} for validation "
                f"and keep some for training: lower data.val_per_class (below {len(members)})"
            )
        val.append(rng.choice(members, size=per_class, replace=False))
    val_idx = np.sort(np.concatenate(val)) if val else np.empty(0, dtype=np.int64)
    train_mask = np.ones(len(labels), dtype=bool)
    train_mask[val_idx] = False
    return np.flatnonzero(train_mask), val_idx
