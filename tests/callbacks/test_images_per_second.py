from __future__ import annotations

from types import SimpleNamespace

import pytest
from lightning.pytorch import Trainer

import wrncifar.callbacks.images_per_second as images_per_second
from wrncifar.callbacks.images_per_second import ImagesPerSecond
from wrncifar.data.synthetic import SyntheticCIFAR100DataModule
from wrncifar.models.classifier import ImageClassifier
from wrncifar.models.wideresnet import WideResNet

BATCH = 8


def small_module() -> ImageClassifier:
    return ImageClassifier(WideResNet(num_classes=10, widths=[4, 8, 8, 8], blocks_per_stage=1))


def small_data() -> SyntheticCIFAR100DataModule:
    """100 training images on the device path: 12 full batches of 8 (drop_last)."""
    return SyntheticCIFAR100DataModule(
        num_classes=10,
        train_per_class=12,
        test_per_class=2,
        val_per_class=2,
        batch_size=BATCH,
        num_workers=0,
        on_device=True,
        drop_last=True,
    )


def fit(callback, tmp_path, **kwargs) -> Trainer:
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=1,
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        **kwargs,
    )
    trainer.fit(small_module(), datamodule=small_data())
    return trainer


def test_images_per_second_is_images_over_host_time_of_a_window(tmp_path, monkeypatch) -> None:
    ticks = iter(range(1000))
    # Each reading of the callback's clock advances it by half a second.
    monkeypatch.setattr(images_per_second, "time", SimpleNamespace(perf_counter=lambda: next(ticks) * 0.5))
    trainer = fit(ImagesPerSecond(window=3), tmp_path, logger=False)
    # 3 steps of 8 images between readings 1.5 s apart (the first step of the epoch only starts the clock).
    assert trainer.callback_metrics["train/images_per_sec"].item() == pytest.approx(3 * BATCH / 1.5)
    assert "train/images_per_sec" in trainer.progress_bar_metrics


def test_images_per_second_rejects_an_empty_window() -> None:
    with pytest.raises(ValueError, match="window"):
        ImagesPerSecond(window=0)
