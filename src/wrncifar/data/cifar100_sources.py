"""Find, verify and read a CIFAR release (CIFAR-100, CIFAR-10: `cifar_releases`) on disk, downloading it through
torchvision only when nothing is there. One code path for both; the module keeps the name it had when CIFAR-100
was the only release (run/entry.py and older code import its errors from here).

Sources, in the order they are looked for under `data_dir` (names for CIFAR-100 / CIFAR-10):
1. the array export: `train.npz`, `test.npz`, `meta.json` (checked against `SHA256SUMS` when present). The npz files
   hold `data` (uint8 N×32×32×3, HWC) and the labels under the official pickles' key, `fine_labels` / `labels`;
   `meta.json` holds the class names under the official meta file's key, `fine_label_names` / `label_names`.
   Its test set is served in a fixed shuffled order (the export may group it by class), so that any first part of
   it (`limit_test_batches`) holds every class, as in the official release's order;
2. the official `cifar-100-python/` / `cifar-10-batches-py/` folder (checked against torchvision's md5s);
3. the official `cifar-100-python.tar.gz` / `cifar-10-python.tar.gz` archive (md5-checked, then extracted next to
   it, or into this user's cache when the folder is read-only: `extraction_dir`);
4. a download by torchvision (md5-checked), when `download=True`.
Extraction and download write into a hidden folder inside the folder they fill (`.extracting-*`, `.downloading-*`)
and move the verified result into place, so no run ever reads a half-written folder and a run killed part-way
leaves none behind (at most that hidden folder, which no layout check reads and which may be removed). They hold a
lock file in that folder (`.cifar-100-python.tar.gz.lock` / `.cifar-10-python.tar.gz.lock`) while they write: runs
started together (a node's ranks, a sweep's jobs on one data_dir) wait for the first and read what it wrote.
A corrupt file raises `CorruptDatasetError` naming it; nothing is ever deleted or overwritten. The one exception is
a download of this project's own that arrived corrupt: it is moved aside (`<name>.corrupt-<time>`), not reused.
CIFAR-100's layouts also carry its 20 superclasses (coarse labels and their names); they are read when present.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import pickle
import shutil
import tempfile
import time
import urllib.error
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout
from torchvision.datasets.utils import check_integrity, extract_archive

from wrncifar.data.arrays import ImageArrays, superclass_of_each_class
from wrncifar.data.cifar_releases import CIFARRelease

log = logging.getLogger(__name__)

ARRAY_FILES = ("train.npz", "test.npz", "meta.json")
TEST_ORDER_SEED = 0  # the array export's test set is served in this seed's permutation (module docstring)


class DatasetNotFoundError(FileNotFoundError):
    """No copy of the dataset was found and none could be downloaded."""


class CorruptDatasetError(RuntimeError):
    """A dataset file exists but fails its checksum or cannot be read."""


def official_folder(data_dir: Path, release: CIFARRelease) -> Path:
    """Where torchvision keeps the extracted official release."""
    return data_dir / release.base_folder


def official_archive(data_dir: Path, release: CIFARRelease) -> Path:
    """Where the official archive (`cifar-100-python.tar.gz`) is looked for (and downloaded to)."""
    return data_dir / release.filename


def extraction_dir(data_dir: Path, release: CIFARRelease) -> Path:
    """Where the archive found in `data_dir` is extracted: beside it, or, when `data_dir` is not writable (a shared
    read-only dataset folder on a cluster), in this user's cache, one folder per archive location:
    `$WRNCIFAR_CACHE_DIR`, else `$XDG_CACHE_HOME/wrncifar`, else `~/.cache/wrncifar`."""
    if os.access(data_dir, os.W_OK):
        return data_dir
    cache = os.environ.get("WRNCIFAR_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "wrncifar"
    key = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    return Path(cache).expanduser() / f"{release.slug}-{key}"


def has_array_export(data_dir: Path) -> bool:
    """Whether `data_dir` holds the three files of the array export."""
    return all((data_dir / name).is_file() for name in ARRAY_FILES)


def prepare_cifar(data_dir: str | Path, release: CIFARRelease, download: bool) -> str:
    """Make sure a verified copy of `release` exists under `data_dir`; return which source will be read."""
    data_dir = Path(data_dir)
    if has_array_export(data_dir):
        _verify_array_export(data_dir)
        return "arrays"
    present = [name for name in ARRAY_FILES if (data_dir / name).is_file()]
    if present:
        missing = [name for name in ARRAY_FILES if name not in present]
        raise CorruptDatasetError(
            f"the array export in {data_dir.resolve()} is incomplete: {', '.join(present)} but no "
            f"{', '.join(missing)}. Restore the missing file(s) from the copy it came from, or remove the array "
            "files to use the official release instead"
        )
    archive = official_archive(data_dir, release)
    if official_folder(data_dir, release).is_dir():
        _verify_official_folder(data_dir, release, archive)
        return "official"
    if archive.is_file():
        target = extraction_dir(data_dir, release)
        if official_folder(target, release).is_dir():  # extracted into the cache by an earlier run
            _verify_official_folder(target, release, archive)
            return "official"
        if not check_integrity(str(archive), release.tgz_md5):
            raise CorruptDatasetError(
                f"{archive} fails its md5 check (expected {release.tgz_md5}): the archive is truncated or corrupt. "
                f"Replace it with a fresh copy of {release.filename}; it was left untouched."
            )
        target.mkdir(parents=True, exist_ok=True)
        with _writing(target, release):
            if official_folder(target, release).is_dir():  # another run extracted it while this one waited
                _verify_official_folder(target, release, archive)
                return "official"
            if target != data_dir:
                log.warning("%s is not writable: extracting %s into %s", data_dir, archive.name, target)
            _extract(archive, target, release)
        return "official"
    if download:
        created = _missing_folders(data_dir)  # made for the download (and its lock file)
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            with _writing(data_dir, release):
                if not official_folder(data_dir, release).is_dir():  # else another run downloaded it meanwhile
                    _download(data_dir, release)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            if created:  # a mistyped data_dir leaves no folder behind
                _lock_file(data_dir, release).unlink(missing_ok=True)
                _remove_empty(created)
            raise DatasetNotFoundError(_missing_message(data_dir, release, f"and the download failed ({err})")) from err
        _verify_official_folder(data_dir, release, archive)
        return "official"
    raise DatasetNotFoundError(_missing_message(data_dir, release, "and download is off (data.download=false)"))


def _lock_file(folder: Path, release: CIFARRelease) -> Path:
    """The lock held while `release` is written into `folder`: hidden, and named after no file a layout check reads."""
    return folder / f".{release.filename}.lock"


@contextmanager
def _writing(folder: Path, release: CIFARRelease) -> Iterator[None]:
    """Hold `folder`'s lock for writing `release` into it, waiting (and saying so once) while another run holds it.
    The lock file stays after release: waiters must all lock the same file."""
    lock = FileLock(str(_lock_file(folder, release)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info(
            "waiting for another run to finish writing %s into %s (it holds %s)", release.name, folder, lock.lock_file
        )
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _extract(archive: Path, target: Path, release: CIFARRelease) -> None:
    """Extract `archive` into a hidden folder inside `target`, verify the release folder there, then move it into
    place: the folder appears whole or not at all."""
    # A run killed here (kill -9) leaves this `.extracting-*` folder behind: no layout check reads it; remove it.
    scratch = Path(tempfile.mkdtemp(prefix=".extracting-", dir=target))
    try:
        extract_archive(str(archive), str(scratch))
        try:
            _verify_official_folder(scratch, release)
        except CorruptDatasetError as err:
            raise CorruptDatasetError(
                f"{archive} passes its md5 check, but the {release.base_folder} folder in it does not ({err}); "
                "nothing was extracted."
            ) from err
        os.rename(official_folder(scratch, release), official_folder(target, release))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _download(data_dir: Path, release: CIFARRelease) -> None:
    """Download and extract `release` with torchvision (which checks the md5s) into a hidden folder inside
    `data_dir`, then move the release folder and the archive into place, the folder first."""
    scratch = Path(tempfile.mkdtemp(prefix=".downloading-", dir=data_dir))  # left by a killed run, as in `_extract`
    downloaded = official_archive(scratch, release)
    try:
        try:
            release.torchvision_class(str(scratch), train=True, download=True)
        except (urllib.error.URLError, OSError, http.client.HTTPException):
            if check_integrity(str(downloaded), release.tgz_md5):  # whole; extracting it failed (a full disk?)
                os.rename(downloaded, official_archive(data_dir, release))  # the next run extracts it
            else:
                _set_aside(downloaded, data_dir)  # a partial download
            raise
        except RuntimeError as err:  # torchvision's "File not found or corrupted.": the md5 of the download differs
            raise CorruptDatasetError(_corrupt_download_message(downloaded, data_dir, release)) from err
        os.rename(official_folder(scratch, release), official_folder(data_dir, release))
        os.rename(downloaded, official_archive(data_dir, release))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, deepest first."""
    missing = []
    for path in (folder.absolute(), *folder.absolute().parents):
        if path.exists():
            break
        missing.append(path)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove `folders` (deepest first) as long as they are empty; a folder with anything in it stays."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _corrupt_download_message(downloaded: Path, data_dir: Path, release: CIFARRelease) -> str:
    """Describe the archive torchvision downloaded and found corrupt, and move it aside into `data_dir`: it is this
    project's own download, and leaving it would make the next run read it instead of downloading again."""
    archive = official_archive(data_dir, release)
    if not downloaded.is_file():
        return f"the download of {release.url} to {archive} failed its check and left no file; try again"
    size, md5 = downloaded.stat().st_size, _file_hash(downloaded, hashlib.md5())
    with downloaded.open("rb") as f:
        html = f.read(512).lstrip().lower().startswith((b"<!doctype html", b"<html"))
    aside = _set_aside(downloaded, data_dir)
    what = "an HTML page, not the archive (a proxy or login page?)" if html else "truncated or corrupt"
    return (
        f"the download of {release.url} is {what}: {size:,} bytes with md5 {md5}, expected md5 {release.tgz_md5}. "
        f"It was moved to {aside}, so the next run downloads it again. If that keeps failing, download "
        f"{release.filename} yourself and place it at {archive}, or point data.data_dir at a folder that has it."
    )


