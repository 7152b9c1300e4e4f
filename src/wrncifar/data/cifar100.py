"""CIFAR-100 as a LightningDataModule: a stratified 45,000 / 5,000 train/val split and the official test set.

`CIFAR100DataModule` is also the base of the other datamodules (`CIFAR10DataModule` in `cifar10.py`, the synthetic
stand-in): a subclass names another `release` (`cifar_releases`) or overrides `load_arrays`, and keeps the split,
loaders, augmentation and on-device path. Its name and module stay as they were: run folders and checkpoints name
them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, Dataset

from wrncifar.data.arrays import DataSettingsError, ImageArrays, stratified_split
from wrncifar.data.cifar100_sources import load_cifar, prepare_cifar
from wrncifar.data.cifar_releases import CIFAR100_RELEASE, CIFARRelease
from wrncifar.data.device_batches import DeviceBatches, check_fits_on_device
from wrncifar.data.transforms import (
    CUTOUT_PLACEMENTS,
    IMAGE_SIZE,
    PADDING_MODES,
    POLICIES,
    CutoutPlacement,
    PaddingMode,
    Policy,
    eval_transform,
    train_transform,
)

log = logging.getLogger(__name__)


class ImageDataset(Dataset):
    """uint8 CHW images kept in one tensor; the transform runs per sample in the loader workers."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: torch.nn.Module) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[index]), self.labels[index]


# Larger counts overflow the loaders' 64-bit index arithmetic; no dataset here comes near them.
MAX_COUNT = 2**31


def require_positive_int(name: str, value: object) -> None:
    """ValueError naming `name` unless `value` is an int in 1 … MAX_COUNT - 1 (a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if value >= MAX_COUNT:
        raise ValueError(f"{name} must be below {MAX_COUNT:,}, got {value:,}")


MAX_SEED = 2**32 - 1  # numpy's generators and Lightning's seed_everything take seeds in 0 … MAX_SEED


def require_seed(name: str, value: int) -> None:
    """ValueError naming `name` unless `value` is a seed numpy's generators take (0 … MAX_SEED)."""
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"{name} must be in 0 … {MAX_SEED}, got {value}")


