"""`make help` lists every target of the Makefile with its one-line description."""

from __future__ import annotations

import re
import subprocess

from tests.conftest import ROOT


def test_make_help_describes_every_phony_target() -> None:
    makefile = (ROOT / "Makefile").read_text()
    (phony,) = re.findall(r"^\.PHONY:(.*)$", makefile, flags=re.MULTILINE)
    targets = phony.split()
    assert {"help", "train", "test"} <= set(targets)
    done = subprocess.run(
        ["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    described = dict(line.strip().split(None, 1) for line in done.stdout.splitlines() if line.strip())
    assert sorted(described) == sorted(targets)
    assert all(len(text) > 10 for text in described.values()), described


def test_make_without_a_target_prints_the_help() -> None:
    def make(*args: str) -> str:
        done = subprocess.run(
            ["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert make() == make("help")
