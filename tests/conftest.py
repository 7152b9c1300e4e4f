"""Shared fixtures: config composition, a CIFAR-100-format folder built on the fly, subprocess entry points."""

from __future__ import annotations

import csv
import hashlib
import http.server
import os
import pickle
import shlex
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, open_dict
from torchvision.datasets import CIFAR10, CIFAR100

from wrncifar.run.command_line import null_group_overrides
from wrncifar.run.speed import resolve_speed

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SHARED_CIFAR100 = ROOT.parent / "shared" / "data" / "cifar100"
SHARED_CIFAR10 = ROOT.parent / "shared" / "data" / "cifar10"  # not staged on the development machines (yet)
# How long a subprocess of a test may run before it counts as hung. Timeouts catch hangs, they never judge speed:
# generous, and WRNCIFAR_TEST_TIMEOUT_S raises it further on a slow or busy machine.
HANG_TIMEOUT_S = float(os.environ.get("WRNCIFAR_TEST_TIMEOUT_S", "1800"))

# Small but complete: every class present, a few images each.
FAKE_CLASSES = 100
FAKE_TRAIN_PER_CLASS = 8
FAKE_TEST_PER_CLASS = 2
# The CIFAR-10-format folder: its 10 classes, spread over the five training batch files as in the official release.
FAKE_CIFAR10_CLASSES = 10
FAKE_CIFAR10_TRAIN_PER_CLASS = 10
FAKE_CIFAR10_TEST_PER_CLASS = 4


def compose_config(config_name: str, overrides: list[str], output_dir: Path, speed: bool = True) -> DictConfig:
    """Compose a config as the entry points would, with outputs under `output_dir` and no `hydra` node; with
    `speed`, the `auto` speed settings resolved for this machine as `train` does first."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=null_group_overrides(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir)
        del cfg["hydra"]
    if speed:
        resolve_speed(cfg)
    return cfg


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., DictConfig]:
    def make(overrides: list[str] | None = None, config_name: str = "train.yaml", speed: bool = True) -> DictConfig:
        return compose_config(config_name, overrides or [], tmp_path, speed)

    return make


def run_entry(
    script: str, args: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run `python src/<script> …` as a user would, offline, and capture its output; `env` adds variables.

    The result's `seconds` says how long it took (also printed, so a slow machine's numbers show in the log).
    """
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0", **(env or {})}
    command = [sys.executable, str(ROOT / "src" / script), *args]
    start = time.monotonic()
    try:
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(
            f"{shlex.join(command[1:])} was still running after {HANG_TIMEOUT_S:.0f} s: a hang, or a machine far "
            "slower than expected (raise WRNCIFAR_TEST_TIMEOUT_S)"
        ) from err
    result.seconds = time.monotonic() - start
    print(f"{script} {' '.join(args)[:200]}: {result.seconds:.1f} s, exit {result.returncode}")
    return result


def quiet_trainer(callbacks: list[Callback] | None = None, **kwargs) -> Trainer:
    """A one-process CPU Trainer for in-process tests: no logger, progress bar or model summary; checkpoints only
    when a ModelCheckpoint is among `callbacks`. `kwargs` go to the Trainer."""
    callbacks = callbacks or []
    return Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        callbacks=callbacks,
        **kwargs,
    )