def _set_aside(path: Path, folder: Path) -> Path | None:
    """Move a file this project downloaded and cannot use to `folder/<name>.corrupt-<time>`; None when there is none."""
    if not path.is_file():
        return None
    aside = folder / f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
    path.rename(aside)
    return aside


def load_cifar(data_dir: str | Path, release: CIFARRelease) -> ImageArrays:
    """Read the copy of `release` that `prepare_cifar` verified (without re-hashing it)."""
    data_dir = Path(data_dir)
    if has_array_export(data_dir):
        return _read_array_export(data_dir, release)
    if official_folder(data_dir, release).is_dir():
        return _read_official_folder(data_dir, release)
    cache = extraction_dir(data_dir, release)
    if official_archive(data_dir, release).is_file() and official_folder(cache, release).is_dir():
        return _read_official_folder(cache, release)
    raise DatasetNotFoundError(_missing_message(data_dir, release, "(prepare_data was not run?)"))


def _missing_message(data_dir: Path, release: CIFARRelease, why: str) -> str:
    return (
        f"{release.name} not found in {data_dir.resolve()} {why}. Looked for: the array export "
        f"({', '.join(ARRAY_FILES)}), the official folder {release.base_folder}/ and the archive {release.filename}. "
        f"Place one of them there, point data.data_dir at a folder that has one, or run offline with data=synthetic."
    )