def default_num_workers() -> int:
    """One loader worker per available core, at most 8 (more does not help 32×32 images)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores))


def eval_sampler(dataset: Dataset, trainer: Trainer | None) -> UnrepeatedDistributedSampler | None:
    """Under DDP, each process's share of a validation or test set: every world_size-th image, none repeated.

    Lightning's default DistributedSampler pads the last round with repeated images so that every process gets
    as many; those would count twice in val/test metrics. Here the processes' counts may differ by one (safe in
    evaluation, where DDP syncs nothing per batch), and the metrics, synchronised by torchmetrics, are exact.
    """
    if trainer is None or trainer.world_size < 2:
        return None
    return UnrepeatedDistributedSampler(
        dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
    )


class CIFAR100DataModule(LightningDataModule):
    """CIFAR-100 from `data_dir` (see `cifar100_sources` for the accepted layouts); another CIFAR release in a
    subclass that sets `release`.

    Args:
        data_dir: folder holding the dataset, or where torchvision downloads it.
        batch_size: images per training step on each device.
        eval_batch_size: images per validation/test step; defaults to `batch_size`.
        num_workers: loader worker processes; None picks one per CPU core (at most 8).
        pin_memory: page-locked host memory for faster copies to a GPU (ignored without CUDA).
        persistent_workers: keep workers alive between epochs (ignored with 0 workers).
        val_per_class: training images of each class held out for validation (50 → 45,000 / 5,000 for CIFAR-100).
        split_seed: seed of the validation split; the same seed gives the same split on every run.
        download: download through torchvision when no copy is found.
        crop_padding: padding before the random 32×32 training crop (0 disables the crop).
        crop_padding_mode: what the padding is: `reflect` (the image mirrored at its edge, as in the WRN paper's
            code) or `zeros` (torchvision's default, as in the Cutout and AutoAugment papers' code).
        flip: random horizontal flips in training.
        policy: augmentation policy on the uint8 image, before crop and flip (the reference code's order): `none`,
            `trivialaugment` (TrivialAugmentWide) or `autoaugment` (AutoAugment's CIFAR policy); CPU path only.
        cutout: side of the Cutout square erased from each training image (0: none; the usual value is 16).
        cutout_placement: `centre` (the Cutout paper's code: centre uniform over the image, square clipped at the
            border) or `inside` (placed uniformly where it fits whole).
        drop_last: drop the last incomplete training batch of each epoch (one batch shape suits torch.compile).
        on_device: keep the uint8 images on the training device and batch, augment and normalise them there
            (`DeviceBatches`); no loader workers. The fast path on a GPU; on CPU it batches without workers.
        num_classes: the dataset's classes, stated in the config so that the model's can follow it
            (`model.net.num_classes: ${data.num_classes}`); must be the release's (100 here). None: the release's.
    """

    release: CIFARRelease = CIFAR100_RELEASE  # what prepare_data and load_arrays find, check and read

    def __init__(
        self,
        data_dir: str = "data/",
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int | None = None,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        val_per_class: int = 50,
        split_seed: int = 0,
        download: bool = True,
        crop_padding: int = 4,
        flip: bool = True,
        policy: Policy = "none",
        cutout: int = 0,
        drop_last: bool = False,
        on_device: bool = False,
        crop_padding_mode: PaddingMode = "reflect",
        cutout_placement: CutoutPlacement = "centre",
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        release = self.release
        if num_classes is not None and num_classes != release.num_classes:
            raise ValueError(
                f"num_classes: {release.name} has {release.num_classes} classes, got {num_classes}. The model follows "
                f"data.num_classes: leave it at {release.num_classes}, and choose another dataset with data= "
                "(data=cifar10, data=cifar100)"
            )
        self.num_classes = release.num_classes
        for name, value in [("batch_size", batch_size), ("val_per_class", val_per_class)]:
            require_positive_int(name, value)
        if eval_batch_size is not None:
            require_positive_int("eval_batch_size", eval_batch_size)
        if num_workers is not None and num_workers < 0:
            raise ValueError(f"num_workers must be >= 0 or null (one per core), got {num_workers}")
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        require_seed("split_seed", split_seed)
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if crop_padding_mode not in PADDING_MODES:
            raise ValueError(f"crop_padding_mode must be one of {', '.join(PADDING_MODES)}, got {crop_padding_mode!r}")
        if crop_padding_mode == "reflect" and crop_padding >= IMAGE_SIZE:
            raise ValueError(f"crop_padding_mode=reflect mirrors the image: crop_padding must be < {IMAGE_SIZE}")
        if cutout_placement not in CUTOUT_PLACEMENTS:
            raise ValueError(
                f"cutout_placement must be one of {', '.join(CUTOUT_PLACEMENTS)}, got {cutout_placement!r}"
            )
        if not 0 <= cutout < IMAGE_SIZE:
            raise ValueError(f"cutout is the side of the erased square in pixels, 0 to {IMAGE_SIZE - 1}; got {cutout}")
        for name, flag in (("on_device", on_device), ("drop_last", drop_last)):
            if not isinstance(flag, bool):  # "auto" is the run layer's to decide (wrncifar.run.speed)
                raise ValueError(f"{name} must be true or false here, got {flag!r} (the entry points resolve auto)")
        if on_device and policy != "none":
            raise ValueError(
                f"policy={policy} runs in the CPU loader workers only; set data.on_device=false to use it, "
                "or data.policy=none to keep the on-device path (crop, flip and cutout)"
            )
        if on_device and num_workers and rank_zero_only.rank == 0:
            log.warning(
                "data.num_workers=%d is unused: with data.on_device=true the batches are made in the training "
                "process, without loader workers (data.on_device=false for loader workers)",
                num_workers,
            )
        self.data_dir = Path(data_dir).expanduser()  # as the entry points expand it
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.val_per_class = val_per_class
        self.split_seed = split_seed
        self.download = download
        self.crop_padding = crop_padding
        self.flip = flip
        self.policy = policy
        self.cutout = cutout
        self.crop_padding_mode = crop_padding_mode
        self.cutout_placement = cutout_placement
        self.drop_last = drop_last
        self.on_device = on_device
        self.train_tf = train_transform(
            crop_padding,
            flip,
            mean=release.mean,
            std=release.std,
            policy=policy,
            cutout=cutout,
            crop_padding_mode=crop_padding_mode,
            cutout_placement=cutout_placement,
        )
        self.eval_tf = eval_transform(release.mean, release.std)
        self.classes: tuple[str, ...] = ()
        # CIFAR-100's 20 coarse classes and the one each fine class belongs to; empty for data without them.
        self.superclasses: tuple[str, ...] = ()
        self.fine_to_coarse: tuple[int, ...] = ()
        self.train_set: ImageDataset | None = None
        self.val_set: ImageDataset | None = None
        self.test_set: ImageDataset | None = None
        self.train_batches: DeviceBatches | None = None  # the on-device training loader, once built
        self._train_batches_state: dict[str, Any] | None = None  # its position from a checkpoint, until then

    def prepare_data(self) -> None:
        prepare_cifar(self.data_dir, self.release, self.download)

    def load_arrays(self) -> ImageArrays:
        return load_cifar(self.data_dir, self.release)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        arrays = self.load_arrays()
        train_idx, val_idx = stratified_split(arrays.train_labels, self.val_per_class, self.split_seed)
        self.classes = arrays.classes
        self.superclasses, self.fine_to_coarse = arrays.superclasses, arrays.fine_to_coarse
        self.train_set = ImageDataset(arrays.train_images[train_idx], arrays.train_labels[train_idx], self.train_tf)
        self.val_set = ImageDataset(arrays.train_images[val_idx], arrays.train_labels[val_idx], self.eval_tf)
        self.test_set = ImageDataset(arrays.test_images, arrays.test_labels, self.eval_tf)
        if self.on_device:  # fail before training, not at the first batch
            sets = (self.train_set, self.val_set, self.test_set)
            check_fits_on_device(sum(d.images.nbytes + d.labels.nbytes for d in sets), self._device())

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        self._check_a_batch_to_train_on()
        loader = self._loader(self.train_set, self.batch_size, train=True)
        if isinstance(loader, DeviceBatches):
            if self._train_batches_state is not None:
                loader.load_state_dict(self._train_batches_state)
                self._train_batches_state = None
            self.train_batches = loader
        return loader

    def _check_a_batch_to_train_on(self) -> None:
        """DataSettingsError when `drop_last` would drop every training batch: a batch larger than the training
        images each process gets leaves an epoch of no step (and a schedule of zero steps)."""
        world_size = self.trainer.world_size if self.trainer else 1
        per_process = len(self.train_set or ()) // world_size
        if self.drop_last and per_process < self.batch_size:
            each = f" each of the {world_size} processes gets" if world_size > 1 else ""
            raise DataSettingsError(
                f"data.batch_size={self.batch_size} is larger than the {per_process:,} training images{each}, "
                "and data.drop_last=true drops that incomplete batch: no step would train. Lower data.batch_size, "
                "or set data.drop_last=false"
            )

    # The on-device loader's position travels in the checkpoint through the datamodule's state. Lightning also
    # saves stateful loaders with its loops, but restores them only after `configure_optimizers` has built the
    # loader (to count the steps), too late to apply (Lightning issue #20550); the datamodule's state is
    # restored before that.
    def state_dict(self) -> dict[str, Any]:
        return {"train_batches": self.train_batches.state_dict()} if self.train_batches else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._train_batches_state = state_dict.get("train_batches")

    def val_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader(self.val_set, self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader(self.test_set, self.eval_batch_size, train=False)

    def _loader(self, dataset: ImageDataset | None, batch_size: int, train: bool) -> DataLoader | DeviceBatches:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        if self.on_device:
            return self.device_batches(dataset, batch_size, train, self._device())
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            # Under DDP, validation and test see every image once (training takes Lightning's sampler).
            sampler=None if train else eval_sampler(dataset, self.trainer),
            drop_last=self.drop_last and train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    def device_batches(
        self, dataset: ImageDataset, batch_size: int, train: bool, device: torch.device
    ) -> DeviceBatches:
        """`dataset` on `device` as `DeviceBatches` with this module's augmentation, sharded by the trainer's rank."""
        trainer = self.trainer
        # From the global generator, so `seed=` fixes it; every DDP rank takes rank 0's, so that their shards
        # of one shared permutation are disjoint even in an unseeded run. Checkpoints store the seed in use.
        seed = int(torch.randint(2**62, ()).item())
        if trainer is not None and train:
            seed = trainer.strategy.broadcast(seed, src=0)
        return DeviceBatches(
            dataset.images.to(device),
            dataset.labels.to(device),
            batch_size,
            mean=self.release.mean,
            std=self.release.std,
            train=train,
            crop_padding=self.crop_padding,
            flip=self.flip,
            cutout=self.cutout,
            seed=seed,
            crop_padding_mode=self.crop_padding_mode,
            cutout_placement=self.cutout_placement,
            drop_last=self.drop_last and train,
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
            # `debug=overfit`: the same few batches every epoch, as Lightning makes of a DataLoader.
            shuffle=train and not (trainer is not None and trainer.overfit_batches),
        )

    def _device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
