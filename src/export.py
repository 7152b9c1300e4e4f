"""Export a checkpoint's network: `python src/export.py ckpt_path=<run_dir>/checkpoints/last.ckpt format=onnx`."""

from __future__ import annotations

import os
import sys

from wrncifar.run.project_root import project_environment

# First, before torch loads: `paths.root_dir` resolves to the checkout holding this file, wherever the command is
# run from, and the checkout's `.env` adds the variables the environment does not set (README: Machine settings).
os.environ.update(project_environment(__file__))

import hydra
from omegaconf import DictConfig

from wrncifar.run.command_line import hydra_arguments


@hydra.main(version_base="1.3", config_path="../configs", config_name="export.yaml")
def main(cfg: DictConfig) -> None:
    # Imported here, once Hydra has read the command line: torch and Lightning take seconds to load, and a
    # mistyped key or option should not wait for them.
    from wrncifar.run.entry import run
    from wrncifar.run.export import export_model

    run(export_model, cfg)


if __name__ == "__main__":
    sys.argv[1:] = hydra_arguments(sys.argv[1:], resumable=False, checkpoint_run=True, path_keys=("output",))
    main()