def _verify_official_folder(data_dir: Path, release: CIFARRelease, archive: Path | None = None) -> None:
    """Check every file of the official folder against torchvision's md5s. A fault names the file and, when
    `archive` (the one the folder can be extracted from) checks out, says that removing the folder fixes it."""
    folder = official_folder(data_dir, release)
    for name, md5 in release.official_files():
        path = folder / name
        if not path.is_file():
            fault = f"{path} is missing from the {release.name} folder {folder}"
            remedy = "; restore it or remove the folder."
        elif not check_integrity(str(path), md5):
            fault = f"{path} fails its md5 check (expected {md5}): the file is truncated or corrupt"
            remedy = ". Replace the folder with a fresh copy; nothing was deleted."
        else:
            continue
        if archive is not None and check_integrity(str(archive), release.tgz_md5):  # an extraction cut short?
            remedy = (
                f". Remove the folder to extract it again from {archive} (its md5 checks out); nothing was deleted."
            )
        raise CorruptDatasetError(fault + remedy)


def _read_official_folder(data_dir: Path, release: CIFARRelease) -> ImageArrays:
    # torchvision's own reader; it re-checks the md5s and raises if they fail. It keeps only the (fine) labels,
    # so CIFAR-100's coarse ones are read from the same (verified) pickles, when the meta file names them.
    train = release.torchvision_class(str(data_dir), train=True, download=False)
    test = release.torchvision_class(str(data_dir), train=False, download=False)
    folder = official_folder(data_dir, release)
    train_labels = np.asarray(train.targets, dtype=np.int64)
    test_labels = np.asarray(test.targets, dtype=np.int64)
    names = _unpickle(folder / release.meta_file).get("coarse_label_names", [])
    coarse = [_unpickle(folder / name).get("coarse_labels") for name in release.batch_files()] if names else []
    superclasses, fine_to_coarse = _superclasses(
        names, np.concatenate([train_labels, test_labels]), coarse, folder, release.num_classes
    )
    return ImageArrays(
        train_images=train.data,
        train_labels=train_labels,
        test_images=test.data,
        test_labels=test_labels,
        classes=tuple(train.classes),
        superclasses=superclasses,
        fine_to_coarse=fine_to_coarse,
    )


