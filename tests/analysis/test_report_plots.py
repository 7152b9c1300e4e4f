"""The report's figures: made without pyplot, saved as PNG files per prediction mode."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from wrncifar.analysis.evaluation_report import build_report
from wrncifar.analysis.predictions import Predictions
from wrncifar.analysis.report_plots import FIGURES, save_report_plots, superclass_accuracy_figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def report(superclasses: bool) -> dict:
    generator = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(40, 4, generator=generator), torch.arange(40) % 4
    predictions = Predictions(logits.log_softmax(1), labels)
    flipped = Predictions(logits.flip(0).log_softmax(1), labels)
    if superclasses:
        return build_report({"plain": predictions, "flip": flipped}, "abcd", ["ab", "cd"], [0, 0, 1, 1])
    return build_report({"plain": predictions, "flip": flipped}, "abcd")


def test_every_figure_of_every_mode_is_saved_as_png(tmp_path) -> None:
    written = save_report_plots(report(superclasses=True), tmp_path)
    names = {f"{name}{suffix}.png" for name in FIGURES for suffix in ("", "_flip")}
    assert {p.name for p in written} == names == {p.name for p in tmp_path.iterdir()}
    assert all(p.read_bytes().startswith(PNG_SIGNATURE) for p in written)


def test_without_superclasses_their_figure_is_skipped(tmp_path) -> None:
    without = report(superclasses=False)
    assert superclass_accuracy_figure(without) is None
    assert not any("superclass" in p.name for p in save_report_plots(without, tmp_path))


def test_figures_are_made_without_pyplot_so_nothing_needs_a_display() -> None:
    plt.close("all")
    figures = [make(report(superclasses=True), "flip") for make in FIGURES.values()]
    assert all(isinstance(f, Figure) for f in figures)
    assert plt.get_fignums() == []  # no pyplot state: headless, and nothing to close
