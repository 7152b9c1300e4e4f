"""Batches cut from image tensors that live on the training device, augmented there: no loader workers.

A GPU trains the seed WideResNet faster than CPU workers can crop, flip and normalise images, so with
`data.on_device=true` the uint8 images (150 MiB for all of CIFAR-100) sit in device memory and each batch is
gathered, cropped, flipped and normalised by a few tensor operations on the device. The augmentation has the
distribution of the CPU path (`transforms.train_transform`): crop offsets uniform over the (2p+1)² positions of
the padded image (zeros or the mirrored image), flips with probability 1/2, and the optional Cutout square placed
as the CPU path's `Cutout` places it.

The order and augmentation of an epoch are drawn at its start from a CPU generator seeded by (seed, epoch), so
an epoch is a pure function of both, whatever the device; with how many images of that order all processes together
have served this is the loader's whole state (`state_dict`), which Lightning saves in checkpoints, so a resumed run
continues the same permutation, with another batch size or number of processes too.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from lightning.pytorch import Trainer
from torch.nn import functional

from wrncifar.data.arrays import DataSettingsError
from wrncifar.data.transforms import CutoutPlacement, PaddingMode, cutout_corner

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class EpochDraw:
    """One epoch's sample order and per-sample augmentation: crop offsets in [0, 2p], flips, and the top-left
    corners of the Cutout squares (zeros without Cutout; outside the image where a square is clipped)."""

    order: torch.Tensor
    dy: torch.Tensor
    dx: torch.Tensor
    flip: torch.Tensor
    cutout_y: torch.Tensor
    cutout_x: torch.Tensor


class EpochSampler:
    """The shuffled order and augmentation of each epoch, drawn from (seed, epoch).

    Named and shaped like a sampler so that Lightning's `set_epoch` call reaches it at every epoch start.
    """

    def __init__(
        self,
        seed: int,
        shuffle: bool,
        crop_padding: int,
        flip: bool,
        cutout: int = 0,
        cutout_placement: CutoutPlacement = "centre",
    ) -> None:
        self.seed = seed
        self.shuffle = shuffle
        self.crop_padding = crop_padding
        self.flip = flip
        self.cutout = cutout
        self.cutout_placement = cutout_placement
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def draw(self, n: int, device: torch.device) -> EpochDraw:
        """The epoch's draw, made on the CPU and copied to `device` (under 2 MiB per epoch on CIFAR-100, once an
        epoch): the same on every device, so a run resumed mid-epoch on another kind of device (a GPU run's
        checkpoint on a CPU) serves the same rest of the epoch. A device generator would draw other numbers for
        the same seed, and MPS's randperm is not even uniform over permutations (pytorch#104315)."""
        draw = self._draw(n, torch.device("cpu"))
        if device.type == "cpu":
            return draw
        return EpochDraw(*(getattr(draw, field.name).to(device) for field in fields(EpochDraw)))

    def _draw(self, n: int, device: torch.device) -> EpochDraw:
        gen = torch.Generator(device=device)
        gen.manual_seed(hash((self.seed, self.epoch)) & 0x7FFF_FFFF_FFFF_FFFF)
        order = torch.randperm(n, generator=gen, device=device) if self.shuffle else torch.arange(n, device=device)
        positions = 2 * self.crop_padding + 1
        dy = torch.randint(positions, (n,), generator=gen, device=device)
        dx = torch.randint(positions, (n,), generator=gen, device=device)
        if self.flip:
            flip = torch.rand(n, generator=gen, device=device) < 0.5
        else:
            flip = torch.zeros(n, dtype=torch.bool, device=device)
        # Drawn last, so that Cutout leaves the order, crops and flips of a seed as they are without it.
        if self.cutout:
            cutout_y = cutout_corner(self.cutout, self.cutout_placement, (n,), gen)
            cutout_x = cutout_corner(self.cutout, self.cutout_placement, (n,), gen)
        else:
            cutout_y = cutout_x = torch.zeros(n, dtype=torch.long, device=device)
        return EpochDraw(order, dy, dx, flip, cutout_y, cutout_x)


