"""The package's layers: each folder imports only from its own folder and the ones below it, and only the layer
that Hydra calls into (`run`, `sweeps`) imports Hydra or OmegaConf."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "wrncifar"
# Bottom to top. The top-level modules (`bench`, `plot`, `gpu_report`) are commands: they may import anything.
LAYERS = ("data", "models", "callbacks", "analysis", "sweeps", "run")
HYDRA_LAYERS = {"sweeps", "run"}
COMMANDS = {"bench", "plot", "gpu_report"}


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def folder_of(module: str) -> str:
    """`wrncifar.run.entry` → "run"; `wrncifar.bench` → "bench"."""
    return module.split(".")[1]


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_sits_in_a_layer_or_is_a_command() -> None:
    for path in MODULES:
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        assert parts == ("__init__",) or parts[0] in LAYERS or parts[0] in COMMANDS, path


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path) -> None:
    folder = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    if folder not in LAYERS:
        return  # a command or the package's __init__
    level = LAYERS.index(folder)
    imports = imported_modules(path)
    upward = [m for m in imports if m.startswith("wrncifar.") and LAYERS.index(folder_of(m)) > level]
    assert not upward, f"{path.relative_to(PACKAGE)} imports from a layer above {folder}/: {upward}"
    if folder not in HYDRA_LAYERS:
        hydra = [m for m in imports if m.split(".")[0] in ("hydra", "omegaconf")]
        assert not hydra, f"{path.relative_to(PACKAGE)} imports Hydra outside run/ and sweeps/: {hydra}"


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from wrncifar.run.entry import run\nimport omegaconf\n")
    assert imported_modules(module) == {"wrncifar.run.entry", "omegaconf"}
    assert LAYERS.index(folder_of("wrncifar.run.entry")) > LAYERS.index("data")


def modules_loaded_before_the_task() -> list[str]:
    """What a command imports before Hydra calls its task: the entry scripts' top-level imports, Hydra's callbacks
    and the project's launchers (with what they launch jobs through)."""
    modules = {"hydra_plugins.wrncifar_launchers", "wrncifar.sweeps.submitit_jobs"}
    for script in sorted((PACKAGE.parents[0]).glob("*.py")):
        tree = ast.parse(script.read_text(), filename=str(script))
        modules |= {
            node.module
            for node in tree.body
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("wrncifar")
        }
    for config in sorted((PACKAGE.parents[1] / "configs" / "hydra").rglob("*.yaml")):
        targets = re.findall(r"_target_:\s*([\w.]+)", config.read_text())
        modules |= {target.rsplit(".", 1)[0] for target in targets}
    return sorted(modules)


def test_nothing_before_the_task_imports_torch_or_lightning() -> None:
    """torch and Lightning take seconds to import: a mistyped option is reported without waiting for them, a sweep's
    own process (which trains nothing) never waits, and the first-step line's "imports" phase holds their time."""
    modules = modules_loaded_before_the_task()
    assert "wrncifar.sweeps.summary" in modules and "wrncifar.callbacks.start_up" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'torchvision')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.strip() == "[]", result.stdout[:2000]
