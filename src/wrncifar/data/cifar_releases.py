"""What tells CIFAR-10 from CIFAR-100: one `CIFARRelease` record each, read by the sources and the datamodule.

Everything else — the sources and their checks, the split, the loaders, the on-device path — is the same code for
both. File names, URL and md5s are read from torchvision's dataset class when they are used, not copied here, so
they stay torchvision's (and a test can swap the expected md5s on the class, as for any other reader of it).
"""

from __future__ import annotations

from dataclasses import dataclass

from torchvision.datasets import CIFAR10, CIFAR100

from wrncifar.data.transforms import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD


@dataclass(frozen=True)
class CIFARRelease:
    """One official CIFAR release.

    Args:
        name: as messages write it ("CIFAR-10").
        slug: in folder names of this project's own (the extraction cache).
        torchvision_class: torchvision's dataset class, which knows the release's files, URL and md5s and reads it.
        num_classes: its classes.
        label_key: the labels' key in the official pickles, and in this project's array export (`train.npz`,
            `test.npz`).
        mean, std: per-channel statistics of the training images on the 0–1 scale (see `transforms`).
    """

    name: str
    slug: str
    torchvision_class: type[CIFAR10]
    num_classes: int
    label_key: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def base_folder(self) -> str:
        """The extracted official folder (`cifar-10-batches-py`)."""
        return self.torchvision_class.base_folder

    @property
    def filename(self) -> str:
        """The official archive (`cifar-10-python.tar.gz`)."""
        return self.torchvision_class.filename

    @property
    def url(self) -> str:
        return self.torchvision_class.url

    @property
    def tgz_md5(self) -> str:
        return self.torchvision_class.tgz_md5

    @property
    def names_key(self) -> str:
        """The class names' key in the official meta file, and in the array export's `meta.json`."""
        return self.torchvision_class.meta["key"]

    @property
    def meta_file(self) -> str:
        return self.torchvision_class.meta["filename"]

    def official_files(self) -> list[tuple[str, str]]:
        """(name, md5) of every file of the official folder: training batches, test batch, meta file."""
        cls = self.torchvision_class
        return [(name, md5) for name, md5 in (*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"]))]

    def batch_files(self) -> list[str]:
        """The official folder's image files, training batches first (`data_batch_1` … `data_batch_5`, `test_batch`)."""
        cls = self.torchvision_class
        return [name for name, _ in (*cls.train_list, *cls.test_list)]


CIFAR10_RELEASE = CIFARRelease(
    name="CIFAR-10",
    slug="cifar10",
    torchvision_class=CIFAR10,
    num_classes=10,
    label_key="labels",
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
)
CIFAR100_RELEASE = CIFARRelease(
    name="CIFAR-100",
    slug="cifar100",
    torchvision_class=CIFAR100,
    num_classes=100,
    label_key="fine_labels",  # and `coarse_labels`, the 20 superclasses, which CIFAR-10 does not have
    mean=CIFAR100_MEAN,
    std=CIFAR100_STD,
)
