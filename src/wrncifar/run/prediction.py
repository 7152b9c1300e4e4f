"""Classify your own images with a checkpoint: `python src/predict.py ckpt_path=… input=<image | folder | .npz>`.

The images are read and fitted to the network's input as `analysis/image_inputs.py` describes (shorter side resized
to 32, centre crop, RGB), normalised inside `Uint8ImageClassifier` as the checkpoint's data config does, and
classified in batches on the chosen device, optionally with horizontal-flip TTA (the probabilities of each image and
its mirror image averaged). `predictions.csv` gets one row per image: its name and the top-k classes with their
probabilities; the first rows are printed as a table. An existing file at `output` is replaced only when it is such
a CSV, written by an earlier prediction.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from wrncifar.analysis.image_inputs import ALPHA_MODES, ImageInputError, ImageInputs, read_images
from wrncifar.analysis.output_files import spreadsheet_text, write_file
from wrncifar.analysis.predictions import TTA, predict
from wrncifar.models.uint8_images import Uint8ImageClassifier
from wrncifar.run.checkpoint_network import load_checkpoint_network, output_file, pick_device, required_path
from wrncifar.run.config_validation import ConfigError

log = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.csv"
HEADER_START = b"file,class_1,prob_1"  # how every predictions CSV begins, whatever its top_k
# The top-level keys of predict.yaml and their types (checked before anything is built).
PREDICT_SETTINGS: dict[str, Any] = {
    "input": str,
    "output": str | None,
    "tta": TTA,
    "top_k": int,
    "batch_size": int,
    "device": str,
}
EXAMPLE = "python src/predict.py ckpt_path=<run_dir>/checkpoints/<name>.ckpt input=<image, folder or .npz>"
# How the log names PIL's colour modes.
MODE_NAMES = {"L": "grayscale (L)", "LA": "grayscale with alpha (LA)", "1": "black-and-white (1)", "P": "palette (P)"}
SHOWN_ROWS = 20  # rows of the printed table; the CSV has them all
SHOWN_CLASSES = 3  # classes per row in the printed table


def predict_images(cfg: DictConfig) -> dict[str, int]:
    """Predict the classes of the images at `cfg.input` with the network of `cfg.ckpt_path`; write the CSV to
    `cfg.output` (else `<run folder>/predictions.csv`), print the first rows and return the counts of images
    predicted and skipped. ConfigError when no image could be read at all."""
    for key in ("top_k", "batch_size"):
        value = cfg.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    input_path = required_path(cfg, "input", "the images to classify", EXAMPLE)
    loaded = load_checkpoint_network(cfg, PREDICT_SETTINGS, EXAMPLE)
    device = pick_device(str(cfg.device))
    try:
        inputs = read_images(input_path, loaded.images.size)
    except ImageInputError as err:
        raise ConfigError(str(err)) from err
    describe_inputs(inputs, loaded.images.size)
    # Once there is something to write, before the predictions: a refused output should not wait for them.
    out = output_file(cfg.get("output"), Path(cfg.paths.output_dir), PREDICTIONS_FILE, earlier_predictions)

    model = Uint8ImageClassifier(loaded.net, loaded.images.mean, loaded.images.std).to(device)
    tta: TTA = cfg.tta
    log_probs = class_log_probs(model, inputs.images, tta, cfg.batch_size)
    top_k = min(cfg.top_k, log_probs.shape[1])
    probs, indices = log_probs.exp().topk(top_k, dim=1)
    rows = [
        (name, [(loaded.classes[i], p) for i, p in zip(idx.tolist(), prob.tolist(), strict=True)])
        for name, idx, prob in zip(inputs.names, indices, probs, strict=True)
    ]
    write_predictions(out, rows, top_k)
    print(prediction_table(rows, len(inputs.problems)), flush=True)
    log.info(
        "Predictions for %d image(s) (%s on %s, tta=%s) written to %s%s",
        len(rows),
        loaded.ckpt_path.name,
        device,
        tta,
        out,
        f"; {len(inputs.problems)} file(s) skipped, each named above" if inputs.problems else "",
    )
    return {"images": len(rows), "skipped": len(inputs.problems)}


def describe_inputs(inputs: ImageInputs, size: int) -> None:
    """One line on what was read, and one on the colour conversions made."""
    log.info("Read %d image(s), fitted to %d×%d (shorter side resized, centre crop)", len(inputs.names), size, size)
    if inputs.conversions:
        modes = ", ".join(f"{count} {MODE_NAMES.get(mode, mode)}" for mode, count in sorted(inputs.conversions.items()))
        alpha = " (the alpha channel composited onto white)" if set(inputs.conversions) & set(ALPHA_MODES) else ""
        log.info("Converted to RGB: %s%s", modes, alpha)


def class_log_probs(model: torch.nn.Module, images: torch.Tensor, tta: TTA, batch_size: int) -> torch.Tensor:
    """Log-probabilities N×C of uint8 `images` N×3×S×S, batch by batch; with `tta="flip"` those of each image and
    its mirror image averaged (as `eval.py eval.tta=flip`)."""
    unlabelled = torch.zeros(len(images), dtype=torch.long)
    batches = [(images[i : i + batch_size], unlabelled[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    results = predict(model, batches, tta)
    return results["flip" if tta == "flip" else "plain"].log_probs


def write_predictions(path: Path, rows: list[tuple[str, list[tuple[str, float]]]], top_k: int) -> Path:
    """`file, class_1, prob_1, …, class_k, prob_k`, one row per image, best class first. Names and classes that
    start like a spreadsheet formula get a leading `'` (`spreadsheet_text`)."""
    header = ["file"] + [f"{column}_{rank}" for rank in range(1, top_k + 1) for column in ("class", "prob")]

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for name, top in rows:
                cells = [value for cls, p in top for value in (spreadsheet_text(cls), f"{p:.6f}")]
                writer.writerow([spreadsheet_text(name), *cells])

    return write_file(path, write)


def earlier_predictions(path: Path) -> bool:
    """Whether the file at `path` is a predictions CSV (`write_predictions`'s header), which may be replaced."""
    try:
        with path.open("rb") as f:
            return f.read(len(HEADER_START)) == HEADER_START
    except OSError:
        return False


def prediction_table(rows: list[tuple[str, list[tuple[str, float]]]], skipped: int) -> str:
    """The first `SHOWN_ROWS` rows with their best `SHOWN_CLASSES` classes, as aligned text."""
    shown = rows[:SHOWN_ROWS]
    names = [name if len(name) <= 40 else "…" + name[-39:] for name, _ in shown]
    width = max(len("file"), *(len(n) for n in names))
    cells = [[f"{cls} {p:.3f}" for cls, p in top[:SHOWN_CLASSES]] for _, top in shown]
    columns = len(cells[0])
    widths = [max(len(f"top-{c + 1}"), *(len(row[c]) for row in cells)) for c in range(columns)]
    lines = ["  ".join([f"{'file':<{width}}", *(f"{f'top-{c + 1}':<{widths[c]}}" for c in range(columns))])]
    lines += [
        "  ".join([f"{name:<{width}}", *(f"{cell:<{w}}" for cell, w in zip(row, widths, strict=True))])
        for name, row in zip(names, cells, strict=True)
    ]
    if len(rows) > len(shown):
        lines.append(f"… and {len(rows) - len(shown)} more")
    if skipped:
        lines.append(f"{skipped} file(s) could not be read (named above)")
    return "\n".join(line.rstrip() for line in lines)
