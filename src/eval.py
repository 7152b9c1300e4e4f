"""Evaluate a checkpoint on the test set: `python src/eval.py ckpt_path=<run_dir>/checkpoints/last.ckpt`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from wrncifar.run.command_line import hydra_arguments
from wrncifar.run.entry import run
from wrncifar.run.evaluation import evaluate

# `paths.root_dir` resolves to the checkout holding this file, wherever the command is run from.
os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval.yaml")
def main(cfg: DictConfig) -> None:
    run(evaluate, cfg)


if __name__ == "__main__":
    sys.argv[1:] = hydra_arguments(sys.argv[1:], resumable=False)
    main()
