from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR100

from tests.conftest import (
    FAKE_CLASSES,
    FAKE_TEST_PER_CLASS,
    FAKE_TRAIN_PER_CLASS,
    HANG_TIMEOUT_S,
    SHARED_CIFAR100,
    ArchiveServer,
    fake_images,
)
from wrncifar.data.cifar100 import CIFAR100DataModule
from wrncifar.data.cifar100_sources import CorruptDatasetError, DatasetNotFoundError
from wrncifar.data.transforms import CIFAR100_MEAN, CIFAR100_STD

VAL_PER_CLASS = 2


def datamodule(data_dir: Path, **kwargs) -> CIFAR100DataModule:
    settings = {"num_workers": 0, "val_per_class": VAL_PER_CLASS, "download": False, **kwargs}
    dm = CIFAR100DataModule(str(data_dir), **settings)
    dm.prepare_data()
    dm.setup()
    return dm


def unnormalise(image: torch.Tensor) -> np.ndarray:
    mean, std = torch.tensor(CIFAR100_MEAN)[:, None, None], torch.tensor(CIFAR100_STD)[:, None, None]
    return (image * std + mean).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def test_official_folder_gives_stratified_split_and_official_test_set(cifar_folder) -> None:
    data_dir, arrays = cifar_folder
    dm = datamodule(data_dir)
    assert len(dm.val_set) == FAKE_CLASSES * VAL_PER_CLASS
    assert len(dm.train_set) == FAKE_CLASSES * (FAKE_TRAIN_PER_CLASS - VAL_PER_CLASS)
    assert len(dm.test_set) == FAKE_CLASSES * FAKE_TEST_PER_CLASS
    assert np.bincount(dm.val_set.labels.numpy(), minlength=FAKE_CLASSES).tolist() == [VAL_PER_CLASS] * FAKE_CLASSES
    assert dm.classes[:2] == ("fake_class_00", "fake_class_01")
    assert dm.superclasses == tuple(f"super_{i}" for i in range(20))  # the pickles' coarse labels are labels // 5
    assert dm.fine_to_coarse == tuple(i // 5 for i in range(FAKE_CLASSES))
    # Train and val together are exactly the official training images, with no overlap.
    train_and_val = torch.cat([dm.train_set.images, dm.val_set.images]).flatten(1)
    official = torch.from_numpy(arrays["train_images"].transpose(0, 3, 1, 2).copy()).flatten(1)
    assert sorted(map(bytes, train_and_val.numpy())) == sorted(map(bytes, official.numpy()))
    assert torch.equal(dm.test_set.images, torch.from_numpy(arrays["test_images"].transpose(0, 3, 1, 2).copy()))


def test_split_is_the_same_for_the_same_seed_and_differs_for_another(cifar_folder) -> None:
    data_dir, _ = cifar_folder
    first, again, other = datamodule(data_dir), datamodule(data_dir), datamodule(data_dir, split_seed=1)
    assert torch.equal(first.val_set.images, again.val_set.images)
    assert torch.equal(first.train_set.labels, again.train_set.labels)
    assert not torch.equal(first.val_set.images, other.val_set.images)


def test_evaluation_images_are_normalised_with_the_cifar100_statistics(cifar_folder) -> None:
    data_dir, _ = cifar_folder
    dm = datamodule(data_dir)
    image, label = dm.val_set[0]
    raw = dm.val_set.images[0].float() / 255
    expected = (raw - torch.tensor(CIFAR100_MEAN)[:, None, None]) / torch.tensor(CIFAR100_STD)[:, None, None]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
    torch.testing.assert_close(image, expected)
    assert label == dm.val_set.labels[0]
    torch.testing.assert_close(dm.test_set[0][0], dm.test_set[0][0])  # no randomness at evaluation


@pytest.mark.parametrize(("mode", "numpy_mode"), [("reflect", "reflect"), ("zeros", "constant")])
def test_training_images_are_padded_crops_and_flips_of_the_original(cifar_folder, mode: str, numpy_mode: str) -> None:
    data_dir, _ = cifar_folder
    dm = datamodule(data_dir, crop_padding_mode=mode)
    raw = dm.train_set.images[0].numpy().transpose(1, 2, 0)
    padded = np.pad(raw, ((4, 4), (4, 4), (0, 0)), mode=numpy_mode)
    candidates = {
        bytes(np.ascontiguousarray(view[dy : dy + 32, dx : dx + 32]))
        for view in (padded, padded[:, ::-1])
        for dy in range(9)
        for dx in range(9)
    }
    torch.manual_seed(0)
    samples = [unnormalise(dm.train_set[0][0]) for _ in range(20)]
    assert all(bytes(s) in candidates for s in samples)
    assert len({bytes(s) for s in samples}) > 1, "the training transform should be random"


def test_loaders_batch_as_configured(cifar_folder) -> None:
    data_dir, _ = cifar_folder
    dm = datamodule(data_dir, batch_size=16, eval_batch_size=50)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (16, 3, 32, 32) and labels.dtype == torch.int64
    assert next(iter(dm.val_dataloader()))[0].shape[0] == 50
    assert sum(len(y) for _, y in dm.test_dataloader()) == FAKE_CLASSES * FAKE_TEST_PER_CLASS


@pytest.mark.parametrize(
    ("on_device", "num_workers", "warned"), [(True, 3, True), (True, None, False), (True, 0, False), (False, 3, False)]
)
def test_loader_workers_asked_for_on_the_on_device_path_are_named_as_unused(
    on_device: bool, num_workers: int | None, warned: bool, caplog
) -> None:
    """The on-device path has no loader workers: a worker count given for it says so instead of doing nothing."""
    with caplog.at_level(logging.WARNING, logger="wrncifar.data.cifar100"):
        CIFAR100DataModule(num_workers=num_workers, on_device=on_device)
    expected = [
        "data.num_workers=3 is unused: with data.on_device=true the batches are made in the training process, "
        "without loader workers (data.on_device=false for loader workers)"
    ]
    assert caplog.messages == (expected if warned else [])


def test_present_folder_is_never_downloaded_again(cifar_folder, monkeypatch) -> None:
    data_dir, _ = cifar_folder

    def no_download(*args, **kwargs):
        raise AssertionError("download attempted although the dataset is present")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", no_download)
    assert len(datamodule(data_dir, download=True).test_set) == FAKE_CLASSES * FAKE_TEST_PER_CLASS


def test_official_archive_is_checked_and_extracted(cifar_folder, tmp_path, monkeypatch) -> None:
    data_dir, _ = cifar_folder
    archive_dir = tmp_path / "archive_only"
    archive_dir.mkdir()
    archive = archive_dir / CIFAR100.filename
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(data_dir / CIFAR100.base_folder, arcname=CIFAR100.base_folder)
    monkeypatch.setattr(CIFAR100, "tgz_md5", hashlib.md5(archive.read_bytes()).hexdigest())

    dm = datamodule(archive_dir)
    assert len(dm.test_set) == FAKE_CLASSES * FAKE_TEST_PER_CLASS
    assert (archive_dir / CIFAR100.base_folder / "train").is_file()


def test_truncated_archive_is_named_and_kept(tmp_path) -> None:
    archive = tmp_path / CIFAR100.filename
    archive.write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(CorruptDatasetError, match=str(archive)) as err:
        datamodule(tmp_path)
    assert "md5" in str(err.value)
    assert archive.read_bytes() == b"\x1f\x8b truncated"


def test_corrupted_file_in_official_folder_is_named_and_kept(cifar_folder) -> None:
    data_dir, _ = cifar_folder
    train_file = data_dir / CIFAR100.base_folder / "train"
    corrupted = bytearray(train_file.read_bytes())
    corrupted[1000] ^= 0xFF
    train_file.write_bytes(bytes(corrupted))
    with pytest.raises(CorruptDatasetError, match=f"{train_file} fails its md5 check"):
        datamodule(data_dir)
    assert train_file.read_bytes() == bytes(corrupted)


def test_missing_data_without_download_says_where_it_looked_and_what_to_do(tmp_path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        datamodule(tmp_path / "empty", download=False)
    message = str(err.value)
    for expected in [str((tmp_path / "empty").resolve()), "train.npz", "cifar-100-python", "data=synthetic"]:
        assert expected in message


def test_missing_data_with_no_network_fails_with_the_same_guidance(tmp_path, monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline)
    with pytest.raises(DatasetNotFoundError, match=r"download failed.*data=synthetic"):
        datamodule(tmp_path, download=True)


def test_a_failed_download_into_a_mistyped_folder_leaves_no_folder_behind(tmp_path, monkeypatch) -> None:
    # A port nothing listens on: the real download code fails to connect, as it does offline.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setattr(CIFAR100, "url", f"http://127.0.0.1:{port}/{CIFAR100.filename}")
    (tmp_path / "data").mkdir()
    with pytest.raises(DatasetNotFoundError, match="download failed"):
        datamodule(tmp_path / "data" / "cifra100" / "v1", download=True)
    assert list((tmp_path / "data").iterdir()) == []  # the folders made for the download are gone
    assert (tmp_path / "data").is_dir()  # the folder that was there stays


def write_array_export(
    folder: Path, checksums: bool = True, coarse_names: list[str] | None = None, coarse_of=lambda labels: labels // 5
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, per_class, seed in [("train", FAKE_TRAIN_PER_CLASS, 3), ("test", FAKE_TEST_PER_CLASS, 4)]:
        labels = np.repeat(np.arange(FAKE_CLASSES), per_class).astype(np.uint8)
        coarse = coarse_of(labels).astype(np.uint8)
        np.savez(folder / f"{name}.npz", data=fake_images(len(labels), seed), fine_labels=labels, coarse_labels=coarse)
    meta = {"fine_label_names": [f"c{i}" for i in range(FAKE_CLASSES)], "coarse_label_names": coarse_names or []}
    (folder / "meta.json").write_text(json.dumps(meta))
    if checksums:
        lines = [
            f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}"
            for n in ("train.npz", "test.npz", "meta.json")
        ]
        (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def test_array_export_loads_with_checksums(tmp_path) -> None:
    write_array_export(tmp_path)
    dm = datamodule(tmp_path)
    assert len(dm.train_set) + len(dm.val_set) == FAKE_CLASSES * FAKE_TRAIN_PER_CLASS
    assert len(dm.test_set) == FAKE_CLASSES * FAKE_TEST_PER_CLASS
    assert dm.classes[-1] == "c99"


def test_an_export_grouped_by_class_gives_a_test_set_whose_first_images_hold_every_class(tmp_path) -> None:
    """`limit_test_batches` tests the first batches: of an export grouped by class (as the staged copy is), those
    must not be the first classes only. The same fixed order every time, each image with its own label."""
    # Superclasses named: their labels are checked against the fine ones, so they must be shuffled alike.
    write_array_export(tmp_path, coarse_names=[f"s{i}" for i in range(20)])
    with np.load(tmp_path / "test.npz") as npz:
        images, labels = npz["data"], npz["fine_labels"]
    first, again = datamodule(tmp_path).test_set, datamodule(tmp_path).test_set
    assert torch.equal(first.labels, again.labels) and torch.equal(first.images, again.images)
    half = len(labels) // 2
    assert len(np.unique(labels[:half])) == FAKE_CLASSES // 2  # the file: grouped
    assert len(np.unique(first.labels[:half].numpy())) > FAKE_CLASSES * 0.65  # shuffled: about 75 of 100
    served = first.images.permute(0, 2, 3, 1).numpy()
    position = {image.tobytes(): i for i, image in enumerate(images)}
    order = [position[image.tobytes()] for image in served]
    assert sorted(order) == list(range(len(labels)))
    assert first.labels.tolist() == labels[order].tolist()


def test_a_data_dir_under_home_given_with_a_tilde_is_read_there(tmp_path, monkeypatch) -> None:
    """A data module made directly (a notebook): `~` is expanded as the entry points expand it, not read literally."""
    monkeypatch.setenv("HOME", str(tmp_path))
    write_array_export(tmp_path / "cifar")
    assert len(datamodule("~/cifar").test_set) == FAKE_CLASSES * FAKE_TEST_PER_CLASS


def test_checksums_in_upper_case_are_read_as_sha256sum_reads_them(tmp_path) -> None:
    write_array_export(tmp_path)
    sums = tmp_path / "SHA256SUMS"
    upper = [f"{line[:64].upper()}{line[64:]}" for line in sums.read_text().splitlines()]
    sums.write_text("\n".join(upper) + "\n")
    assert len(datamodule(tmp_path).test_set) == FAKE_CLASSES * FAKE_TEST_PER_CLASS


def test_array_export_carries_superclasses_when_it_names_them(tmp_path) -> None:
    write_array_export(tmp_path / "unnamed")
    assert datamodule(tmp_path / "unnamed").superclasses == ()  # coarse labels without names: none
    write_array_export(tmp_path / "named", coarse_names=[f"s{i}" for i in range(20)])
    dm = datamodule(tmp_path / "named")
    assert dm.superclasses[:2] == ("s0", "s1") and dm.fine_to_coarse == tuple(i // 5 for i in range(FAKE_CLASSES))


def class_3_in_two_superclasses(labels: np.ndarray) -> np.ndarray:
    coarse = labels // 5
    coarse[(labels == 3) & (np.arange(len(labels)) % 2 == 1)] += 1
    return coarse


@pytest.mark.parametrize(
    ("coarse_of", "message"),
    [
        (class_3_in_two_superclasses, "fine classes [3] have images under more than one coarse label"),
        (lambda labels: labels // 4, "coarse labels outside 0–19"),  # 25 coarse labels for 20 names
    ],
)
def test_inconsistent_coarse_labels_name_the_folder(tmp_path, coarse_of, message: str) -> None:
    write_array_export(tmp_path, coarse_names=[f"s{i}" for i in range(20)], coarse_of=coarse_of)
    with pytest.raises(CorruptDatasetError) as err:
        datamodule(tmp_path)
    assert f"coarse labels (superclasses) in {tmp_path} are inconsistent" in str(err.value)
    assert message in str(err.value)


def test_array_export_checksum_mismatch_names_the_file(tmp_path) -> None:
    write_array_export(tmp_path)
    with (tmp_path / "test.npz").open("ab") as f:
        f.write(b"junk")
    with pytest.raises(CorruptDatasetError, match=f"{tmp_path / 'test.npz'} fails its SHA-256 check"):
        datamodule(tmp_path)
    assert (tmp_path / "test.npz").is_file()


def test_truncated_array_file_without_checksums_names_the_file(tmp_path) -> None:
    write_array_export(tmp_path, checksums=False)
    train = tmp_path / "train.npz"
    train.write_bytes(train.read_bytes()[: train.stat().st_size // 2])
    with pytest.raises(CorruptDatasetError, match=f"{train} cannot be read"):
        datamodule(tmp_path)


@pytest.mark.skipif(not SHARED_CIFAR100.is_dir(), reason=f"real CIFAR-100 arrays not staged at {SHARED_CIFAR100}")
def test_real_cifar100_arrays_split_45000_5000_10000_balanced() -> None:
    dm = datamodule(SHARED_CIFAR100, val_per_class=50)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (45_000, 5_000, 10_000)
    assert np.bincount(dm.train_set.labels.numpy()).tolist() == [450] * 100
    assert np.bincount(dm.val_set.labels.numpy()).tolist() == [50] * 100
    assert np.bincount(dm.test_set.labels.numpy()).tolist() == [100] * 100
    assert dm.classes[:2] == ("apple", "aquarium_fish") and len(dm.classes) == 100
    assert dm.superclasses[:2] == ("aquatic_mammals", "fish") and len(dm.superclasses) == 20
    assert np.bincount(dm.fine_to_coarse).tolist() == [5] * 20  # five fine classes in each superclass
    assert dm.superclasses[dm.fine_to_coarse[dm.classes.index("dolphin")]] == "aquatic_mammals"
    # The normalisation constants are this training set's statistics.
    pixels = torch.cat([dm.train_set.images, dm.val_set.images]).float().div(255)
    torch.testing.assert_close(pixels.mean(dim=(0, 2, 3)), torch.tensor(CIFAR100_MEAN), atol=1e-4, rtol=0)
    torch.testing.assert_close(pixels.std(dim=(0, 2, 3)), torch.tensor(CIFAR100_STD), atol=1e-4, rtol=0)


@pytest.fixture
def archive_server(cifar_folder, serve_archive) -> bytes:
    """A local HTTP server that CIFAR100's download URL points at, and the good archive's bytes."""
    return serve_archive(cifar_folder[0], CIFAR100)


def test_a_download_is_md5_checked_extracted_and_read(archive_server, tmp_path) -> None:
    ArchiveServer.body = archive_server
    dm = datamodule(tmp_path / "fresh", download=True)
    assert len(dm.test_set) == FAKE_CLASSES * FAKE_TEST_PER_CLASS and ArchiveServer.requests > 0


def test_a_whole_download_that_could_not_be_extracted_is_kept_for_the_next_run(
    archive_server, tmp_path, monkeypatch
) -> None:
    """The download arrived whole, then extracting it failed (a full disk): the archive is kept where the next run
    extracts it, not set aside as corrupt and downloaded again."""
    ArchiveServer.body = archive_server
    data_dir = tmp_path / "fresh"

    def disk_full(*args, **kwargs) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr("torchvision.datasets.utils.extract_archive", disk_full)
        with pytest.raises(DatasetNotFoundError, match="No space left on device"):
            datamodule(data_dir, download=True)
    assert (data_dir / CIFAR100.filename).read_bytes() == archive_server
    requests = ArchiveServer.requests
    assert len(datamodule(data_dir, download=True).test_set) == FAKE_CLASSES * FAKE_TEST_PER_CLASS
    assert ArchiveServer.requests == requests  # extracted from the kept archive, not downloaded again


@pytest.mark.parametrize(
    ("body", "what"),
    [
        (lambda good: good[: len(good) // 2], "truncated or corrupt"),
        (lambda good: b"<!DOCTYPE html><html><body>Please log in</body></html>", "an HTML page"),
    ],
)
def test_a_corrupt_download_is_named_on_the_first_run_and_set_aside(archive_server, tmp_path, body, what) -> None:
    ArchiveServer.body = body(archive_server)
    data_dir = tmp_path / "fresh"
    with pytest.raises(CorruptDatasetError) as err:
        datamodule(data_dir, download=True)
    message = str(err.value)
    digest = hashlib.md5(ArchiveServer.body).hexdigest()
    assert f"{CIFAR100.url} is {what}" in message
    assert f"{len(ArchiveServer.body):,} bytes with md5 {digest}, expected md5 {CIFAR100.tgz_md5}" in message
    (aside,) = data_dir.glob(f"{CIFAR100.filename}.corrupt-*")
    assert aside.read_bytes() == ArchiveServer.body and f"moved to {aside}" in message
    assert not (data_dir / CIFAR100.filename).exists()

    ArchiveServer.body = archive_server  # the next run downloads again, and this time gets the archive
    first_requests = ArchiveServer.requests
    assert len(datamodule(data_dir, download=True).test_set) == FAKE_CLASSES * FAKE_TEST_PER_CLASS
    assert ArchiveServer.requests > first_requests


# Run where the data folder cannot be written. Root ignores permission bits, so under root the check runs in a
# mount namespace (`unshare`) where the folder is bind-mounted read-only, as a shared dataset folder on a cluster
# is for its users; other users get the folder's permission bits removed.
READ_ONLY_CHECK = """
import json, sys
from pathlib import Path
from torchvision.datasets import CIFAR100
data_dir, md5s = Path(sys.argv[1]), json.loads(sys.argv[2])
CIFAR100.tgz_md5 = md5s["tgz"]
CIFAR100.train_list, CIFAR100.test_list = [["train", md5s["train"]]], [["test", md5s["test"]]]
CIFAR100.meta = {**CIFAR100.meta, "md5": md5s["meta"]}
from wrncifar.data.cifar100_sources import load_cifar, prepare_cifar
from wrncifar.data.cifar_releases import CIFAR100_RELEASE
source = prepare_cifar(data_dir, CIFAR100_RELEASE, download=False)
print(source, len(load_cifar(data_dir, CIFAR100_RELEASE).test_labels))
"""


def run_with_read_only(folder: Path, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        remount = 'mount --bind -o ro "$0" "$0" && exec "$@"'
        argv = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", remount, str(folder), *argv]
    else:
        folder.chmod(0o555)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)


@pytest.mark.slow
def test_an_archive_in_a_read_only_folder_is_extracted_into_the_users_cache(cifar_folder, tmp_path) -> None:
    data_dir, _ = cifar_folder
    folder = data_dir / CIFAR100.base_folder
    md5s = {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in ("train", "test", "meta")}
    shared, cache = tmp_path / "shared", tmp_path / "cache"
    shared.mkdir()
    with tarfile.open(shared / CIFAR100.filename, "w:gz") as tar:
        tar.add(folder, arcname=CIFAR100.base_folder)
    md5s["tgz"] = hashlib.md5((shared / CIFAR100.filename).read_bytes()).hexdigest()
    env = {**os.environ, "WRNCIFAR_CACHE_DIR": str(cache)}
    try:
        for run in range(2):  # extracted once, then read from the cache
            done = run_with_read_only(
                shared, [sys.executable, "-c", READ_ONLY_CHECK, str(shared), json.dumps(md5s)], env
            )
            assert done.returncode == 0, done.stderr[-3000:]
            assert done.stdout.split() == ["official", str(FAKE_CLASSES * FAKE_TEST_PER_CLASS)]
            assert ("is not writable: extracting" in done.stderr) == (run == 0)
    finally:
        shared.chmod(0o755)
    (extracted,) = cache.glob(f"cifar100-*/{CIFAR100.base_folder}")
    assert (extracted / "train").is_file()
    assert sorted(p.name for p in shared.iterdir()) == [CIFAR100.filename], "the shared folder is untouched"


def test_an_incomplete_array_export_names_the_missing_file(tmp_path) -> None:
    np.savez(tmp_path / "train.npz", data=fake_images(2, 0), fine_labels=np.zeros(2, dtype=np.uint8))
    np.savez(tmp_path / "test.npz", data=fake_images(2, 1), fine_labels=np.zeros(2, dtype=np.uint8))
    with pytest.raises(
        CorruptDatasetError, match=r"array export in .* is incomplete: train\.npz, test\.npz but no meta\.json"
    ):
        datamodule(tmp_path, download=False)


def write_named_array_export(folder: Path, classes: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, seed in [("train", 0), ("test", 1)]:
        labels = np.repeat(np.arange(FAKE_CLASSES, dtype=np.uint8), 3)
        np.savez(folder / f"{split}.npz", data=fake_images(len(labels), seed), fine_labels=labels)
    (folder / "meta.json").write_text(json.dumps({"fine_label_names": classes}))


def test_a_malformed_checksum_line_is_named(tmp_path) -> None:
    write_named_array_export(tmp_path, [f"c{i}" for i in range(FAKE_CLASSES)])
    (tmp_path / "SHA256SUMS").write_text("not-a-checksum-line\n")
    with pytest.raises(CorruptDatasetError, match=r"SHA256SUMS has a line that is not '<sha256> <file>'"):
        datamodule(tmp_path)


def test_class_names_that_do_not_fit_the_labels_are_named(tmp_path) -> None:
    write_named_array_export(tmp_path, ["apple", "apple", "pear"])
    with pytest.raises(CorruptDatasetError, match=r"meta\.json names 2 distinct classes, the labels need 100"):
        datamodule(tmp_path)


def test_a_validation_share_larger_than_a_class_is_one_message(make_config) -> None:
    from wrncifar.run.entry import run
    from wrncifar.run.fit_and_test import train_for_sweep

    args = ["model=wrn_tiny", "data=synthetic", "data.train_per_class=4", "data.val_per_class=4", "logger=null"]
    with pytest.raises(SystemExit) as exit_info:
        run(train_for_sweep, make_config([*args, "trainer=cpu", "extras.print_config=false"]))
    assert exit_info.value.code == 1
    assert "too few to hold out 4 for validation and keep some for training: lower data.val_per_class" in str(
        exit_info.value.__cause__
    )


@pytest.mark.parametrize("on_device", [True, False])
def test_a_batch_larger_than_the_training_set_with_drop_last_is_one_message(make_config, on_device: bool) -> None:
    from wrncifar.run.entry import run
    from wrncifar.run.fit_and_test import train_for_sweep

    args = ["model=wrn_tiny", "data=synthetic", "data.train_per_class=4", "data.val_per_class=2", "logger=null"]
    args += ["data.batch_size=512", "data.drop_last=true", f"data.on_device={on_device}", "data.num_workers=0"]
    with pytest.raises(SystemExit) as exit_info:
        run(train_for_sweep, make_config([*args, "trainer=cpu", "extras.print_config=false"]))
    assert exit_info.value.code == 1
    assert str(exit_info.value.__cause__) == (
        "data.batch_size=512 is larger than the 200 training images, and data.drop_last=true drops that "
        "incomplete batch: no step would train. Lower data.batch_size, or set data.drop_last=false"
    )
