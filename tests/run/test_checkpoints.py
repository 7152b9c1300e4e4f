from __future__ import annotations

import errno
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import lightning
import pytest
import torch

import wrncifar.run.checkpoints as checkpointing
from tests.conftest import HANG_TIMEOUT_S
from wrncifar.models.classifier import ImageClassifier
from wrncifar.models.wideresnet import WideResNet
from wrncifar.run.checkpoints import (
    AtomicCheckpointIO,
    CheckpointError,
    CheckpointWriteError,
    check_compatible,
    furthest_valid_checkpoint,
    load_checkpoint,
    load_network_weights,
)


def module(widths=(4, 8, 8, 8), blocks_per_stage: int = 1) -> ImageClassifier:
    return ImageClassifier(WideResNet(num_classes=10, widths=list(widths), blocks_per_stage=blocks_per_stage))


def save(path: Path, step: int = 0, **kwargs) -> None:
    checkpoint = {"state_dict": module(**kwargs).state_dict(), "global_step": step, "pytorch-lightning_version": "2.6"}
    AtomicCheckpointIO().save_checkpoint(checkpoint, path)


def test_checkpoint_is_written_whole_and_readable_by_others(tmp_path) -> None:
    path = tmp_path / "checkpoints" / "last.ckpt"
    save(path, step=3)
    assert load_checkpoint(path)["global_step"] == 3
    assert os.stat(path).st_mode & 0o044, "a checkpoint is as readable as any file the user writes"
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"], "no temporary file is left behind"


# A write past a real file-size limit (`ulimit -f`, which fails a write as a full disk does), in a process of its
# own: torch.save's zip writer reports it as a RuntimeError, not an OSError.
LIMITED_SAVE = """
import resource, signal, sys, torch
from pathlib import Path
from wrncifar.run.checkpoints import AtomicCheckpointIO, CheckpointWriteError
path = Path(sys.argv[1])
AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(1000)}, "global_step": 1}, path)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG instead of a signal
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
try:
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(1 << 20)}, "global_step": 2}, path)
except CheckpointWriteError as err:
    print(err)
"""


