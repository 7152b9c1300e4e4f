"""Augmentation options: Cutout on both data paths (same square, same uniform placement, resumable on the device),
the TrivialAugment/AutoAugment policies on the CPU path, and the datamodule's checks of the options."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms import v2

from wrncifar.data.device_batches import DeviceBatches
from wrncifar.data.synthetic import SyntheticCIFAR100DataModule
from wrncifar.data.transforms import CIFAR100_MEAN, CIFAR100_STD, Cutout, eval_transform, train_transform
from wrncifar.run.config_validation import ConfigError, validate_config

CUTOUT = 16
CORNERS = 32 - CUTOUT + 1  # top-left positions per axis of a square that fits inside the image: 0..16
SAMPLES = 4096  # ~14 per corner cell


def chi2_quantile_999(dof: int) -> float:
    """The 0.999 quantile of chi-square with `dof` degrees of freedom (Wilson–Hilferty, accurate to <1% here)."""
    z = 3.0902  # standard normal 0.999 quantile
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def white_images(n: int) -> torch.Tensor:
    """uint8 images of 255: normalised, every pixel is > 0, so the zeros are exactly what Cutout erased."""
    return torch.full((n, 3, 32, 32), 255, dtype=torch.uint8)


def cutout_corners(images: torch.Tensor) -> torch.Tensor:
    """Top-left (row, column) of each image's erased square, after checking it is one CUTOUT×CUTOUT square of 0."""
    erased = (images == 0).all(dim=1)  # n × 32 × 32, erased in every channel
    assert torch.equal((images == 0).any(dim=1), erased), "Cutout erases all channels alike"
    assert (erased.sum(dim=(1, 2)) == CUTOUT * CUTOUT).all(), "each image loses exactly one whole square"
    rows, cols = erased.any(dim=2).float().argmax(dim=1), erased.any(dim=1).float().argmax(dim=1)
    span = torch.arange(32)
    in_rows = (span >= rows[:, None]) & (span < rows[:, None] + CUTOUT)
    in_cols = (span >= cols[:, None]) & (span < cols[:, None] + CUTOUT)
    assert torch.equal(erased, in_rows[:, :, None] & in_cols[:, None, :]), "the erased pixels form a square"
    return torch.stack([rows, cols], dim=1)


def assert_uniform_corners(corners: torch.Tensor) -> None:
    assert corners.min() >= 0 and corners.max() < CORNERS
    counts = torch.bincount(corners[:, 0] * CORNERS + corners[:, 1], minlength=CORNERS**2).double()
    expected = len(corners) / CORNERS**2
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < chi2_quantile_999(CORNERS**2 - 1), f"Cutout corners not uniform: chi-square {chi2:.1f}"


def test_cpu_cutout_erases_one_16px_square_to_the_mean_placed_uniformly_inside_the_image() -> None:
    torch.manual_seed(0)
    transform = train_transform(crop_padding=0, flip=False, cutout=CUTOUT, cutout_placement="inside")
    images = torch.stack([transform(image) for image in white_images(SAMPLES)])
    assert_uniform_corners(cutout_corners(images))
    # Outside the square the image is the plain normalised one.
    plain = eval_transform()(white_images(1))
    assert torch.equal(images[images != 0].unique(), plain.unique())


def test_device_cutout_has_the_cpu_distribution() -> None:
    n = 2048
    batches = DeviceBatches(
        white_images(n), torch.arange(n), 1024, CIFAR100_MEAN, CIFAR100_STD, train=True, crop_padding=0,
        flip=False, cutout=CUTOUT, seed=1, cutout_placement="inside",
    )  # fmt: skip
    assert_uniform_corners(cutout_corners(device_images(batches, SAMPLES)))


