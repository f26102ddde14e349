"""ruff and mypy are part of the test command (mkosi style): a lint failure fails the suite."""

import subprocess
import sys

import pytest

from tests.conftest import REPO

TARGETS = ["lkctl", "tests", "bench", "tasks.py"]


@pytest.mark.parametrize(
    "argv",
    [
        ["ruff", "check", *TARGETS],
        ["ruff", "format", "--check", *TARGETS],
        ["mypy"],
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_linter_passes(argv: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
