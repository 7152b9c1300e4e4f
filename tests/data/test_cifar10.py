"""CIFAR-10 through CIFAR-100's code: the official folder, archive, download and array export with their checks, the
split, the class names, the normalisation, the on-device path, the configs (the model follows the data) and a run."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torchvision.datasets import CIFAR10

from tests.conftest import (
    CONFIGS,
    FAKE_CIFAR10_CLASSES,
    FAKE_CIFAR10_TEST_PER_CLASS,
    FAKE_CIFAR10_TRAIN_PER_CLASS,
    SHARED_CIFAR10,
    ArchiveServer,
    read_metrics,
    run_entry,
)
from wrncifar.data.cifar10 import CIFAR10DataModule
from wrncifar.data.cifar100 import CIFAR100DataModule
from wrncifar.data.cifar100_sources import CorruptDatasetError, DatasetNotFoundError
from wrncifar.data.device_batches import DeviceBatches
from wrncifar.data.transforms import CIFAR10_MEAN, CIFAR10_STD
from wrncifar.run.config_validation import ConfigError, check_num_classes, validate_config
from wrncifar.run.trusted_targets import project_targets

VAL_PER_CLASS = 2
ON_CPU = ["trainer.accelerator=cpu", "trainer.devices=1"]  # an experiment made for a GPU, composed on any machine
TRAIN_IMAGES = FAKE_CIFAR10_CLASSES * FAKE_CIFAR10_TRAIN_PER_CLASS
TEST_IMAGES = FAKE_CIFAR10_CLASSES * FAKE_CIFAR10_TEST_PER_CLASS
MEAN = torch.tensor(CIFAR10_MEAN)[:, None, None]
STD = torch.tensor(CIFAR10_STD)[:, None, None]


def datamodule(data_dir: Path, **kwargs) -> CIFAR10DataModule:
    settings = {"num_workers": 0, "val_per_class": VAL_PER_CLASS, "download": False, **kwargs}
    dm = CIFAR10DataModule(str(data_dir), **settings)
    dm.prepare_data()
    dm.setup()
    return dm


def chw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def image_label_pairs(images: torch.Tensor, labels: torch.Tensor) -> list[bytes]:
    return sorted(bytes(image.numpy()) + bytes([label]) for image, label in zip(images, labels.tolist(), strict=True))


def test_official_folder_gives_a_stratified_split_the_test_batch_and_the_class_names(cifar10_folder) -> None:
    data_dir, arrays = cifar10_folder
    dm = datamodule(data_dir)
    assert dm.num_classes == 10
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (
        TRAIN_IMAGES - FAKE_CIFAR10_CLASSES * VAL_PER_CLASS,
        FAKE_CIFAR10_CLASSES * VAL_PER_CLASS,
        TEST_IMAGES,
    )
    assert np.bincount(dm.val_set.labels.numpy()).tolist() == [VAL_PER_CLASS] * FAKE_CIFAR10_CLASSES
    assert (
        np.bincount(dm.train_set.labels.numpy()).tolist()
        == [FAKE_CIFAR10_TRAIN_PER_CLASS - VAL_PER_CLASS] * FAKE_CIFAR10_CLASSES
    )
    assert dm.classes == tuple(f"fake10_{i}" for i in range(FAKE_CIFAR10_CLASSES))  # batches.meta's label_names
    assert dm.superclasses == () and dm.fine_to_coarse == ()  # CIFAR-10 has none
    # Train and val together are the images of the five training batch files, each with its own label.
    train_and_val = image_label_pairs(
        torch.cat([dm.train_set.images, dm.val_set.images]), torch.cat([dm.train_set.labels, dm.val_set.labels])
    )
    official = image_label_pairs(chw(arrays["train_images"]), torch.from_numpy(arrays["train_labels"]))
    assert train_and_val == official
    assert torch.equal(dm.test_set.images, chw(arrays["test_images"]))  # test_batch, in its order
    assert dm.test_set.labels.tolist() == arrays["test_labels"].tolist()


def test_images_are_normalised_with_the_cifar10_statistics(cifar10_folder) -> None:
    dm = datamodule(cifar10_folder[0])
    image, _ = dm.val_set[0]
    torch.testing.assert_close(image, (dm.val_set.images[0].float() / 255 - MEAN) / STD)


def test_a_corrupt_batch_file_is_named_and_kept(cifar10_folder) -> None:
    data_dir, _ = cifar10_folder
    batch = data_dir / CIFAR10.base_folder / "data_batch_3"
    corrupted = bytearray(batch.read_bytes())
    corrupted[500] ^= 0xFF
    batch.write_bytes(bytes(corrupted))
    with pytest.raises(CorruptDatasetError, match=f"{batch} fails its md5 check"):
        datamodule(data_dir)
    assert batch.read_bytes() == bytes(corrupted)


def test_official_archive_is_checked_and_extracted(cifar10_folder, tmp_path, monkeypatch) -> None:
    data_dir, _ = cifar10_folder
    archive_dir = tmp_path / "archive_only"
    archive_dir.mkdir()
    archive = archive_dir / CIFAR10.filename
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(data_dir / CIFAR10.base_folder, arcname=CIFAR10.base_folder)
    monkeypatch.setattr(CIFAR10, "tgz_md5", hashlib.md5(archive.read_bytes()).hexdigest())
    assert len(datamodule(archive_dir).test_set) == TEST_IMAGES
    assert (archive_dir / CIFAR10.base_folder / "data_batch_5").is_file()

    # An archive that fails CIFAR-10's md5 is named and kept, and nothing is extracted from it.
    monkeypatch.setattr(CIFAR10, "tgz_md5", "0" * 32)
    (archive_dir / CIFAR10.base_folder).rename(tmp_path / "extracted_before")
    with pytest.raises(CorruptDatasetError, match=f"{archive} fails its md5 check .* fresh copy of {CIFAR10.filename}"):
        datamodule(archive_dir)
    assert archive.is_file() and not (archive_dir / CIFAR10.base_folder).exists()


def test_a_download_is_md5_checked_extracted_and_read(cifar10_folder, serve_archive, tmp_path) -> None:
    ArchiveServer.body = serve_archive(cifar10_folder[0], CIFAR10)
    fresh = tmp_path / "fresh"
    dm = datamodule(fresh, download=True)
    assert len(dm.test_set) == TEST_IMAGES and ArchiveServer.requests > 0
    assert (fresh / CIFAR10.filename).is_file() and (fresh / CIFAR10.base_folder / "test_batch").is_file()


def test_a_corrupt_download_is_checked_against_the_cifar10_md5(cifar10_folder, serve_archive, tmp_path) -> None:
    good = serve_archive(cifar10_folder[0], CIFAR10)
    ArchiveServer.body = good[: len(good) // 2]
    with pytest.raises(CorruptDatasetError) as err:
        datamodule(tmp_path / "fresh", download=True)
    assert f"the download of {CIFAR10.url} is truncated or corrupt" in str(err.value)
    assert f"expected md5 {CIFAR10.tgz_md5}" in str(err.value)
    (aside,) = (tmp_path / "fresh").glob(f"{CIFAR10.filename}.corrupt-*")
    assert aside.read_bytes() == ArchiveServer.body


def test_missing_data_names_the_cifar10_layouts(tmp_path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        datamodule(tmp_path / "empty")
    message = str(err.value)
    assert message.startswith(f"CIFAR-10 not found in {(tmp_path / 'empty').resolve()}")
    assert "cifar-10-batches-py/" in message and "cifar-10-python.tar.gz" in message and "cifar-100" not in message


def write_array_export(
    folder: Path, labels_key: str = "labels", names_key: str = "label_names", seed: int = 7
) -> dict[str, np.ndarray]:
    """The array export as a CIFAR-10 copy would be written (train.npz, test.npz, meta.json, SHA256SUMS)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, per_class in [("train", FAKE_CIFAR10_TRAIN_PER_CLASS), ("test", FAKE_CIFAR10_TEST_PER_CLASS)]:
        labels = rng.permutation(np.repeat(np.arange(FAKE_CIFAR10_CLASSES, dtype=np.uint8), per_class))
        images = rng.integers(0, 256, size=(len(labels), 32, 32, 3), dtype=np.uint8)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
        np.savez(folder / f"{split}.npz", data=images, **{labels_key: labels})
    (folder / "meta.json").write_text(json.dumps({names_key: [f"c{i}" for i in range(FAKE_CIFAR10_CLASSES)]}))
    sums = [
        f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}" for n in ("train.npz", "test.npz", "meta.json")
    ]
    (folder / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return arrays


def test_array_export_with_labels_and_label_names_loads(tmp_path) -> None:
    arrays = write_array_export(tmp_path)
    dm = datamodule(tmp_path)
    assert dm.classes == tuple(f"c{i}" for i in range(FAKE_CIFAR10_CLASSES))
    assert len(dm.train_set) + len(dm.val_set) == TRAIN_IMAGES
    # The test set in the served (shuffled) order: each image of the file once, with its own label.
    images, labels = chw(arrays["test_images"]), arrays["test_labels"].tolist()
    label_of = {image.numpy().tobytes(): label for image, label in zip(images, labels, strict=True)}
    served = zip(dm.test_set.images, dm.test_set.labels.tolist(), strict=True)
    assert {image.numpy().tobytes(): label for image, label in served} == label_of
    assert len(dm.test_set) == len(labels)


@pytest.mark.parametrize(
    ("labels_key", "names_key", "message"),
    [
        ("fine_labels", "fine_label_names", r"meta\.json has no 'label_names' \(it has: 'fine_label_names'\)"),
        ("fine_labels", "label_names", r"train\.npz has no 'labels' array \(it has: 'data', 'fine_labels'\)"),
    ],
)
def test_a_cifar100_style_export_read_as_cifar10_names_the_missing_key(
    tmp_path, labels_key: str, names_key: str, message: str
) -> None:
    write_array_export(tmp_path, labels_key=labels_key, names_key=names_key)
    with pytest.raises(CorruptDatasetError, match=message) as err:
        datamodule(tmp_path)
    assert "Point data.data_dir at the CIFAR-10 array export" in str(err.value)


def test_on_device_batches_are_the_worker_loaders_and_use_the_cifar10_statistics(cifar10_folder) -> None:
    data_dir, _ = cifar10_folder
    settings = {"batch_size": 8, "eval_batch_size": 8}
    on_device, on_host = datamodule(data_dir, on_device=True, **settings), datamodule(data_dir, **settings)
    for make in ("val_dataloader", "test_dataloader"):
        device_loader, host_loader = getattr(on_device, make)(), getattr(on_host, make)()
        assert isinstance(device_loader, DeviceBatches)
        device_served, host_served = list(device_loader), list(host_loader)
        assert len(device_served) == len(host_served) > 1
        for (images, labels), (host_images, host_labels) in zip(device_served, host_served, strict=True):
            assert torch.equal(labels, host_labels)
            torch.testing.assert_close(images, host_images, rtol=0, atol=1e-5)
    # Training batches (reflection-padded crops and flips: every pixel one of the image's) undo to whole pixel
    # values with CIFAR-10's statistics, and to fractions of a pixel value with any other.
    images, labels = next(iter(on_device.train_dataloader()))
    pixels = (images * STD + MEAN) * 255
    torch.testing.assert_close(pixels, pixels.round(), rtol=0, atol=1e-3)
    assert len(labels) == 8


def test_a_class_count_other_than_the_release_is_refused() -> None:
    with pytest.raises(ValueError, match=r"num_classes: CIFAR-10 has 10 classes, got 100\. The model follows"):
        CIFAR10DataModule(num_classes=100)
    with pytest.raises(ValueError, match=r"num_classes: CIFAR-100 has 100 classes, got 10\."):
        CIFAR100DataModule(num_classes=10)
    assert CIFAR10DataModule(num_classes=10).num_classes == 10 and CIFAR10DataModule().val_per_class == 500


@pytest.mark.parametrize("experiment", [None, *sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))])
def test_data_cifar10_makes_the_model_predict_ten_classes(make_config, experiment: str | None) -> None:
    recipe = [f"experiment={experiment}", *ON_CPU] if experiment else []
    cfg = make_config([*recipe, "data=cifar10", "model=wrn_tiny"])
    validate_config(cfg)
    model, dm = instantiate(cfg.model), instantiate(cfg.data)
    assert isinstance(dm, CIFAR10DataModule) and dm.num_classes == 10 and dm.val_per_class == 500
    assert model.net.fc.out_features == 10 and model.hparams.num_classes == 10
    check_num_classes(model, dm)


