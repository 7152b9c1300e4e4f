"""The evaluation report: on the tiny run's checkpoint (through `python src/eval.py`), and on predictions made
up so that the right numbers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from tests.conftest import TINY_SYNTHETIC
from wrncifar.analysis.evaluation_report import (
    CALIBRATION_BINS,
    NO_SUPERCLASSES,
    PREDICTIONS_FILE,
    build_report,
    read_report,
    write_report,
)
from wrncifar.analysis.predictions import Predictions

RESULT_KEYS = {
    "top1",
    "top5",
    "loss",
    "ece",
    "per_class",
    "superclass_top1",
    "per_superclass",
    "confusion_matrix",
    "reliability",
    "most_confused",
}
SYNTHETIC_TEST_IMAGES = 100 * 10  # 100 classes × data.test_per_class (10, the synthetic config's default)


@pytest.fixture(scope="module")
def tiny_report(evaluated_run) -> dict:
    return read_report(evaluated_run / "report")


@pytest.mark.slow
def test_the_report_of_the_tiny_checkpoint_has_every_key(tiny_report: dict) -> None:
    assert {"ckpt_path", "tta", "data", "test_images", "classes", "superclasses", "results"} <= set(tiny_report)
    assert tiny_report["test_images"] == SYNTHETIC_TEST_IMAGES
    assert tiny_report["classes"][:2] == ["class_000", "class_001"] and len(tiny_report["classes"]) == 100
    for result in tiny_report["results"].values():
        assert set(result) == RESULT_KEYS
        assert set(result["per_class"][0]) == {"class", "accuracy", "images"}
        assert set(result["most_confused"][0]) == {"true", "predicted", "count", "share"}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["plain", "flip"])
def test_per_class_accuracies_average_to_the_overall_accuracy(tiny_report: dict, mode: str) -> None:
    result = tiny_report["results"][mode]
    accuracy = np.array([r["accuracy"] for r in result["per_class"]])
    images = np.array([r["images"] for r in result["per_class"]])
    assert (images == 10).all()  # balanced test set: the plain mean is the image-weighted mean
    assert accuracy.mean() == pytest.approx(result["top1"], abs=1e-6)
    assert [r["class"] for r in result["per_class"]] == tiny_report["classes"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["plain", "flip"])
def test_the_confusion_matrix_counts_every_test_image_once(tiny_report: dict, mode: str) -> None:
    result = tiny_report["results"][mode]
    confusion = np.array(result["confusion_matrix"])
    assert confusion.shape == (100, 100)
    assert confusion.sum() == SYNTHETIC_TEST_IMAGES
    assert confusion.sum(axis=1).tolist() == [r["images"] for r in result["per_class"]]
    assert np.trace(confusion) / confusion.sum() == pytest.approx(result["top1"], abs=1e-6)
    worst = result["most_confused"][0]
    off_diagonal = confusion - np.diag(np.diag(confusion))
    assert worst["count"] == off_diagonal.max() > 0


@pytest.mark.slow
def test_the_saved_predictions_are_the_ones_the_metrics_count(evaluated_run, tiny_report: dict) -> None:
    saved = np.load(evaluated_run / "report" / PREDICTIONS_FILE)
    for mode, result in tiny_report["results"].items():
        counts = np.zeros((100, 100), dtype=int)
        np.add.at(counts, (saved["labels"], saved[f"{mode}_predicted"]), 1)
        assert counts.tolist() == result["confusion_matrix"]
        assert ((saved[f"{mode}_confidence"] > 0) & (saved[f"{mode}_confidence"] <= 1)).all()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["plain", "flip"])
def test_calibration_error_is_in_0_1_and_matches_its_reliability_bins(tiny_report: dict, mode: str) -> None:
    result = tiny_report["results"][mode]
    assert 0 <= result["ece"] <= 1
    bins = result["reliability"]
    assert len(bins["edges"]) == CALIBRATION_BINS + 1 and sum(bins["images"]) == SYNTHETIC_TEST_IMAGES
    gaps = [n * abs(a - c) for n, a, c in zip(bins["images"], bins["accuracy"], bins["confidence"], strict=True) if n]
    assert sum(gaps) / SYNTHETIC_TEST_IMAGES == pytest.approx(result["ece"], abs=1e-5)


@pytest.mark.slow
def test_without_superclasses_the_report_says_why_and_skips_them(tiny_report: dict) -> None:
    assert "data=synthetic" in TINY_SYNTHETIC  # the synthetic data has no class hierarchy
    assert tiny_report["superclasses"] is None and tiny_report["superclasses_skipped"] == NO_SUPERCLASSES
    assert all(r["per_superclass"] is None for r in tiny_report["results"].values())


def predictions_of(probs: list[list[float]], labels: list[int]) -> Predictions:
    return Predictions(torch.tensor(probs).log(), torch.tensor(labels))


def test_known_predictions_give_known_numbers() -> None:
    # 4 classes in 2 superclasses ({a, b}, {c, d}); 6 images.
    probs = [
        [0.7, 0.1, 0.1, 0.1],  # a → a
        [0.2, 0.6, 0.1, 0.1],  # a → b (same superclass)
        [0.1, 0.8, 0.05, 0.05],  # b → b
        [0.1, 0.1, 0.1, 0.7],  # c → d (same superclass)
        [0.1, 0.1, 0.1, 0.7],  # c → d
        [0.4, 0.1, 0.1, 0.4],  # d → a (first of the tie), another superclass
    ]
    labels = [0, 0, 1, 2, 2, 3]
    report = build_report({"plain": predictions_of(probs, labels)}, "abcd", ["ab", "cd"], [0, 0, 1, 1])
    result = report["results"]["plain"]
    assert result["top1"] == pytest.approx(2 / 6)
    assert result["top5"] == pytest.approx(1.0)  # top-4 of 4 classes
    assert result["loss"] == pytest.approx(-np.mean(np.log([0.7, 0.2, 0.8, 0.1, 0.1, 0.4])))
    assert [r["accuracy"] for r in result["per_class"]] == pytest.approx([0.5, 1.0, 0.0, 0.0])
    assert result["confusion_matrix"] == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 2], [1, 0, 0, 0]]
    assert result["most_confused"] == [
        {"true": "c", "predicted": "d", "count": 2, "share": 1.0},
        {"true": "a", "predicted": "b", "count": 1, "share": 0.5},
        {"true": "d", "predicted": "a", "count": 1, "share": 1.0},
    ]
    assert result["superclass_top1"] == pytest.approx(5 / 6)
    ab, cd = result["per_superclass"]
    assert ab == {"superclass": "ab", "classes": ["a", "b"], "accuracy": 2 / 3, "superclass_accuracy": 1.0, "images": 3}
    assert cd["accuracy"] == 0.0 and cd["superclass_accuracy"] == pytest.approx(2 / 3) and cd["images"] == 3
    assert report["superclasses"] == ["ab", "cd"] and report["fine_to_coarse"] == [0, 0, 1, 1]


def test_expected_calibration_error_is_torchmetrics_and_agrees_with_the_diagram() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(500, 10, generator=generator)
    labels = torch.randint(10, (500,), generator=generator)
    predictions = Predictions(logits.log_softmax(1), labels)
    result = build_report({"plain": predictions})["results"]["plain"]
    expected = MulticlassCalibrationError(10, n_bins=CALIBRATION_BINS, norm="l1")(logits.softmax(1), labels)
    assert result["ece"] == pytest.approx(expected.item(), abs=1e-6)
    bins = result["reliability"]
    gaps = [n * abs(a - c) for n, a, c in zip(bins["images"], bins["accuracy"], bins["confidence"], strict=True) if n]
    assert sum(gaps) / 500 == pytest.approx(result["ece"], abs=1e-5)


def test_class_names_must_match_the_predictions() -> None:
    with pytest.raises(ValueError, match="3 class names for predictions over 4 classes"):
        build_report({"plain": predictions_of([[0.25] * 4], [0])}, ["a", "b", "c"])


def test_written_reports_read_back_with_the_predictions_beside_them(tmp_path) -> None:
    probs, labels = [[0.6, 0.2, 0.1, 0.1], [0.1, 0.1, 0.2, 0.6]], [0, 2]
    predictions = {"plain": predictions_of(probs, labels)}
    report = build_report(predictions, "abcd", ["ab", "cd"], [0, 0, 1, 1])
    path = write_report(report, predictions, tmp_path)
    assert read_report(path) == read_report(tmp_path) == report
    saved = np.load(tmp_path / PREDICTIONS_FILE)
    assert sorted(saved.files) == ["labels", "plain_confidence", "plain_predicted"]
    assert saved["plain_predicted"].tolist() == [0, 3]
    assert saved["plain_confidence"] == pytest.approx([0.6, 0.6])