def crop_and_flip(
    images: torch.Tensor,
    padding: int,
    dy: torch.Tensor,
    dx: torch.Tensor,
    flip: torch.Tensor,
    mode: PaddingMode = "reflect",
) -> torch.Tensor:
    """Per-sample crops at offsets (dy, dx) of the batch padded by `padding` (`mode`), mirrored where `flip`; one
    gather. A reflected border is read from the image itself at mirrored indices, without padding a copy."""
    n, c, h, w = images.shape
    device = images.device
    rows = dy[:, None] + torch.arange(h, device=device)  # n × h, in padded coordinates
    cols = dx[:, None] + torch.arange(w, device=device)  # n × w
    if mode == "reflect":
        source = images
        rows, cols = _reflect(rows - padding, h), _reflect(cols - padding, w)
    else:
        source = functional.pad(images, (padding, padding, padding, padding))
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # a mirrored crop reads its columns right to left
    batch_idx = torch.arange(n, device=device)[:, None, None, None]
    chan_idx = torch.arange(c, device=device)[None, :, None, None]
    return source[batch_idx, chan_idx, rows[:, None, :, None], cols[:, None, None, :]]


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Indices of `size` mirrored at both edges without repeating them (-1 → 1, size → size - 2), as
    `torch.nn.functional.pad(mode="reflect")` and torchvision's `padding_mode="reflect"` read them."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def cutout(images: torch.Tensor, size: int, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Per-sample `size`×`size` squares from (top, left) of normalised images set to 0 (the mean colour), in place."""
    _, _, h, w = images.shape
    rows = torch.arange(h, device=images.device)
    cols = torch.arange(w, device=images.device)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size)  # n × h
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size)  # n × w
    return images.masked_fill_((in_rows[:, :, None] & in_cols[:, None, :])[:, None], 0.0)