def _unpickle(path: Path) -> dict:
    with path.open("rb") as f:
        return pickle.load(f, encoding="latin1")


def _superclasses(
    names: list[str],
    fine_labels: np.ndarray,
    coarse_parts: list[np.ndarray | list[int] | None],
    folder: Path,
    num_classes: int,
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Superclass names and the superclass of each fine class; empty when `folder` has no coarse labels or names."""
    if not names or any(part is None for part in coarse_parts):
        return (), ()
    coarse = np.concatenate([np.asarray(part, dtype=np.int64) for part in coarse_parts])
    try:
        if len(coarse) != len(fine_labels):
            raise ValueError(f"{len(coarse)} coarse labels for {len(fine_labels)} images")
        if coarse.size and (coarse.min() < 0 or coarse.max() >= len(names)):
            raise ValueError(f"coarse labels outside 0–{len(names) - 1}, the range of the {len(names)} names")
        fine_to_coarse = superclass_of_each_class(fine_labels, coarse, num_classes)
    except ValueError as err:
        raise CorruptDatasetError(f"the coarse labels (superclasses) in {folder} are inconsistent: {err}") from err
    return tuple(names), fine_to_coarse


def _verify_array_export(data_dir: Path) -> None:
    sums = data_dir / "SHA256SUMS"
    if not sums.is_file():
        return
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise CorruptDatasetError(
                f"{sums} has a line that is not '<sha256> <file>': {line.strip()[:80]!r}; restore the file or remove it"
            )
        digest, name = parts
        path = data_dir / name.strip().lstrip("*")
        if path.name not in ARRAY_FILES:
            continue
        actual = _file_hash(path, hashlib.sha256())
        if actual != digest.lower():  # sha256sum -c reads either case
            raise CorruptDatasetError(
                f"{path} fails its SHA-256 check against {sums} (expected {digest}, got {actual}): "
                "the file is truncated or corrupt. Replace it with a fresh copy; nothing was deleted."
            )


def _file_hash(path: Path, digest: Any) -> str:
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_array_export(data_dir: Path, release: CIFARRelease) -> ImageArrays:
    path, key = data_dir / "meta.json", release.names_key
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptDatasetError(f"{path} cannot be read as {release.name} metadata: {err}") from err
    if isinstance(meta, dict) and key not in meta:  # another dataset's export, most likely
        raise CorruptDatasetError(
            f"{path} has no {key!r} (it has: {', '.join(map(repr, meta)) or 'nothing'}): {release.name} metadata "
            f"names its classes under {key!r}. Point data.data_dir at the {release.name} array export, or choose the "
            "data= option of the dataset this one is"
        )
    try:
        classes = tuple(meta[key])
        coarse_names = list(meta.get("coarse_label_names") or [])
    except (KeyError, TypeError, AttributeError) as err:
        raise CorruptDatasetError(f"{path} cannot be read as {release.name} metadata: {err!r}") from err
    train_images, train_labels, train_coarse = _read_npz(data_dir / "train.npz", release)
    test_images, test_labels, test_coarse = _read_npz(data_dir / "test.npz", release)
    order = np.random.default_rng(TEST_ORDER_SEED).permutation(len(test_labels))
    test_images, test_labels = test_images[order], test_labels[order]
    test_coarse = None if test_coarse is None else test_coarse[order]
    if len(classes) != release.num_classes or len(set(classes)) != release.num_classes:
        raise CorruptDatasetError(
            f"{path} names {len(set(classes))} distinct classes, the labels need {release.num_classes}: "
            "restore meta.json from the copy the arrays came from"
        )
    superclasses, fine_to_coarse = _superclasses(
        coarse_names,
        np.concatenate([train_labels, test_labels]),
        [train_coarse, test_coarse],
        data_dir,
        release.num_classes,
    )
    return ImageArrays(train_images, train_labels, test_images, test_labels, classes, superclasses, fine_to_coarse)


def _read_npz(path: Path, release: CIFARRelease) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Images, (fine) labels and, when the file has them, coarse labels."""
    key = release.label_key
    try:
        with np.load(path) as npz:
            missing = [name for name in ("data", key) if name not in npz.files]
            if missing:  # another dataset's export, most likely
                raise CorruptDatasetError(
                    f"{path} has no {missing[0]!r} array (it has: {', '.join(map(repr, npz.files)) or 'none'}): a "
                    f"{release.name} array file holds 'data' and {key!r}. Point data.data_dir at the {release.name} "
                    "array export, or choose the data= option of the dataset this one is"
                )
            images, labels = npz["data"], npz[key].astype(np.int64)
            coarse = npz["coarse_labels"].astype(np.int64) if "coarse_labels" in npz.files else None
    except (zipfile.BadZipFile, EOFError, ValueError, KeyError, OSError, pickle.UnpicklingError) as err:
        raise CorruptDatasetError(
            f"{path} cannot be read as a {release.name} array file (truncated or corrupt?): {err}"
        ) from err
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3) or len(images) != len(labels):
        raise CorruptDatasetError(
            f"{path} holds data {images.dtype}{list(images.shape)} and {len(labels)} labels; "
            "expected uint8 [N, 32, 32, 3] with N labels"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= release.num_classes):
        raise CorruptDatasetError(f"{path} has {key} outside 0–{release.num_classes - 1}")
    return images, labels, coarse
