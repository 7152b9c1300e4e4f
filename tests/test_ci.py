"""The GitHub workflow tests the Pythons the project supports: the oldest that pyproject.toml allows, the newest
release researchers use, and the one .ci/run's machine has; each runs the README's test command."""

from __future__ import annotations

import re
import sys

import yaml

from tests.conftest import ROOT


def test_the_workflow_tests_the_oldest_allowed_and_the_newest_python() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    (job,) = workflow["jobs"].values()
    versions = job["strategy"]["matrix"]["python-version"]
    (oldest,) = re.findall(r'requires-python = ">=(3\.\d+)"', (ROOT / "pyproject.toml").read_text())
    assert oldest in versions and "3.13" in versions
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in versions  # this interpreter, as in .ci/run
    assert job["steps"][-1]["run"] == "make test"