def test_data_cifar100_keeps_a_hundred_classes(make_config) -> None:
    cfg = make_config(["model=wrn_tiny"])
    assert instantiate(cfg.model).net.fc.out_features == 100 and instantiate(cfg.data).num_classes == 100


def test_a_model_that_does_not_follow_the_data_is_refused(make_config) -> None:
    cfg = make_config(["data=cifar10", "model=wrn_tiny", "model.net.num_classes=100"])
    with pytest.raises(ConfigError, match=r"the model predicts 100 classes but the dataset has 10: set model\.net\."):
        check_num_classes(instantiate(cfg.model), instantiate(cfg.data))


def test_the_cifar10_datamodule_is_a_target_run_folders_may_name() -> None:
    assert "wrncifar.data.cifar10.CIFAR10DataModule" in project_targets(CONFIGS)


@pytest.mark.slow
def test_a_training_run_on_cifar10_learns_ten_classes_and_tests(tmp_path) -> None:
    # The array export: a subprocess cannot have torchvision's md5s swapped for a folder of fakes.
    arrays = tmp_path / "cifar10"
    write_array_export(arrays)
    run_dir = tmp_path / "run"
    args = [
        "data=cifar10",
        f"data.data_dir={arrays}",
        f"data.val_per_class={VAL_PER_CLASS}",
        "data.num_workers=0",
        "data.persistent_workers=false",
        "model=wrn_tiny",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "extras.print_config=false",
        f"hydra.run.dir={run_dir}",
    ]
    result = run_entry("train.py", args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["state_dict"]["net.fc.weight"].shape == (10, 64)  # wrn_tiny's 64 features → 10 classes
    rows = read_metrics(run_dir)
    assert [row for row in rows if row.get("test/acc")], "the best checkpoint was not tested"
    with (run_dir / ".hydra" / "config.yaml").open() as f:
        assert "_target_: wrncifar.data.cifar10.CIFAR10DataModule" in f.read()


@pytest.mark.skipif(not SHARED_CIFAR10.is_dir(), reason=f"real CIFAR-10 arrays not staged at {SHARED_CIFAR10}")
def test_real_cifar10_split_45000_5000_10000_and_its_statistics() -> None:
    dm = datamodule(SHARED_CIFAR10, val_per_class=500)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (45_000, 5_000, 10_000)
    assert np.bincount(dm.val_set.labels.numpy()).tolist() == [500] * 10
    assert dm.classes[:3] == ("airplane", "automobile", "bird")
    # The normalisation constants are this training set's statistics.
    pixels = torch.cat([dm.train_set.images, dm.val_set.images]).float().div(255)
    torch.testing.assert_close(pixels.mean(dim=(0, 2, 3)), torch.tensor(CIFAR10_MEAN), atol=1e-4, rtol=0)
    torch.testing.assert_close(pixels.std(dim=(0, 2, 3)), torch.tensor(CIFAR10_STD), atol=1e-4, rtol=0)