def device_images(batches: DeviceBatches, count: int) -> torch.Tensor:
    images = []
    for number in range(count // len(batches.labels)):
        batches.sampler.set_epoch(number)
        images += [batch for batch, _ in batches]
    return torch.cat(images)


# The Cutout paper's placement: the square's centre uniform over the 32 rows (and columns), the square spanning
# centre - 8 … centre + 7 clipped to the image. The side kept along one axis, for each centre:
CENTRE_SIDES = torch.tensor([min(c + CUTOUT // 2, 32) - max(c - CUTOUT // 2, 0) for c in range(32)])


def erased_sides(images: torch.Tensor) -> torch.Tensor:
    """(rows, columns) each image lost, after checking the erased pixels form one rectangle in every channel."""
    erased = (images == 0).all(dim=1)
    assert torch.equal((images == 0).any(dim=1), erased), "Cutout erases all channels alike"
    rows, cols = erased.any(dim=2), erased.any(dim=1)
    assert torch.equal(erased, rows[:, :, None] & cols[:, None, :]), "the erased pixels form a rectangle"
    return torch.stack([rows.sum(dim=1), cols.sum(dim=1)], dim=1)


def assert_published_cutout_distribution(sides: torch.Tensor) -> None:
    """Each axis's side follows CENTRE_SIDES' distribution (chi-square); the mean erased share is E[side]² / 1024
    = 14² / 1024 = 19.1%, the whole square is kept in (17 / 32)² = 28.2% of images."""
    n = len(sides)
    for axis in range(2):
        observed = torch.bincount(sides[:, axis], minlength=CUTOUT + 1).double()
        expected = torch.bincount(CENTRE_SIDES, minlength=CUTOUT + 1).double() * n / 32
        cells = expected > 0
        assert observed[~cells].sum() == 0, "no side the closed form excludes"
        chi2 = ((observed[cells] - expected[cells]) ** 2 / expected[cells]).sum().item()
        assert chi2 < chi2_quantile_999(int(cells.sum()) - 1), f"side distribution off: chi-square {chi2:.1f}"
    share = (sides[:, 0] * sides[:, 1]).double() / 1024
    assert abs(share.mean().item() - 196 / 1024) < 4 * share.std().item() / n**0.5
    whole = (share == CUTOUT * CUTOUT / 1024).double().mean().item()
    assert abs(whole - (17 / 32) ** 2) < 4 * ((17 / 32) ** 2 * (1 - (17 / 32) ** 2) / n) ** 0.5


def test_cpu_cutout_follows_the_published_placement_by_default() -> None:
    torch.manual_seed(0)
    transform = train_transform(crop_padding=0, flip=False, cutout=CUTOUT)
    assert_published_cutout_distribution(erased_sides(torch.stack([transform(i) for i in white_images(SAMPLES)])))


def test_device_cutout_follows_the_published_placement_like_the_cpu_path() -> None:
    n = 2048
    batches = DeviceBatches(
        white_images(n), torch.arange(n), 1024, CIFAR100_MEAN, CIFAR100_STD, train=True, crop_padding=0,
        flip=False, cutout=CUTOUT, seed=1,
    )  # fmt: skip
    assert_published_cutout_distribution(erased_sides(device_images(batches, SAMPLES)))


def device_epoch(cutout: int, seed: int = 3, epoch: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    images = torch.randint(1, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batches = DeviceBatches(
        images, torch.arange(40), 8, CIFAR100_MEAN, CIFAR100_STD, train=True, cutout=cutout, seed=seed
    )
    batches.sampler.set_epoch(epoch)
    return list(batches)


def test_device_cutout_keeps_the_order_crops_and_flips_of_the_seed() -> None:
    for (with_cut, labels), (without, plain_labels) in zip(device_epoch(CUTOUT), device_epoch(0), strict=True):
        assert torch.equal(labels, plain_labels)
        erased = (with_cut == 0).all(dim=1, keepdim=True).expand_as(with_cut)
        assert (erased.sum(dim=(1, 2, 3)) >= 3 * (CUTOUT // 2) ** 2).all()  # at least a clipped square
        assert torch.equal(with_cut[~erased], without[~erased])


def test_device_cutout_resumes_mid_epoch_with_the_same_squares() -> None:
    images = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    def make(seed: int) -> DeviceBatches:
        return DeviceBatches(images, torch.arange(50), 8, CIFAR100_MEAN, CIFAR100_STD, train=True, cutout=8, seed=seed)

    interrupted = make(seed=3)
    interrupted.sampler.set_epoch(1)
    served = iter(interrupted)
    next(served), next(served)
    resumed = make(seed=99)
    resumed.load_state_dict(interrupted.state_dict())
    resumed.sampler.set_epoch(1)
    reference = make(seed=3)
    reference.sampler.set_epoch(1)
    for (got, got_labels), (want, want_labels) in zip(list(resumed), list(reference)[2:], strict=True):
        assert torch.equal(got_labels, want_labels) and torch.equal(got, want)


def test_evaluation_batches_get_no_cutout() -> None:
    batches = DeviceBatches(white_images(8), torch.arange(8), 8, CIFAR100_MEAN, CIFAR100_STD, train=False, cutout=16)
    ((images, _),) = list(batches)
    assert not (images == 0).any()


@pytest.mark.parametrize(
    ("policy", "kind"), [("trivialaugment", v2.TrivialAugmentWide), ("autoaugment", v2.AutoAugment)]
)
def test_policies_run_on_uint8_before_crop_and_flip_as_in_the_reference_code(policy: str, kind: type) -> None:
    transform = train_transform(policy=policy, cutout=CUTOUT)
    steps = [type(t) for t in transform.transforms]
    assert steps == [kind, v2.RandomCrop, v2.RandomHorizontalFlip, v2.Compose, Cutout]
    if policy == "autoaugment":
        assert transform.transforms[0].policy == v2.AutoAugmentPolicy.CIFAR10

    torch.manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    no_geometry = train_transform(crop_padding=0, flip=False, policy=policy)
    augmented = torch.stack([no_geometry(image) for image in images])
    assert augmented.dtype == torch.float32 and augmented.shape == images.shape
    changed = (augmented != eval_transform()(images)).flatten(1).any(dim=1)
    # TrivialAugment's identity and zero-strength draws, and AutoAugment's skipped sub-policies, leave some
    # images as they were; most change.
    assert 0.5 < changed.float().mean() < 1.0


def test_no_policy_and_no_cutout_keep_the_crop_and_flip_pipeline() -> None:
    steps = [type(t) for t in train_transform().transforms]
    assert steps == [v2.RandomCrop, v2.RandomHorizontalFlip, v2.Compose]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"policy": "randaugment"}, "policy must be one of none, trivialaugment, autoaugment"),
        ({"cutout": 32}, "cutout is the side of the erased square in pixels, 0 to 31"),
        ({"cutout": -1}, "cutout is the side"),
        ({"policy": "trivialaugment", "on_device": True}, "set data.on_device=false to use it"),
        ({"crop_padding_mode": "edge"}, "crop_padding_mode must be one of zeros, reflect"),
        ({"cutout_placement": "corner"}, "cutout_placement must be one of centre, inside"),
    ],
)
def test_datamodule_refuses_impossible_augmentation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyntheticCIFAR100DataModule(num_classes=2, train_per_class=2, val_per_class=1, **kwargs)


def test_datamodule_builds_the_configured_training_transform() -> None:
    dm = SyntheticCIFAR100DataModule(
        num_classes=2, train_per_class=2, val_per_class=1, policy="autoaugment", cutout=8, crop_padding_mode="zeros"
    )
    assert isinstance(dm.train_tf.transforms[0], v2.AutoAugment)
    assert dm.train_tf.transforms[1].padding_mode == "constant"
    assert (dm.train_tf.transforms[-1].size, dm.train_tf.transforms[-1].placement) == (8, "centre")


def test_a_misspelt_policy_is_named_by_the_config_check(make_config) -> None:
    with pytest.raises(ConfigError, match=r"data.policy: expected one of \['none', 'trivialaugment', 'autoaugment'\]"):
        validate_config(make_config(["data=synthetic", "data.policy=trivial"]))