def test_a_write_that_runs_out_of_space_keeps_the_previous_checkpoint_and_leaves_no_temporary(tmp_path) -> None:
    path = tmp_path / "last.ckpt"
    done = subprocess.run(
        [sys.executable, "-c", LIMITED_SAVE, str(path)], capture_output=True, text=True, timeout=HANG_TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"could not write checkpoint {path} (the write stopped short" in done.stdout
    assert "free some disk space (or raise the file-size limit, ulimit -f), then resume" in done.stdout
    assert torch.load(path, weights_only=True)["global_step"] == 1, "the previous checkpoint is whole"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"], "no temporary file is left on the full disk"


def test_temporaries_of_a_write_killed_midway_are_removed_by_the_next_write(tmp_path) -> None:
    path = tmp_path / "last.ckpt"
    (tmp_path / ".last.ckpt.abc123.tmp").write_bytes(b"")  # what a kill during a write leaves
    (tmp_path / ".step.ckpt.def456.tmp").write_bytes(b"")  # another checkpoint's: its own next write removes it
    save(path, step=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".step.ckpt.def456.tmp", "last.ckpt"]


def test_unwritable_folder_says_so(tmp_path, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(checkpointing.tempfile, "mkstemp", refuse)
    with pytest.raises(CheckpointWriteError, match=r"Permission denied.*writable"):
        save(tmp_path / "last.ckpt")


def test_missing_truncated_and_foreign_files_are_refused_with_their_path(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.ckpt")
    good = tmp_path / "good.ckpt"
    save(good)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"truncated\.ckpt is corrupt"):
        load_checkpoint(truncated)
    not_lightning = tmp_path / "notes.pt"
    torch.save({"note": "text"}, not_lightning)
    with pytest.raises(CheckpointError, match="no state_dict"):
        load_checkpoint(not_lightning)
    plain = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match=f"holds plain network weights.*init_from={plain}"):
        load_checkpoint(plain)


def make_run(folder: Path) -> Path:
    """A training run's folder as far as its path goes: its saved overrides and one checkpoint."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("- trainer.max_epochs=2\n")
    save(folder / "checkpoints" / "last.ckpt")
    return folder


def test_a_folder_given_as_a_checkpoint_says_it_is_one_and_names_the_run_to_resume(tmp_path) -> None:
    run = make_run(tmp_path / "run")
    in_run = (
        f"is a folder, not a checkpoint file: pass the path of a .ckpt file in {run}/checkpoints (last.ckpt), "
        f"or continue the training run {run} in its own folder with resume={run}"
    )
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(run)  # ckpt_path=<run>
    assert str(err.value) == f"checkpoint {run} {in_run}"
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(run / "checkpoints")
    assert str(err.value) == f"checkpoint {run}/checkpoints {in_run}"
    with pytest.raises(CheckpointError) as err:
        load_network_weights(module().net, run)  # init_from=<run>
    assert str(err.value) == f"checkpoint {run} {in_run}"
    elsewhere = tmp_path / "elsewhere"
    save(elsewhere / "a.ckpt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(elsewhere)
    assert str(err.value).endswith(
        f"is a folder, not a checkpoint file: pass the path of a .ckpt file in {elsewhere} (a.ckpt)"
    )


def test_a_checkpoint_that_cannot_be_read_is_not_called_corrupt(tmp_path, monkeypatch) -> None:
    path = tmp_path / "last.ckpt"
    save(path)

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(checkpointing.torch, "load", refuse)  # what chmod 000 does to anyone but root
    with pytest.raises(CheckpointError, match=r"last\.ckpt cannot be read: Permission denied$"):
        load_checkpoint(path)


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/wrncifar-untrusted-checkpoint-ran")


def test_an_untrusted_checkpoint_never_runs_code(tmp_path) -> None:
    MARKER.unlink(missing_ok=True)
    evil = tmp_path / "evil.ckpt"
    with evil.open("wb") as f:
        pickle.dump({"state_dict": {}, "payload": RunsCode()}, f)
    with pytest.raises(CheckpointError, match="corrupt or not a checkpoint"):
        load_checkpoint(evil)
    assert not MARKER.exists()


def test_furthest_valid_checkpoint_skips_a_corrupt_one_and_says_so(tmp_path, caplog) -> None:
    save(tmp_path / "step.ckpt", step=5)
    last = tmp_path / "last.ckpt"
    last.write_bytes((tmp_path / "step.ckpt").read_bytes()[:500])  # truncated
    with caplog.at_level(logging.WARNING):
        assert furthest_valid_checkpoint(tmp_path) == tmp_path / "step.ckpt"
    assert "last.ckpt is corrupt" in caplog.text and "furthest checkpoint that loads" in caplog.text


def test_furthest_valid_checkpoint_is_the_one_with_the_most_steps(tmp_path) -> None:
    save(tmp_path / "last.ckpt", step=4)
    save(tmp_path / "step.ckpt", step=6)  # mid-epoch, after the epoch-end last.ckpt
    os.utime(tmp_path / "last.ckpt", ns=(1, 1))
    assert furthest_valid_checkpoint(tmp_path) == tmp_path / "step.ckpt"


def set_mtimes(folder: Path, oldest_first: list[str]) -> None:
    for seconds, name in enumerate(oldest_first, start=1_000_000):
        os.utime(folder / name, (seconds, seconds))


def test_furthest_valid_checkpoint_goes_by_the_saved_step_not_the_files_times(tmp_path) -> None:
    """A copied run folder (`cp -r`, a restore from backup) dates each file by when it was copied."""
    save(tmp_path / "last.ckpt", step=30)
    save(tmp_path / "epoch_001.ckpt", step=30)  # the best one, saved with last.ckpt at the same epoch end
    save(tmp_path / "step.ckpt", step=25)
    save(tmp_path / "epoch_000.ckpt", step=15)
    set_mtimes(tmp_path, ["last.ckpt", "epoch_001.ckpt", "epoch_000.ckpt", "step.ckpt"])
    assert furthest_valid_checkpoint(tmp_path) == tmp_path / "last.ckpt", "the most steps, last.ckpt on a tie"
    (tmp_path / "last.ckpt").unlink()
    (tmp_path / "epoch_001.ckpt").write_bytes(b"garbage")
    assert furthest_valid_checkpoint(tmp_path) == tmp_path / "step.ckpt", "the next furthest that loads"
    save(tmp_path / "epoch_001.ckpt", step=25)
    set_mtimes(tmp_path, ["epoch_001.ckpt", "step.ckpt"])
    assert furthest_valid_checkpoint(tmp_path) == tmp_path / "step.ckpt", "the newest of equals"
    set_mtimes(tmp_path, ["step.ckpt", "epoch_001.ckpt"])
    assert furthest_valid_checkpoint(tmp_path) == tmp_path / "epoch_001.ckpt"


def test_choosing_the_furthest_checkpoint_reads_only_the_chosen_one_whole(tmp_path, monkeypatch) -> None:
    for name, step in [("last.ckpt", 3), ("step.ckpt", 5), ("epoch_000.ckpt", 2)]:
        save(tmp_path / name, step=step)
    loads = []
    real_load = torch.load

    def recorded_load(path, *args, **kwargs):
        loads.append((Path(path).name, kwargs.get("mmap", False)))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(checkpointing.torch, "load", recorded_load)
    assert furthest_valid_checkpoint(tmp_path) == tmp_path / "step.ckpt"
    assert [name for name, mmap in loads if not mmap] == ["step.ckpt"], "the others' tensors are mapped, not read"


def test_a_checkpoint_of_another_architecture_lists_what_differs(tmp_path) -> None:
    path = tmp_path / "other.ckpt"
    save(path, widths=(4, 8, 8, 16), blocks_per_stage=2)
    checkpoint = load_checkpoint(path)
    with pytest.raises(CheckpointError) as err:
        check_compatible(module(), checkpoint, path)
    message = str(err.value)
    assert "different network" in message
    assert "unexpected: " in message and "block4" in message  # the second block of each stage
    assert "different shape: " in message and "(10, 16) vs model (10, 8)" in message
    check_compatible(module(widths=(4, 8, 8, 16), blocks_per_stage=2), checkpoint, path)


def test_a_checkpoint_whose_weights_are_not_tensors_names_them(tmp_path) -> None:
    """A checkpoint is untrusted data: a value that is not a tensor is refused before load_state_dict meets it."""
    path = tmp_path / "odd.ckpt"
    state_dict = module().state_dict()
    state_dict["net.fc.bias"] = 7
    state_dict["net.fc.weight"] = [[0.0] * 8] * 10
    lightning = {"global_step": 0, "pytorch-lightning_version": "2.6"}
    torch.save({"state_dict": state_dict, **lightning}, path)
    with pytest.raises(CheckpointError) as err:
        check_compatible(module(), load_checkpoint(path), path)
    assert str(err.value) == (
        f"checkpoint {path} is damaged or was not written by training: these weights are not tensors: "
        "net.fc.weight (list), net.fc.bias (int); use a checkpoint as training saved it"
    )
    torch.save({"state_dict": [1, 2], "pytorch-lightning_version": "2.6"}, path)
    with pytest.raises(CheckpointError, match=r"its state_dict is a list, not a dict of tensors"):
        check_compatible(module(), load_checkpoint(path), path)
    # An EMA run's raw weights, which its resume loads beside the averaged ones.
    raw = {**module().state_dict(), "net.fc.bias": "7"}
    torch.save({"state_dict": module().state_dict(), "current_model_state": raw, **lightning}, path)
    with pytest.raises(CheckpointError, match=r"these weights are not tensors: net\.fc\.bias \(str\)"):
        check_compatible(module(), load_checkpoint(path), path)


def seed_layouts(net: torch.nn.Module) -> dict[str, object]:
    """The ways plain PyTorch code (and this project) saves a network's weights."""
    weights = net.state_dict()
    return {
        "torch.save(net.state_dict())": weights,
        "a training loop's dict": {"epoch": 199, "state_dict": weights, "optimizer": {"lr": 0.1}},
        "nn.DataParallel": {f"module.{k}": v for k, v in weights.items()},
        "torch.compile": {f"_orig_mod.{k}": v for k, v in weights.items()},
        "a Lightning checkpoint": {"state_dict": {f"net.{k}": v for k, v in weights.items()}},
        # This project's: the LightningModule's whole state_dict, its persistent metric (val_acc_best) included.
        "a checkpoint of this project": {
            "pytorch-lightning_version": lightning.__version__,
            "state_dict": ImageClassifier(net, num_classes=100).state_dict(),
        },
    }


@pytest.mark.parametrize("layout", list(seed_layouts(torch.nn.Identity())))
def test_network_weights_of_every_layout_load_strictly_into_the_network(tmp_path, layout: str) -> None:
    from tests.seed_wideresnet import WideResNet as SeedWideResNet

    seed = SeedWideResNet(100)
    path = tmp_path / "seed.pt"
    torch.save(seed_layouts(seed)[layout], path)
    net = WideResNet(num_classes=100, pooling="seed")
    checkpointing.load_network_weights(net, path)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), seed.state_dict().values(), strict=True))


def test_network_weights_of_another_network_are_refused_with_the_differences(tmp_path) -> None:
    path = tmp_path / "other.pt"
    torch.save(WideResNet(num_classes=10, widths=[4, 8, 8, 16]).state_dict(), path)
    shapes = r"different shape: block5\.scale\.weight: checkpoint \(16, 8, 1, 1\) vs model \(8, 8, 1, 1\)"
    with pytest.raises(CheckpointError, match=f"different network.*{shapes}"):
        checkpointing.load_network_weights(WideResNet(num_classes=10, widths=[4, 8, 8, 8]), path)
