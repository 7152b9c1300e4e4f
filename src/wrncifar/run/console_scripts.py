"""The console scripts `wrncifar-train`, `wrncifar-eval`, `wrncifar-predict` and `wrncifar-export`: each runs
`src/<name>.py` of the checkout the package is installed from, exactly as `python src/<name>.py` does (the same
Hydra app, configs, run folders and DDP relaunch), so the two spellings are one command."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

# src/wrncifar/run/console_scripts.py → src/
SCRIPTS = Path(__file__).resolve().parents[2]


def _run(name: str) -> None:
    script = SCRIPTS / f"{name}.py"
    if not script.is_file():
        sys.exit(
            f"Error: wrncifar-{name} runs {script}, which is not there: the commands need the checkout they were "
            f"installed from (pip install -e <checkout>). Run python <checkout>/src/{name}.py instead."
        )
    # As if started as `python src/<name>.py`: Hydra names the app after it, and DDP relaunches run it again.
    sys.argv[0] = str(script)
    runpy.run_path(str(script), run_name="__main__")


def train() -> None:
    _run("train")


def evaluate() -> None:
    _run("eval")


def predict() -> None:
    _run("predict")


def export() -> None:
    _run("export")