def fake_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def write_cifar_folder(root: Path) -> dict[str, np.ndarray]:
    """Write `root/cifar-100-python/{train,test,meta}` in the official pickle format; return the raw arrays."""
    folder = root / CIFAR100.base_folder
    folder.mkdir(parents=True)
    arrays = {}
    for split, per_class, seed in [("train", FAKE_TRAIN_PER_CLASS, 1), ("test", FAKE_TEST_PER_CLASS, 2)]:
        labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(FAKE_CLASSES), per_class))
        images = fake_images(len(labels), seed)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
        entry = {
            "data": images.transpose(0, 3, 1, 2).reshape(len(labels), -1),  # official layout: rows of CHW
            "fine_labels": labels.tolist(),
            "coarse_labels": (labels // 5).tolist(),
        }
        with (folder / split).open("wb") as f:
            pickle.dump(entry, f)
    names = [f"fake_class_{i:02d}" for i in range(FAKE_CLASSES)]
    with (folder / "meta").open("wb") as f:
        pickle.dump({"fine_label_names": names, "coarse_label_names": [f"super_{i}" for i in range(20)]}, f)
    return arrays


def write_cifar10_folder(root: Path) -> dict[str, np.ndarray]:
    """Write `root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}` in the official pickle format
    (`labels`, `label_names`); return the raw arrays, the training images in the order of the batch files."""
    folder = root / CIFAR10.base_folder
    folder.mkdir(parents=True)
    arrays = {}
    splits = [("train", FAKE_CIFAR10_TRAIN_PER_CLASS, 5), ("test", FAKE_CIFAR10_TEST_PER_CLASS, 6)]
    for split, per_class, seed in splits:
        labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(FAKE_CIFAR10_CLASSES), per_class))
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = fake_images(len(labels), seed), labels
    names = [name for name, _ in CIFAR10.train_list]
    batches = zip(names, np.array_split(np.arange(len(arrays["train_labels"])), len(names)), strict=True)
    for name, rows in [*batches, ("test_batch", np.arange(len(arrays["test_labels"])))]:
        split = "test" if name == "test_batch" else "train"
        images, labels = arrays[f"{split}_images"][rows], arrays[f"{split}_labels"][rows]
        entry = {
            "batch_label": f"{name} of 5" if split == "train" else "testing batch 1 of 1",
            "labels": labels.tolist(),
            "data": images.transpose(0, 3, 1, 2).reshape(len(labels), -1),  # official layout: rows of CHW
            "filenames": [f"image_{i}.png" for i in rows],
        }
        with (folder / name).open("wb") as f:
            pickle.dump(entry, f)
    meta = {"num_cases_per_batch": len(arrays["train_labels"]) // len(names), "num_vis": 3072}
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({**meta, "label_names": [f"fake10_{i}" for i in range(FAKE_CIFAR10_CLASSES)]}, f)
    return arrays


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def cifar_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, np.ndarray]]:
    """A CIFAR-100-format folder whose md5s torchvision expects: only the expected checksums are swapped,
    every reading and checking path is the real one."""
    data_dir = tmp_path / "data"
    arrays = write_cifar_folder(data_dir)
    folder = data_dir / CIFAR100.base_folder
    monkeypatch.setattr(CIFAR100, "train_list", [["train", md5(folder / "train")]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", md5(folder / "test")]])
    monkeypatch.setattr(CIFAR100, "meta", {**CIFAR100.meta, "md5": md5(folder / "meta")})
    return data_dir, arrays


@pytest.fixture
def cifar10_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, np.ndarray]]:
    """A CIFAR-10-format folder whose md5s torchvision expects: only the expected checksums are swapped,
    every reading and checking path is the real one."""
    data_dir = tmp_path / "data10"
    arrays = write_cifar10_folder(data_dir)
    folder = data_dir / CIFAR10.base_folder
    monkeypatch.setattr(CIFAR10, "train_list", [[name, md5(folder / name)] for name, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5(folder / "test_batch")]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5(folder / "batches.meta")})
    return data_dir, arrays


class ArchiveServer(http.server.BaseHTTPRequestHandler):
    """Answers every GET and HEAD with `body` (set per test): the real download code talks to it on 127.0.0.1."""

    body = b""
    requests = 0

    def do_HEAD(self) -> None:  # torchvision resolves redirects with a HEAD request first
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()

    def do_GET(self) -> None:
        type(self).requests += 1
        self.do_HEAD()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def serve_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path, type], bytes]]:
    """`serve(data_dir, dataset_class)`: point the download URL of torchvision's `dataset_class` (CIFAR10, CIFAR100)
    at a local HTTP server answering with `ArchiveServer.body`, and its expected archive md5 at the tar.gz of the
    official folder under `data_dir`; returns that good archive's bytes."""
    servers = []

    def serve(data_dir: Path, dataset_class: type) -> bytes:
        archive = tmp_path / f"served-{dataset_class.filename}"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(data_dir / dataset_class.base_folder, arcname=dataset_class.base_folder)
        good = archive.read_bytes()
        monkeypatch.setattr(dataset_class, "tgz_md5", hashlib.md5(good).hexdigest())
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ArchiveServer)
        server.handle_error = lambda request, address: None  # a client closing early is no test failure
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        monkeypatch.setattr(dataset_class, "url", f"http://127.0.0.1:{server.server_port}/{dataset_class.filename}")
        ArchiveServer.requests = 0
        return good

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


