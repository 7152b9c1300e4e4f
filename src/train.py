"""Train a model: `python src/train.py experiment=wrn_cifar100` (see README for overrides and sweeps)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from wrncifar.run.command_line import hydra_arguments
from wrncifar.run.entry import run
from wrncifar.run.fit_and_test import train_for_sweep

# `paths.root_dir` resolves to the checkout holding this file, wherever the command is run from.
os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))


@hydra.main(version_base="1.3", config_path="../configs", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    return run(train_for_sweep, cfg)


if __name__ == "__main__":
    sys.argv[1:] = hydra_arguments(sys.argv[1:], resumable=True)
    main()
