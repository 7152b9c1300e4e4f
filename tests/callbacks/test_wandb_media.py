"""W&B media of an offline run, read back from disk: prediction tables with class names and images, the test
confusion matrix and per-class accuracy; nothing without a WandbLogger."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger

from tests.conftest import read_metrics, wandb_records
from wrncifar.callbacks.wandb_media import PREDICTION_COLUMNS, WandbMedia
from wrncifar.data.cifar_releases import CIFAR10_RELEASE, CIFAR100_RELEASE
from wrncifar.models.classifier import ImageClassifier
from wrncifar.models.wideresnet import WideResNet

SYNTHETIC_CLASSES = {f"class_{i:03d}" for i in range(100)}


def tables(job: Path, key: str) -> list[dict]:
    """The table files W&B wrote for `key` (`val/predictions`), oldest first."""
    folder = next((job / "wandb").glob("*run-*")) / "files" / "media" / "table" / Path(key).parent
    files = sorted(folder.glob(f"{Path(key).name}_*.table.json"), key=lambda p: int(p.name.split("_")[-2]))
    return [json.loads(f.read_text()) for f in files]


def artifacts(job: Path, kind: str) -> list:
    records = wandb_records(job)
    return [r.artifact for r in records if r.WhichOneof("record_type") == "artifact" and r.artifact.type == kind]


@pytest.mark.slow
def test_each_validation_logs_a_table_of_predictions_by_class_name(wandb_sweep) -> None:
    job = wandb_sweep[0] / "0"
    logged = tables(job, "val/predictions")
    assert len(logged) == 2, "every_n_val_epochs=1 and two epochs"
    for table in logged:
        assert table["columns"] == PREDICTION_COLUMNS
        assert len(table["data"]) == 32  # num_samples
        for _image, true, predicted, confidence in table["data"]:
            assert true in SYNTHETIC_CLASSES and predicted in SYNTHETIC_CLASSES
            assert 0 < confidence <= 1
    # The images travel in the table's artifact, one PNG per row (identical validation images across epochs).
    images = {e.path for a in artifacts(job, "run_table") if "valpredictions" in a.name for e in a.manifest.contents}
    assert len([p for p in images if p.endswith(".png")]) == 32


@pytest.mark.slow
def test_testing_logs_the_confusion_matrix_and_per_class_accuracy(wandb_sweep) -> None:
    job = wandb_sweep[0] / "0"
    (confusion,) = tables(job, "test/confusion_matrix_table")
    (per_class,) = tables(job, "test/per_class_accuracy_table")
    assert confusion["columns"] == ["Actual", "Predicted", "nPredictions"]
    assert len(confusion["data"]) == 100 * 100 and sum(r[2] for r in confusion["data"]) == 100  # 1 test image/class
    assert {r[0] for r in confusion["data"]} == SYNTHETIC_CLASSES
    assert per_class["columns"] == ["class", "accuracy", "images"]
    assert {r[0] for r in per_class["data"]} == SYNTHETIC_CLASSES and sum(r[2] for r in per_class["data"]) == 100
    correct = sum(r[2] for r in confusion["data"] if r[0] == r[1])
    test_acc = [float(r["test/acc"]) for r in read_metrics(job) if r.get("test/acc")][-1]
    assert sum(r[1] * r[2] for r in per_class["data"]) == pytest.approx(correct) == pytest.approx(100 * test_acc)


def tiny_module() -> ImageClassifier:
    return ImageClassifier(WideResNet(widths=[4, 8, 8, 8], blocks_per_stage=1, num_classes=10))


def test_nothing_happens_without_a_wandb_logger(tmp_path: Path) -> None:
    trainer = Trainer(logger=CSVLogger(tmp_path), accelerator="cpu", enable_progress_bar=False)
    module, media = tiny_module(), WandbMedia(every_n_val_epochs=1)
    media.setup(trainer, module, "fit")
    media.on_validation_epoch_start(trainer, module)
    media.on_test_epoch_start(trainer, module)
    module(torch.zeros(2, 3, 32, 32))
    assert media._confusion is None and media._logits is None and not module._forward_hooks


def test_tables_come_every_n_validations_on_global_rank_zero_only() -> None:
    media = WandbMedia(every_n_val_epochs=2)
    media._logger = object()  # stands for a WandbLogger

    def due(epoch: int, rank_zero: bool = True, every: int = 1) -> bool:
        trainer = SimpleNamespace(
            current_epoch=epoch, check_val_every_n_epoch=every, sanity_checking=False, is_global_zero=rank_zero
        )
        return media._table_due(trainer)

    assert [due(e) for e in range(6)] == [False, True, False, True, False, True]
    assert [due(e, every=2) for e in (1, 3, 5, 7)] == [False, True, False, True]  # the epochs that validate
    assert not due(1, rank_zero=False)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="every_n_val_epochs must be a positive integer"):
        WandbMedia(every_n_val_epochs=0)


@pytest.mark.parametrize("release", [CIFAR10_RELEASE, CIFAR100_RELEASE], ids=["cifar10", "cifar100"])
def test_images_are_shown_with_their_own_datasets_normalisation_undone(release) -> None:
    media = WandbMedia()
    media.setup(SimpleNamespace(loggers=[], datamodule=SimpleNamespace(release=release)), None, "fit")
    pixels = torch.rand(2, 3, 4, 4)
    normalised = (pixels - torch.tensor(release.mean).view(-1, 1, 1)) / torch.tensor(release.std).view(-1, 1, 1)
    shown = media._displayable(normalised)
    torch.testing.assert_close(
        torch.from_numpy(shown).float(), (pixels * 255).round().permute(0, 2, 3, 1), atol=1, rtol=0
    )
