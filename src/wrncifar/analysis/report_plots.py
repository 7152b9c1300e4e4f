"""Figures of an evaluation report (the dict of `evaluation_report.build_report`), saved as PNG files.

Figures are built with matplotlib's object-oriented API (`Figure`, never pyplot): no global state and no display,
so they render headless through the Agg canvas when saved, and show inline when a notebook displays them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

from wrncifar.analysis.output_files import write_file

DPI = 120


def confusion_matrix_figure(report: Mapping[str, Any], mode: str = "plain") -> Figure:
    """Row-normalised confusion matrix (share of each true class); classes grouped by superclass when known."""
    result = report["results"][mode]
    confusion = np.asarray(result["confusion_matrix"], dtype=float)
    classes = report["classes"]
    order = np.arange(len(classes))
    superclasses = report.get("superclasses")
    if superclasses:
        coarse = np.asarray(report["fine_to_coarse"])
        order = np.lexsort((order, coarse))  # by superclass, then by class index
    shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    shares = shares[np.ix_(order, order)]
    size = min(14.0, 4 + 0.1 * len(classes))
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.add_subplot()
    # A square-root colour scale: the few-percent confusions between similar classes stay visible.
    image = ax.imshow(shares, cmap="viridis", norm=PowerNorm(0.5, vmin=0, vmax=1), interpolation="nearest")
    fontsize = max(3.0, min(9.0, 400 / len(classes)))
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, [classes[i] for i in order], rotation=90, fontsize=fontsize)
    ax.set_yticks(ticks, [classes[i] for i in order], fontsize=fontsize)
    if superclasses:
        boundaries = np.flatnonzero(np.diff(np.sort(coarse))) + 0.5
        for b in boundaries:
            ax.axhline(b, color="white", linewidth=0.4)
            ax.axvline(b, color="white", linewidth=0.4)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix ({mode}): share of each true class")
    fig.colorbar(image, ax=ax, shrink=0.6)
    return fig


def reliability_figure(report: Mapping[str, Any], mode: str = "plain") -> Figure:
    """Reliability diagram: accuracy against mean confidence per confidence bin, with the images per bin."""
    result = report["results"][mode]
    bins = result["reliability"]
    edges = np.asarray(bins["edges"])
    centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    accuracy = np.array([np.nan if a is None else a for a in bins["accuracy"]])
    confidence = np.array([np.nan if c is None else c for c in bins["confidence"]])
    fig = Figure(figsize=(5, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.bar(centres, np.nan_to_num(accuracy), width=width, edgecolor="black", linewidth=0.5, label="accuracy")
    top.plot(centres, confidence, "o", color="tab:red", markersize=3, label="mean confidence")
    top.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=f"Reliability ({mode}): ECE {result['ece']:.3f}")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centres, bins["images"], width=width, color="gray", edgecolor="black", linewidth=0.5)
    bottom.set(xlabel="confidence (top-1 probability)", ylabel="images")
    return fig


def class_accuracy_figure(report: Mapping[str, Any], mode: str = "plain") -> Figure:
    """Every class's test accuracy, sorted, with the overall top-1 as a line."""
    result = report["results"][mode]
    rows = sorted((r for r in result["per_class"] if r["accuracy"] is not None), key=lambda r: r["accuracy"])
    fig = Figure(figsize=(max(6.0, 0.12 * len(rows)), 4), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(np.arange(len(rows)), [r["accuracy"] for r in rows], width=0.8)
    ax.axhline(result["top1"], color="tab:red", linewidth=1, label=f"top-1 {result['top1']:.3f}")
    ax.set_xticks(np.arange(len(rows)), [r["class"] for r in rows], rotation=90, fontsize=5)
    ax.set(xlim=(-1, len(rows)), ylim=(0, 1), ylabel="accuracy", title=f"Per-class accuracy ({mode}), worst first")
    ax.legend(loc="upper left", fontsize=8)
    return fig


def superclass_accuracy_figure(report: Mapping[str, Any], mode: str = "plain") -> Figure | None:
    """Per superclass: fine-class accuracy and superclass accuracy; None when the report has no superclasses."""
    result = report["results"][mode]
    rows = result["per_superclass"]
    if not rows:
        return None
    rows = sorted((r for r in rows if r["images"]), key=lambda r: r["accuracy"])
    fig = Figure(figsize=(7, 0.25 * len(rows) + 2), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(rows))
    ax.barh(y + 0.2, [r["superclass_accuracy"] for r in rows], height=0.4, label="prediction in the superclass")
    ax.barh(y - 0.2, [r["accuracy"] for r in rows], height=0.4, label="exact class")
    ax.set_yticks(y, [r["superclass"] for r in rows], fontsize=7)
    ax.invert_yaxis()  # worst on top
    ax.set(xlim=(0, 1), xlabel="accuracy", title=f"Per-superclass accuracy ({mode}), worst first")
    fig.legend(loc="outside lower center", ncols=2, fontsize=8)
    return fig


FIGURES = {
    "confusion_matrix": confusion_matrix_figure,
    "reliability": reliability_figure,
    "class_accuracy": class_accuracy_figure,
    "superclass_accuracy": superclass_accuracy_figure,
}


def save_report_plots(report: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Every figure of every mode as `<name>.png` (plain) or `<name>_<mode>.png`; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for mode in report["results"]:
        for name, make in FIGURES.items():
            fig = make(report, mode)
            if fig is None:
                continue
            path = out_dir / (f"{name}.png" if mode == "plain" else f"{name}_{mode}.png")
            written.append(write_file(path, lambda tmp, fig=fig: fig.savefig(tmp, dpi=DPI, format="png")))
    return written
