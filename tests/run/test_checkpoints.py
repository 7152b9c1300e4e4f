from __future__ import annotations

import errno
import logging
import os
import pickle
from pathlib import Path

import pytest
import torch

import wrncifar.run.checkpoints as checkpointing
from wrncifar.models.classifier import ImageClassifier
from wrncifar.models.wideresnet import WideResNet
from wrncifar.run.checkpoints import (
    AtomicCheckpointIO,
    CheckpointError,
    CheckpointWriteError,
    check_compatible,
    load_checkpoint,
    newest_valid_checkpoint,
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


def test_full_disk_during_a_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch) -> None:
    path = tmp_path / "last.ckpt"
    save(path, step=1)
    before = path.read_bytes()

    def half_then_full(obj, f) -> None:
        f.write(before[: len(before) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpointing.torch, "save", half_then_full)
    with pytest.raises(CheckpointWriteError, match=r"No space left on device.*free some disk space.*intact"):
        save(path, step=2)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


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


def test_newest_valid_checkpoint_skips_a_corrupt_newer_one_and_says_so(tmp_path, caplog) -> None:
    save(tmp_path / "step.ckpt", step=5)
    last = tmp_path / "last.ckpt"
    last.write_bytes((tmp_path / "step.ckpt").read_bytes()[:500])  # newest, truncated
    os.utime(tmp_path / "step.ckpt", ns=(1, 1))
    with caplog.at_level(logging.WARNING):
        assert newest_valid_checkpoint(tmp_path) == tmp_path / "step.ckpt"
    assert "last.ckpt is corrupt" in caplog.text and "newest checkpoint that loads" in caplog.text


def test_newest_valid_checkpoint_is_the_most_recent_when_all_load(tmp_path) -> None:
    save(tmp_path / "last.ckpt", step=4)
    save(tmp_path / "step.ckpt", step=6)
    os.utime(tmp_path / "last.ckpt", ns=(1, 1))
    assert newest_valid_checkpoint(tmp_path) == tmp_path / "step.ckpt"


def test_no_loadable_checkpoint_is_an_error_never_a_fresh_start(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        newest_valid_checkpoint(tmp_path)
    (tmp_path / "last.ckpt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* loads: .*last\.ckpt is corrupt"):
        newest_valid_checkpoint(tmp_path)


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


def seed_layouts(net: torch.nn.Module) -> dict[str, object]:
    """The ways plain PyTorch code saves a network's weights."""
    weights = net.state_dict()
    return {
        "torch.save(net.state_dict())": weights,
        "a training loop's dict": {"epoch": 199, "state_dict": weights, "optimizer": {"lr": 0.1}},
        "nn.DataParallel": {f"module.{k}": v for k, v in weights.items()},
        "torch.compile": {f"_orig_mod.{k}": v for k, v in weights.items()},
        "a Lightning checkpoint": {"state_dict": {f"net.{k}": v for k, v in weights.items()}},
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
