"""CIFAR-10 as a LightningDataModule: `CIFAR100DataModule` reading the other release.

The worked example of adding a dataset: the sources (array export, official folder, archive, download, md5s),
the stratified split, the loaders, the augmentation and the on-device path are all `CIFAR100DataModule`'s; this
module only names the release (`cifar_releases.CIFAR10_RELEASE`: files, label keys, 10 classes, normalisation) and
the split's default, and `configs/data/cifar10.yaml` sets only what differs from `cifar100.yaml`.
"""

from __future__ import annotations

from typing import Any

from wrncifar.data.cifar100 import CIFAR100DataModule
from wrncifar.data.cifar_releases import CIFAR10_RELEASE


class CIFAR10DataModule(CIFAR100DataModule):
    """CIFAR-10 from `data_dir`: `cifar-10-batches-py/`, `cifar-10-python.tar.gz`, the array export (`labels`,
    `label_names`) or a download, as `CIFAR100DataModule` reads CIFAR-100.

    Args:
        data_dir: folder holding the dataset, or where torchvision downloads it.
        val_per_class: training images of each class held out for validation (500 → 45,000 / 5,000, the split
            sizes of CIFAR-100's 50 per class).
        **kwargs: every other argument of `CIFAR100DataModule` (batch_size, on_device, …); `num_classes`, if
            given, must be 10.
    """

    release = CIFAR10_RELEASE

    def __init__(self, data_dir: str = "data/", val_per_class: int = 500, **kwargs: Any) -> None:
        super().__init__(data_dir, val_per_class=val_per_class, **kwargs)
