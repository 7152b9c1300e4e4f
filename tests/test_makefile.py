"""`make help` lists every target of the Makefile with its one-line description."""

from __future__ import annotations

import re
import subprocess

from tests.conftest import HANG_TIMEOUT_S, ROOT


def test_make_help_describes_every_phony_target() -> None:
    makefile = (ROOT / "Makefile").read_text()
    (phony,) = re.findall(r"^\.PHONY:(.*)$", makefile, flags=re.MULTILINE)
    targets = phony.split()
    assert {"help", "train", "test"} <= set(targets)
    done = subprocess.run(
        ["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr
    described = dict(line.strip().split(None, 1) for line in done.stdout.splitlines() if line.strip())
    assert sorted(described) == sorted(targets)
    assert all(len(text) > 10 for text in described.values()), described


def test_make_without_a_target_prints_the_help() -> None:
    def make(*args: str) -> str:
        done = subprocess.run(
            ["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert make() == make("help")


def test_cpu_1_installs_the_cpu_only_torch_wheels_first(tmp_path) -> None:
    def plan(*args: str) -> list[str]:
        command = ["make", "--no-print-directory", "-n", "-B", "install", f"VENV={tmp_path / 'venv'}", *args]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    cpu = plan("CPU=1")
    torch_line = cpu.index(
        f"{tmp_path / 'venv'}/bin/python -m pip install torch torchvision --index-url "
        "https://download.pytorch.org/whl/cpu"
    )
    assert torch_line < next(i for i, line in enumerate(cpu) if 'install -e ".[dev]"' in line)
    assert not [line for line in plan() if "whl/cpu" in line]
