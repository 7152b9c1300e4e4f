"""Train a model: `python src/train.py experiment=wrn_cifar100` (see README for overrides and sweeps)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from wrncifar.cli_overrides import null_group_overrides
from wrncifar.entry import exit_on_user_error, run
from wrncifar.resuming import resume_overrides
from wrncifar.training import train_for_sweep

# `paths.root_dir` resolves to the checkout holding this file, wherever the command is run from.
os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))


@hydra.main(version_base="1.3", config_path="../configs", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    return run(train_for_sweep, cfg)


if __name__ == "__main__":
    sys.argv[1:] = exit_on_user_error(lambda: resume_overrides(null_group_overrides(sys.argv[1:])))
    main()
