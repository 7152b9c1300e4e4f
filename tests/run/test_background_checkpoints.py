"""AtomicCheckpointIO(background=True): checkpoints written in a thread of their own while training goes on."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

import wrncifar.run.checkpoints as checkpointing
from tests.conftest import HANG_TIMEOUT_S, TINY_SYNTHETIC
from wrncifar.callbacks.checkpoint_on_signal import CheckpointOnSignal
from wrncifar.run.checkpoints import AtomicCheckpointIO, CheckpointWriteError, load_checkpoint
from wrncifar.run.fit_and_test import train
from wrncifar.run.loggers import WandbLogger


class Gate:
    """Holds every checkpoint write until opened; records the thread each write ran on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.open = threading.Event()
        self.threads: list[str] = []
        write = checkpointing.write_atomically

        def held_write(checkpoint, target: Path) -> None:
            self.threads.append(threading.current_thread().name)
            assert self.open.wait(HANG_TIMEOUT_S), "the test never opened the gate"
            write(checkpoint, target)

        monkeypatch.setattr(checkpointing, "write_atomically", held_write)


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    gate = Gate(monkeypatch)
    yield gate
    gate.open.set()  # a failing test never leaves a writer thread waiting


def checkpoint(weight: torch.Tensor, step: int) -> dict:
    return {"state_dict": {"w": weight}, "global_step": step, "pytorch-lightning_version": "2.6"}


def test_a_background_save_returns_at_once_and_writes_the_state_as_it_was_when_asked(tmp_path, gate) -> None:
    io, path, weight = AtomicCheckpointIO(background=True), tmp_path / "last.ckpt", torch.ones(4)
    io.save_checkpoint(checkpoint(weight, step=1), path)
    assert not path.exists(), "save_checkpoint returned before the file was written: the write is the thread's"
    weight.add_(5)  # the next optimizer step changes the weights in place
    gate.open.set()
    io.teardown()
    saved = load_checkpoint(path)
    assert saved["global_step"] == 1 and torch.equal(saved["state_dict"]["w"], torch.ones(4))
    assert gate.threads and all(name.startswith("checkpoint-writer") for name in gate.threads)