class DeviceBatches:
    """An iterable of normalised (images, labels) batches from uint8 N×C×H×W images on one device.

    Args:
        images: uint8 images, N×C×H×W, on the device that trains.
        labels: int64 labels, N, on the same device.
        batch_size: images per batch.
        mean, std: per-channel normalisation on the 0–1 scale.
        train: shuffle and augment (crops of the padded image, flips, Cutout) each epoch.
        shuffle: a new order each epoch (default: when `train`); false keeps the images' order, as Lightning's
            `overfit_batches` wants (it replaces a DataLoader's sampler, which it cannot do here).
        crop_padding, crop_padding_mode, flip, cutout, cutout_placement: the augmentation when `train`, as in
            `transforms.train_transform` (`cutout`: side of the Cutout square, 0: none).
        seed: seed of the epochs' order and augmentation.
        drop_last: drop the last incomplete batch.
        rank, world_size: under DDP each process takes every world_size-th sample of the epoch's order
            (in training, the same number per process).

    The processes serve the epoch's order interleaved and step together, so what they have served is always a
    prefix of it: the state saves its length (`epoch_served`), and a run resumed mid-epoch splits the rest the same
    way among its own processes, however many.
    """

    batch_sampler = None  # DataLoader's attribute, read by Lightning next to `sampler`: batches are cut here

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool = False,
        crop_padding: int = 4,
        flip: bool = True,
        cutout: int = 0,
        seed: int = 0,
        crop_padding_mode: PaddingMode = "reflect",
        cutout_placement: CutoutPlacement = "centre",
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 N×C×H×W, got {images.dtype} with shape {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.train = train
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.sampler = EpochSampler(
            seed,
            shuffle=train if shuffle is None else shuffle,
            crop_padding=crop_padding if train else 0,
            flip=flip and train,
            cutout=cutout if train else 0,
            cutout_placement=cutout_placement,
        )
        self.crop_padding_mode = crop_padding_mode
        # x / 255 → (x - mean) / std as one multiply-add: x · scale + shift.
        std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t
        self.position = 0  # batches of the current epoch counted from its start, in this loader's batches
        self.served = 0  # and the images of this process they held
        self.epoch_served = 0  # images of the epoch's order served by all processes together: a prefix of it
        self.epoch_images = self._epoch_images()  # the images of the order this epoch serves, a prefix too
        self._resume_at: tuple[int, int] | None = None  # (epoch_served, epoch_images) to resume the epoch at
        # (batches of the resumed epoch the checkpoint counts, batches this loader serves of its rest); None when
        # the run did not resume mid-epoch: what `count_resumed_epoch` tells Lightning.
        self.resumed: tuple[int, int] | None = None

    @property
    def samples_per_rank(self) -> int:
        return self._shares(0, self._epoch_images())[self.rank]

    def _epoch_images(self) -> int:
        n = len(self.labels)
        # Training ranks must run the same number of steps; evaluation keeps every sample.
        return n - n % self.world_size if self.train else n

    def _shares(self, start: int, end: int) -> list[int]:
        """The images each process takes of the order's [start, end): every world_size-th from start + rank."""
        return [len(range(start + rank, end, self.world_size)) for rank in range(self.world_size)]

    def __len__(self) -> int:
        return self._batches(self.samples_per_rank)

    def _batches(self, images: int) -> int:
        return images // self.batch_size if self.drop_last else -(-images // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        # A generator: its body runs at the first next(), after Lightning's set_epoch of this epoch.
        start, end = self._resume_at or (0, self._epoch_images())
        self._resume_at = None
        self.epoch_served, self.epoch_images = start, end
        self.served = len(range(self.rank, start, self.world_size))
        draw = self.sampler.draw(len(self.labels), self.images.device)
        shares = self._shares(start, end)
        # Batches are counted from the epoch's start in this loader's batches, as Lightning counts them (after
        # `count_resumed_epoch`): a resumed epoch starts at those its rest leaves to a whole epoch.
        counted = max(0, len(self) - self._steps(shares))
        self.position = counted
        mine = slice(start + self.rank, end, self.world_size)
        order, dy, dx, flip = draw.order[mine], draw.dy[mine], draw.dx[mine], draw.flip[mine]
        cutout_y, cutout_x = draw.cutout_y[mine], draw.cutout_x[mine]
        for step in range(self._steps(shares)):
            take = slice(step * self.batch_size, (step + 1) * self.batch_size)
            index = order[take]
            images = self.images[index]
            if self.train and (self.sampler.crop_padding or self.sampler.flip):
                images = crop_and_flip(
                    images, self.sampler.crop_padding, dy[take], dx[take], flip[take], self.crop_padding_mode
                )
            # Counted before the yield: a checkpoint taken while this batch trains resumes after it.
            self.position = counted + step + 1
            self.epoch_served = start + sum(min(take.stop, share) for share in shares)
            self.served = len(range(self.rank, self.epoch_served, self.world_size))
            images = images.float().mul_(self.scale).add_(self.shift)
            if self.sampler.cutout:
                images = cutout(images, self.sampler.cutout, cutout_y[take], cutout_x[take])
            yield images, self.labels[index]

    def _steps(self, shares: list[int]) -> int:
        # Training processes step together; evaluation serves each process's share whole.
        if not self.train:
            return self._batches(shares[self.rank])
        return min(self._batches(share) for share in shares)

    def state_dict(self) -> dict[str, Any]:
        """`served` (this process's share) is what loaders before `epoch_served` read, under as many processes."""
        return {
            "seed": self.sampler.seed,
            "epoch": self.sampler.epoch,
            "position": self.position,
            "served": self.served,
            "epoch_served": self.epoch_served,
            "epoch_images": self.epoch_images,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the epoch of `state` after the images its processes had served, in batches of this loader's
        size split among this loader's processes: a run resumed with another `batch_size` or number of processes
        trains the rest of the interrupted epoch's images once each (with `drop_last`, those that fill a batch on
        every process). MidEpochResumeError where the processes cannot take the same number of steps through the
        rest. (A state from before `epoch_served` was saved counts this process's `served`, or its batches at this
        size, under as many processes as now.)"""
        self.sampler.seed = int(state["seed"])
        self.sampler.epoch = int(state["epoch"])
        if "epoch_served" in state:
            start, end = int(state["epoch_served"]), int(state["epoch_images"])
            saved_by = int(state["world_size"])
        else:
            served = int(state.get("served", int(state["position"]) * self.batch_size))
            start, end, saved_by = served * self.world_size, self._epoch_images(), self.world_size
        shares = self._shares(start, end)
        steps = {self._batches(share) for share in shares}
        if self.train and not self.drop_last and len(steps) > 1:
            raise MidEpochResumeError(
                f"the checkpoint was saved mid-epoch by {_processes(saved_by)}, {start:,} of the epoch's {end:,} "
                f"images trained; the {end - start:,} left cannot be split among {_processes(self.world_size)} in "
                f"batches of {self.batch_size} so that each trains the same number of steps (it would take "
                f"{min(steps)} on some, {max(steps)} on others). Resume it with {_processes(saved_by)}, as saved "
                "(trainer.devices × trainer.num_nodes), or from a checkpoint saved at an epoch's end "
                "(ckpt_path=<run>/checkpoints/epoch_<n>.ckpt)"
            )
        # A checkpoint taken at the end of an epoch resumes at the start of the next one.
        self._resume_at = (start, end) if self._steps(shares) > 0 else None
        # States from before `epoch_served` count a resumed epoch's batches from the resume: not Lightning's count.
        counted = int(state["position"]) if "epoch_served" in state else None
        self.resumed = (counted, self._steps(shares)) if self._resume_at and counted is not None else None


def count_resumed_epoch(trainer: Trainer) -> None:
    """Make Lightning count the batches of a resumed epoch in this run's batches (at `on_train_start`, before the
    epoch starts), so that it ends the epoch when the loader has served the rest of it.

    Lightning restores the count of the interrupted epoch's batches the checkpoint saved, in the batch size and
    number of processes of the run that saved it, and ends an epoch once its count reaches this run's batches per
    epoch. Resumed with another batch size or number of processes, the rest of the epoch is another number of
    batches: Lightning would stop before the last of them, or its count would run past the end. Its count is set to
    the loader's batches per epoch less those it has left (`DeviceBatches.resumed`): the batches of the epoch this
    run's loader counts as served, so that with `limit_train_batches` too the epoch ends where the uninterrupted
    run's would. Other loaders are left as they are."""
    loader = trainer.train_dataloader
    resumed = loader.resumed if isinstance(loader, DeviceBatches) else None
    if resumed is None or not math.isfinite(trainer.num_training_batches):
        return
    counted, left = resumed
    shift = max(0, len(loader) - left) - counted
    progress = trainer.fit_loop.epoch_loop.batch_progress.current
    progress.ready, progress.started = progress.ready + shift, progress.started + shift
    progress.processed, progress.completed = progress.processed + shift, progress.completed + shift


class MidEpochResumeError(DataSettingsError):
    """A checkpoint's mid-epoch position that this run's processes cannot continue exactly."""


def _processes(count: int) -> str:
    return f"{count} process" if count == 1 else f"{count} processes"


class DeviceMemoryError(RuntimeError):
    """The dataset does not fit in the accelerator's memory next to the model."""


# Share of the free device memory the images may take; the rest is for the model, activations and optimizer.
MAX_DATA_SHARE = 0.5


def check_fits_on_device(required_bytes: int, device: torch.device) -> None:
    """Raise DeviceMemoryError, with the sizes, when `required_bytes` exceed MAX_DATA_SHARE of the free memory."""
    if device.type != "cuda":
        return  # CPU tensors stay where they are; other accelerators report no free memory
    free, total = torch.cuda.mem_get_info(device)
    if required_bytes > MAX_DATA_SHARE * free:
        mib = 2**20
        raise DeviceMemoryError(
            f"data.on_device=true needs {required_bytes / mib:,.0f} MiB of {device} memory for the images, more than "
            f"{MAX_DATA_SHARE:.0%} of the {free / mib:,.0f} MiB free (of {total / mib:,.0f} MiB) that training can "
            "spare; set data.on_device=false to keep them in host memory with loader workers"
        )
