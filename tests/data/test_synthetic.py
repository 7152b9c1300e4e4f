from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from wrncifar.data.cifar100 import ImageDataset
from wrncifar.data.synthetic import SyntheticCIFAR100DataModule, make_synthetic_arrays


def test_same_seed_gives_the_same_dataset_and_another_seed_does_not() -> None:
    a, b = make_synthetic_arrays(10, 5, 2, seed=0), make_synthetic_arrays(10, 5, 2, seed=0)
    c = make_synthetic_arrays(10, 5, 2, seed=1)
    assert np.array_equal(a.train_images, b.train_images) and np.array_equal(a.test_labels, b.test_labels)
    assert not np.array_equal(a.train_images, c.train_images)


def test_cifar_shaped_uint8_with_balanced_classes() -> None:
    arrays = make_synthetic_arrays(100, 6, 3, seed=0)
    assert arrays.train_images.shape == (600, 32, 32, 3) and arrays.train_images.dtype == np.uint8
    assert arrays.test_images.shape == (300, 32, 32, 3)
    assert np.bincount(arrays.train_labels).tolist() == [6] * 100
    assert len(arrays.classes) == 100


def test_class_signal_is_in_the_mean_colour() -> None:
    """A nearest-class-mean classifier on the average colour separates the classes: there is something to learn."""
    arrays = make_synthetic_arrays(100, 20, 5, seed=0)
    colour = lambda images: images.reshape(len(images), -1, 3).mean(axis=1)  # noqa: E731
    centroids = np.stack([colour(arrays.train_images[arrays.train_labels == c]).mean(0) for c in range(100)])
    distances = ((colour(arrays.test_images)[:, None] - centroids[None]) ** 2).sum(-1)
    assert (distances.argmin(1) == arrays.test_labels).mean() > 0.5


def test_goes_through_the_cifar100_split_transforms_and_loaders() -> None:
    dm = SyntheticCIFAR100DataModule(
        num_classes=10, train_per_class=12, test_per_class=4, val_per_class=2, batch_size=8
    )
    dm.prepare_data()
    dm.setup()
    assert isinstance(dm.train_set, ImageDataset) and dm.train_set.transform is dm.train_tf
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (100, 20, 40)
    assert np.bincount(dm.val_set.labels.numpy()).tolist() == [2] * 10
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    assert labels.shape == (8,) and labels.dtype == torch.int64
    assert dm.num_classes == 10
    assert dm.superclasses == () and dm.fine_to_coarse == ()  # no class hierarchy


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"seed": -1}, "seed must be in 0 … 4294967295, got -1"), ({"split_seed": 2**32}, "split_seed must be in 0")],
)
def test_a_seed_the_generators_cannot_take_is_named_when_the_data_module_is_made(kwargs, message: str) -> None:
    """Made directly (a notebook), not through the config check: the error still names the argument."""
    with pytest.raises(ValueError, match=re.escape(message)):
        SyntheticCIFAR100DataModule(**kwargs)
