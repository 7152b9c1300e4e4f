"""The GitHub workflow tests the Pythons the project supports: the oldest that pyproject.toml allows, the newest
release researchers use, and the one .ci/run's machine has; each runs the README's test command. A job of its own
runs the SLURM tests as root."""

from __future__ import annotations

import re
import sys

import yaml

from tests.conftest import ROOT


def test_the_workflow_tests_the_oldest_allowed_and_the_newest_python() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    job = workflow["jobs"]["test"]
    versions = job["strategy"]["matrix"]["python-version"]
    (oldest,) = re.findall(r'requires-python = ">=(3\.\d+)"', (ROOT / "pyproject.toml").read_text())
    assert oldest in versions and "3.13" in versions
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in versions  # this interpreter, as in .ci/run
    assert job["steps"][-1]["run"] == "make test"


def test_the_workflow_runs_the_slurm_tests_as_root_and_fails_if_they_skip() -> None:
    """In the matrix job (not root) they skip: slurmd must run as root to start jobs."""
    steps = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())["jobs"]["slurm"]["steps"]
    commands = "\n".join(step.get("run", "") for step in steps)
    assert "sudo .venv/bin/python -m tests.slurm.cluster install" in commands
    assert re.search(r"sudo .*python -m pytest -m slurm", commands) and 'grep -qE "[0-9]+ skipped"' in commands
