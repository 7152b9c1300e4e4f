"""DDP with two CPU processes (gloo): rank-0-only outputs, evaluation of every image exactly once, agreement with
a single process at the same global batch; and the distributed set-ups that are refused before training."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
from lightning.pytorch import Trainer

from tests.conftest import last_logged, read_metrics, run_entry
from wrncifar.data.synthetic import SyntheticCIFAR100DataModule
from wrncifar.run.config_validation import ConfigError
from wrncifar.run.distributed import check_launch
from wrncifar.run.fit_and_test import train

# 99 classes make the validation and test sets odd-sized (99 images each): a sampler that pads them to an even
# count, as Lightning's default DistributedSampler does, would count one image twice.
CLASSES = 99
# 5 per class: 396 training images, 99 validation images; no dropout, whose random masks differ per process.
DDP_DATA = [
    "model=wrn_tiny",
    f"model.net.num_classes={CLASSES}",
    "model.net.dropout=0",
    "data=synthetic",
    f"data.num_classes={CLASSES}",
    "data.train_per_class=5",
    "data.val_per_class=1",
    "data.test_per_class=1",
    "data.eval_batch_size=16",
    # Images, order and augmentation of each global batch come from one permutation drawn from the seed; each
    # of the two processes takes every other image of it, so both runs train on the same global batches.
    "data.on_device=true",
    "trainer.max_epochs=1",
    "extras.print_config=false",
]
PER_DEVICE_BATCH = 8


# Loaded by every process of the DDP run below (through PYTHONPATH): each checkpoint write takes 3 s longer and
# records the thread it ran on, so a rank that read a checkpoint before rank 0 had written it would fail the run.
SLOW_WRITES = """
import os, threading, time
import wrncifar.run.checkpoints as checkpoints

write = checkpoints.write_atomically

def slow_write(checkpoint, target):
    time.sleep(3)
    write(checkpoint, target)
    with open(os.environ["WRITES_RECORD"], "a") as record:
        record.write(f"{os.environ.get('LOCAL_RANK', '0')} {threading.current_thread().name} {target.name}\\n")