def test_loading_and_removing_wait_for_the_writes_asked_before_them(tmp_path, gate) -> None:
    io = AtomicCheckpointIO(background=True)
    threading.Timer(0.2, gate.open.set).start()  # the third call below waits for the first (MAX_PENDING)
    io.save_checkpoint(checkpoint(torch.zeros(2), step=1), tmp_path / "epoch_001.ckpt")
    io.remove_checkpoint(tmp_path / "epoch_001.ckpt")  # the best of an earlier epoch, replaced by a better one
    io.save_checkpoint(checkpoint(torch.zeros(2), step=2), tmp_path / "epoch_002.ckpt")
    assert io.load_checkpoint(tmp_path / "epoch_002.ckpt")["global_step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["epoch_002.ckpt"], "the removed file is not written after"


def test_pending_writes_are_bounded_so_a_slow_disk_holds_training_back(tmp_path, gate) -> None:
    io = AtomicCheckpointIO(background=True)
    for step in range(checkpointing.MAX_PENDING):
        io.save_checkpoint(checkpoint(torch.zeros(2), step), tmp_path / f"{step}.ckpt")
    one_more = threading.Thread(
        target=io.save_checkpoint, args=(checkpoint(torch.zeros(2), 9), tmp_path / "9.ckpt"), daemon=True
    )
    one_more.start()
    one_more.join(0.5)
    assert one_more.is_alive(), f"a save beyond {checkpointing.MAX_PENDING} pending copies waits for the disk"
    gate.open.set()
    one_more.join(HANG_TIMEOUT_S)
    io.teardown()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.ckpt", "1.ckpt", "9.ckpt"]


@pytest.fixture
def snapshots(gate: Gate, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Every snapshot handed to the writer (behind the gate), kept alive: no host address is freed and reused."""
    written: list[dict] = []
    held_write = checkpointing.write_atomically

    def recorded(snapshot, target: Path) -> None:
        written.append(snapshot)
        held_write(snapshot, target)

    monkeypatch.setattr(checkpointing, "write_atomically", recorded)
    return written


def test_a_snapshot_reuses_the_host_memory_of_a_written_checkpoint_never_of_a_pending_one(
    tmp_path, gate, snapshots
) -> None:
    io, weight = AtomicCheckpointIO(background=True), torch.zeros(256)

    def save(step: int) -> None:
        weight.fill_(step)  # each save holds different values
        io.save_checkpoint(checkpoint(weight, step), tmp_path / f"{step}.ckpt")

    save(0)
    save(1)  # the first is still being written: its host memory is not the second's
    gate.open.set()
    io.wait()
    save(2)
    io.wait()
    weight = torch.zeros(3, 3)  # another network: new shapes, new host memory
    save(3)
    io.teardown()
    address = [snapshot["state_dict"]["w"].data_ptr() for snapshot in snapshots]
    assert address[0] != address[1], "a pending write's host memory was overwritten by the next save"
    assert address[2] in address[:2], "after a write finished, the next save copies into its host memory"
    assert address[3] not in address[:3]
    for step in range(4):
        assert load_checkpoint(tmp_path / f"{step}.ckpt")["state_dict"]["w"].eq(step).all(), f"{step}.ckpt"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_snapshot_is_copied_to_pinned_host_memory_and_written_whole(tmp_path, gate, snapshots) -> None:
    io, weight = AtomicCheckpointIO(background=True), torch.ones(1024, device="cuda")
    io.save_checkpoint(checkpoint(weight, step=1), tmp_path / "1.ckpt")
    weight.add_(1)  # the next step, queued on the GPU right after the copy
    gate.open.set()
    io.wait()
    io.save_checkpoint(checkpoint(weight, step=2), tmp_path / "2.ckpt")  # into the first one's host memory
    io.teardown()
    assert [s["state_dict"]["w"].is_pinned() for s in snapshots] == [True, True]
    assert snapshots[0]["state_dict"]["w"].data_ptr() == snapshots[1]["state_dict"]["w"].data_ptr()
    for step in (1, 2):
        assert load_checkpoint(tmp_path / f"{step}.ckpt")["state_dict"]["w"].eq(step).all()


def test_a_failed_background_write_stops_the_run_at_its_next_checkpoint_and_keeps_the_previous_file(
    tmp_path, monkeypatch
) -> None:
    io, path = AtomicCheckpointIO(background=True), tmp_path / "last.ckpt"
    io.save_checkpoint(checkpoint(torch.ones(2), step=1), path)
    io.wait()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpointing.tempfile, "mkstemp", full_disk)
    io.save_checkpoint(checkpoint(torch.zeros(2), step=2), path)  # fails in the thread
    with pytest.raises(CheckpointWriteError, match=r"No space left on device.*free some disk space"):
        io.teardown()  # the end of fit: the error reaches the run, which exits with it
    assert load_checkpoint(path)["global_step"] == 1


@pytest.mark.parametrize("log_model", ["all", False])
def test_wandb_reads_checkpoint_files_only_once_they_are_written(tmp_path, gate, monkeypatch, log_model) -> None:
    path, seen = tmp_path / "epoch_001.ckpt", []
    monkeypatch.setattr(
        LightningWandbLogger, "after_save_checkpoint", lambda self, callback: seen.append(path.exists())
    )
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), log_model=log_model)
    io = AtomicCheckpointIO(background=True)
    io.save_checkpoint(checkpoint(torch.ones(2), step=1), path)
    threading.Timer(0.2, gate.open.set).start()
    logger.after_save_checkpoint(object())
    # log_model="all" uploads the file now, so it waits for it; without log_model nothing waits for the disk.
    assert seen == [log_model == "all"]
    io.teardown()


TWO_SHORT_EPOCHS = [
    *TINY_SYNTHETIC,
    "logger=null",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
]


def test_a_run_writes_its_checkpoints_in_the_background_and_they_are_whole_when_fit_ends(
    make_config, tmp_path, monkeypatch
) -> None:
    threads: list[str] = []
    write = checkpointing.write_atomically

    def recorded_write(checkpoint, target: Path) -> None:
        threads.append(threading.current_thread().name)
        time.sleep(0.3)  # a slow disk: fit and test go on without this write, then wait for it at the end
        write(checkpoint, target)

    monkeypatch.setattr(checkpointing, "write_atomically", recorded_write)
    metrics = train(make_config(TWO_SHORT_EPOCHS))
    assert threads and all(name.startswith("checkpoint-writer") for name in threads)
    saved = sorted((tmp_path / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in [p.name for p in saved] and len(saved) >= 2
    assert all(load_checkpoint(p)["epoch"] in (0, 1) for p in saved)  # tested from the best one: it was whole
    assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["epoch"] == 1 and "test/acc" in metrics


def test_the_foreground_switch_writes_on_the_training_thread(make_config, monkeypatch) -> None:
    threads: list[str] = []
    write = checkpointing.write_atomically
    monkeypatch.setattr(
        checkpointing, "write_atomically", lambda c, t: (threads.append(threading.current_thread().name), write(c, t))
    )
    train(make_config([*TWO_SHORT_EPOCHS, "trainer.plugins.0.background=false"]))
    assert threads and set(threads) == {threading.current_thread().name}


def test_a_write_that_fails_after_fit_moved_on_stops_the_run_with_its_error_and_keeps_the_earlier_files(
    make_config, tmp_path, monkeypatch
) -> None:
    write, calls = checkpointing.write_atomically, []

    def full_disk_at_the_last_write(checkpoint, target: Path) -> None:
        calls.append(target.name)
        if checkpoint["epoch"] == 1 and target.name == "last.ckpt":
            raise CheckpointWriteError(f"could not write checkpoint {target} (No space left on device)")
        write(checkpoint, target)

    monkeypatch.setattr(checkpointing, "write_atomically", full_disk_at_the_last_write)
    # the entry points turn a CheckpointWriteError into its message and exit 1 (entry.USER_ERRORS)
    with pytest.raises(CheckpointWriteError, match=r"last\.ckpt \(No space left"):
        train(make_config(TWO_SHORT_EPOCHS))
    assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["epoch"] == 0, "the previous last.ckpt is kept"
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))


def test_a_signals_save_is_on_disk_before_the_job_is_requeued(tmp_path, gate, monkeypatch) -> None:
    io, requeued = AtomicCheckpointIO(background=True), threading.Event()
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setattr(SLURMEnvironment, "detect", staticmethod(lambda: True))
    monkeypatch.setattr(
        "wrncifar.callbacks.checkpoint_on_signal.requeue_slurm_job",
        lambda: requeued.set() or (tmp_path / "last.ckpt").is_file(),
    )
    trainer = SimpleNamespace(
        strategy=SimpleNamespace(checkpoint_io=io),
        save_checkpoint=lambda path, weights_only: io.save_checkpoint(checkpoint(torch.ones(2), step=3), path),
        global_step=3,
        is_global_zero=True,
        state=SimpleNamespace(fn=TrainerFn.FITTING),  # a signal in training, not in the test after it
    )
    callback, stop = CheckpointOnSignal(tmp_path), SIGTERMException()
    callback.signum = signal.SIGUSR1
    stopping = threading.Thread(target=callback.on_exception, args=(trainer, None, stop))
    stopping.start()
    time.sleep(0.2)
    assert not requeued.is_set(), "the job was requeued (and would be killed) while its checkpoint was unwritten"
    gate.open.set()
    stopping.join(HANG_TIMEOUT_S)
    assert stop.requeued, "requeued only once last.ckpt was on disk"
    assert load_checkpoint(tmp_path / "last.ckpt")["global_step"] == 3
