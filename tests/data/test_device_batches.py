"""On-device batches: the CPU path's augmentation distribution, exact evaluation batches, epochs as a function of
(seed, epoch), resumable mid-epoch (also through Lightning), DDP shards, input checks and the memory check."""

from __future__ import annotations

import types
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from tests.conftest import quiet_trainer
from wrncifar.data.device_batches import (
    DeviceBatches,
    DeviceMemoryError,
    EpochDraw,
    EpochSampler,
    MidEpochResumeError,
    check_fits_on_device,
)
from wrncifar.data.synthetic import SyntheticCIFAR100DataModule
from wrncifar.data.transforms import CIFAR100_MEAN, CIFAR100_STD, eval_transform, train_transform
from wrncifar.models.classifier import ImageClassifier
from wrncifar.models.wideresnet import WideResNet

PADDING = 4
POSITIONS = 2 * PADDING + 1  # crop offsets per axis: 0..8
AUGMENTED_SAMPLES = 16_384  # ~200 per offset cell
# 0.999 quantile of chi-square with 80 (= 81 cells - 1) degrees of freedom: a uniform draw exceeds it once in 1000.
CHI2_80_Q999 = 124.84
MEAN = torch.tensor(CIFAR100_MEAN)[:, None, None]
STD = torch.tensor(CIFAR100_STD)[:, None, None]


def random_images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def loader(n: int, batch_size: int = 8, train: bool = True, **kwargs) -> DeviceBatches:
    """DeviceBatches over random images whose labels are their indices, so labels tell which samples came."""
    return DeviceBatches(
        random_images(n), torch.arange(n), batch_size, CIFAR100_MEAN, CIFAR100_STD, train=train, **kwargs
    )