checkpoints.write_atomically = slow_write
"""


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of `trainer=ddp_cpu` (2 processes, batch 8 each) through `python src/train.py`, its checkpoint
    writes slowed down (SLOW_WRITES) and recorded in `<run>/writes.txt`."""
    run_dir, hooks = tmp_path_factory.mktemp("ddp"), tmp_path_factory.mktemp("slow_writes")
    (hooks / "sitecustomize.py").write_text(SLOW_WRITES)
    env = {"PYTHONPATH": os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env["WRITES_RECORD"] = str(run_dir / "writes.txt")
    args = [*DDP_DATA, "trainer=ddp_cpu", f"data.batch_size={PER_DEVICE_BATCH}", f"hydra.run.dir={run_dir}"]
    result = run_entry("train.py", args, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return run_dir


@pytest.mark.slow
def test_rank_0_writes_checkpoints_in_the_background_and_the_test_reads_them_whole(ddp_run: Path) -> None:
    writes = (ddp_run / "writes.txt").read_text().splitlines()
    assert sorted(writes) == ["0 checkpoint-writer_0 epoch_000.ckpt", "0 checkpoint-writer_0 last.ckpt"]
    # Every rank tested the best checkpoint after rank 0 had written it: the run succeeded, and tested once.
    assert "Testing the best checkpoint" in (ddp_run / "train.log").read_text()


@pytest.mark.slow
def test_only_rank_0_writes_logs_and_checkpoints(ddp_run: Path) -> None:
    assert sorted(p.name for p in (ddp_run / "checkpoints").iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
    rows = read_metrics(ddp_run)
    assert len([r for r in rows if r.get("val/acc")]) == 1 and len([r for r in rows if r.get("test/acc")]) == 1
    log = (ddp_run / "train.log").read_text()
    assert log.count("Outputs:") == 1  # rank 1 logs to the console only
    assert not list(ddp_run.glob("*ddp_process*"))  # no folder or log of the second process


@pytest.mark.slow
def test_distributed_test_sees_every_image_once_with_exact_metrics(ddp_run: Path, make_config) -> None:
    rows = read_metrics(ddp_run)
    # The same checkpoint tested in one process: every image once, so the metrics agree to float precision.
    (best,) = (ddp_run / "checkpoints").glob("epoch_*.ckpt")
    cfg = make_config([*DDP_DATA, "trainer=cpu", "train=false", f"ckpt_path={best}", "logger=null"])
    single = train(cfg)
    for key in ("test/acc", "test/acc_top5", "test/loss"):
        assert last_logged(rows, key) == pytest.approx(single[key], rel=1e-5, abs=1e-6), key
    # Accuracies are counts of 99 images (a padded sampler would divide by 100).
    for key in ("val/acc", "val/acc_top5", "test/acc", "test/acc_top5"):
        hits = last_logged(rows, key) * CLASSES
        assert hits == pytest.approx(round(hits), abs=1e-3), key


@pytest.mark.slow
def test_ddp_trains_like_one_process_with_the_same_global_batch(ddp_run: Path, make_config, tmp_path: Path) -> None:
    cfg = make_config([*DDP_DATA, "trainer=cpu", f"data.batch_size={2 * PER_DEVICE_BATCH}", "callbacks=none"])
    single = train(cfg)
    ddp = read_metrics(ddp_run)
    assert int(ddp[-1]["step"]) == int(read_metrics(tmp_path)[-1]["step"])  # as many optimizer steps
    # Same images, order, augmentation and averaged gradients; the one difference is BatchNorm, which normalises
    # each process's 8 images by their own statistics instead of the 16 of the global batch (SyncBatchNorm, which
    # would remove it, runs on GPUs only). Over one epoch that moves the mean training loss by about 1% here;
    # 3% leaves room for the platform's float rounding. Validation and test metrics after one epoch also use the
    # BatchNorm running statistics, which under DDP are rank 0's (from its half batches): they are too far
    # apart in so short a run to compare, and the exact-evaluation test above covers them.
    assert last_logged(ddp, "train/loss") == pytest.approx(single["train/loss"], rel=0.03)


@pytest.mark.slow
def test_a_ddp_run_resumes_in_all_its_processes(ddp_run: Path, tmp_path: Path) -> None:
    """The second process runs the expanded command line (with resume=) again while rank 0 holds the folder: it
    neither refuses the folder as in use nor archives the run's config a second time."""
    run_dir = tmp_path / "run"
    shutil.copytree(ddp_run, run_dir)
    result = run_entry("train.py", [f"resume={run_dir}", "trainer.max_epochs=2"])
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "in use by a run that is still running" not in result.stdout + result.stderr
    assert [p.name for p in (run_dir / ".hydra" / "history").iterdir()] == ["1"]
    rows = read_metrics(run_dir)
    assert [int(r["epoch"]) for r in rows if r.get("val/acc")] == [0, 1]
    assert len([r for r in rows if r.get("test/acc")]) == 1, "the first test's row dropped, the resumed run's kept"


def test_eval_loaders_split_the_images_between_processes_without_repeats() -> None:
    data = SyntheticCIFAR100DataModule(
        num_classes=CLASSES, train_per_class=3, val_per_class=1, test_per_class=1, num_workers=0
    )
    data.setup()
    for loader in ("val_dataloader", "test_dataloader"):
        shares = []
        for rank in (0, 1):
            data.trainer = SimpleNamespace(world_size=2, global_rank=rank)  # what the loaders read of a trainer
            shares.append(list(getattr(data, loader)().sampler))
        assert sorted(shares[0] + shares[1]) == list(range(CLASSES))  # every image, once
        assert [len(s) for s in shares] == [50, 49]


def test_ddp_in_a_multirun_is_refused_before_training(make_config) -> None:
    cfg = make_config(["model=wrn_tiny", "data=synthetic", "trainer=ddp_cpu", "hydra.mode=MULTIRUN"])
    with pytest.raises(ConfigError, match=r"submitit launcher, hydra/launcher=slurm"):
        train(cfg)


def test_sync_batchnorm_on_cpu_processes_is_refused_before_training(make_config) -> None:
    cfg = make_config(["model=wrn_tiny", "data=synthetic", "trainer=ddp_cpu", "trainer.sync_batchnorm=true"])
    with pytest.raises(ConfigError, match="sync_batchnorm=true needs GPUs"):
        train(cfg)


def test_more_cpu_processes_than_cores_are_refused_unless_confirmed(make_config) -> None:
    cfg = make_config(["model=wrn_tiny", "data=synthetic", "trainer=ddp_cpu", "trainer.devices=99"])
    with pytest.raises(ConfigError, match=r"trainer\.devices=99 starts 99 CPU processes on a machine with \d+ cores"):
        train(cfg)
    trainer = Trainer(accelerator="cpu", devices=99, strategy="ddp", logger=False, enable_progress_bar=False)
    check_launch(trainer, multirun=False, sync_batchnorm=False, oversubscribe=True)  # allow_oversubscription=true


def test_a_node_that_never_joins_stops_the_run_at_the_start_timeout(tmp_path: Path) -> None:
    # Node 0 of a 2-node run, started alone: without the timeout it waits at "Initializing distributed" for
    # PyTorch's 30-minute collective timeout.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": "0"}
    args = [
        "model=wrn_tiny",
        "data=synthetic",
        "trainer=ddp_cpu",
        "trainer.devices=1",
        "trainer.num_nodes=2",
        "distributed_start_timeout_s=3",
        "extras.print_config=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    result = run_entry("train.py", args, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "The 2 processes of this run did not all join within 3 s (distributed_start_timeout_s)" in output
    assert f"rank 0, meeting the others at 127.0.0.1:{port}" in output
    assert not (tmp_path / "run" / "checkpoints").exists()