# The tiny model on a small synthetic set: a few seconds an epoch on 2 cores, and it learns.
TINY_SYNTHETIC = [
    "model=wrn_tiny",
    "data=synthetic",
    "data.train_per_class=30",
    "data.val_per_class=10",
    "trainer=cpu",
    "extras.print_config=false",
]
# The smallest synthetic set (4 / 2 / 1 images per class): jobs that exist to be run, compared or counted.
FEW_IMAGES = [*TINY_SYNTHETIC, "data.train_per_class=4", "data.val_per_class=2", "data.test_per_class=1"]
TRAINED_EPOCHS = 3


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "csv" / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def last_logged(rows: list[dict[str, str]], key: str) -> float:
    return float([r[key] for r in rows if r.get(key)][-1])


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of `python src/train.py` on TINY_SYNTHETIC for TRAINED_EPOCHS epochs."""
    run_dir = tmp_path_factory.mktemp("run")
    result = run_entry(
        "train.py", [*TINY_SYNTHETIC, f"trainer.max_epochs={TRAINED_EPOCHS}", f"hydra.run.dir={run_dir}"]
    )
    assert result.returncode == 0, f"after {result.seconds:.0f} s: " + result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


def best_checkpoint(run_dir: Path) -> Path:
    """The best-by-val/acc checkpoint of a run (its only `epoch_*.ckpt`)."""
    (best,) = (run_dir / "checkpoints").glob("epoch_*.ckpt")
    return best


@pytest.fixture(scope="session")
def evaluated_run(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of `python src/eval.py eval.tta=flip` on `trained_run`'s best checkpoint: its
    `test_metrics.json`, the evaluation report in `report/`, and what the command printed in `console.txt`."""
    eval_dir = tmp_path_factory.mktemp("eval")
    args = [
        f"ckpt_path={best_checkpoint(trained_run)}",
        "eval.tta=flip",
        f"eval.report_dir={eval_dir / 'report'}",
        f"hydra.run.dir={eval_dir}",
        "extras.print_config=false",
    ]
    result = run_entry("eval.py", args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (eval_dir / "console.txt").write_text(result.stdout + result.stderr)  # what the command printed
    return eval_dir


@pytest.fixture(scope="session")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of `python src/train.py -m model.optimizer.lr=0.05,0.2`: two jobs of two epochs on a very small
    synthetic set (they learn little; they exist to be compared)."""
    sweep_dir = tmp_path_factory.mktemp("sweep")
    args = ["-m", *FEW_IMAGES, "trainer.max_epochs=2", "model.optimizer.lr=0.05,0.2", f"hydra.sweep.dir={sweep_dir}"]
    result = run_entry("train.py", args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return sweep_dir


# W&B: offline runs read back from the record file wandb writes (`run-<id>.wandb`), with wandb's own protobufs.
WANDB_BLOCK = 32768  # the record file is a LevelDB-style log: 32 KiB blocks of chunks, each with a 7-byte header
WANDB_FULL, WANDB_LAST = 1, 4


def wandb_records(run_dir: Path) -> list:
    """Every record of the one W&B run under `run_dir/wandb/`, in the order written."""
    import struct

    from wandb.proto.wandb_internal_pb2 import Record

    (path,) = (run_dir / "wandb").glob("*run-*/run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B record file"
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        if WANDB_BLOCK - pos % WANDB_BLOCK < 7:  # a block's tail too short for a header is padding
            pos += WANDB_BLOCK - pos % WANDB_BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (WANDB_FULL, WANDB_LAST):
            record = Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def isolated_wandb_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment with no W&B credentials or settings of this machine: a fresh HOME, no WANDB_* variables,
    no NETRC; matplotlib keeps its font cache."""
    import matplotlib

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    home.mkdir(parents=True, exist_ok=True)
    return {**env, "HOME": str(home), "MPLCONFIGDIR": matplotlib.get_configdir(), "HYDRA_FULL_ERROR": "0", **extra}


# Two jobs on the smallest synthetic set, logging every step, a prediction table at every validation.
WANDB_SWEEP_ARGS = [
    "-m",
    *FEW_IMAGES,
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=1",
    "callbacks.images_per_second.window=1",
    "callbacks.wandb_media.every_n_val_epochs=1",
    "logger=many_loggers",
    "logger.wandb.log_model=true",
    "callbacks.model_checkpoint.save_top_k=-1",  # every epoch's checkpoint an artifact, logged as it is saved
    "model.optimizer.lr=0.05,0.2",
]


@pytest.fixture(scope="session")
def wandb_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """`python src/train.py -m … logger=many_loggers model.optimizer.lr=0.05,0.2` (CSV, TensorBoard and W&B) as a
    user without a W&B account runs it: no API key, no login, no WANDB_MODE, stdin closed. Returns the sweep
    folder (jobs 0 and 1) and the finished process, whose `git_heads` are the checkout's HEAD before and after it
    (what the runs may record: a commit can land while the suite runs)."""
    root = tmp_path_factory.mktemp("wandb_sweep")
    sweep_dir = root / "sweep"
    heads = {git_head()}
    result = subprocess.run(
        [sys.executable, str(ROOT / "src" / "train.py"), *WANDB_SWEEP_ARGS, f"hydra.sweep.dir={sweep_dir}"],
        cwd=ROOT,
        env=isolated_wandb_env(root / "home"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=HANG_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    result.git_heads = heads | {git_head()}
    return sweep_dir, result


def git_head() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


# Parallel runs (pytest-xdist, `-n auto --dist loadgroup` in pyproject.toml): most of the suite's time is spent in
# subprocesses importing torch and starting runs, single-threaded work that two cores share well.
MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker per core, at most MAX_WORKERS (each worker's runs start processes of their own)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_WORKERS, cores or 1))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A module's tests run on one worker, so its module-scoped runs are made once; every SLURM test runs on the
    same worker, against the one cluster (tests/slurm/cluster.py) a session starts."""
    for item in items:
        slurm = item.get_closest_marker("slurm") or "tests/slurm/" in item.nodeid
        item.add_marker(pytest.mark.xdist_group("slurm" if slurm else item.nodeid.split("::")[0]))