def epoch(batches: DeviceBatches, number: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    batches.sampler.set_epoch(number)
    return list(batches)


def labels_of(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    return torch.cat([labels for _, labels in batches])


def assert_same_batches(actual: list, expected: list) -> None:
    assert len(actual) == len(expected)
    for i, ((images, labels), (want_images, want_labels)) in enumerate(zip(actual, expected, strict=True)):
        assert torch.equal(labels, want_labels), f"batch {i}: labels {labels.tolist()}, expected {want_labels.tolist()}"
        assert torch.equal(images, want_images), f"batch {i}: other images"


# --- augmentation ---------------------------------------------------------------------------------------------


def coordinate_image() -> torch.Tensor:
    """Channel 0 holds row + 1, channel 1 column + 1 (never 0, the padding's value), channel 2 a constant."""
    index = torch.arange(1, 33, dtype=torch.uint8)
    return torch.stack(
        [index[:, None].expand(32, 32), index[None, :].expand(32, 32), torch.full((32, 32), 200, dtype=torch.uint8)]
    )


def unnormalise(images: torch.Tensor) -> torch.Tensor:
    """Normalised float images back to uint8 pixel values."""
    return (images * STD + MEAN).mul(255).round().to(torch.uint8)


def all_crops(image: torch.Tensor, mode: str) -> torch.Tensor:
    """flip × dy × dx × C × 32 × 32: every crop of the padded image (`zeros`, or `reflect` as torch pads it),
    plain and mirrored."""
    padded = torch.nn.functional.pad(image.float()[None], (PADDING,) * 4, mode="constant" if mode == "zeros" else mode)
    padded = padded[0].to(torch.uint8)
    crops = torch.stack(
        [torch.stack([padded[:, dy : dy + 32, dx : dx + 32] for dx in range(POSITIONS)]) for dy in range(POSITIONS)]
    )
    return torch.stack([crops, crops.flip(-1)])


def decode_crops(crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dy, dx, flipped) of crops of `coordinate_image`, read at the centre pixel, which every crop keeps."""
    centre_row, centre_col = crops[:, 0, 16, 16].long(), crops[:, 1, 16, 16].long()
    flipped = crops[:, 1, 16, 17].long() < centre_col  # columns decrease to the right in a mirrored crop
    # Centre pixel of the crop at dy is image row dy + 16 - PADDING, holding that + 1; a mirrored crop's centre
    # is padded column dx + 31 - 16, one column to the left of the plain crop's.
    dy = centre_row - (16 - PADDING + 1)
    dx = centre_col - (16 - PADDING + 1) + flipped.long()
    return dy, dx, flipped


def assert_uniform_crops_and_flips(crops: torch.Tensor, mode: str) -> None:
    dy, dx, flipped = decode_crops(crops)
    assert dy.min() >= 0 and dy.max() < POSITIONS and dx.min() >= 0 and dx.max() < POSITIONS
    # Each image is exactly the decoded crop (and mirror) of the padded image: nothing else was done to it.
    assert torch.equal(crops, all_crops(coordinate_image(), mode)[flipped.long(), dy, dx])

    n = len(crops)
    counts = torch.bincount(dy * POSITIONS + dx, minlength=POSITIONS**2).double()
    expected = n / POSITIONS**2
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < CHI2_80_Q999, f"crop offsets not uniform: chi-square {chi2:.1f} over 81 cells"
    flip_rate = flipped.double().mean().item()
    assert abs(flip_rate - 0.5) < 4 * (0.25 / n) ** 0.5, f"flip rate {flip_rate:.4f}"


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_cpu_transform_gives_uniform_crop_offsets_and_fair_flips(mode: str) -> None:
    # The reference the device path must match: torchvision's RandomCrop(padding=4) and RandomHorizontalFlip.
    torch.manual_seed(0)
    transform, image = train_transform(PADDING, True, crop_padding_mode=mode), coordinate_image()
    crops = unnormalise(torch.stack([transform(image) for _ in range(AUGMENTED_SAMPLES)]))
    assert_uniform_crops_and_flips(crops, mode)


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_device_batches_give_uniform_crop_offsets_and_fair_flips_like_the_cpu_transform(mode: str) -> None:
    n, epochs = 2048, AUGMENTED_SAMPLES // 2048
    images = coordinate_image().expand(n, 3, 32, 32).contiguous()
    batches = DeviceBatches(
        images, torch.arange(n), 512, CIFAR100_MEAN, CIFAR100_STD, train=True, crop_padding=PADDING, flip=True,
        crop_padding_mode=mode,
    )  # fmt: skip
    crops = unnormalise(torch.cat([images for e in range(epochs) for images, _ in epoch(batches, e)]))
    assert len(crops) == AUGMENTED_SAMPLES
    assert_uniform_crops_and_flips(crops, mode)


def test_training_without_crop_or_flip_serves_the_images_unchanged() -> None:
    batches = loader(20, train=True, crop_padding=0, flip=False)
    images, labels = next(iter(batches))
    assert torch.equal(unnormalise(images), batches.images[labels])


# --- evaluation and epochs ------------------------------------------------------------------------------------


def test_evaluation_batches_equal_the_cpu_eval_transform_in_order_with_the_last_partial_batch() -> None:
    batches = loader(10, batch_size=4, train=False)
    served = list(batches)
    assert [len(labels) for _, labels in served] == [4, 4, 2] and len(batches) == 3
    assert torch.equal(labels_of(served), torch.arange(10))
    expected = torch.stack([eval_transform()(image) for image in batches.images])
    torch.testing.assert_close(torch.cat([images for images, _ in served]), expected, rtol=0, atol=1e-5)


def test_on_device_datamodule_serves_the_same_evaluation_batches_as_the_worker_loaders() -> None:
    settings = {"num_classes": 10, "train_per_class": 12, "val_per_class": 3, "test_per_class": 3, "num_workers": 0}
    on_device = SyntheticCIFAR100DataModule(on_device=True, batch_size=8, **settings)
    on_host = SyntheticCIFAR100DataModule(on_device=False, batch_size=8, **settings)
    for dm in (on_device, on_host):
        dm.setup()
    for make in ("val_dataloader", "test_dataloader"):
        device_loader, host_loader = getattr(on_device, make)(), getattr(on_host, make)()
        assert isinstance(device_loader, DeviceBatches)
        device_served, host_served = list(device_loader), list(host_loader)
        assert len(device_served) == len(host_served) == 4  # 30 images: 8, 8, 8, 6
        for (images, labels), (host_images, host_labels) in zip(device_served, host_served, strict=True):
            assert torch.equal(labels, host_labels)
            torch.testing.assert_close(images, host_images, rtol=0, atol=1e-5)


def test_training_epoch_serves_every_sample_once_in_a_new_order_each_epoch() -> None:
    batches = loader(50, seed=3)
    first, second = epoch(batches, 0), epoch(batches, 1)
    assert [len(labels) for _, labels in first] == [8] * 6 + [2] and len(batches) == 7
    for served in (first, second):
        assert torch.equal(labels_of(served).sort().values, torch.arange(50))
    assert not torch.equal(labels_of(first), labels_of(second))
    # An epoch is a function of (seed, epoch): a fresh loader replays it, augmentation included.
    assert_same_batches(epoch(loader(50, seed=3), 1), second)
    assert not torch.equal(labels_of(epoch(loader(50, seed=4), 1)), labels_of(second))


def test_drop_last_serves_only_full_batches() -> None:
    batches = loader(50, drop_last=True)
    served = epoch(batches, 0)
    assert len(batches) == len(served) == 50 // 8
    assert all(len(labels) == 8 for _, labels in served)
    assert len(set(labels_of(served).tolist())) == 48


def test_on_an_accelerator_the_epoch_is_the_cpus_draw_copied_there() -> None:
    # No GPU here: PyTorch's `meta` device stands in for one (CUDA, or MPS, whose randperm is not uniform). The CPU's
    # draw is copied there and the batches cut there.
    sampler = EpochSampler(seed=3, shuffle=True, crop_padding=PADDING, flip=True, cutout=8)
    on_meta, on_cpu = sampler.draw(50, torch.device("meta")), sampler.draw(50, torch.device("cpu"))
    for field in fields(EpochDraw):
        drawn, on_the_cpu = getattr(on_meta, field.name), getattr(on_cpu, field.name)
        assert drawn.device.type == "meta" and (drawn.shape, drawn.dtype) == (on_the_cpu.shape, on_the_cpu.dtype)
    images, labels = random_images(50).to("meta"), torch.arange(50, device="meta")
    batches = DeviceBatches(images, labels, 8, CIFAR100_MEAN, CIFAR100_STD, train=True, cutout=8)
    assert [tuple(images.shape) for images, _ in epoch(batches, 0)] == [(8, 3, 32, 32)] * 6 + [(2, 3, 32, 32)]


# --- resuming -------------------------------------------------------------------------------------------------


def test_state_taken_mid_epoch_resumes_with_the_remaining_batches() -> None:
    consumed = 3
    interrupted = loader(50, seed=3)
    interrupted.sampler.set_epoch(2)
    served = iter(interrupted)
    for _ in range(consumed):
        next(served)
    state = interrupted.state_dict()

    resumed = loader(50, seed=99)  # a new run draws another seed; the state brings the old one back
    resumed.load_state_dict(state)
    remaining = epoch(resumed, 2)
    assert_same_batches(remaining, epoch(loader(50, seed=3), 2)[consumed:])
    # The epoch after the resumed one is whole again.
    assert_same_batches(epoch(resumed, 3), epoch(loader(50, seed=3), 3))


@pytest.mark.parametrize(("new_batch_size", "sizes"), [(5, [5, 5, 5, 5, 5, 1]), (16, [16, 10])])
def test_a_resume_with_another_batch_size_trains_the_rest_of_the_epoch_once(new_batch_size: int, sizes: list) -> None:
    """3 batches of 8 served: the resumed loader goes on from the 25th image of the epoch's order, whatever the new
    batch size, each image with the crop and flip the epoch drew for it."""
    interrupted = loader(50, batch_size=8, seed=3)
    interrupted.sampler.set_epoch(2)
    served = iter(interrupted)
    for _ in range(3):
        next(served)
    resumed = loader(50, batch_size=new_batch_size, seed=99)
    resumed.load_state_dict(interrupted.state_dict())
    remaining = epoch(resumed, 2)
    whole = epoch(loader(50, batch_size=50, seed=3), 2)
    assert [len(labels) for _, labels in remaining] == sizes
    assert torch.equal(labels_of(remaining), labels_of(whole)[24:])
    assert torch.equal(torch.cat([images for images, _ in remaining]), whole[0][0][24:])


def test_state_taken_after_a_whole_epoch_resumes_at_the_start_of_the_next() -> None:
    finished = loader(50, seed=3)
    epoch(finished, 2)
    resumed = loader(50, seed=99)
    resumed.load_state_dict(finished.state_dict())
    assert_same_batches(epoch(resumed, 3), epoch(loader(50, seed=3), 3))


# --- DDP shards -----------------------------------------------------------------------------------------------


def test_training_shards_are_disjoint_and_equal_in_size() -> None:
    shards = [labels_of(epoch(loader(51, seed=5, rank=rank, world_size=2), 1)) for rank in (0, 1)]
    assert [len(shard) for shard in shards] == [25, 25]
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
    assert len(set(shards[0].tolist())) == 25


def test_evaluation_shards_cover_every_sample_once_with_an_odd_count() -> None:
    shards = [loader(51, batch_size=4, train=False, rank=rank, world_size=2) for rank in (0, 1)]
    served = [labels_of(list(shard)) for shard in shards]
    assert [len(labels) for labels in served] == [26, 25] == [shard.samples_per_rank for shard in shards]
    assert torch.equal(torch.cat(served).sort().values, torch.arange(51))


def epoch_over_resumes(world_sizes: tuple[int, ...], steps: int, n: int, **kwargs) -> list[list[list]]:
    """Epoch 2 of seed 3 trained by a run on `world_sizes[0]` processes, interrupted after `steps` batches each,
    resumed from rank 0's state on `world_sizes[1]` processes, and so on; the last run trains to the epoch's end.
    The ranks are loaders with an explicit rank and world size, as a DDP run's processes build them. Returns each
    run's batches, per rank."""
    runs, state = [], None
    for run, world_size in enumerate(world_sizes):
        ranks = [
            loader(n, seed=99 if state else 3, rank=rank, world_size=world_size, **kwargs) for rank in range(world_size)
        ]
        if state is not None:
            for ranked in ranks:
                ranked.load_state_dict(state)
        if run == len(world_sizes) - 1:
            runs.append([epoch(ranked, 2) for ranked in ranks])
            break
        for ranked in ranks:
            ranked.sampler.set_epoch(2)
        served = [iter(ranked) for ranked in ranks]
        runs.append([[next(batches) for _ in range(steps)] for batches in served])
        state = ranks[0].state_dict()  # rank 0 saves the checkpoint
    return runs


def assert_processes_step_together(runs: list[list[list]]) -> None:
    for run in runs:
        assert len({len(batches) for batches in run}) == 1, "DDP processes must take the same number of steps"


@pytest.mark.parametrize(
    "world_sizes", [(2, 1), (1, 2), (2, 3), (3, 2), (2, 2), (2, 3, 1)], ids=lambda sizes: "to".join(map(str, sizes))
)
def test_a_mid_epoch_resume_on_another_number_of_processes_trains_every_image_of_the_epoch_once(
    world_sizes: tuple[int, ...],
) -> None:
    """60 images in batches of 5: e.g. 2 processes train 2 batches each (20 images), 3 processes take the other 40
    (14, 13 and 13: three steps each); every image with the crop and flip the epoch drew for it."""
    runs = epoch_over_resumes(world_sizes, steps=2, n=60, batch_size=5)
    assert_processes_step_together(runs)
    served = [batch for run in runs for batches in run for batch in batches]
    labels = labels_of(served)
    assert torch.equal(labels.sort().values, torch.arange(60)), f"served {len(labels)}, {len(labels.unique())} distinct"
    (whole_images, whole_labels), *_ = epoch(loader(60, batch_size=60, seed=3), 2)
    by_label = torch.empty_like(whole_images)
    by_label[whole_labels] = whole_images
    assert torch.equal(torch.cat([images for images, _ in served]), by_label[labels])


def test_a_mid_epoch_resume_on_more_processes_with_drop_last_drops_only_the_end_of_the_order() -> None:
    """With `drop_last` the 40 images left after 2 processes' 2 batches of 5 give 3 processes 2 full batches each:
    the 10 last of the epoch's order fill no batch on every process and are dropped, none is repeated."""
    runs = epoch_over_resumes((2, 3), steps=2, n=60, batch_size=5, drop_last=True)
    assert_processes_step_together(runs)
    served = [batch for run in runs for batches in run for batch in batches]
    assert all(len(labels) == 5 for _, labels in served)
    order = labels_of(epoch(loader(60, batch_size=60, seed=3), 2))
    assert torch.equal(labels_of(served).sort().values, order[:50].sort().values)


def test_a_mid_epoch_resume_whose_rest_the_processes_cannot_step_through_together_is_refused() -> None:
    """41 images, 1 process trains 2 batches of 5: the 31 left would be 16 and 15 on 2 processes, 4 steps and 3."""
    interrupted = loader(41, batch_size=5, seed=3)
    interrupted.sampler.set_epoch(2)
    served = iter(interrupted)
    next(served), next(served)
    with pytest.raises(MidEpochResumeError) as error:
        loader(41, batch_size=5, rank=1, world_size=2).load_state_dict(interrupted.state_dict())
    message = str(error.value)
    assert "saved mid-epoch by 1 process, 10 of the epoch's 41 images trained" in message
    assert "the 31 left cannot be split among 2 processes in batches of 5" in message
    assert "Resume it with 1 process, as saved" in message and "epoch_<n>.ckpt" in message


def test_a_state_saved_without_the_epochs_position_resumes_as_before_on_as_many_processes() -> None:
    """Checkpoints written before `epoch_served` hold each process's `served`: read under as many processes."""
    for rank in range(2):
        interrupted = loader(60, batch_size=5, seed=3, rank=rank, world_size=2)
        interrupted.sampler.set_epoch(2)
        served = iter(interrupted)
        next(served), next(served)
        state = {key: interrupted.state_dict()[key] for key in ("seed", "epoch", "position", "served")}
        resumed = loader(60, batch_size=5, seed=99, rank=rank, world_size=2)
        resumed.load_state_dict(state)
        whole = epoch(loader(60, batch_size=5, seed=3, rank=rank, world_size=2), 2)
        assert_same_batches(epoch(resumed, 2), whole[2:])


def stand_in_trainer(
    rank: int = 0, world_size: int = 1, device: str = "cpu", shared: dict | None = None
) -> types.SimpleNamespace:
    """What the datamodule reads of its trainer: the rank, the world size, the training device, a broadcast that
    hands every rank the first value sent (rank 0 runs first here), through `shared`, and `overfit_batches`."""
    shared = {} if shared is None else shared
    strategy = types.SimpleNamespace(
        root_device=torch.device(device), broadcast=lambda obj, src=0: shared.setdefault("value", obj)
    )
    return types.SimpleNamespace(global_rank=rank, world_size=world_size, strategy=strategy, overfit_batches=0)


def test_overfit_batches_get_the_same_training_batches_every_epoch() -> None:
    """Lightning's `overfit_batches` (debug=overfit) turns a DataLoader's shuffling off; here the datamodule does."""
    served = {}
    for overfit in (0, 3):
        dm = SyntheticCIFAR100DataModule(
            num_classes=10,
            train_per_class=10,
            val_per_class=2,
            crop_padding=0,
            flip=False,
            on_device=True,
            batch_size=8,
        )
        dm.trainer = stand_in_trainer()
        dm.trainer.overfit_batches = overfit
        dm.setup("fit")
        batches = dm.train_dataloader()
        served[overfit] = [labels_of(epoch(batches, number)) for number in range(2)]
    shuffled, overfitting = served[0], served[3]
    assert not torch.equal(*shuffled), "a new order each epoch, as before"
    assert torch.equal(*overfitting)
    assert torch.equal(overfitting[0], dm.train_set.labels), "the images' own order"


@pytest.mark.parametrize("process_seeds", [(7, 7), (101, 202)], ids=["seeded", "unseeded"])
def test_ddp_ranks_of_the_datamodule_take_disjoint_training_shards(process_seeds: tuple[int, int]) -> None:
    # Each DDP process has its own global generator: equal after `seed=`, different in an unseeded run (seed=null).
    shards = []
    shared: dict = {}
    for rank, process_seed in enumerate(process_seeds):
        dm = SyntheticCIFAR100DataModule(
            num_classes=10,
            train_per_class=10,
            val_per_class=2,
            crop_padding=0,
            flip=False,
            on_device=True,
            num_workers=0,
            batch_size=8,
        )
        dm.trainer = stand_in_trainer(rank, world_size=2, shared=shared)
        dm.setup("fit")
        torch.manual_seed(process_seed)
        batches = dm.train_dataloader()
        # Without augmentation each served image is one of the training images; the noise makes them unique.
        index = {bytes(image.flatten().numpy()): i for i, image in enumerate(dm.train_set.images)}
        assert len(index) == len(dm.train_set)
        served = unnormalise(torch.cat([images for images, _ in epoch(batches, 0)]))
        shards.append([index[bytes(image.flatten().numpy())] for image in served])
    assert [len(shard) for shard in shards] == [40, 40]
    assert sorted(shards[0] + shards[1]) == list(range(80)), "the ranks' shards overlap"


# --- input and memory checks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (torch.zeros(4, 3, 32, 32), torch.arange(4), "uint8"),
        (torch.zeros(3, 32, 32, dtype=torch.uint8), torch.arange(3), "N×C×H×W"),
        (torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.arange(5), "4 images but 5 labels"),
    ],
)
def test_bad_images_or_labels_are_refused(images: torch.Tensor, labels: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DeviceBatches(images, labels, 2, CIFAR100_MEAN, CIFAR100_STD)


MIB = 2**20


def report_free_memory(monkeypatch: pytest.MonkeyPatch, free: int, total: int = 8000 * MIB) -> list:
    """Make torch.cuda.mem_get_info report `free` bytes (no GPU needed); return the devices it is asked about."""
    asked: list = []

    def mem_get_info(device: torch.device) -> tuple[int, int]:
        asked.append(device)
        return free, total

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    return asked


def test_memory_check_names_the_sizes_and_the_fix_when_the_images_do_not_fit(monkeypatch) -> None:
    report_free_memory(monkeypatch, free=1000 * MIB)
    with pytest.raises(DeviceMemoryError) as error:
        check_fits_on_device(600 * MIB, torch.device("cuda"))
    message = str(error.value)
    assert "600 MiB" in message and "1,000 MiB free" in message and "8,000 MiB" in message
    assert "data.on_device=false" in message


def test_memory_check_passes_when_the_images_fit_and_skips_the_cpu(monkeypatch) -> None:
    asked = report_free_memory(monkeypatch, free=1000 * MIB)
    check_fits_on_device(400 * MIB, torch.device("cuda"))
    assert asked == [torch.device("cuda")]
    check_fits_on_device(10**15, torch.device("cpu"))
    assert len(asked) == 1  # no CUDA call for CPU tensors


def test_datamodule_setup_refuses_on_device_data_that_does_not_fit(monkeypatch) -> None:
    asked = report_free_memory(monkeypatch, free=MIB // 2)  # the images of all splits need 0.73 MiB
    dm = SyntheticCIFAR100DataModule(
        num_classes=10, train_per_class=20, test_per_class=5, val_per_class=5, on_device=True, num_workers=0
    )
    dm.trainer = stand_in_trainer(device="cuda")
    with pytest.raises(DeviceMemoryError, match=r"data\.on_device=false"):
        dm.setup("fit")
    assert asked == [torch.device("cuda")]

    report_free_memory(monkeypatch, free=2 * MIB)
    dm.setup("fit")
    assert len(dm.train_set) == 150


# --- through Lightning ----------------------------------------------------------------------------------------


class RecordBatches(Callback):
    def __init__(self) -> None:
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        images, labels = batch
        self.batches.append((images.clone(), labels.clone()))


EPOCHS = 2
STEPS_PER_EPOCH = 5  # 10 classes × (10 - 2 validation) images / 16 per batch
INTERRUPTED_AT = STEPS_PER_EPOCH + 2  # mid-way through the second epoch


def fit(
    callbacks: list[Callback],
    ckpt_path: Path | None = None,
    max_steps: int = -1,
    seed: int = 7,
    batch_size: int = 16,
    epochs: int = EPOCHS,
    limit_train_batches: int | None = None,
) -> None:
    seed_everything(seed, workers=True)
    net = WideResNet(num_classes=10, widths=[4, 8, 8, 8], blocks_per_stage=1)
    dm = SyntheticCIFAR100DataModule(
        num_classes=10,
        train_per_class=10,
        val_per_class=2,
        test_per_class=1,
        on_device=True,
        num_workers=0,
        batch_size=batch_size,
    )
    trainer = quiet_trainer(
        callbacks,
        max_epochs=epochs,
        max_steps=max_steps,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        limit_train_batches=limit_train_batches,
    )
    trainer.fit(ImageClassifier(net), datamodule=dm, ckpt_path=ckpt_path, weights_only=True)


# The resumed run needs no checkpoint callback of its own; Lightning warns that it lacks the one that saved.
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_lightning_run_resumed_mid_epoch_trains_on_the_same_batches_as_an_uninterrupted_one(tmp_path: Path) -> None:
    uninterrupted = RecordBatches()
    fit([uninterrupted])
    assert len(uninterrupted.batches) == EPOCHS * STEPS_PER_EPOCH

    before, after = RecordBatches(), RecordBatches()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=INTERRUPTED_AT)
    fit([before, checkpoint], max_steps=INTERRUPTED_AT)
    assert_same_batches(before.batches, uninterrupted.batches[:INTERRUPTED_AT])
    saved = torch.load(checkpoint.best_model_path, weights_only=True)
    assert saved["SyntheticCIFAR100DataModule"]["train_batches"]["position"] == INTERRUPTED_AT - STEPS_PER_EPOCH

    # Another global seed: the loader's own seed and position come from the checkpoint.
    fit([after], ckpt_path=Path(checkpoint.best_model_path), seed=8)
    # The rest of the interrupted epoch, then nothing: no batch repeated, none skipped, same augmentation.
    assert_same_batches(after.batches, uninterrupted.batches[INTERRUPTED_AT:])


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_a_run_limited_to_fewer_batches_resumed_mid_epoch_trains_the_rest_of_its_limited_epoch(tmp_path: Path) -> None:
    """`limit_train_batches` (debug=limit): the epoch ends at the limit, so does the resumed one, not a limit later."""
    limit = STEPS_PER_EPOCH - 1
    uninterrupted = RecordBatches()
    fit([uninterrupted], limit_train_batches=limit)
    assert len(uninterrupted.batches) == EPOCHS * limit
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=limit + 2)
    fit([checkpoint], max_steps=limit + 2, limit_train_batches=limit)
    after = RecordBatches()
    fit([after], ckpt_path=Path(checkpoint.best_model_path), limit_train_batches=limit)
    assert_same_batches(after.batches, uninterrupted.batches[limit + 2 :])


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
@pytest.mark.parametrize("batch_sizes", [(16, 16), (8, 16), (32, 8)], ids=["same", "smaller", "larger"])
def test_a_run_resumed_twice_in_the_same_epoch_trains_its_rest_once(tmp_path: Path, batch_sizes) -> None:
    """A resume of a resumed run, both in the same epoch (a job preempted again): the second checkpoint counts the
    epoch's batches from its start as Lightning does, so the last resume neither ends the epoch early nor late."""
    uninterrupted = RecordBatches()
    fit([uninterrupted])
    first = ModelCheckpoint(dirpath=tmp_path / "first", every_n_train_steps=STEPS_PER_EPOCH + 1)
    fit([first], max_steps=STEPS_PER_EPOCH + 1)
    middle, last = batch_sizes
    second = ModelCheckpoint(dirpath=tmp_path / "second", every_n_train_steps=STEPS_PER_EPOCH + 2)
    fit([second], ckpt_path=Path(first.best_model_path), max_steps=STEPS_PER_EPOCH + 2, batch_size=middle)
    after = RecordBatches()
    fit([after], ckpt_path=Path(second.best_model_path), batch_size=last)
    trained = torch.cat([images for images, _ in after.batches])
    done = 16 + middle  # images of the second epoch trained before the last resume
    rest = torch.cat([images for images, _ in uninterrupted.batches[STEPS_PER_EPOCH:]])[done:]
    torch.testing.assert_close(trained, rest)


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
@pytest.mark.parametrize("new_batch_size", [8, 32, 48])
def test_lightning_run_resumed_mid_epoch_with_another_batch_size_trains_the_rest_of_the_epoch(
    tmp_path: Path, new_batch_size: int
) -> None:
    """Lightning counts the interrupted epoch's batches in the saved batch size: the rest, in another size, is
    trained whole (more batches than Lightning expects, or fewer), then the next epoch is whole too."""
    uninterrupted = RecordBatches()
    fit([uninterrupted], epochs=3)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=INTERRUPTED_AT)
    fit([checkpoint], max_steps=INTERRUPTED_AT)

    after = RecordBatches()
    fit([after], ckpt_path=Path(checkpoint.best_model_path), batch_size=new_batch_size, epochs=3)
    rest, third = (
        torch.cat([images for images, _ in uninterrupted.batches[start:stop]])
        for start, stop in [(INTERRUPTED_AT, 2 * STEPS_PER_EPOCH), (2 * STEPS_PER_EPOCH, None)]
    )
    sizes = [len(b) for part in (rest, third) for b in torch.arange(len(part)).split(new_batch_size)]
    assert [len(images) for images, _ in after.batches] == sizes
    torch.testing.assert_close(torch.cat([images for images, _ in after.batches]), torch.cat([rest, third]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpus_epoch_is_the_cpus_so_a_resume_on_either_serves_the_same_rest_of_the_epoch() -> None:
    sampler = EpochSampler(seed=3, shuffle=True, crop_padding=PADDING, flip=True, cutout=8)
    on_gpu, on_cpu = sampler.draw(50, torch.device("cuda")), sampler.draw(50, torch.device("cpu"))
    for field in fields(EpochDraw):
        assert torch.equal(getattr(on_gpu, field.name).cpu(), getattr(on_cpu, field.name)), field.name
