"""A deterministic CIFAR-shaped stand-in for offline runs and tests.

Each class has its own colour and a coarse 4×4 colour pattern; every image is that class signal plus
per-pixel noise. The colour survives random crops and flips, so a small network learns the classes in a few
epochs, which lets tests assert that training learns. Images go through the same split, transforms and
loaders as CIFAR-100.
"""

from __future__ import annotations

import numpy as np

from wrncifar.data.arrays import ImageArrays
from wrncifar.data.cifar100 import CIFAR100DataModule, require_positive_int, require_seed


def make_synthetic_arrays(
    num_classes: int, train_per_class: int, test_per_class: int, seed: int, noise: float = 24.0
) -> ImageArrays:
    rng = np.random.default_rng(seed)
    colours = rng.uniform(48, 208, size=(num_classes, 1, 1, 3))
    patterns = rng.uniform(-40, 40, size=(num_classes, 4, 4, 3)).repeat(8, axis=1).repeat(8, axis=2)
    signal = colours + patterns  # (classes, 32, 32, 3)

    def draw(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))
        images = signal[labels] + rng.normal(0.0, noise, size=(len(labels), 32, 32, 3))
        return np.clip(np.rint(images), 0, 255).astype(np.uint8), labels.astype(np.int64)

    train_images, train_labels = draw(train_per_class)
    test_images, test_labels = draw(test_per_class)
    classes = tuple(f"class_{i:03d}" for i in range(num_classes))
    return ImageArrays(train_images, train_labels, test_images, test_labels, classes)


class SyntheticCIFAR100DataModule(CIFAR100DataModule):
    """CIFAR-100-shaped random images (3×32×32 uint8) with a learnable class signal; needs no files.

    Args:
        num_classes: number of classes (100 like CIFAR-100).
        train_per_class: official-training-set images per class, before the validation split.
        test_per_class: test images per class.
        seed: seed of the images; the same seed gives the same dataset.
        noise: standard deviation of the per-pixel noise, in 0–255 pixel units.
        **kwargs: loader and split settings of `CIFAR100DataModule` (batch_size, val_per_class, …); its
            `data_dir` is not read, and `download` may only be false.
    """

    def __init__(
        self,
        num_classes: int = 100,
        train_per_class: int = 60,
        test_per_class: int = 10,
        seed: int = 0,
        noise: float = 24.0,
        **kwargs: object,
    ) -> None:
        kwargs.setdefault("val_per_class", 10)
        if kwargs.pop("download", False):
            raise ValueError("download: synthetic data is generated, not downloaded; set data.download=false")
        super().__init__(download=False, **kwargs)
        for name, value in [
            ("num_classes", num_classes),
            ("train_per_class", train_per_class),
            ("test_per_class", test_per_class),
        ]:
            require_positive_int(name, value)
        require_seed("seed", seed)
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.num_classes = num_classes
        self.train_per_class = train_per_class
        self.test_per_class = test_per_class
        self.seed = seed
        self.noise = noise

    def prepare_data(self) -> None:
        """Nothing to download or verify."""

    def load_arrays(self) -> ImageArrays:
        return make_synthetic_arrays(self.num_classes, self.train_per_class, self.test_per_class, self.seed, self.noise)
