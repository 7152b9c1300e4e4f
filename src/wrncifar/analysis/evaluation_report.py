"""The evaluation report of a classifier's test predictions, as JSON: accuracy, loss, per-class and per-superclass
accuracy, confusion matrix, calibration and the most-confused class pairs.

torchmetrics computes what it has (top-k accuracy, per-class accuracy, confusion matrix, expected calibration
error); the reliability-diagram bins use the same binning as its calibration error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError, MulticlassConfusionMatrix

from wrncifar.analysis.output_files import write_file
from wrncifar.analysis.predictions import Predictions

REPORT_FILE = "report.json"
PREDICTIONS_FILE = "predictions.npz"
# 15 equal-width confidence bins: the usual choice since Guo et al., "On Calibration of Modern Neural Networks".
CALIBRATION_BINS = 15
CONFUSED_PAIRS = 20
NO_SUPERCLASSES = "the dataset defines no superclasses (coarse classes); per-superclass accuracy is skipped"


def build_report(
    predictions: Mapping[str, Predictions],
    classes: Sequence[str] = (),
    superclasses: Sequence[str] = (),
    fine_to_coarse: Sequence[int] = (),
) -> dict[str, Any]:
    """The report of every prediction mode ("plain", "flip") under `results`, with the class names.

    `classes` defaults to the class indices; without `superclasses` the report says why it has no
    per-superclass section.
    """
    first = next(iter(predictions.values()))
    num_classes = first.log_probs.shape[1]
    classes = list(classes) or [str(i) for i in range(num_classes)]
    if len(classes) != num_classes:
        raise ValueError(f"{len(classes)} class names for predictions over {num_classes} classes")
    report: dict[str, Any] = {
        "test_images": len(first.labels),
        "classes": classes,
        "superclasses": list(superclasses) or None,
        "fine_to_coarse": list(fine_to_coarse) if superclasses else None,
    }
    if not superclasses:
        report["superclasses_skipped"] = NO_SUPERCLASSES
    report["results"] = {mode: summarize(p, classes, superclasses, fine_to_coarse) for mode, p in predictions.items()}
    return report


def summarize(
    predictions: Predictions, classes: Sequence[str], superclasses: Sequence[str], fine_to_coarse: Sequence[int]
) -> dict[str, Any]:
    """The metrics of one prediction mode. `loss` is the mean cross-entropy without label smoothing."""
    probs, labels = predictions.log_probs.exp(), predictions.labels
    num_classes = probs.shape[1]
    confidence, predicted = probs.max(dim=1)
    images = torch.bincount(labels, minlength=num_classes)
    per_class = MulticlassAccuracy(num_classes, average=None)(probs, labels)
    confusion = MulticlassConfusionMatrix(num_classes)(probs, labels)  # rows: true class, columns: predicted
    by_superclass = (
        superclass_accuracy(predicted, labels, classes, superclasses, fine_to_coarse)
        if superclasses
        else {"superclass_top1": None, "per_superclass": None}
    )
    return {
        "top1": MulticlassAccuracy(num_classes, top_k=1, average="micro")(probs, labels).item(),
        "top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro")(probs, labels).item(),
        "loss": -predictions.log_probs.gather(1, labels[:, None]).mean().item(),
        "ece": MulticlassCalibrationError(num_classes, n_bins=CALIBRATION_BINS, norm="l1")(probs, labels).item(),
        "per_class": [
            {"class": name, "accuracy": acc if n else None, "images": n}
            for name, acc, n in zip(classes, per_class.tolist(), images.tolist(), strict=True)
        ],
        **by_superclass,
        "confusion_matrix": confusion.tolist(),
        "reliability": reliability_bins(confidence, predicted == labels, CALIBRATION_BINS),
        "most_confused": most_confused_pairs(confusion, classes, CONFUSED_PAIRS),
    }


def superclass_accuracy(
    predicted: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[str],
    superclasses: Sequence[str],
    fine_to_coarse: Sequence[int],
) -> dict[str, Any]:
    """Per superclass: the (fine) accuracy on its images, and how often the prediction is one of its classes."""
    if len(fine_to_coarse) != len(classes):
        raise ValueError(f"fine_to_coarse maps {len(fine_to_coarse)} classes; the predictions have {len(classes)}")
    count = len(superclasses)
    coarse_of = torch.tensor(fine_to_coarse)
    true_coarse, predicted_coarse = coarse_of[labels], coarse_of[predicted]
    images = torch.bincount(true_coarse, minlength=count)
    correct = torch.bincount(true_coarse, weights=(predicted == labels).double(), minlength=count)
    coarse_acc = MulticlassAccuracy(count, average=None)(predicted_coarse, true_coarse)
    return {
        "superclass_top1": MulticlassAccuracy(count, average="micro")(predicted_coarse, true_coarse).item(),
        "per_superclass": [
            {
                "superclass": name,
                "classes": [c for c, k in zip(classes, fine_to_coarse, strict=True) if k == index],
                "accuracy": correct[index].item() / n if n else None,
                "superclass_accuracy": coarse_acc[index].item() if n else None,
                "images": n,
            }
            for index, (name, n) in enumerate(zip(superclasses, images.tolist(), strict=True))
        ],
    }


def reliability_bins(confidence: torch.Tensor, correct: torch.Tensor, bins: int) -> dict[str, list]:
    """Mean confidence, accuracy and image count in each of `bins` equal-width confidence bins.

    Binned as torchmetrics' calibration error bins (right-open intervals), except that a confidence of
    exactly 1 falls in the last bin rather than in one of its own.
    """
    edges = torch.linspace(0, 1, bins + 1, dtype=confidence.dtype)
    index = (torch.bucketize(confidence, edges, right=True) - 1).clamp(0, bins - 1)
    images = torch.bincount(index, minlength=bins)
    confidence_sum = torch.bincount(index, weights=confidence.double(), minlength=bins)
    correct_sum = torch.bincount(index, weights=correct.double(), minlength=bins)
    return {
        "edges": edges.tolist(),
        "images": images.tolist(),
        "confidence": [c / n if n else None for c, n in zip(confidence_sum.tolist(), images.tolist(), strict=True)],
        "accuracy": [a / n if n else None for a, n in zip(correct_sum.tolist(), images.tolist(), strict=True)],
    }


def most_confused_pairs(confusion: torch.Tensor, classes: Sequence[str], top: int) -> list[dict[str, Any]]:
    """The `top` (true class → predicted class) mistakes by count; `share` is their part of the true class."""
    mistakes = confusion.clone().fill_diagonal_(0).flatten()
    order = torch.argsort(mistakes, descending=True, stable=True)[:top]
    num_classes = confusion.shape[0]
    pairs = []
    for flat in order.tolist():
        count = int(mistakes[flat])
        if count == 0:
            break
        true, predicted = divmod(flat, num_classes)
        share = count / int(confusion[true].sum())
        pairs.append({"true": classes[true], "predicted": classes[predicted], "count": count, "share": share})
    return pairs


def write_report(report: Mapping[str, Any], predictions: Mapping[str, Predictions], out_dir: Path) -> Path:
    """`report.json`, and `predictions.npz` with every test image's label and, per mode, prediction and confidence.

    Returns the path of `report.json`.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = write_file(out_dir / REPORT_FILE, lambda tmp: tmp.write_text(json.dumps(report, indent=1) + "\n"))
    arrays: dict[str, np.ndarray] = {"labels": next(iter(predictions.values())).labels.numpy()}
    for mode, p in predictions.items():
        confidence, predicted = p.log_probs.exp().max(dim=1)
        arrays[f"{mode}_predicted"] = predicted.numpy()
        arrays[f"{mode}_confidence"] = confidence.numpy()
    write_file(out_dir / PREDICTIONS_FILE, lambda tmp: np.savez_compressed(tmp, **arrays))
    return path


def read_report(path: Path) -> dict[str, Any]:
    """A report written by `write_report`, from its `report.json` or the folder that holds it."""
    path = path / REPORT_FILE if path.is_dir() else path
    return json.loads(path.read_text())
