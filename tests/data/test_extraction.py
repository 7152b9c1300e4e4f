"""Extracting the official archive (and downloading it) is atomic and serialised: runs started together on one
data_dir (a node's ranks, a sweep's jobs) and runs cut short leave a folder that the next run can read."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock
from torchvision.datasets import CIFAR100

from tests.conftest import FAKE_CLASSES, FAKE_TEST_PER_CLASS, HANG_TIMEOUT_S
from wrncifar.data.cifar100_sources import CorruptDatasetError, load_cifar, prepare_cifar
from wrncifar.data.cifar_releases import CIFAR100_RELEASE

ROUNDS = 4  # fresh archive-only folders that both processes prepare
PADDING_MB = 16  # a first member of the archive that takes a while to extract: the second process looks meanwhile

# One process of the race: announce it is ready (its imports done), then for each folder wait until it is time to
# start, and print what it read (or the error it got). The first starts on the go file; so does the second on even
# rounds (both within a millisecond), while on odd rounds it starts as soon as anything appears beside the archive,
# which is while the first is extracting.
PREPARE_TOGETHER = """
import hashlib, json, sys, time
from pathlib import Path
from torchvision.datasets import CIFAR100
md5s, sync, name, folders = json.loads(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], map(Path, sys.argv[4:])
CIFAR100.tgz_md5 = md5s["tgz"]
CIFAR100.train_list, CIFAR100.test_list = [["train", md5s["train"]]], [["test", md5s["test"]]]
CIFAR100.meta = {**CIFAR100.meta, "md5": md5s["meta"]}
from wrncifar.data.cifar100_sources import load_cifar, prepare_cifar
from wrncifar.data.cifar_releases import CIFAR100_RELEASE
(sync / f"ready-{name}").touch()
def may_start(step, folder):
    if name == "first" or step % 2 == 0:
        return (sync / f"go-{step}").exists()
    return len(list(folder.iterdir())) > 1 or (sync / f"done-first-{step}").exists()
for step, folder in enumerate(folders):
    while not may_start(step, folder):
        time.sleep(0.0005)
    try:
        source = prepare_cifar(folder, CIFAR100_RELEASE, download=False)
        data = load_cifar(folder, CIFAR100_RELEASE)
        print(json.dumps({"source": source, "train": hashlib.sha256(data.train_images.tobytes()).hexdigest(),
                          "test_labels": data.test_labels.tolist()}), flush=True)
    except Exception as err:
        print(json.dumps({"error": f"{type(err).__name__}: {err}"}), flush=True)
    (sync / f"done-{name}-{step}").touch()
"""


def archive_only(
    cifar_folder: tuple[Path, dict], folder: Path, monkeypatch: pytest.MonkeyPatch, padding_mb: int = 0
) -> Path:
    """`folder` holding only the official archive of `cifar_folder`'s official folder, its md5 the expected one;
    with `padding_mb`, a file of that many zeros comes first in the archive (torchvision reads only its own files)."""
    data_dir, _ = cifar_folder
    folder.mkdir()
    archive = folder / CIFAR100.filename
    with tarfile.open(archive, "w:gz") as tar:
        if padding_mb:
            padding = tarfile.TarInfo(f"{CIFAR100.base_folder}/padding")
            padding.size = padding_mb << 20
            tar.addfile(padding, io.BytesIO(bytes(padding.size)))
        tar.add(data_dir / CIFAR100.base_folder, arcname=CIFAR100.base_folder)
    monkeypatch.setattr(CIFAR100, "tgz_md5", hashlib.md5(archive.read_bytes()).hexdigest())
    return archive


def wait_for(condition, what: str) -> None:
    """Poll `condition` until it holds; the timeout only catches a hang."""
    deadline = time.monotonic() + HANG_TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what} after {HANG_TIMEOUT_S:.0f} s: a hang"
        time.sleep(0.005)


@pytest.mark.slow
def test_two_processes_extracting_the_same_archive_at_once_both_read_it(cifar_folder, tmp_path, monkeypatch) -> None:
    data_dir, arrays = cifar_folder
    folders = [tmp_path / f"shared-{i}" for i in range(ROUNDS)]
    archive = archive_only(cifar_folder, folders[0], monkeypatch, PADDING_MB)
    for folder in folders[1:]:
        folder.mkdir()
        shutil.copy(archive, folder)
    official = data_dir / CIFAR100.base_folder
    md5s = {name: hashlib.md5((official / name).read_bytes()).hexdigest() for name in ("train", "test", "meta")}
    md5s["tgz"] = CIFAR100.tgz_md5
    sync = tmp_path / "sync"
    sync.mkdir()
    names = ["first", "second"]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", PREPARE_TOGETHER, json.dumps(md5s), str(sync), name, *map(str, folders)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    try:
        wait_for(lambda: all((sync / f"ready-{name}").exists() for name in names), "both processes to start")
        for step in range(ROUNDS):
            (sync / f"go-{step}").touch()
            done = [sync / f"done-{name}-{step}" for name in names]
            wait_for(lambda done=done: all(path.exists() for path in done), f"round {step}")
        outputs = [process.communicate(timeout=HANG_TIMEOUT_S) for process in processes]
    finally:
        for process in processes:
            process.kill()
    expected = {
        "source": "official",
        "train": hashlib.sha256(np.ascontiguousarray(arrays["train_images"]).tobytes()).hexdigest(),
        "test_labels": arrays["test_labels"].tolist(),
    }
    for process, (stdout, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-3000:]
        results = [json.loads(line) for line in stdout.splitlines()]
        assert len(results) == ROUNDS, stdout[-3000:] + stderr[-3000:]
        for result in results:
            assert result == expected, result.get("error", "read other data than the archive holds")
    for folder in folders:  # one release folder each, and no temporary folder left
        assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [CIFAR100.base_folder]


@pytest.mark.parametrize("interruption", [OSError("No space left on device"), KeyboardInterrupt()])
def test_an_extraction_cut_short_leaves_no_folder_and_the_next_run_extracts_again(
    cifar_folder, tmp_path, monkeypatch, interruption: BaseException
) -> None:
    archive = archive_only(cifar_folder, tmp_path / "archive_only", monkeypatch)
    folder = archive.parent

    def cut_short(from_path: str, to_path: str, *args, **kwargs) -> None:
        partial = Path(to_path) / CIFAR100.base_folder
        partial.mkdir()
        (partial / "train").write_bytes(b"the first bytes of the training batch")
        raise interruption

    with monkeypatch.context() as patched:
        patched.setattr("wrncifar.data.cifar100_sources.extract_archive", cut_short)
        with pytest.raises(type(interruption)):
            prepare_cifar(folder, CIFAR100_RELEASE, download=False)
    assert [p.name for p in folder.iterdir() if p.is_dir()] == []  # neither the release folder nor a temporary one

    assert prepare_cifar(folder, CIFAR100_RELEASE, download=False) == "official"
    assert len(load_cifar(folder, CIFAR100_RELEASE).test_labels) == FAKE_CLASSES * FAKE_TEST_PER_CLASS


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_damaged_folder_beside_a_good_archive_says_removing_it_extracts_again(
    cifar_folder, tmp_path, monkeypatch, damage: str
) -> None:
    """What a run killed while extracting (before extraction was atomic) leaves: the message says how to recover,
    and nothing is deleted."""
    archive = archive_only(cifar_folder, tmp_path / "archive_only", monkeypatch)
    shutil.copytree(cifar_folder[0] / CIFAR100.base_folder, archive.parent / CIFAR100.base_folder)  # extracted
    train = archive.parent / CIFAR100.base_folder / "train"
    if damage == "truncated":
        train.write_bytes(train.read_bytes()[:1000])
    else:
        train.unlink()
    before = {p: p.read_bytes() for p in archive.parent.rglob("*") if p.is_file()}

    with pytest.raises(CorruptDatasetError) as err:
        prepare_cifar(archive.parent, CIFAR100_RELEASE, download=False)
    fault = f"{train} fails its md5 check" if damage == "truncated" else f"{train} is missing from"
    assert str(err.value).startswith(fault)
    assert str(err.value).endswith(
        f". Remove the folder to extract it again from {archive} (its md5 checks out); nothing was deleted."
    )
    assert {p: p.read_bytes() for p in archive.parent.rglob("*") if p.is_file()} == before

    monkeypatch.setattr(CIFAR100, "tgz_md5", "0" * 32)  # an archive that does not check out is not offered
    with pytest.raises(CorruptDatasetError) as err:
        prepare_cifar(archive.parent, CIFAR100_RELEASE, download=False)
    assert str(err.value).startswith(fault) and str(archive) not in str(err.value)


def test_a_run_waiting_for_another_ones_extraction_reads_its_folder(
    cifar_folder, tmp_path, monkeypatch, caplog
) -> None:
    """The other run holds the lock and extracts; this one says it waits, then reads that folder, extracting nothing."""
    archive = archive_only(cifar_folder, tmp_path / "archive_only", monkeypatch)
    folder = archive.parent

    def no_extraction(*args, **kwargs) -> None:
        raise AssertionError("extracted again although another run had extracted the archive")

    monkeypatch.setattr("wrncifar.data.cifar100_sources.extract_archive", no_extraction)
    with caplog.at_level(logging.INFO, logger="wrncifar.data.cifar100_sources"), ThreadPoolExecutor(1) as pool:
        with FileLock(str(folder / f".{CIFAR100.filename}.lock")):  # the other run, extracting
            waiting = pool.submit(prepare_cifar, folder, CIFAR100_RELEASE, download=False)
            wait_for(lambda: any("waiting for another run" in m for m in caplog.messages) or waiting.done(), "the wait")
            shutil.copytree(cifar_folder[0] / CIFAR100.base_folder, folder / CIFAR100.base_folder)
        assert waiting.result(timeout=HANG_TIMEOUT_S) == "official"
    assert [m for m in caplog.messages if "waiting for another run" in m] == [
        f"waiting for another run to finish writing CIFAR-100 into {folder} "
        f"(it holds {folder / f'.{CIFAR100.filename}.lock'})"
    ]
